"""scripts/profile_quickstart.py times every phase of a real stage=all run (the tiny one here)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_profile_quickstart_times_every_phase(tmp_path):
    out = tmp_path / "profile.json"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts/profile_quickstart.py"), "--out", str(out), "--",
         "experiment=tiny", f"paths.root_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    items = json.loads(out.read_text())["items"]
    assert items["stage/run_phase1"]["calls"] == 2  # QC-ANN and Rate-Norm ANN (ratenorm row)
    for key in ("import", "stage/run_ann", "stage/run_phase2", "stage/run_eval",
                "phase2/calibrate lowlat T=2", "phase2/val lmpc T=2", "eval/lowlat",
                "eval/phase1", "total (process)"):
        assert key in items, (key, sorted(items))
    assert all(v["cpu_s"] >= 0 and v["wall_s"] >= 0 for v in items.values())
    total = items["total (process)"]["cpu_s"]
    assert items["stage/run_phase2"]["cpu_s"] <= total
    assert (tmp_path / "runs/tiny/results.csv").is_file()  # the run itself was complete
