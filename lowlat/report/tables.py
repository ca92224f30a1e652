"""Markdown and CSV tables of one run: the paper's Tables 1-3 (ours / paper (difference)), all
our results on both splits, firing rates, and Phase II's per-layer MSE."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowlat.methods import CALIBRATED
from lowlat.report.paper import TABLE3_LABELS, TABLES, label, paper_value
from lowlat.report.runs import METHOD_ORDER, Run


def cell(ours: float | None, paper: float | None) -> str:
    """``ours / paper (ours − paper)`` in percent; "—" for what is missing."""
    if ours is None and paper is None:
        return "—"
    o = "—" if ours is None else f"{ours:.2f}"
    if paper is None:
        return f"{o} / —"
    diff = "" if ours is None else f" ({ours - paper:+.2f})"
    return f"{o} / {paper:.2f}{diff}"


def table_rows(run: Run, key: str | None, table: int) -> list[dict[str, Any]]:
    """Long-form cells of one paper table: method, T (None = ANN column), ours, paper."""
    _, methods, ts, extra = TABLES[table]
    out = []
    for m in (*methods, *extra):
        cells = [(None, run.ann_top1(m) if m in METHOD_ORDER else None,
                  paper_value(key, table, m, None, "ann_top1"))] if table == 3 else []
        cells += [(T, run.top1(m, T), paper_value(key, table, m, T)) for T in ts]
        if any(o is not None or p is not None for _, o, p in cells[1 if table == 3 else 0:]):
            out += [{"table": table, "method": m, "T": T, "ours": o, "paper": p}
                    for T, o, p in cells]
    return out


def table_markdown(run: Run, key: str | None, table: int) -> str:
    title, methods, ts, extra = TABLES[table]
    rows = table_rows(run, key, table)
    ann_ours, ann_paper = run.ann_top1("phase1"), paper_value(key, table, "ann", None, "ann_top1")
    head = (f"### {title}\n\nCells: ours / paper (difference), top-1 % on the "
            f"{run.test_subset()}. Rows marked (lowlat) are lowlat's own methods, shown beside "
            "the paper's rows, not in their place.")
    if table in (1, 2):
        head += f" ANN: {cell(ann_ours, ann_paper)}."
    if key and not any(r["paper"] is not None for r in rows):
        head += f" The paper prints no Table {table} figures for {key}."
    cols = (["ANN"] if table == 3 else []) + [f"T={T}" for T in ts]
    lines = [head, "", "| Method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in (*methods, *extra):
        cells = [r for r in rows if r["method"] == m]
        if cells:
            name = TABLE3_LABELS.get(m, label(m)) if table == 3 else label(m)
            lines.append(f"| {name} | " + " | ".join(cell(r["ours"], r["paper"])
                                                       for r in cells) + " |")
    if len(lines) == 4:
        lines.append("| (no rows) |" + " — |" * len(cols))
    return "\n".join(lines) + "\n"


def calibration_markdown(run: Run) -> str:
    """Per-layer MSE of each calibrated SNN artifact (``metrics["layers"]``), if present."""
    import torch

    arts = []
    for f in run.path.glob("snn_T*.pt"):
        try:
            arts.append((f, torch.load(f, map_location="cpu", weights_only=True)))
        except Exception:  # noqa: BLE001 - a foreign file is skipped, not fatal
            continue
    order = {m: i for i, m in enumerate(CALIBRATED)}
    parts = []
    for f, art in sorted(arts, key=lambda a: (int(a[1].get("T", 0)),
                                              order.get(a[1].get("method"), 9))):
        layers = (art.get("metrics") or {}).get("layers") or []
        keys = ["mse_start", "mse_after_lmpc", "mse_after_lwc", "mse_end"]
        keys = [k for k in keys if any(k in r for r in layers)]
        if not layers:
            continue
        lines = [f"**{art.get('method')} T={art.get('T')}** (`{f.name}`)", "",
                 "| layer | " + " | ".join(keys) + " | LWC kept |", "|---" * (len(keys) + 2) + "|"]
        for r in layers:
            vals = " | ".join("—" if r.get(k) is None else f"{r[k]:.4g}" for k in keys)
            lines.append(f"| {r['layer']} | {vals} | {r.get('lwc_kept', '—')} |")
        parts.append("\n".join(lines))
    if not parts:
        return ""
    return "### Phase II: per-layer rate MSE\n\n" + "\n\n".join(parts) + "\n"


def all_results_markdown(run: Run) -> str:
    """Every (method, T) we have, ours only, on both splits, plus the network-wide firing rate."""
    ts = run.timesteps()
    head = "| Method | " + " | ".join(f"T={T}" for T in ts) + " |"
    rule = "|---" * (len(ts) + 1) + "|"
    out = []
    for split, title in (("test", f"top-1 % on the {run.test_subset()}"),
                         ("val", "top-1 % on the validation split (what choices are made on)")):
        lines = [f"### All results ({title})", "", head, rule]
        for m in run.methods():
            vals = [run.top1(m, T, split) for T in ts]
            lines.append(f"| {label(m)} | " + " | ".join(
                "—" if v is None else f"{v:.2f}" for v in vals) + " |")
        out.append("\n".join(lines) + "\n")
    lines = ["### Network-wide firing rate (spikes / neuron / step, test split; paper Sec. 4.4)",
             "", head, rule]
    for m in run.methods():
        vals = [(run.row(m, T) or {}).get("firing_rate_net") for T in ts]
        lines.append(f"| {label(m)} | " + " | ".join(
            "—" if v is None else f"{v:.4f}" for v in vals) + " |")
    out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def report_markdown(run: Run, key: str | None, why: str = "",
                    figures: Sequence[Path] = ()) -> str:
    """The whole ``report.md``: a summary of the run, Tables 1-3, all results, Phase II."""
    res = run.results
    data = res.get("dataset") or {}
    pct = {k: f"{100 * res[k]:.2f}" for k in ("ann_top1", "qcann_top1", "ratenorm_ann_top1")
           if res.get(k) is not None}
    out = [f"# lowlat report: `{run.path}`", "",
           f"- data / model: {run.dataset() or data.get('_target_', '?')} / {run.network()}",
           f"- paper column: {why or key}",
           "- accuracies (%, test split): " + ", ".join(f"{k} {v}" for k, v in pct.items()),
           f"- splits: tables report the {run.test_subset()}; best epochs, defaults, ablations "
           "and sweeps were chosen on the validation split (val_top1)", ""]
    out += [table_markdown(run, key, t) for t in TABLES]
    out.append(all_results_markdown(run))
    if cal := calibration_markdown(run):
        out.append(cal)
    if figures:
        out.append("### Figures\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n")
    return "\n".join(out)


def tables_csv(run: Run, key: str | None) -> str:
    """Tables 1-3 in long form: ``table, method, T, ours, paper, diff``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "method", "T", "ours", "paper", "diff"])
    for t in TABLES:
        for r in table_rows(run, key, t):
            o, p = r["ours"], r["paper"]
            w.writerow([t, r["method"], "ANN" if r["T"] is None else r["T"],
                        "" if o is None else f"{o:.2f}", "" if p is None else f"{p:.2f}",
                        "" if o is None or p is None else f"{o - p:.2f}"])
    return buf.getvalue()
