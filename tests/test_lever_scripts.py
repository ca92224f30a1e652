"""The issue-9 scripts run on a finished tiny run and write what they promise (validation for
choices; the SpikingJelly comparison reports both splits and picks lowlat's best on validation)."""

import itertools
import json
import sys
from pathlib import Path

import pytest

from lowlat.activations import QCActivation
from lowlat.artifacts import QCANN, datamodule_of, load_artifact, load_network
from lowlat.lit import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def test_levers_and_compare_runs(tiny_run, tmp_path):
    import compare_runs
    import levers

    levers.main(["--run", str(tiny_run), "--timesteps", "2", "--val-batches", "1",
                 "--calib-samples", "32", "--stat-images", "64", "--name", "t", "--out",
                 str(tmp_path), "--variant", "conv:unbiased", "cn:start=channelnorm,"
                 "granularity=channel", "v:lmpc=1,lwc=1,iterations=2,batch=16,accept=val",
                 "qc:T", "art:lowlat:head=mse", "art:lowlat:from=2"])
    rows = json.loads((tmp_path / "levers_t.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["conv:unbiased", "cn", "v", "qc:T",
                                            "art:lowlat:head=mse", "art:lowlat:from=2"]
    assert rows[5]["calibrated_at_T"] == 2 and 0 <= rows[5]["val_top1"] <= 1
    assert levers.parse_variant("art:lowlat:from=2,head=kl")[1] == {
        "artifact": "lowlat", "head": "kl", "from": "2"}
    with pytest.raises(SystemExit, match="from=<T>"):
        levers.parse_variant("art:lowlat:from=two")
    # qc:T is the QC-ANN itself with L = T levels, on the same validation batches
    art = load_artifact(tiny_run / QCANN, "qcann")
    qc, dm = load_network(art), datamodule_of(art)
    for m in qc.modules():
        if isinstance(m, QCActivation):
            m.levels = 2
    val = list(itertools.islice(dm.val_dataloader(), 1))
    assert rows[3]["val_top1"] == evaluate(qc, val, lambda x: dm.transform_batch(x, train=False))
    assert rows[4]["head_loss_after"] < rows[4]["head_loss_before"]
    v = rows[2]
    assert v["val_top1"] == max(v["val_top1"], v["val_top1_without_lwc"])  # accept=val
    assert v["cpu_seconds"] > 0 and "CPU s" in (tmp_path / "levers_t.md").read_text()
    with pytest.raises(SystemExit, match="unknown setting 'nope'"):
        levers.parse_variant("x:nope=1")
    compare_runs.main([str(tiny_run), "--name", "r", "--out", str(tmp_path)])
    cols = json.loads((tmp_path / "levers_r.json").read_text())["columns"]
    assert cols[0]["cells"]["lowlat|2"]["val_top1"] > 0
    assert "QC-ANN" in (tmp_path / "levers_r.md").read_text()
    assert "compare_runs.py" in json.loads((tmp_path / "levers_r.json").read_text())["command"]
    col = {"run": "runs/x", "levels": 2, "shift": 0.5, "lambda": "layer", "phase1_epochs": 1,
           "finetune": {"lmpc_iterations": 1, "iterations": 9, "batch_size": 8, "lr": 1e-3,
                        "kd": 0.5, "frozen": 4, "fused": True, "backward": "rate"}}
    assert "compiled neurons, first 4 layers frozen, rate backward" in compare_runs._label(col)


def test_compare_spikingjelly(tiny_run, tmp_path):
    pytest.importorskip("spikingjelly")
    import compare_spikingjelly

    compare_spikingjelly.main([str(tiny_run), "--timesteps", "1", "2", "--images", "64",
                               "--calib-samples", "32", "--stat-images", "64", "--out",
                               str(tmp_path)])
    meta = json.loads((tmp_path / "compare_spikingjelly.json").read_text())
    methods = {r["method"] for r in meta["rows"]}
    assert {"spikingjelly_channel", "channelnorm", "lowlat-cn", "unbiased", "signed",
            "lowlat"} <= methods
    assert {r["T"] for r in meta["rows"] if r["method"] == "unbiased"} == {1, 2}  # qcann.pt
    for T, best in meta["lowlat_best"].items():  # chosen on validation among lowlat's own rows
        own = [r for r in meta["rows"] if r["T"] == int(T) and r["method"] not in
               ("spikingjelly_channel", "channelnorm", "lmpc", "lwc", "lmpc+lwc")]
        assert best["val_top1"] == max(r["val_top1"] for r in own)
    for r in meta["rows"]:  # each calibrated row: its wall and its process-CPU seconds
        if r["method"] in ("lowlat-cn", "lowlat"):
            assert r["calib_cpu_seconds"] >= 0 and r["calib_seconds"] >= 0
    assert "process CPU (wall)" in (tmp_path / "compare_spikingjelly.md").read_text()


def test_bench_finetune_times_each_variant_against_the_first(tiny_run, tmp_path):
    import bench_finetune

    from lowlat import fused

    bench_finetune.main([str(tiny_run), "--method", "lowlat", "--timesteps", "2", "--steps", "2",
                         "--repeats", "1", "--batch", "8", "--variants", "plain", "bf16", "fused",
                         "--out", str(tmp_path / "b")])
    meta = json.loads((tmp_path / "b.json").read_text())
    rows = {r["variant"]: r for r in meta["rows"]}
    assert meta["baseline"] == "plain" and set(rows) == {"plain", "bf16", "fused"}
    assert rows["plain"]["speedup_wall"] == 1.0
    for r in rows.values():
        assert r["T"] == 2 and r["wall_s"] > 0 and r["cpu_s"] > 0
        assert r["speedup_cpu"] == pytest.approx(rows["plain"]["cpu_s"] / r["cpu_s"])
    assert not rows["plain"]["fused_ran"] and not rows["bf16"]["fused_ran"]
    assert rows["fused"]["fused_ran"] == fused.available()  # what ran, from the fine-tune
    assert "| 2 | fused |" in (tmp_path / "b.md").read_text()


def test_compare_runs_heads_a_column_with_its_fine_tune_settings():
    import compare_runs

    col = {"run": "runs/x", "levels": 2, "shift": 0.5, "lambda": "layer", "phase1_epochs": 10,
           "finetune": {"iterations": 600, "batch_size": 128, "lr": 0.001, "kd": 0.5,
                        "neurons": True, "warmup": 100, "lmpc_iterations": 1, "seed": 1,
                        "fused": True}}
    label = compare_runs._label(col)
    assert label.startswith("x (L=2, s=0.5")
    for part in ("LMPC ×1", "fine-tune 600 it", "lr 0.001", "neurons", "warm-up 100",
                 "fine-tune seed 1", "compiled neurons"):
        assert part in label
    assert "surrogate eq15" in label  # recorded only when not eq15 (made before the option)
    col["finetune"]["surrogate"] = "scaled"
    assert "surrogate scaled" in compare_runs._label(col)
    del col["finetune"]["warmup"]
    col["finetune"]["fused"] = False
    assert "warm-up" not in compare_runs._label(col)
    assert "compiled" not in compare_runs._label(col)
    assert "channels-last" not in compare_runs._label(col)
    col["finetune"]["channels_last"] = True
    assert "channels-last" in compare_runs._label(col)
    assert "Phase I" not in compare_runs._label(col)  # the paper's CE and SGD say nothing
    col.update(phase1_kd=0.5, phase1_optimizer="adam")
    assert "Phase I kd 0.5" in compare_runs._label(col)
    assert "Phase I adam" in compare_runs._label(col)
