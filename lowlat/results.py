"""The results of one experiment: ``results.json`` and ``results.csv``, written by stage ``eval``
only (one writer), anew on every run, so no row outlives the artifacts it was measured on.

Every row carries ``val_top1`` (the validation split: what sweeps, ablations and defaults are
chosen on) and ``top1`` (the test split: what the tables report).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lowlat.artifacts import read_json, write_text

CSV_COLUMNS = ["method", "T", "val_top1", "top1", "firing_rate", "firing_rate_net", "rmpe_share",
               "energy_ratio"]


def _mean(d: dict[str, float] | None) -> float | None:
    return sum(d.values()) / len(d) if d else None


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def write_results(run_dir: str | Path, rows: list[dict[str, Any]], summary: dict[str, Any],
                  complete: bool) -> dict:
    """Replace the experiment's results files with ``rows`` and ``summary``.

    ``complete=False`` marks a file written while evaluation is still going (a kill leaves the
    rows measured so far, flagged as incomplete).
    """
    run_dir = Path(run_dir)
    data = {**summary, "complete": complete,
            "rows": sorted(rows, key=lambda r: (r["method"], int(r["T"])))}
    write_text(run_dir / "results.json", json.dumps(data, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in data["rows"]:
        w.writerow([r["method"], int(r["T"]), _fmt(r.get("val_top1")), _fmt(r.get("top1")),
                     _fmt(_mean(r.get("firing_rate"))), _fmt(r.get("firing_rate_net")),
                     _fmt(_mean(r.get("rmpe_share"))), _fmt(r.get("energy_ratio"))])
    write_text(run_dir / "results.csv", buf.getvalue())
    return data


def rows_from_stats(method: str, stats, ann_macs: float | None, **extra: Any) -> list[dict]:
    """One row per T from a :class:`lowlat.simulate.SimStats` of the test split."""
    from lowlat.simulate import energy_ratio

    acc, fr, rm = stats.accuracy(), stats.firing_rates(), stats.rmpe_share()
    net = stats.network_firing_rate()
    rows = []
    for T in stats.timesteps:
        row = {"method": method, "T": T, "top1": acc[T], "firing_rate": fr.get(T),
               "firing_rate_net": net.get(T), "rmpe_share": rm.get(T), **extra}
        if fr.get(T):
            row["silent_layers"] = [k for k, v in fr[T].items() if v == 0]
        if ann_macs and T in stats.ops and stats.n:
            row["energy_ratio"] = energy_ratio(
                ann_macs, stats.ops[T] / stats.n, stats.first_ops[T] / stats.n)
            row["synops_per_sample"] = stats.ops[T] / stats.n
        rows.append(row)
    return rows


def objective_value(run_dir: str | Path, method: str = "lowlat", T: int = 4) -> float | None:
    """VALIDATION top-1 in [0, 1] of one (method, T) row: what a sweeper (Optuna, W&B) maximises.

    Falls back to the calibrated artifact's own validation top-1 when ``eval`` has not run.
    """
    run_dir = Path(run_dir)
    r = read_json(run_dir / "results.json", default={}) or {}
    row = next((x for x in r.get("rows", []) if x["method"] == method and int(x["T"]) == T), None)
    if row is not None and row.get("val_top1") is not None:
        return float(row["val_top1"])
    from lowlat.artifacts import ArtifactError, load_artifact, snn_name

    try:
        return float(load_artifact(run_dir / snn_name(T, method), "snn")["metrics"]["val_top1"])
    except (ArtifactError, KeyError):
        return None
