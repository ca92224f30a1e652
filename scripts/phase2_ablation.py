"""Measure the choices the paper leaves open in Phase II, on a finished run's ``qcann.pt``.

* LMPC: formula (eq. 13 as printed ``abs`` / sign-preserving ``signed``) x granularity
  (``neuron`` / ``channel``) x base potential (``zero`` / ``half``), against ``phase1``, ``opti``
  and ``opt`` at each T.
* LWC: the paper's SGD (momentum 0.9, lr 1e-4) against Adam at a few learning rates, after the
  default LMPC, with the per-layer MSE before/after.

    python scripts/phase2_ablation.py runs/cifar10_cpu --timesteps 2 4 --out results/

Writes ``phase2_ablation_<experiment>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from lowlat.artifacts import load_artifact, load_network
from lowlat.calibrate import CalibConfig, calibrate
from lowlat.methods import convert_qcann
from lowlat.simulate import evaluate_snn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--calib-samples", type=int, default=1024)
    ap.add_argument("--test-batches", type=int, default=None, help="limit the test set")
    ap.add_argument("--lwc-iterations", type=int, default=100)
    ap.add_argument("--lwc-batch", type=int, default=256)
    ap.add_argument("--skip-lwc", action="store_true")
    ap.add_argument("--skip-lmpc", action="store_true")
    ap.add_argument("--lwc-timesteps", type=int, nargs="*", default=None,
                    help="T for the LWC comparison (default: all --timesteps)")
    ap.add_argument("--base", default="half", help="LMPC base used in the LWC comparison")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    run = Path(args.run_dir)
    qc_art = load_artifact(run / "qcann.pt", "qcann")
    qcann = load_network(qc_art)
    dm = hydra.utils.instantiate(OmegaConf.create(qc_art["config"]["data"]))
    dm.setup()
    tf = lambda x: dm.transform_batch(x, train=False)  # noqa: E731
    test = list(itertools.islice(dm.test_dataloader(), args.test_batches))
    n = min(args.calib_samples, dm.train_size)
    xs = torch.cat([tf(x) for x, _ in dm.calibration_loader(n, 256)])
    exp = qc_art["config"].get("experiment_name", run.name)
    rows: list[dict] = []

    def acc(snn, T: int) -> float:
        return evaluate_snn(snn, test, [T], transform=tf, stats=False, progress=False).accuracy()[T]

    for T in args.timesteps:
        for m in ("phase1", "opti", "opt"):
            rows.append({"T": T, "method": m, "top1": acc(convert_qcann(qcann, m, T), T)})
            print(rows[-1], flush=True)
        rows.append({"T": T, "method": "unbiased",
                     "top1": acc(convert_qcann(qcann, "unbiased"), T)})
        combos = itertools.product(("abs", "signed"), ("neuron", "channel"),
                                   ("zero", "half", "unbiased"))
        for formula, gran, base in [] if args.skip_lmpc else combos:
            snn = convert_qcann(qcann, "unbiased" if base == "unbiased" else "phase1")
            t0 = time.time()
            calibrate(snn, qcann, xs, CalibConfig(T=T, lwc=False, formula=formula,
                                                  granularity=gran, base=base), progress=False)
            rows.append({"T": T, "method": "lmpc", "formula": formula, "granularity": gran,
                         "base": base, "top1": acc(snn, T), "seconds": time.time() - t0})
            print(rows[-1], flush=True)
        if args.skip_lwc or T not in (args.lwc_timesteps or args.timesteps):
            continue
        for opt, lr in (("sgd", 1e-4), ("sgd", 1e-2), ("adam", 1e-4), ("adam", 1e-3)):
            snn = convert_qcann(qcann, "unbiased" if args.base == "unbiased" else "phase1")
            t0 = time.time()
            reps = calibrate(snn, qcann, xs, CalibConfig(
                T=T, optimizer=opt, lr=lr, iterations=args.lwc_iterations, base=args.base,
                batch_size=args.lwc_batch), progress=False)
            gain = [r["mse_before_lwc"] - r["mse_after_lwc"] for r in reps]
            rows.append({"T": T, "method": "lmpc+lwc", "optimizer": opt, "lr": lr,
                         "iterations": args.lwc_iterations, "top1": acc(snn, T),
                         "seconds": time.time() - t0,
                         "lwc_mse_drop_mean": sum(gain) / len(gain),
                         "lwc_layers_kept": sum(bool(r["lwc_kept"]) for r in reps),
                         "layers": len(reps)})
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run": str(run), "experiment": exp, "qcann_top1": qc_art["metrics"]["test_top1"],
            "test_images": sum(len(y) for _, y in test), "calib_samples": n, "rows": rows}
    tag = "" if not (args.skip_lwc or args.skip_lmpc) else ("_lmpc" if args.skip_lwc else "_lwc")
    exp = f"{exp}{tag}"
    (out / f"phase2_ablation_{exp}.json").write_text(json.dumps(meta, indent=1))
    md = [f"# Phase II ablation: {exp} (QC-ANN top-1 {meta['qcann_top1']:.4f}, "
          f"{meta['test_images']} test images, {n} calibration images)", "",
          "| T | method | setting | top-1 | LWC MSE drop / layers kept |", "|---|---|---|---|---|"]
    for r in rows:
        setting = ", ".join(f"{k}={r[k]}" for k in ("formula", "granularity", "base", "optimizer",
                                                    "lr", "iterations") if k in r)
        lwc = (f"{r['lwc_mse_drop_mean']:.3g} / {r['lwc_layers_kept']}/{r['layers']}"
               if "layers" in r else "")
        md.append(f"| {r['T']} | {r['method']} | {setting} | {100 * r['top1']:.2f} | {lwc} |")
    (out / f"phase2_ablation_{exp}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
