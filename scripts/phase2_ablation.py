"""Measure the choices the paper leaves open in Phase II, on the VALIDATION split only.

Every figure here chooses a default of ``phase2.lowlat``; the test split is never read (it is for
the final table only, stage ``eval``).

* LMPC: formula (eq. 13 as printed ``abs`` / sign-preserving ``signed``) x granularity
  (``neuron`` / ``channel``) x start (``phase1`` v(0) = s·θ / ``opti`` θ/2 / ``unbiased``),
  against the uncalibrated ``phase1``, ``opti``, ``opt`` and ``unbiased`` at each T.
* LWC: optimizer and learning rate (the paper's SGD with momentum 0.9 against Adam) x accept
  rule (``always``: the paper keeps every update / ``mse``: keep a layer's update only if its
  rate MSE fell), after the default lowlat LMPC, with the per-layer MSE before/after.

    python scripts/phase2_ablation.py runs/cifar10_cpu --timesteps 2 4 --out results/cifar10_cpu

Writes ``phase2_ablation_<experiment>[_lmpc|_lwc].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from lowlat.artifacts import QCANN, datamodule_of, load_artifact, load_network
from lowlat.calibrate import CalibConfig, calibrate
from lowlat.methods import START_SOURCE, STARTS, convert
from lowlat.simulate import evaluate_snn


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--calib-samples", type=int, default=1024)
    ap.add_argument("--val-batches", type=int, default=None, help="limit the validation split")
    ap.add_argument("--lwc-iterations", type=int, default=100)
    ap.add_argument("--lwc-batch", type=int, default=256)
    ap.add_argument("--skip-lwc", action="store_true")
    ap.add_argument("--skip-lmpc", action="store_true")
    ap.add_argument("--lwc-timesteps", type=int, nargs="*", default=None,
                    help="T for the LWC comparison (default: all --timesteps)")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    qc_art = load_artifact(run / QCANN, "qcann")
    qcann = load_network(qc_art)
    dm = datamodule_of(qc_art)
    tf = lambda x: dm.transform_batch(x, train=False)  # noqa: E731
    val = list(itertools.islice(dm.val_dataloader(), args.val_batches))
    n = min(args.calib_samples, dm.train_size)
    xs = torch.cat([tf(x) for x, _ in dm.calibration_loader(n, 256)])
    exp = qc_art["config"].get("experiment_name", run.name)
    rows: list[dict] = []

    def acc(snn, T: int) -> float:
        return evaluate_snn(snn, val, [T], transform=tf, stats=False, progress=False).accuracy()[T]

    def add(row: dict) -> None:
        rows.append(row)
        print(row, flush=True)

    for T in args.timesteps:
        for m in ("phase1", "opti", "opt", "unbiased"):
            add({"T": T, "method": m, "val_top1": acc(convert(m, qcann, T=T), T)})
        qc_starts = tuple(s for s in STARTS if START_SOURCE[s] == "qcann")  # from the QC-ANN
        combos = itertools.product(("abs", "signed"), ("neuron", "channel"), qc_starts)
        for formula, gran, start in [] if args.skip_lmpc else combos:
            snn = STARTS[start](qcann)
            t0 = time.time()
            calibrate(snn, qcann, xs, CalibConfig(T=T, lwc=False, formula=formula,
                                                  granularity=gran), progress=False)
            add({"T": T, "method": "lmpc", "formula": formula, "granularity": gran,
                 "start": start, "val_top1": acc(snn, T), "seconds": time.time() - t0})
        if args.skip_lwc or T not in (args.lwc_timesteps or args.timesteps):
            continue
        lwc = (("sgd", 1e-4, "always"), ("sgd", 1e-2, "always"), ("adam", 1e-4, "always"),
               ("adam", 1e-4, "mse"), ("adam", 1e-3, "mse"))
        for opt, lr, accept in lwc:
            snn = STARTS["opti"](qcann)
            t0 = time.time()
            reps = calibrate(snn, qcann, xs, CalibConfig(
                T=T, optimizer=opt, lr=lr, accept=accept, iterations=args.lwc_iterations,
                batch_size=args.lwc_batch), progress=False)
            gain = [r["mse_before_lwc"] - r["mse_after_lwc"] for r in reps]
            add({"T": T, "method": "lowlat", "optimizer": opt, "lr": lr, "accept": accept,
                 "iterations": args.lwc_iterations, "val_top1": acc(snn, T),
                 "seconds": time.time() - t0, "lwc_mse_drop_mean": sum(gain) / len(gain),
                 "lwc_layers_kept": sum(bool(r["lwc_kept"]) for r in reps), "layers": len(reps)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run": str(run), "experiment": exp, "split": "validation",
            "qcann_val_top1": qc_art["metrics"].get("val_top1"),
            "val_images": sum(len(y) for _, y in val), "calib_samples": n, "rows": rows}
    tag = "" if not (args.skip_lwc or args.skip_lmpc) else ("_lmpc" if args.skip_lwc else "_lwc")
    exp = f"{exp}{tag}"
    (out / f"phase2_ablation_{exp}.json").write_text(json.dumps(meta, indent=1))
    qv = meta["qcann_val_top1"]
    md = [f"# Phase II ablation: {exp} (validation split, {meta['val_images']} images; "
          f"QC-ANN validation top-1 {'?' if qv is None else f'{100 * qv:.2f}'} %; "
          f"{n} calibration images from the training split)", "",
          "| T | method | setting | val top-1 % | LWC MSE drop / layers kept | seconds |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        setting = ", ".join(f"{k}={r[k]}" for k in ("formula", "granularity", "start",
                                                    "optimizer", "lr", "accept", "iterations")
                            if k in r)
        lwc = (f"{r['lwc_mse_drop_mean']:.3g} / {r['lwc_layers_kept']}/{r['layers']}"
               if "layers" in r else "")
        sec = f"{r['seconds']:.0f}" if "seconds" in r else ""
        md.append(f"| {r['T']} | {r['method']} | {setting} | {100 * r['val_top1']:.2f} | {lwc} "
                  f"| {sec} |")
    path = out / f"phase2_ablation_{exp}.md"
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return path


if __name__ == "__main__":
    main()
