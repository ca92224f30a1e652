"""On real small data (the digits quickstart), the signed recipe beats the paper-literal one at
T = 2 by a margin these validation images support (issue 9's test; slow: two Phase I runs)."""

import json
import math
import shutil

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _top1(run, method: str, T: int) -> tuple[float, int]:
    data = json.loads((run / "results.json").read_text())
    row = next(r for r in data["rows"] if r["method"] == method and r["T"] == T)
    return row["val_top1"], data["val_images"]


def test_signed_l2_beats_the_paper_recipe_at_T2_on_digits(tmp_path):
    common = ["experiment=quickstart", f"paths.root_dir={tmp_path}", "eval.timesteps=[2]",
              "phase2.timesteps=[2]"]
    paper = run_cli("stage=all", *common, "experiment_name=paper", "phase2.methods=[lmpc+lwc]",
                    "eval.methods=[lmpc+lwc]")  # L = 8, s = 0: the paper's QC-ANN and recipe
    assert paper.returncode == 0, paper.stderr[-3000:]
    ours = tmp_path / "runs" / "signed"
    ours.mkdir(parents=True)
    shutil.copy(tmp_path / "runs" / "paper" / "ann.pt", ours / "ann.pt")  # the same ReLU ANN
    r = run_cli("stage=all", *common, "experiment_name=signed", "phase1.levels=2",
                "phase1.shift=0.5", "phase2.methods=[]", "eval.methods=[signed]")
    assert r.returncode == 0, r.stderr[-3000:]
    a, n = _top1(ours, "signed", 2)
    b, _ = _top1(tmp_path / "runs" / "paper", "lmpc+lwc", 2)
    # more than two standard errors of the difference of two proportions on n images
    assert a - b > 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n), (a, b, n)
