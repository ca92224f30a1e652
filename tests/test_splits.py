"""The test split is for the final table only: no stage or script but ``eval`` may read it."""

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir

from lowlat.stages.common import ConfigError, Context, validate

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=tiny", f"paths.root_dir={root}",
                                            "logger=csv", *overrides])


@pytest.fixture
def test_split_reads(monkeypatch, tmp_path):
    """Count every call of the data module's test_dataloader (patched on its class)."""
    cls = hydra.utils.get_class(_cfg(tmp_path).data._target_)
    calls: list[str] = []
    original = cls.test_dataloader

    def counted(self, *a, **kw):
        calls.append("test")
        return original(self, *a, **kw)

    monkeypatch.setattr(cls, "test_dataloader", counted)
    return calls


def test_only_eval_reads_the_test_split(tmp_path, test_split_reads):
    from lowlat.stages.evaluate import run_eval
    from lowlat.stages.phase2 import run_phase2
    from lowlat.stages.train import run_ann, run_phase1

    cfg = _cfg(tmp_path, "ann.epochs=2", "phase1.epochs=1", "phase2.lwc.iterations=1",
               "eval.timesteps=[1,2]", "eval.methods=[phase1,maxnorm,ratenorm,lmpc,lowlat]",
               "phase2.methods=[lmpc,lowlat]")
    validate(cfg)
    ctx = Context.from_cfg(cfg)
    run_ann(ctx)
    run_phase1(ctx)
    run_phase1(ctx.with_overrides({"phase1.activation": "ratenorm"}))
    run_phase2(ctx)
    assert test_split_reads == [], "a stage before eval read the test split"
    data = run_eval(ctx)
    assert test_split_reads == ["test"]  # once, for the reported rows
    assert data["complete"] and data["splits"]["reported"].startswith("test")
    # top1 is the test split's accuracy and val_top1 the validation split's: phase1 recomputed
    from lowlat.artifacts import QCANN, load_artifact, load_network
    from lowlat.methods import convert
    from lowlat.simulate import evaluate_snn
    from lowlat.stages.common import transform_eval

    dm = ctx.datamodule()
    snn = convert("phase1", load_network(load_artifact(ctx.run_dir / QCANN)))
    for key, loader in (("top1", dm.test_dataloader()), ("val_top1", dm.val_dataloader())):
        acc = evaluate_snn(snn, loader, [1, 2], transform=transform_eval(dm), stats=False,
                           progress=False).accuracy()
        assert {r["T"]: r[key] for r in data["rows"] if r["method"] == "phase1"} == acc, key
    # the calibrated rows reuse the validation top-1 their artifact recorded in phase2
    from lowlat.artifacts import load_artifact, snn_name

    art = load_artifact(ctx.run_dir / snn_name(2, "lowlat"))
    row = next(r for r in data["rows"] if r["method"] == "lowlat")
    assert row["val_top1"] == art["metrics"]["val_top1"]


def test_ablation_script_reads_validation_only(tiny_run, tmp_path, test_split_reads):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "phase2_ablation", Path(__file__).resolve().parents[1] / "scripts/phase2_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = mod.main([str(tiny_run), "--timesteps", "2", "--calib-samples", "64",
                   "--lwc-iterations", "1", "--lwc-batch", "32", "--out", str(tmp_path)])
    assert test_split_reads == []
    text = md.read_text()
    assert "validation split" in text and "| 2 | lmpc | formula=abs, granularity=neuron" in text


@pytest.mark.parametrize("vf", [0, 0.0, 1, -0.2])
def test_validation_fraction_must_leave_a_validation_split(tmp_path, vf):
    with pytest.raises(ConfigError, match="data.val_fraction"):
        validate(_cfg(tmp_path, f"data.val_fraction={vf}"))


def test_objective_is_a_validation_figure(tiny_run):
    import json

    from lowlat.results import objective_value

    data = json.loads((tiny_run / "results.json").read_text())
    row = next(r for r in data["rows"] if r["method"] == "lowlat")
    assert objective_value(tiny_run, "lowlat", row["T"]) == row["val_top1"]
    assert objective_value(tiny_run, "lowlat", 999) is None
