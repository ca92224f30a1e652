"""Where simulation time goes: operator shares, time-folded chunks against step by step.

Profiles ``run_snn`` on a QC-ANN-converted ``vgg16`` (random weights, λ from activation
percentiles as in ``bench_snn.py``) with ``torch.profiler`` and prints/writes each mode's share of
self time per operator and, per group (conv, pool, elementwise), its time relative to the
step-by-step run's total (modes interleaved; shares and ratios, not seconds).

    python scripts/profile_snn.py --width 0.25 --batch 32 --T 8 --out results/profile_snn.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_snn import realistic_anns  # noqa: E402

from lowlat.convert import to_snn  # noqa: E402
from lowlat.fused import set_fused  # noqa: E402
from lowlat.simulate import run_snn  # noqa: E402

GROUPS = {  # operator -> what it is for
    "aten::mkldnn_convolution": "conv", "aten::convolution": "conv", "aten::_convolution": "conv",
    "aten::conv2d": "conv", "aten::addmm": "linear", "aten::linear": "linear",
    "aten::avg_pool2d": "pool", "aten::adaptive_avg_pool2d": "pool",
}


def self_times(prof) -> dict[str, float]:
    """Self CPU time per operator, microseconds."""
    by_op: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        by_op[e.key] += e.self_cpu_time_total
    return by_op


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fused", action="store_true", help="also profile the compiled IF scan")
    p.add_argument("--chunks", type=int, nargs="*", default=[],
                   help="also profile these intermediate chunk lengths (plain scan)")
    p.add_argument("--out", type=Path, default=Path("results/profile_snn.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _relu, qc, _ = realistic_anns(args.model, args.batch, torch.device("cpu"), 0, args.width)
    snn = to_snn(qc).eval()
    x = torch.randn(args.batch, 3, 32, 32)
    modes = {"folded": (args.T, False), "step": (1, False)}
    for k in args.chunks:
        if 1 < k < args.T:
            modes[f"chunk{k}"] = (k, False)
    if args.fused:
        modes["fused"] = (args.T, True)
    res = {"model": args.model, "width": args.width, "batch": args.batch, "T": args.T,
           "threads": args.threads, "torch": torch.__version__,
           "loadavg_start": os.getloadavg(), "modes": {}}
    times: dict[str, dict[str, float]] = {m: defaultdict(float) for m in modes}
    calls: dict[str, int] = dict.fromkeys(modes, 0)
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for chunk, fused in modes.values():  # warm-up (and compilation)
        set_fused(snn, fused)
        run_snn(snn, x, args.T, chunk=chunk)
    for _ in range(args.repeats):  # interleaved, so a background load hits every mode alike
        for mode, (chunk, fused) in modes.items():
            set_fused(snn, fused)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run_snn(snn, x, args.T, chunk=chunk)
            for k, v in self_times(prof).items():
                times[mode][k] += v
            calls[mode] += sum(e.count for e in prof.key_averages())
            c0 = time.process_time()  # the same run without the profiler's per-call cost
            run_snn(snn, x, args.T, chunk=chunk)
            cpu[mode].append(time.process_time() - c0)
    res["loadavg_end"] = os.getloadavg()
    ref = sum(times["step"].values())
    for mode, t in times.items():
        total = sum(t.values())
        grouped: dict[str, float] = defaultdict(float)
        for k, v in t.items():
            grouped[GROUPS.get(k, "elementwise/other")] += v
        top = sorted(t.items(), key=lambda kv: -kv[1])[:12]
        res["modes"][mode] = {
            "top_ops_share": {k: v / total for k, v in top},
            "groups_share": {k: v / total for k, v in grouped.items()},
            "groups_vs_step_total": {k: v / ref for k, v in grouped.items()},
            "total_vs_step": total / ref, "ops_per_run": calls[mode] / args.repeats,
            "cpu_s_unprofiled": cpu[mode],
            "cpu_vs_step_unprofiled": min(cpu[mode]) / min(cpu["step"])}
        print(f"{mode}: total/step {total / ref:.2f} (unprofiled CPU "
              f"{res['modes'][mode]['cpu_vs_step_unprofiled']:.2f}); " + ", ".join(
            f"{k} {100 * v / total:.1f}%" for k, v in top[:8]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
