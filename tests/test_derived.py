"""What later stages derive from ann.pt is measured once: activation statistics in ann_stats.pt
(stale or unreadable files recomputed, never trusted) and the ANN's MACs in ann.pt."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lowlat.artifacts import ANN, ANN_STATS, QCANN, load_artifact, load_network, save_artifact
from lowlat.convert import activation_stats, to_snn
from lowlat.simulate import layer_macs
from lowlat.stages import derived, evaluate, phase2
from lowlat.stages.common import Context, calibration_images, transform_eval

CONF = Path(__file__).resolve().parents[1] / "conf"
CN = ["phase2.methods=[lowlat-cn]", "phase2.timesteps=[2]", "eval.timesteps=[2]",
      "eval.methods=[maxnorm,channelnorm,lowlat-cn]"]


def _ctx(root: Path, *overrides: str) -> Context:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=tiny", f"paths.root_dir={root}",
                                           "logger={}", *overrides])
    return Context.from_cfg(cfg)


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts the statistics actually computed (every path goes through derived)."""
    seen: list[int] = []

    def counted(*args, **kwargs):
        seen.append(1)
        return activation_stats(*args, **kwargs)

    monkeypatch.setattr(derived, "activation_stats", counted)
    return seen


def _copy(tiny_run: Path, dst: Path, names: tuple[str, ...] | None = None) -> Path:
    if names is None:
        shutil.copytree(tiny_run.parent.parent, dst)
    else:
        for n in names:
            (dst / "runs/tiny").mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_run / n, dst / "runs/tiny" / n)
    (dst / "runs/tiny" / ANN_STATS).unlink(missing_ok=True)
    return dst


def test_eval_reuses_phase2_statistics_with_the_same_rows(tiny_run, tmp_path, calls, caplog):
    ctx = _ctx(_copy(tiny_run, tmp_path / "run"), *CN)
    phase2.run_phase2(ctx)  # lowlat-cn starts from the ReLU ANN's channel-wise thresholds
    assert len(calls) == 1 and (ctx.run_dir / ANN_STATS).is_file()
    with caplog.at_level(logging.INFO, logger="lowlat"):
        cached = evaluate.run_eval(ctx)
    assert len(calls) == 1, "eval measured the statistics phase2 had stored"
    assert "read from" in caplog.text
    (ctx.run_dir / ANN_STATS).unlink()  # the same eval, statistics measured afresh
    fresh = evaluate.run_eval(ctx)
    assert len(calls) == 2
    assert {r["method"] for r in cached["rows"]} == {"maxnorm", "channelnorm", "lowlat-cn"}
    assert cached["rows"] == fresh["rows"]
    assert {k: v for k, v in cached.items() if k != "rows"} == {
        k: v for k, v in fresh.items() if k != "rows"}


def _same_stats(a: dict, b: dict) -> bool:
    """Identical as the consumers see them: the same keys, types and values."""
    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        return type(x) is type(y) and x == y
    return a.keys() == b.keys() and all(
        a[n].keys() == b[n].keys() and all(same(a[n][k], b[n][k]) for k in a[n]) for n in a)


def test_stale_or_unreadable_statistics_are_recomputed(tiny_run, tmp_path, calls, caplog):
    ctx = _ctx(_copy(tiny_run, tmp_path / "run", (ANN,)))
    art = load_artifact(ctx.run_dir / ANN, "ann")
    ann, dm, path = load_network(art), ctx.datamodule(), ctx.run_dir / ANN_STATS

    def get(n: int = 128, pct: float = 99.9, a: dict = art) -> dict:
        return derived.ann_stats(ctx, a, ann, dm, n, pct)

    xs = [x for x, _ in calibration_images(dm, 128, dm.batch_size, "cpu")]
    direct = activation_stats(ann, xs, percentile=99.9)
    assert _same_stats(get(), direct) and len(calls) == 1
    assert _same_stats(get(), direct) and len(calls) == 1  # read back, identical
    get(64)
    get(128, 99.0)  # other parameter sets: measured, kept beside the first
    assert len(calls) == 3
    get(64)
    get()
    assert len(calls) == 3
    # ann.pt retrained (another fingerprint, or the same config written again): recomputed
    get(a={**art, "fingerprint": "0" * 16})
    get(a={**art, "created": art["created"] + 1})
    assert len(calls) == 5
    assert len(torch.load(path, weights_only=True)["entries"]) == 1  # the stale ones dropped
    # an entry filed under the right key but recording other parameters is not trusted
    data = torch.load(path, weights_only=True)
    (entry,) = data["entries"].values()
    entry["params"]["percentile"] = 50.0
    torch.save(data, path)
    get(a={**art, "created": art["created"] + 1})
    assert len(calls) == 6
    # torn, garbage, foreign: recomputed and replaced by a readable file, never a crash
    whole = path.read_bytes()
    for bad in (whole[: len(whole) // 2], b"garbage", None):
        if bad is None:
            torch.save({"format": 1, "entries": [1, 2]}, path)
        else:
            path.write_bytes(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lowlat"):
            assert _same_stats(get(), direct)
        assert "recomputed" in caplog.text
        assert torch.load(path, weights_only=True)["kind"] == "ann_stats"
    assert len(calls) == 9 and not list(ctx.run_dir.glob(".*.tmp"))


def test_ann_carries_its_macs_and_eval_reports_them(tiny_run):
    ann, qc = load_artifact(tiny_run / ANN, "ann"), load_artifact(tiny_run / QCANN, "qcann")
    m = ann["metrics"]
    ctx = _ctx(tiny_run.parent.parent)
    dm = ctx.datamodule()
    x = transform_eval(dm)(next(iter(dm.val_dataloader()))[0][:1])
    # eval's measure before the MACs moved to stage ann: the converted QC-ANN
    before = sum(layer_macs(to_snn(load_network(qc)), x).values())
    assert m["macs"] == before > 0 and m["macs_input"] == list(x.shape[1:])
    assert json.loads((tiny_run / "results.json").read_text())["ann_macs"] == m["macs"]
    arts, nets = {"ann": ann, "qcann": qc}, {"qcann": load_network(qc)}
    assert evaluate._ann_macs({**arts, "ann": {**ann, "metrics": {**m, "macs": 7.0}}},
                              nets, x) == 7.0  # read from ann.pt, not measured again
    old = {k: v for k, v in m.items() if k not in ("macs", "macs_input")}
    for a in ({}, {"ann": {**ann, "metrics": old}},  # no ann.pt, an older one: measured
              {"ann": {**ann, "metrics": {**m, "macs_input": [3, 32, 32]}}}):  # other inputs
        assert evaluate._ann_macs({**arts, **a} if a else {"qcann": qc}, nets, x) == before


def test_eval_of_an_older_ann_artifact_measures_its_macs(tiny_run, tmp_path):
    """An ann.pt written before stage ann stored MACs still evaluates, with the same number."""
    root = _copy(tiny_run, tmp_path / "run")
    ctx = _ctx(root, "eval.methods=[phase1]", "eval.timesteps=[2]", "eval.limit_batches=1")
    art = load_artifact(ctx.run_dir / ANN, "ann")
    metrics = {k: v for k, v in art["metrics"].items() if k not in ("macs", "macs_input")}
    save_artifact(ctx.run_dir / ANN, "ann", load_network(art), art["arch"], art["act"], metrics,
                  art["config"], art["fingerprint"])
    assert evaluate.run_eval(ctx)["ann_macs"] == art["metrics"]["macs"]
