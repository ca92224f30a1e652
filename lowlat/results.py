"""The results table of one experiment: ``results.csv`` (method,T,top1,...) and ``results.json``.

Stages add rows keyed by (method, T); a rerun replaces its own rows and leaves the others.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lowlat.artifacts import read_json, write_text

CSV_COLUMNS = ["method", "T", "top1", "firing_rate", "rmpe_share", "energy_ratio"]


def _mean(d: dict[str, float] | None) -> float | None:
    return sum(d.values()) / len(d) if d else None


def update_results(run_dir: str | Path, rows: list[dict[str, Any]], **summary: Any) -> dict:
    """Merge ``rows`` and top-level ``summary`` keys into the experiment's results files."""
    run_dir = Path(run_dir)
    data = read_json(run_dir / "results.json", default={"rows": []})
    new_keys = {(r["method"], int(r["T"])) for r in rows}
    kept = [r for r in data["rows"] if (r["method"], int(r["T"])) not in new_keys]
    data["rows"] = sorted(kept + rows, key=lambda r: (r["method"], int(r["T"])))
    data.update({k: v for k, v in summary.items() if v is not None})
    write_text(run_dir / "results.json", json.dumps(data, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in data["rows"]:
        fr, rm = _mean(r.get("firing_rate")), _mean(r.get("rmpe_share"))
        w.writerow([r["method"], int(r["T"]), f"{r['top1']:.6f}",
                    "" if fr is None else f"{fr:.6f}", "" if rm is None else f"{rm:.6f}",
                    "" if r.get("energy_ratio") is None else f"{r['energy_ratio']:.6f}"])
    write_text(run_dir / "results.csv", buf.getvalue())
    return data


def rows_from_stats(method: str, stats, ann_macs: float | None, **extra: Any) -> list[dict]:
    """One row per T from a :class:`lowlat.simulate.SimStats`."""
    from lowlat.simulate import energy_ratio

    acc, fr, rm = stats.accuracy(), stats.firing_rates(), stats.rmpe_share()
    rows = []
    for T in stats.timesteps:
        row = {"method": method, "T": T, "top1": acc[T], "firing_rate": fr.get(T),
               "rmpe_share": rm.get(T), **extra}
        if ann_macs and T in stats.ops and stats.n:
            row["energy_ratio"] = energy_ratio(
                ann_macs, stats.ops[T] / stats.n, stats.first_ops[T] / stats.n)
            row["synops_per_sample"] = stats.ops[T] / stats.n
        rows.append(row)
    return rows
