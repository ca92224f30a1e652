"""lowlat against SpikingJelly's channel-wise converter on the same ReLU ANN, T = 1 ... 64.

The peer: SpikingJelly 2.0's ``RateCodingRecipe(mode='99.9%', channel_wise=True,
half_threshold=True)`` (99.9th-percentile threshold per output channel over its calibration
batches, v(0) = θ/2), converted and simulated by SpikingJelly itself, step by step. Beside it:

* ``channelnorm``: lowlat's own implementation of the same recipe (a check that the baseline
  row of lowlat's method table is the peer's method);
* ``lowlat-cn`` (method table): the same start calibrated by lowlat, per layer (signed LMPC per
  channel), at every T, on ``--calib-samples`` training images: its calibration CPU seconds are
  recorded per T;
* ``unbiased`` and ``signed`` (method table) converted from the run folder's QC-ANN ``qcann.pt``,
  if there is one, at every T (no calibration; ``signed`` sends ternary spikes);
* every calibrated artifact ``snn_T<T>_<method>.pt`` found in the run folder at its T.

"lowlat best" at each T is the lowlat row with the highest VALIDATION top-1; the table reports
both splits (the test split only for the final figures, on ``--images`` images of each split).

    python scripts/compare_spikingjelly.py runs/cifar10_cpu --images 2560 --out results/cifar10_cpu
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from lowlat.artifacts import ANN, QCANN, datamodule_of, load_artifact, load_network
from lowlat.calibrate import CalibConfig, calibrate
from lowlat.convert import activation_stats
from lowlat.methods import METHODS, calibration_pair, convert, load_snn, recipe
from lowlat.simulate import evaluate_snn

TIMESTEPS = [1, 2, 4, 8, 16, 32, 64]


@torch.no_grad()
def sj_accuracy(sj: nn.Module, batches: list[tuple[Tensor, Tensor]], tf,
                timesteps: list[int]) -> dict[int, float]:
    """Top-1 of SpikingJelly's network at every T from one run of max(T) steps."""
    from spikingjelly.activation_based import functional

    correct, n = dict.fromkeys(timesteps, 0), 0
    for x, y in batches:
        x = tf(x)
        functional.reset_net(sj)
        total = torch.zeros(())
        for t in range(1, max(timesteps) + 1):
            total = total + sj(x)
            if t in correct:
                correct[t] += int((total.argmax(1) == y).sum())
        n += len(y)
    return {T: c / n for T, c in correct.items()}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--timesteps", type=int, nargs="+", default=TIMESTEPS)
    ap.add_argument("--images", type=int, default=2560, help="images of each split")
    ap.add_argument("--stat-images", type=int, default=5120)
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--lmpc-iterations", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from spikingjelly.activation_based import ann2snn

    run = Path(args.run_dir)
    art = load_artifact(run / ANN, "ann")
    ann = load_network(art)
    dm = datamodule_of(art)
    tf = lambda x: dm.transform_batch(x, train=False)  # noqa: E731
    nb = max(1, args.images // dm.batch_size)
    splits = {"val": list(itertools.islice(dm.val_dataloader(), nb)),
              "test": list(itertools.islice(dm.test_dataloader(), nb))}
    n_stat = min(args.stat_images, dm.train_size)
    calib = [tf(x) for x, _ in dm.calibration_loader(n_stat, dm.batch_size)]
    ts = sorted(args.timesteps)
    rows: list[dict] = []
    out = Path(args.out or run)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run": str(run), "images_per_split": {k: sum(len(y) for _, y in v)
                                                  for k, v in splits.items()},
            "stat_images": n_stat, "calib_samples": args.calib_samples,
            "lmpc_iterations": args.lmpc_iterations, "rows": rows,
            "chosen_on": "validation (lowlat best per T)", "reported": "test"}

    def add(method: str, acc: dict[str, dict[int, float]], cost: dict | None = None) -> None:
        """``cost``: {T: {"calib_seconds": wall, "calib_cpu_seconds": process CPU}}."""
        for T in acc["val"]:
            rows.append({"method": method, "T": T, "val_top1": acc["val"][T],
                         "top1": acc["test"][T], **((cost or {}).get(T) or {})})
        print(method, {T: round(100 * a, 2) for T, a in acc["test"].items()}, flush=True)
        write(out, meta)

    sj_recipe = ann2snn.RateCodingRecipe(dataloader=calib, mode="99.9%", channel_wise=True,
                                         half_threshold=True)
    sj = ann2snn.Converter(sj_recipe).convert(copy.deepcopy(ann)).eval()
    add("spikingjelly_channel", {k: sj_accuracy(sj, v, tf, ts) for k, v in splits.items()})

    def ours(snn, T_list) -> dict[str, dict[int, float]]:
        return {k: evaluate_snn(snn, v, T_list, transform=tf, stats=False,
                                progress=False).accuracy() for k, v in splits.items()}

    stats = activation_stats(ann, calib)
    add("channelnorm", ours(convert("channelnorm", ann, stats=stats), ts))
    xs = torch.cat(calib)[:args.calib_samples]
    for T in ts:
        snn, target = calibration_pair("channelnorm", ann, stats)
        t0, c0 = time.time(), time.process_time()
        r = recipe("lowlat-cn")
        calibrate(snn, target, xs, CalibConfig(T=T, lmpc=r.lmpc, lwc=r.lwc, formula=r.formula,
                                               granularity=r.granularity,
                                               lmpc_iterations=args.lmpc_iterations),
                  progress=False)
        add("lowlat-cn", ours(snn, [T]), {T: {"calib_seconds": round(time.time() - t0, 1),
                                              "calib_cpu_seconds": round(time.process_time()
                                                                         - c0, 1)}})
    if (run / QCANN).is_file():
        qc = load_artifact(run / QCANN, "qcann")
        if qc["arch"] != art["arch"]:
            raise SystemExit(f"{run / QCANN} and {run / ANN} describe different networks")
        add("unbiased", ours(convert("unbiased", load_network(qc)), ts))
        add("signed", ours(convert("signed", load_network(qc)), ts))  # ternary spikes
    for path in sorted(p for p in run.glob("snn_T*_*.pt") if not p.name.endswith(".partial.pt")):
        a = load_artifact(path, "snn")
        if int(a["T"]) in ts:
            m = a["metrics"]
            add(str(a["method"]), ours(load_snn(a), [int(a["T"])]),
                {int(a["T"]): {k: m[k] for k in ("calib_seconds", "calib_cpu_seconds")
                               if m.get(k) is not None}})
    return write(out, meta)


