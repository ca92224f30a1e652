"""ann -> phase1 -> phase2 -> eval through the command line, and how bad input is met."""

import csv
import json
import shutil

import pytest
import torch

from lowlat.artifacts import fingerprint, load_artifact, load_network
from lowlat.lit import evaluate
from lowlat.methods import load_snn
from tests.conftest import run_cli


def test_artifacts_reload_and_reproduce(tiny_run):
    for name in ("ann.pt", "qcann.pt", "ratenorm.pt", "snn_T2_lmpc+lwc.pt", "snn_T2_lmpc.pt",
                 "snn_T2_lwc.pt", "snn_T2_lowlat.pt"):
        art = torch.load(tiny_run / name, weights_only=True)
        assert {"arch", "act", "state_dict", "metrics", "config", "fingerprint"} <= set(art)
    qc = load_artifact(tiny_run / "qcann.pt", "qcann")
    assert qc["act"]["name"] == "qc" and qc["act"]["kwargs"]["levels"] == 8
    import hydra
    from omegaconf import OmegaConf

    dm = hydra.utils.instantiate(OmegaConf.create(qc["config"]["data"]))
    dm.setup()
    acc = evaluate(load_network(qc), dm.val_dataloader(), lambda x: dm.transform_batch(x, False))
    assert acc == pytest.approx(qc["metrics"]["val_top1"], abs=1e-9)
    results = json.loads((tiny_run / "results.json").read_text())
    test = evaluate(load_network(qc), dm.test_dataloader(), lambda x: dm.transform_batch(x, False))
    assert test == pytest.approx(results["qcann_top1"], abs=1e-9)
    art = load_artifact(tiny_run / "snn_T2_lowlat.pt", "snn")
    v0 = [m.v0 for m in load_snn(art).modules() if hasattr(m, "v0")]
    per_channel = art["recipe"]["granularity"] == "channel"  # as phase2.lowlat configured it
    # a layer whose first correction did not lower its rate error keeps its scalar start v(0)
    corrected = [v for v in v0[:-1] if v.dim() > 0]
    assert corrected and all(v.dim() == 3 and (v.shape[1:] == (1, 1)) == per_channel
                             for v in corrected)
    paper = load_snn(load_artifact(tiny_run / "snn_T2_lmpc.pt", "snn"))
    v0 = [m.v0 for m in paper.modules() if hasattr(m, "v0")]
    assert all(v.dim() == 3 and v.shape[1:] != (1, 1) for v in v0[:-1])  # eq. 13 per neuron


