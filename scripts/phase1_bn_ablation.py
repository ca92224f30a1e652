"""Phase I fine-tuning with BatchNorm training vs frozen: compare QC-ANNs on the VALIDATION split.

    python scripts/phase1_bn_ablation.py runs/cifar10_cpu runs/cifar10_cpu_bnfrozen \
        --out results/cifar10_cpu

Each folder holds a ``qcann.pt`` fine-tuned from the same ``ann.pt`` with ``phase1.freeze_bn``
false / true. Reads only what the artifacts recorded on the validation split (best epoch and the
selected weights' top-1), writes ``phase1_bn_ablation.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowlat.artifacts import QCANN, load_artifact


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders with qcann.pt")
    ap.add_argument("--out", default="results")
    a = ap.parse_args(argv)
    rows = []
    for r in a.runs:
        art = load_artifact(Path(r) / QCANN, "qcann")
        m, p1 = art["metrics"], art["config"]["phase1"]
        rows.append({"run": r, "freeze_bn": bool(p1.get("freeze_bn", False)),
                     "epochs": m["epochs"], "lr": p1["lr"], "val_top1": m["val_top1"],
                     "best_epoch": m["best_epoch"], "init_val_top1": m.get("init_val_top1"),
                     "ann_val_top1": m.get("ann_val_top1"),
                     "seconds_per_epoch": m.get("seconds_per_epoch")})
    best = max(rows, key=lambda r: r["val_top1"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "phase1_bn_ablation.json").write_text(json.dumps(
        {"split": "validation", "rows": rows, "chosen": best["freeze_bn"]}, indent=1))
    md = ["# Phase I: BatchNorm during QC-ANN fine-tuning (validation split)", "",
          "| phase1.freeze_bn | epochs | lr | QC-ANN val top-1 % | before fine-tuning % | "
          "ANN val top-1 % | best epoch |", "|---|---|---|---|---|---|---|"]
    pct = lambda v: "—" if v is None else f"{100 * v:.2f}"  # noqa: E731
    for r in rows:
        md.append(f"| {str(r['freeze_bn']).lower()} | {r['epochs']} | {r['lr']} | "
                  f"{pct(r['val_top1'])} | {pct(r['init_val_top1'])} | {pct(r['ann_val_top1'])} "
                  f"| {r['best_epoch']} |")
    md += ["", f"Higher validation top-1: `phase1.freeze_bn={str(best['freeze_bn']).lower()}`."]
    path = out / "phase1_bn_ablation.md"
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return path


if __name__ == "__main__":
    main()
