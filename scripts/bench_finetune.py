"""Seconds per ``lowlat-ft`` training step, side by side: plain, fused, bf16, cheaper backwards.

Runs the real fine-tune loop (``lowlat.finetune.finetune``, validation stubbed out) on a copy of
a calibrated SNN artifact, with its run's ReLU ANN as the teacher, on the augmented training
batches stage phase2 feeds it (data loading included). The variants alternate, ``--repeats``
times each, so drift in the machine's load hits both; the table gives the median wall and
process-CPU seconds a step and their ratio. Accuracy is not measured here: compare the
``val_top1`` of two runs of stage phase2 (README, "Lever 8").

    python scripts/bench_finetune.py runs/c10_L2s05_e10 --timesteps 2 4 --out results/bench_finetune
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from lowlat.artifacts import datamodule_of, load_artifact, load_network, snn_name
from lowlat.finetune import FinetuneConfig, finetune
from lowlat.methods import load_snn
from lowlat.stages.phase2 import train_batches

VARIANTS = {  # FinetuneConfig settings of each variant, every one named (the defaults move)
    "plain": {"precision": "fp32", "fused": False},  # float32, the autograd graph of the neurons
    "bf16": {"precision": "bf16", "fused": False},
    "fused": {"precision": "fp32", "fused": True},  # compiled neuron kernels (lowlat.fused)
    "fused+bf16": {"precision": "bf16", "fused": True},
    # torch.channels_last weights and activations (the neuron kernels read it as it lies)
    "fused+channels_last": {"precision": "fp32", "fused": True, "channels_last": True},
    # a frozen prefix (phase2.finetune.frozen) changes what is learnt, not only how: its
    # accuracy is a validation run of its own (README "Lever 8")
    "fused+frozen2": {"precision": "fp32", "fused": True, "frozen": 2},
    "fused+frozen4": {"precision": "fp32", "fused": True, "frozen": 4},
    "fused+kd0": {"precision": "fp32", "fused": True, "kd": 0.0},  # no teacher forward
    # the layers between the neurons backward on time averages (lowlat.ratebackward)
    "fused+rate": {"precision": "fp32", "fused": True, "backward": "rate"},
    "fused+rate_weights": {"precision": "fp32", "fused": True, "backward": "rate_weights"},
}


def time_steps(snn, teacher, T: int, variant: str, steps: int, batches: Iterator,
               batch: int) -> tuple[float, float, bool]:
    """(wall, process-CPU) seconds per step over ``steps`` steps after one warm-up step, and
    whether the compiled neuron kernels ran (the fine-tune's own report)."""

    def run(n: int) -> bool:
        cfg = FinetuneConfig(iterations=n, batch_size=batch, eval_every=n + 1, neurons=True,
                             **VARIANTS[variant])
        rep = finetune(copy.deepcopy(snn), batches, T, cfg, lambda s: 0.0, teacher=teacher,
                       progress=False, start=0.0)
        return rep["ft_fused"]

    run(1)
    w, c = time.perf_counter(), time.process_time()
    ran_fused = run(steps)
    return (time.perf_counter() - w) / steps, (time.process_time() - c) / steps, ran_fused


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder with ann.pt and snn_T<T>_<method>.pt")
    ap.add_argument("--method", default="lowlat-ft", help="artifact to start from")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--variants", nargs="+", default=["plain", "fused"],
                    choices=list(VARIANTS), help="the first is the baseline of the ratios")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the fused kernels: Triton)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_finetune"))
    args = ap.parse_args(argv)
    ann = load_artifact(args.run / "ann.pt", "ann")
    dev = torch.device(args.device)
    teacher = load_network(ann).eval().to(dev)
    batches = train_batches(datamodule_of(ann), args.batch, dev)
    base, rows = args.variants[0], []
    for T in args.timesteps:
        snn = load_snn(load_artifact(args.run / snn_name(T, args.method), "snn")).to(dev)
        for v in args.variants:  # compile the fused kernels before any timing
            time_steps(snn, teacher, T, v, 1, batches, args.batch)
        times: dict[str, list[tuple[float, float, bool]]] = {v: [] for v in args.variants}
        for _ in range(args.repeats):
            for v in args.variants:
                times[v].append(time_steps(snn, teacher, T, v, args.steps, batches, args.batch))
        med = {v: (statistics.median(r[0] for r in x), statistics.median(r[1] for r in x))
               for v, x in times.items()}
        for v in args.variants:
            rows.append({"T": T, "variant": v, "batch": args.batch,
                         "threads": torch.get_num_threads(),
                         "fused_ran": all(r[2] for r in times[v]), "wall_s": med[v][0],
                         "cpu_s": med[v][1], "speedup_wall": med[base][0] / med[v][0],
                         "speedup_cpu": med[base][1] / med[v][1]})
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"run": str(args.run), "method": args.method, "steps": args.steps,
            "device": str(dev), "device_name": (torch.cuda.get_device_name(dev)
                                                if dev.type == "cuda" else "cpu"),
            "repeats": args.repeats, "baseline": base, "torch": torch.__version__, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    md = [f"# lowlat-ft step cost against {base} ({args.run}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}×{args.steps} steps)", "",
          "| T | variant | compiled neurons ran | wall s/step | CPU s/step | wall speed-up "
          "| CPU speed-up |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['T']} | {r['variant']} | {'yes' if r['fused_ran'] else 'no'} | "
           f"{r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
           f"{r['speedup_wall']:.2f}× | {r['speedup_cpu']:.2f}× |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
