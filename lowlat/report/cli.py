"""``python -m lowlat.report RUN [RUN|MULTIRUN ...]``: write each run's report, and a sweep
table when several runs are given or found."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lowlat.report.figures import write_figures
from lowlat.report.paper import load_paper, paper_key
from lowlat.report.runs import ReportError, Run, find_runs
from lowlat.report.sweeps import write_sweep
from lowlat.report.tables import report_markdown, tables_csv


def write_report(run: Run, out: Path, paper: str | None = None, T: int | None = None) -> Path:
    """Write ``report.md``, ``tables.csv`` and the PNGs into ``out``; returns the Markdown path."""
    key, why = paper_key(run, paper)
    figs = write_figures(run, out, key, T)
    (out / "tables.csv").write_text(tables_csv(run, key))
    md = out / "report.md"
    md.write_text(report_markdown(run, key, why, figs))
    return md


def _sweep_out(paths: Sequence[str]) -> Path:
    """``<multirun>/report`` for one folder, else ``<common parent>/report`` (``./report``)."""
    common = Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    if len(paths) > 1:
        common = common if common != Path(common.anchor) else Path.cwd()
    return common / "report"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lowlat.report",
        description="Paper-style report of finished runs (Tables 1-3, figures, sweep table).")
    ap.add_argument("paths", nargs="+", help="run folders (with results.json) or multirun folders")
    ap.add_argument("--out", type=Path, help="output folder (default: <run>/report, or "
                    "<common parent>/report for the sweep table)")
    ap.add_argument("--paper", help="paper column: " + ", ".join(load_paper()["papers"])
                    + ", none (default: from the run's data set and model)")
    ap.add_argument("--T", type=int, help="T of the per-layer figures (default: smallest "
                    "calibrated T)")
    a = ap.parse_args(argv)
    try:
        explicit, nested = find_runs(a.paths)
        for run in explicit:
            out = a.out if a.out and len(explicit) == 1 and not nested else (
                a.out / run.path.name if a.out else run.path / "report")
            print(write_report(run, out, a.paper, a.T))
        runs = explicit + nested
        if len(runs) > 1:
            for p in write_sweep(runs, a.out or _sweep_out(a.paths)):
                print(p)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
