"""``scripts/gpu_check.sh`` dry-run on the CPU (``GPU_CHECK_DRY=1``): every step writes its JSON,
and a budget too short for a step skips it with a status instead of running over."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["a1_bench_snn_vgg16", "a2_bench_snn_resnet20", "a3_bench_snn_fused", "b_epoch",
         "c_paper_run", "d_bench_finetune"]


def _run(out: Path, budget: int, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_BUDGET": str(budget),
           "PYTHON": sys.executable, "GPU_CHECK_RUN_DIR": str(tmp / "run")}
    return subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=budget + 60)


def _status(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.status.json").read_text())


def test_gpu_check_skips_what_does_not_fit(tmp_path):
    out = tmp_path / "out"
    r = _run(out, 20, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(_status(out, s)["status"] == "skipped" for s in STEPS)
    assert json.loads((out / "env.json").read_text())["dry"] is True
    assert json.loads((out / "c_plan.json").read_text())["ann_epochs"] >= 1


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    r = _run(out, 300, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for s in STEPS:
        st = _status(out, s)
        assert st["rc"] == 0 and not st["timed_out"], (s, (out / f"{s}.log").read_text()[-2000:])
    snn = json.loads((out / "a1_bench_snn_vgg16/bench_snn.json").read_text())
    assert {r["T"] for r in snn["rows"]} == {1, 2} and all(r["ratio"] > 0 for r in snn["rows"])
    fused = json.loads((out / "a3_bench_snn_fused/bench_snn.json").read_text())
    assert {r["mode"] for r in fused["rows"]} == {"chunked", "fused", "fused-step"}
    epoch = json.loads((out / "b_epoch.json").read_text())
    assert epoch["seconds_per_epoch"] > 0 and epoch["achieved_tflops"] > 0
    assert (out / "c_paper_run/results.csv").read_text().count("\n") > 1
    metrics = json.loads((out / "c_paper_run/artifact_metrics.json").read_text())
    assert {"ann.pt", "qcann.pt"} <= set(metrics)
    assert any(k.startswith("snn_T2_") for k in metrics), sorted(metrics)
    ft = json.loads((out / "d_bench_finetune.json").read_text())
    assert ft["device"] == "cpu" and {r["variant"] for r in ft["rows"]} == {"plain", "fused"}
    assert all(r["wall_s"] > 0 for r in ft["rows"])
