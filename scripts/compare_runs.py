"""Runs side by side on the VALIDATION split: one column per run folder (e.g. one QC-ANN per L
and shift), one row per (method, T), from what the stages recorded: the QC-ANN's ``val_top1``,
each calibrated artifact's ``val_top1`` (and its recipe), and ``val_top1`` of ``results.json``.

    python scripts/compare_runs.py runs/cifar10_cpu runs/c10_L4s05 --name L \\
        --out results/cifar10_cpu

Writes ``levers_<name>.json`` and ``.md``. Reads no data and never the test split's figures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from lowlat.artifacts import QCANN, load_artifact, read_json


def collect(run: Path) -> dict:
    qc = load_artifact(run / QCANN, "qcann")
    col = {"run": str(run), "levels": qc["act"]["kwargs"]["levels"],
           "shift": qc["act"]["kwargs"]["shift"],
           "lambda": qc["config"]["phase1"].get("granularity", "layer"),
           "phase1_epochs": qc["metrics"].get("epochs"),
           "phase1_kd": float(qc["config"]["phase1"].get("kd", 0.0)),
           "phase1_optimizer": qc["config"]["phase1"].get("optimizer", "sgd"),
           "qcann_val_top1": qc["metrics"]["val_top1"],
           "cells": {}}
    res = read_json(run / "results.json", default={}) or {}
    for r in res.get("rows", []):
        col["cells"][f"{r['method']}|{r['T']}"] = {"val_top1": r["val_top1"],
                                                   "val_images": res.get("val_images")}
    for path in sorted(p for p in run.glob("snn_T*_*.pt") if not p.name.endswith(".partial.pt")):
        a = load_artifact(path, "snn")
        m, rec = a["metrics"], a.get("recipe") or {}
        col["cells"][f"{a['method']}|{a['T']}"] = {
            "val_top1": m["val_top1"], "val_images": m.get("val_images"),
            "calib_seconds": m.get("calib_seconds"),
            "calib_cpu_seconds": m.get("calib_cpu_seconds"), "lwc_kept": m.get("lwc_kept"),
            "val_top1_with_lwc": m.get("val_top1_with_lwc"),
            "val_top1_without_lwc": m.get("val_top1_without_lwc"),
            "val_top1_before_ft": m.get("val_top1_before_ft"),
            "recipe": {k: rec.get(k) for k in ("start", "formula", "granularity",
                                               "lmpc_iterations", "optimizer", "accept",
                                               "iterations", "target", "finetune",
                                               "surrogate") if k in rec}}
        if rec.get("finetune"):
            ft = next((r for r in m.get("layers", []) if r.get("layer") == "finetune"), {})
            col["finetune"] = {**rec["finetune"], "lmpc_iterations": rec.get("lmpc_iterations"),
                               "fused": bool(ft.get("ft_fused")),  # what ran (not fingerprinted)
                               "channels_last": bool(ft.get("ft_channels_last"))}
    return col


def _cell(x: dict) -> str:
    out = f"{100 * x['val_top1']:.2f}"
    if x.get("val_top1_before_ft") is not None:
        out += f" (from {100 * x['val_top1_before_ft']:.2f})"
    if x.get("val_top1_with_lwc") is not None:  # accept=val: which pass was kept
        w, wo = 100 * x["val_top1_with_lwc"], 100 * x["val_top1_without_lwc"]
        out += (f" (LWC {'kept' if x['lwc_kept'] else 'discarded'}: with {w:.2f}, without "
                f"{wo:.2f}; LWC surrogate {x['recipe'].get('surrogate', 'eq15')})")
    if x.get("calib_cpu_seconds") is not None:
        out += f" ({x['calib_cpu_seconds']:.0f} CPU s)"
    elif x.get("calib_seconds") is not None:
        out += f" ({x['calib_seconds']:.0f} s)"
    return out


def _label(c: dict) -> str:
    """Column header: run folder, QC-ANN and (for a fine-tuned run) the fine-tune settings."""
    parts = [f"L={c['levels']}", f"s={c['shift']}", f"λ per {c['lambda']}",
             f"{c['phase1_epochs']} epochs"]
    if c.get("phase1_kd"):  # Phase I distilled from the ReLU ANN (absent: made before kd)
        parts.append(f"Phase I kd {c['phase1_kd']}")
    if c.get("phase1_optimizer", "sgd") != "sgd":
        parts.append(f"Phase I {c['phase1_optimizer']}")
    if ft := c.get("finetune"):
        parts += [f"LMPC ×{ft['lmpc_iterations']}", f"fine-tune {ft['iterations']} it",
                  f"batch {ft['batch_size']}", f"lr {ft['lr']}", f"kd {ft['kd']}"]
        if ft.get("warmup"):  # recorded only when set
            parts.append(f"warm-up {ft['warmup']}")
        if ft.get("seed") is not None:  # recorded only when set
            parts.append(f"fine-tune seed {ft['seed']}")
        if ft.get("neurons"):
            parts.append("neurons")
        if "precision" in ft:  # recorded only when not fp32
            parts.append(ft["precision"])
        if ft.get("fused"):
            parts.append("compiled neurons")
        if ft.get("channels_last"):
            parts.append("channels-last")
        if ft.get("frozen"):  # recorded only when set
            parts.append(f"first {ft['frozen']} layers frozen")
        if ft.get("backward", "bptt") != "bptt":  # recorded only when set
            parts.append(f"{ft['backward']} backward")
        parts.append(f"surrogate {ft.get('surrogate', 'eq15')}")  # absent: made before scaled
    return f"{Path(c['run']).name} ({', '.join(parts)})"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default="results/cifar10_cpu")
    args = ap.parse_args(argv)
    cols = [collect(Path(r)) for r in args.runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "scripts/compare_runs.py",
                          *(sys.argv[1:] if argv is None else argv)])
    (out / f"levers_{args.name}.json").write_text(json.dumps(
        {"split": "validation", "command": command, "columns": cols}, indent=1))
    keys = sorted({k for c in cols for k in c["cells"]},
                  key=lambda k: (k.split("|")[0], int(k.split("|")[1])))
    head = [_label(c) for c in cols]
    md = [f"# Runs side by side: {args.name} (validation top-1 %)", "", f"`{command}`", "",
          "| | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols),
          "| QC-ANN | " + " | ".join(f"{100 * c['qcann_val_top1']:.2f}" for c in cols) + " |"]
    for k in keys:
        m, T = k.split("|")
        cells = []
        for c in cols:
            x = c["cells"].get(k)
            cells.append("—" if x is None else _cell(x))
        md.append(f"| {m} T={T} | " + " | ".join(cells) + " |")
    md += ["", "Calibrated cells give the calibration CPU seconds (wall seconds where an "
           "artifact predates CPU timing), for a fine-tuned row its top-1 before the "
           "fine-tune, and for `accept: val` whether the LWC pass was kept (top-1 with and "
           "without it); recipes are in the JSON file and in each `snn_T*_*.pt`."]
    path = out / f"levers_{args.name}.md"
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return path


if __name__ == "__main__":
    main()
