"""Several runs side by side: one ``sweep.md``/``sweep.csv`` keyed by the overrides that differ
between the jobs, on the validation split (what sweeps choose on)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowlat.report.runs import METHOD_ORDER, Run


def _parse_overrides(ov: Sequence[str]) -> dict[str, str]:
    """``key=value`` overrides; ``stage`` (what ran last, not how) is dropped."""
    pairs = dict(o.lstrip("+~").split("=", 1) for o in ov if "=" in o)
    pairs.pop("stage", None)
    return pairs


def sweep_rows(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """Long-form rows ``run, <differing overrides>, method, T, val_top1``; (keys, rows)."""
    parsed = [_parse_overrides(r.overrides) for r in runs]
    keys = sorted({k for p in parsed for k in p})
    keys = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    rows = []
    for r, p in zip(runs, parsed, strict=True):
        for row in sorted(r.results.get("rows", []), key=lambda x: (
                METHOD_ORDER.index(x["method"]) if x["method"] in METHOD_ORDER else 99, x["T"])):
            rows.append({"run": r.name or str(r.path), **{k: p.get(k, "") for k in keys},
                         "method": row["method"], "T": int(row["T"]),
                         "val_top1": 100.0 * float(row.get("val_top1", row["top1"]))})
    return keys, rows


def write_sweep(runs: Sequence[Run], out: Path) -> tuple[Path, Path]:
    """``sweep.csv`` (long form) and ``sweep.md`` (one line per run and method, T as columns)."""
    keys, rows = sweep_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["run", *keys, "method", "T", "val_top1"])
    w.writeheader()
    w.writerows({**r, "val_top1": f"{r['val_top1']:.2f}"} for r in rows)
    (out / "sweep.csv").write_text(buf.getvalue())
    ts = sorted({r["T"] for r in rows})
    lines = [f"# Sweep: {len(runs)} runs", "", "VALIDATION top-1 % per method and T (sweeps choose "
             "on validation; the test split is for the final table only); columns before "
             "`method` are the overrides that differ between runs.", "",
             "| " + " | ".join(["run", *keys, "method", *(f"T={T}" for T in ts)]) + " |",
             "|---" * (len(keys) + 2 + len(ts)) + "|"]
    groups: dict[tuple, dict[int, float]] = {}
    for r in rows:
        groups.setdefault((r["run"], *(r[k] for k in keys), r["method"]), {})[r["T"]] = (
            r["val_top1"])
    for g, vals in groups.items():
        lines.append("| " + " | ".join([*(f"`{v}`" if v != "" else "" for v in g[:-1]), g[-1],
                                        *(f"{vals[T]:.2f}" if T in vals else "—" for T in ts)])
                     + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    return out / "sweep.md", out / "sweep.csv"