def write(out: Path, meta: dict) -> Path:
    rows = meta["rows"]
    ts = sorted({r["T"] for r in rows})
    best: dict[int, dict] = {}
    for r in rows:  # lowlat's own rows only: neither the peer nor the paper's rows
        m = METHODS.get(r["method"])
        own = m is not None and not (m.paper or m.peer)
        if own and (r["T"] not in best or r["val_top1"] > best[r["T"]]["val_top1"]):
            best[r["T"]] = r
    meta["lowlat_best"] = {T: {"method": b["method"], "top1": b["top1"],
                               "val_top1": b["val_top1"]} for T, b in best.items()}
    (out / "compare_spikingjelly.json").write_text(json.dumps(meta, indent=1))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["T"]): r for r in rows}
    n = meta["images_per_split"]
    md = [f"# lowlat vs SpikingJelly channel-wise converter ({meta['run']})", "",
          f"Top-1 % on the first {n['test']} test images (validation, {n['val']} images, in "
          "brackets); lowlat best = lowlat's own row (not the paper's) with the highest "
          "validation top-1 at that T.",
          "", "| method | " + " | ".join(f"T={T}" for T in ts) + " |",
          "|---|" + "---|" * len(ts)]
    for m in methods:
        md.append(f"| {m} | " + " | ".join(
            f"{100 * cell[m, T]['top1']:.2f} ({100 * cell[m, T]['val_top1']:.2f})"
            if (m, T) in cell else "—" for T in ts) + " |")
    md.append("| **lowlat best** | " + " | ".join(
        f"**{100 * best[T]['top1']:.2f}** ({best[T]['method']})" if T in best else "—"
        for T in ts) + " |")
    sec = [r for r in rows if r.get("calib_seconds") is not None]
    if sec:
        md += ["", "Calibration seconds, process CPU (wall): " + ", ".join(
            f"{r['method']} T={r['T']}: " + (f"{r['calib_cpu_seconds']:.0f} "
                                             if r.get("calib_cpu_seconds") is not None else "? ")
            + f"({r['calib_seconds']:.0f})" for r in sec)]
    path = out / "compare_spikingjelly.md"
    path.write_text("\n".join(md) + "\n")
    return path


if __name__ == "__main__":
    main()