def test_results_table(tiny_run):
    rows = list(csv.DictReader((tiny_run / "results.csv").open()))
    methods = {r["method"] for r in rows}
    assert methods == {"phase1", "opti", "opt", "unbiased", "maxnorm", "robustnorm",
                       "robustnorm_all", "ratenorm", "lmpc", "lwc", "lmpc+lwc", "lowlat"}
    assert {int(r["T"]) for r in rows if r["method"] == "phase1"} == {1, 2, 4, 8}
    data = json.loads((tiny_run / "results.json").read_text())
    assert data["complete"] and data["test_images"] == 128 and data["val_images"] > 0
    assert data["qcann_top1"] > 0.3 and data["ann_top1"] > 0.5
    row = next(r for r in data["rows"] if r["method"] == "phase1" and r["T"] == 8)
    assert set(row["firing_rate"]) == set(row["rmpe_share"]) and row["energy_ratio"] > 0
    assert row["label"] == "Phase I" and row["paper"] is True
    # the network-wide rate weighs layers by their neuron count; the csv's is the layer mean
    csv_row = next(r for r in rows if r["method"] == "phase1" and r["T"] == "8")
    assert float(csv_row["firing_rate_net"]) == pytest.approx(row["firing_rate_net"], abs=1e-6)
    # lowlat's calibration beats the uncalibrated conversion at T = 2 even on this tiny run
    top = {(r["method"], r["T"]): r["val_top1"] for r in data["rows"]}
    assert top[("lowlat", 2)] > top[("phase1", 2)]
    # ... and beats the paper-literal recipe (Phase I + eq. 13 + SGD LWC) at T = 2 by more than
    # two standard errors of the difference of two proportions on these validation images
    import math
    a, b, n = top[("lowlat", 2)], top[("lmpc+lwc", 2)], data["val_images"]
    assert a - b > 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def test_all_skips_up_to_date_stages(tiny_run, tmp_path):
    """A second stage=all with the same config redoes nothing, phase2 and eval included."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.parent.parent, root)
    run = root / "runs/tiny"
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("*.pt")}
    before["results.json"] = (run / "results.json").stat().st_mtime_ns
    r = run_cli("stage=all", "experiment=tiny", f"paths.root_dir={root}")
    assert r.returncode == 0, r.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in run.glob("*.pt")}
    after["results.json"] = (run / "results.json").stat().st_mtime_ns
    assert after == before
    out = r.stderr + r.stdout
    assert "results.json is up to date" in out and "snn_T2_lowlat.pt is up to date" in out
    # a changed eval setting reruns eval only, and its table holds only what was asked for
    r = run_cli("stage=all", "experiment=tiny", f"paths.root_dir={root}",
                "eval.methods=[phase1]", "eval.timesteps=[2]")
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.pt")} == {
        k: v for k, v in before.items() if k.endswith(".pt")}
    rows = json.loads((run / "results.json").read_text())["rows"]
    assert [(x["method"], x["T"]) for x in rows] == [("phase1", 2)]


def test_lowlat_options_make_their_own_artifact(tiny_run, tmp_path):
    """phase2.lowlat.target=T and head=mse change the lowlat artifact (fingerprint, recipe,
    the head's weights), and the defaults leave the earlier artifact valid."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.parent.parent, root)
    run = root / "runs/tiny"
    old = load_artifact(run / "snn_T2_lowlat.pt", "snn")
    r = run_cli("stage=phase2", "experiment=tiny", f"paths.root_dir={root}",
                "phase2.methods=[lowlat]", "eval.methods=[lowlat]", "phase2.lowlat.target=T",
                "phase2.lowlat.head=mse")
    assert r.returncode == 0, r.stderr[-2000:]
    new = load_artifact(run / "snn_T2_lowlat.pt", "snn")
    assert new["fingerprint"] != old["fingerprint"]
    assert new["recipe"]["target"] == "T" and new["recipe"]["head"] == "mse"
    heads = [x for x in new["metrics"]["layers"] if x["layer"].startswith("head:")]
    assert len(heads) == 1 and heads[0]["head_loss_after"] < heads[0]["head_loss_before"]
    head = heads[0]["layer"].split(":", 1)[1]
    assert not torch.equal(new["state_dict"][f"{head}.weight"], old["state_dict"][f"{head}.weight"])


@pytest.mark.parametrize("args,needle", [
    (["stage=nope"], "stage"),
    (["stage=ann", "model.name=vgg17"], "vgg17"),
    (["stage=ann", "data=nope"], "data"),
    (["stage=phase1", "phase1.levels=0"], "phase1.levels"),
    (["stage=phase1", "phase1.kd=1.5"], "phase1.kd"),
    (["stage=phase1", "phase1.optimizer=rmsprop"], "phase1.optimizer"),
    (["stage=phase1", "phase1.optimizer=adam", "phase1.momentum=0.5"], "phase1.momentum"),
    (["stage=eval", "eval.timesteps=[0,4]"], "eval.timesteps"),
    (["stage=eval", "eval.methods=[magic]"], "magic"),
    (["stage=phase2", "phase2.calib_samples=0"], "calib_samples"),
])
def test_bad_input_is_refused(tmp_path, args, needle):
    r = run_cli(*args, "experiment=tiny", f"paths.root_dir={tmp_path}")
    assert r.returncode != 0
    assert needle in r.stderr + r.stdout
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.parametrize("stage,needle", [("phase1", "ann.pt"), ("phase2", "qcann.pt"),
                                          ("eval", "qcann.pt")])
def test_missing_input_artifact(tmp_path, stage, needle):
    r = run_cli(f"stage={stage}", "experiment=tiny", f"paths.root_dir={tmp_path}")
    assert r.returncode == 2
    assert needle in r.stderr and "run stage=" in r.stderr


def test_failed_stage_leaves_artifacts_untouched(tiny_run, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.parent.parent, root)
    art = root / "runs/tiny/qcann.pt"
    before = art.read_bytes()
    r = run_cli("stage=phase1", "experiment=tiny", f"paths.root_dir={root}", "phase1.levels=0")
    assert r.returncode != 0 and art.read_bytes() == before
    # a corrupted upstream artifact is reported, not trusted
    (root / "runs/tiny/ann.pt").write_bytes(b"garbage")
    r = run_cli("stage=phase1", "experiment=tiny", f"paths.root_dir={root}")
    assert r.returncode == 2 and "cannot read artifact" in r.stderr
    assert art.read_bytes() == before
    assert not list((root / "runs/tiny").glob(".*.tmp"))


def test_conversions_approach_their_anns_as_T_grows(tiny_run):
    """The unbiased QC conversion tends to the QC-ANN, MaxNorm to the ReLU ANN, at large T."""
    import hydra
    from omegaconf import OmegaConf

    from lowlat.convert import activation_stats
    from lowlat.methods import convert_qcann, convert_relu_ann
    from lowlat.simulate import evaluate_snn

    qc_art = load_artifact(tiny_run / "qcann.pt", "qcann")
    ann_art = load_artifact(tiny_run / "ann.pt", "ann")
    dm = hydra.utils.instantiate(OmegaConf.create(qc_art["config"]["data"]))
    dm.setup()
    tf = lambda x: dm.transform_batch(x, False)  # noqa: E731
    test = list(dm.test_dataloader())
    res = json.loads((tiny_run / "results.json").read_text())
    qc_acc, ann_acc = res["qcann_top1"], res["ann_top1"]
    acc = evaluate_snn(convert_qcann(load_network(qc_art), "unbiased"), test, [2, 64],
                       transform=tf, stats=False, progress=False).accuracy()
    # 128 test images: 0.06 is 8 images
    assert abs(acc[64] - qc_acc) <= 0.06 and abs(acc[64] - qc_acc) <= abs(acc[2] - qc_acc)
    ann = load_network(ann_art)
    stats = activation_stats(ann, [tf(x) for x, _ in dm.calibration_loader(128, 64)])
    acc = evaluate_snn(convert_relu_ann(ann, stats, "maxnorm"), test, [8, 256], transform=tf,
                       max_chunk=64, stats=False, progress=False).accuracy()
    assert acc[256] >= ann_acc - 0.04 and acc[256] > acc[8]


def test_refusals_leave_the_run_folder_unchanged(tiny_run, tmp_path):
    """Bad values and a model other than the artifacts' are refused with exit 2, writing nothing."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.parent.parent, root)
    run = root / "runs/tiny"

    def snapshot():
        return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    before = snapshot()
    for args, needle in ((["stage=phase1", "model=vgg16"], "model=vgg16"),
                         (["stage=phase2", "phase2.lwc.lr=-1"], "phase2.lwc.lr"),
                         (["stage=eval", "phase1.levels=abc"], "phase1.levels"),
                         (["stage=phase2", "phase2.timesteps=4"], "phase2.timesteps")):
        r = run_cli(*args, "experiment=tiny", f"paths.root_dir={root}")
        assert r.returncode == 2, (args, r.stderr[-1500:])
        assert needle in r.stderr, (args, r.stderr[-1500:])
        assert snapshot() == before, args


def test_channelnorm_start_and_validation_accept(tiny_run, tmp_path):
    """lowlat calibrated from the ReLU ANN's channel-wise conversion, LWC kept only if it wins
    on validation: phase2 records the choice, eval reads the artifact against ann.pt."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.parent.parent, root)
    run = root / "runs/tiny"
    r = run_cli("stage=phase2", "experiment=tiny", f"paths.root_dir={root}",
                "phase2.methods=[lowlat]", "phase2.timesteps=[2]",
                "eval.methods=[channelnorm,lowlat]", "phase2.lowlat.start=channelnorm",
                "phase2.lowlat.accept=val", "phase2.lowlat.lmpc_iterations=2",
                "phase2.lowlat.granularity=channel")
    assert r.returncode == 0, r.stderr[-2000:]
    art = load_artifact(run / "snn_T2_lowlat.pt", "snn")
    m = art["metrics"]
    assert art["act"]["name"] == "relu" and art["recipe"]["start"] == "channelnorm"
    assert art["upstream"] == load_artifact(run / "ann.pt")["fingerprint"]
    assert m["lwc_kept"] == (m["val_top1_without_lwc"] <= m["val_top1_with_lwc"])
    assert m["val_top1"] == max(m["val_top1_without_lwc"], m["val_top1_with_lwc"])
    thetas = [x.theta for x in load_snn(art).modules() if hasattr(x, "theta")]
    assert all(t.numel() > 1 for t in thetas)  # per-channel thresholds survived the reload
    r = run_cli("stage=eval", "experiment=tiny", f"paths.root_dir={root}",
                "phase2.methods=[lowlat]", "phase2.timesteps=[2]", "eval.timesteps=[2]",
                "eval.methods=[channelnorm,lowlat]", "phase2.lowlat.start=channelnorm",
                "phase2.lowlat.accept=val", "phase2.lowlat.lmpc_iterations=2",
                "phase2.lowlat.granularity=channel")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x["method"]: x for x in json.loads((run / "results.json").read_text())["rows"]}
    assert set(rows) == {"channelnorm", "lowlat"}
    assert rows["lowlat"]["val_top1"] == pytest.approx(m["val_top1"])


