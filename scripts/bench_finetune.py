"""Seconds per ``lowlat-ft`` training step, float32 against ``precision=bf16``, side by side.

Runs the real fine-tune loop (``lowlat.finetune.finetune``, validation stubbed out) on a copy of
a calibrated SNN artifact, with its run's ReLU ANN as the teacher, on the augmented training
batches stage phase2 feeds it (data loading included). The two precisions alternate, ``--repeats``
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
from lowlat.finetune import PRECISIONS, FinetuneConfig, finetune
from lowlat.methods import load_snn
from lowlat.stages.phase2 import train_batches


def time_steps(snn, teacher, T: int, precision: str, steps: int, batches: Iterator,
               batch: int) -> tuple[float, float]:
    """(wall, process-CPU) seconds per step over ``steps`` steps after one warm-up step."""

    def run(n: int) -> None:
        cfg = FinetuneConfig(iterations=n, batch_size=batch, eval_every=n + 1, neurons=True,
                             precision=precision)
        finetune(copy.deepcopy(snn), batches, T, cfg, lambda s: 0.0, teacher=teacher,
                 progress=False, start=0.0)

    run(1)
    w, c = time.perf_counter(), time.process_time()
    run(steps)
    return (time.perf_counter() - w) / steps, (time.process_time() - c) / steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder with ann.pt and snn_T<T>_<method>.pt")
    ap.add_argument("--method", default="lowlat-ft", help="artifact to start from")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("results/bench_finetune"))
    args = ap.parse_args(argv)
    ann = load_artifact(args.run / "ann.pt", "ann")
    teacher = load_network(ann).eval()
    batches = train_batches(datamodule_of(ann), args.batch, torch.device("cpu"))
    rows = []
    for T in args.timesteps:
        snn = load_snn(load_artifact(args.run / snn_name(T, args.method), "snn"))
        times: dict[str, list[tuple[float, float]]] = {p: [] for p in PRECISIONS}
        for _ in range(args.repeats):
            for p in PRECISIONS:
                times[p].append(time_steps(snn, teacher, T, p, args.steps, batches,
                                           args.batch))
        med = {p: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
               for p, v in times.items()}
        rows.append({"T": T, "batch": args.batch, "threads": torch.get_num_threads(),
                     **{f"{p}_wall_s": med[p][0] for p in PRECISIONS},
                     **{f"{p}_cpu_s": med[p][1] for p in PRECISIONS},
                     "speedup_wall": med["fp32"][0] / med["bf16"][0],
                     "speedup_cpu": med["fp32"][1] / med["bf16"][1]})
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"run": str(args.run), "method": args.method, "steps": args.steps,
            "repeats": args.repeats, "torch": torch.__version__, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    md = [f"# lowlat-ft step cost, fp32 vs bf16 ({args.run}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}×{args.steps} steps)", "",
          "| T | fp32 wall s/step | bf16 wall s/step | wall ratio | fp32 CPU s/step "
          "| bf16 CPU s/step | CPU ratio |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['T']} | {r['fp32_wall_s']:.3f} | {r['bf16_wall_s']:.3f} | "
           f"{r['speedup_wall']:.2f}× | {r['fp32_cpu_s']:.3f} | {r['bf16_cpu_s']:.3f} | "
           f"{r['speedup_cpu']:.2f}× |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
