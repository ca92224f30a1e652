"""The paper's printed figures (Xiong et al. 2025, Tables 1-3) and which column a run meets.

The figures live once, as data, in ``lowlat/paper_results.json``; this module says how the
paper lays its tables out and how a method is named in them (from the method table).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from lowlat.methods import METHODS
from lowlat.report.runs import ReportError, Run

PAPER_FILE = Path(__file__).parents[1] / "paper_results.json"
DEFAULT_PAPER = "cifar10_vgg16"  # the paper's headline column, used when the run matches none
# (title, the paper's rows (paper-literal methods and cited baselines), T columns, lowlat's extra
# rows shown below them, never in their place)
TABLES: dict[int, tuple[str, tuple[str, ...], tuple[int, ...], tuple[str, ...]]] = {
    1: ("Table 1: threshold setting methods", ("maxnorm", "robustnorm", "phase1"),
        (8, 16, 32, 64, 128), ("robustnorm_all", "unbiased")),
    2: ("Table 2: initial membrane potential methods", ("phase1", "opti", "opt", "lmpc"), (4, 16),
        ("unbiased", "lowlat-lmpc")),
    3: ("Table 3: comparison with other conversion methods",
        ("ratenorm", "opt", "calibration", "opti", "qcfs", "phase1", "lwc", "lmpc+lwc"),
        (2, 4, 8, 16, 32, 64, 128), ("unbiased", "lowlat-lwc", "lowlat")),
}
# Table 3's baseline rows are the cited papers' own figures; ours for them are our implementations.
TABLE3_LABELS = {"ratenorm": "RateNorm [15]", "opt": "Opt. [17] (ours: Phase I+Opt)",
                 "calibration": "Calibration [16]", "opti": "OpI. [18] (ours: Phase I+OptI)",
                 "qcfs": "QCFS* [19] (L=8)"}


@cache
def load_paper() -> dict[str, Any]:
    return json.loads(PAPER_FILE.read_text())


def paper_value(key: str | None, table: int | None, method: str, T: int | None,
                metric: str = "top1") -> float | None:
    """The published figure for one cell (percent for accuracies), or None if not printed."""
    for e in load_paper()["entries"]:
        if (e["paper"], e["table"], e["method"], e["T"], e["metric"]) == (key, table, method, T,
                                                                           metric):
            return float(e["value"])
    return None


def label(method: str) -> str:
    """A method's row name: the method table's label, marked (lowlat) for lowlat's own methods;
    the paper's label for cited baselines we do not implement."""
    if method in METHODS:
        m = METHODS[method]
        return m.label + ("" if m.paper or m.peer else " (lowlat)")
    return load_paper()["labels"].get(method, method)


def paper_key(run: Run, requested: str | None = None) -> tuple[str | None, str]:
    """The paper column to compare with, and a sentence saying why it was chosen."""
    papers = load_paper()["papers"]
    if requested:
        if requested == "none":
            return None, "no comparison (--paper none)"
        if requested not in papers:
            raise ReportError(f"--paper {requested!r} unknown; valid: {', '.join(papers)}, none")
        return requested, f"{requested} (chosen with --paper)"
    ds, net = run.dataset(), run.network()
    if ds and f"{ds}_{net}" in papers:
        return f"{ds}_{net}", f"{ds}_{net} (from the data set and model in results.json)"
    what = f"{ds or 'unknown data'}/{net}"
    return DEFAULT_PAPER, (f"{DEFAULT_PAPER}: the run ({what}) matches no paper column, so the "
                           "paper's headline column is shown; choose one with --paper")