def test_phase1_teacher_makes_its_own_qcann(tiny_run, tmp_path):
    """phase1.kd / phase1.optimizer change the QC-ANN's fingerprint and are recorded; at their
    defaults the key set is the one of QC-ANNs made before they existed (phase2 stays valid)."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.parent.parent, root)
    run = root / "runs/tiny"
    old = load_artifact(run / "qcann.pt", "qcann")
    ann_fp = load_artifact(run / "ann.pt", "ann")["fingerprint"]
    before = {k: v for k, v in old["config"]["phase1"].items() if k not in ("kd", "optimizer")}
    assert old["fingerprint"] == fingerprint({"sections": {"phase1": before}, "upstream": ann_fp})
    r = run_cli("stage=phase1", "experiment=tiny", f"paths.root_dir={root}", "phase1.kd=0.5",
                "phase1.optimizer=adam")
    assert r.returncode == 0, r.stderr[-2000:]
    new = load_artifact(run / "qcann.pt", "qcann")
    assert new["fingerprint"] != old["fingerprint"]
    assert new["metrics"]["kd"] == 0.5 and new["metrics"]["optimizer"] == "adam"
    r = run_cli("stage=phase2", "experiment=tiny", f"paths.root_dir={root}")
    assert r.returncode == 0, r.stderr[-2000:]  # the new QC-ANN calibrates as any other
    mtime = (run / "qcann.pt").stat().st_mtime_ns  # stage=all sees it up to date with them
    r = run_cli("stage=all", "experiment=tiny", f"paths.root_dir={root}", "phase1.kd=0.5",
                "phase1.optimizer=adam", "eval.methods=[phase1]", "eval.timesteps=[2]")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "qcann.pt").stat().st_mtime_ns == mtime
