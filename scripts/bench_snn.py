"""Simulation throughput: SNN time over T x ANN time, and the same SNN in spikingjelly.

Two measurements in one run, on the device it prints:

1. For each model (full width, 10 classes, 32x32 input, batch B): a QC-ANN with random weights made
   realistic cheaply (BN running statistics estimated on random batches, λ = 99.9th percentile of
   each activation, so the neurons fire at rates like a trained network's), converted with
   ``to_snn`` and run with ``run_snn`` for T steps, chunked and step by step (``chunk=1``).
   ``ratio = SNN time / (T x ANN time)``; the dense limit is 1 (T convolutions of every layer).
   The ANN reference is the BN-folded network; the ratio is given against the folded ReLU ANN
   (the cheapest activation: the strict dense limit) and against the folded QC-ANN (the network
   actually converted, whose quantizer costs several elementwise passes).
2. The ReLU ANN converted with MaxNorm by spikingjelly's ``RateCodingRecipe`` and by
   ``lowlat.methods.convert_relu_ann(..., "maxnorm")``, simulated for the same T and batch,
   timed side by side: spikingjelly step by step (its converter's 's' mode) and, labelled
   separately, its multi-step 'm' mode; the speed-up is spikingjelly's time over ours.

Timings are medians of ``--repeats`` runs after a warm-up; ANN and SNN runs are interleaved so a
background load affects both alike. Example::

    python scripts/bench_snn.py --models vgg16 resnet20 --timesteps 4 8 32 --batch 128
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lowlat.activations import QCActivation
from lowlat.convert import activation_stats, fold_bn, to_snn
from lowlat.fused import set_fused
from lowlat.methods import convert_relu_ann
from lowlat.models import create_model
from lowlat.neurons import spiking_layers
from lowlat.simulate import auto_chunk, run_snn

BASE_MODES = ("chunked", "step", "fused", "fused-step", "auto")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet20"])
    p.add_argument("--timesteps", nargs="+", type=int, default=[4, 8, 32])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--chunk", type=int, default=8,
                   help="time steps per chunk in the chunked mode (memory: see the report)")
    p.add_argument("--sj-timesteps", nargs="*", type=int, default=[8],
                   help="T for the spikingjelly comparison (none: skip it)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (dry runs)")
    p.add_argument("--modes", nargs="+", default=["chunked", "step"],
                   choices=[m + cl for m in BASE_MODES for cl in ("", "-cl")],
                   help="fused: chunked with the compiled IF scan (lowlat/fused.py); fused-step: "
                        "the compiled scan one step at a time; auto: the chunk evaluate_snn picks "
                        "(lowlat.simulate.auto_chunk, at most --chunk); a '-cl' suffix: the same "
                        "on a channels-last copy of the SNN and input (eval.channels_last)")
    return p.parse_args(argv)


def device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {threads} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def realistic_anns(name: str, batch: int, device: torch.device, seed: int,
                   width: float = 1.0) -> tuple[nn.Module, nn.Module, Tensor]:
    """ReLU ANN and QC-ANN with shared random weights, BN statistics and λ from activations.

    Random conv weights with BN running statistics measured on random inputs normalise every
    layer like a trained network's; λ = 99.9th percentile of each activation then gives firing
    rates of the order of a trained network's (reported beside the timings).
    """
    torch.manual_seed(seed)
    kw = {} if width == 1.0 else {"width": width}
    relu = create_model(name, num_classes=10, in_channels=3, act_layer="relu", **kw).to(device)
    for m in relu.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the estimation batches
    relu.train()
    for _ in range(4):
        relu(torch.randn(64, 3, 32, 32, device=device))
    relu.eval()
    calib = torch.randn(batch, 3, 32, 32, device=device)
    stats = activation_stats(relu, [calib])
    qc = create_model(name, num_classes=10, in_channels=3, act_layer="qc", **kw).to(device)
    missing, unexpected = qc.load_state_dict(relu.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".lam") for k in missing), (missing, unexpected)
    for n, m in qc.named_modules():
        if isinstance(m, QCActivation):
            m.lam.fill_(max(stats[n]["percentile"], 1e-3))
    return relu, qc.eval(), calib


@torch.no_grad()
def firing_rate(snn: nn.Module, x: Tensor, T: int, chunk: int) -> float:
    """Spikes per neuron per time step over all IF layers."""
    run_snn(snn, x, T, chunk=chunk, record=True)
    spikes = sum(float(m.spike_count.sum()) for _, m in spiking_layers(snn))
    neurons = sum(m.spike_count.numel() for _, m in spiking_layers(snn))
    return spikes / (neurons * T)


@torch.no_grad()
def folded_sizes(snn: nn.Module, x: Tensor, chunk: int = 4) -> tuple[int, int]:
    """(Largest IF input of one time step in bytes, batch the first conv sees in one chunk)."""
    sizes: list[int] = []
    first_batch: list[int] = []
    b = x.shape[0]
    first_conv = next(m for m in snn.modules() if isinstance(m, nn.Conv2d))
    hooks = [first_conv.register_forward_pre_hook(
        lambda _m, a: first_batch.append(a[0].shape[0]))]
    for _, m in spiking_layers(snn):
        hooks.append(m.register_forward_pre_hook(
            lambda _m, a: sizes.append(a[0][0].numel() * a[0].element_size() * b)))
    run_snn(snn, x, chunk, chunk=chunk)
    for h in hooks:
        h.remove()
    return max(sizes), first_batch[0]


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    relu, qc, calib = realistic_anns(name, args.batch, device, args.seed, args.width)
    ann_relu, ann_qc = fold_bn(relu), fold_bn(qc)
    snn = to_snn(qc).to(device).eval()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    largest, first_batch = folded_sizes(snn, x)
    auto = auto_chunk(largest, args.chunk) if device.type == "cpu" else args.chunk
    modes = {m: {"chunked": args.chunk, "step": 1, "fused": args.chunk, "fused-step": 1,
                 "auto": auto}[m.removesuffix("-cl")]
             for m in args.modes}
    rates = {T: firing_rate(snn, x, T, args.chunk) for T in args.timesteps}
    # channels-last twins: relaid once, as evaluate_snn does once per data set, not per batch
    snn_cl = copy.deepcopy(snn).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def sim(T: int, mode: str) -> Tensor:
        net, inp = (snn_cl, x_cl) if mode.endswith("-cl") else (snn, x)
        set_fused(net, mode.startswith("fused"))
        return run_snn(net, inp, T, chunk=modes[mode])

    anns = {"ann_relu": (ann_relu, x), "ann_qc": (ann_qc, x)}
    if any(m.endswith("-cl") for m in modes):  # '-cl' rows are set against channels-last ANNs
        anns.update({f"{k}-cl": (copy.deepcopy(n).to(memory_format=torch.channels_last), x_cl)
                     for k, (n, _) in list(anns.items())})
    with torch.no_grad():  # warm-up: allocator, oneDNN primitives, caches, compiled kernels
        for net, inp in anns.values():
            net(inp)
        for mode in modes:
            for T in (args.timesteps if mode.startswith("fused") else [modes[mode]]):
                sim(T, mode)  # fused: compile every chunk length the timed runs use
        times: dict[str, list[float]] = {k: [] for k in anns}
        for _ in range(args.repeats):
            for k, (net, inp) in anns.items():
                times[k].append(timed(lambda n=net, i=inp: n(i), device))
            for T in args.timesteps:
                for mode in modes:
                    times.setdefault(f"{T}/{mode}", []).append(
                        timed(lambda T=T, m=mode: sim(T, m), device))
            print(f"  {name}: repeat done", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for T in args.timesteps:
        for mode, chunk in modes.items():
            snn_s, cl = med[f"{T}/{mode}"], "-cl" if mode.endswith("-cl") else ""
            relu_s, qc_s = med["ann_relu" + cl], med["ann_qc" + cl]
            rows.append({
                "model": name, "T": T, "mode": mode, "chunk": min(chunk, T),
                "ann_relu_ms": 1e3 * relu_s, "ann_qc_ms": 1e3 * qc_s,
                "snn_ms": 1e3 * snn_s, "ratio": snn_s / (T * relu_s),
                "ratio_qc": snn_s / (T * qc_s), "firing_rate": rates[T],
                "snn_images_per_s": args.batch / snn_s,
                "ann_images_per_s": args.batch / relu_s,
            })
            print(f"  {name} T={T} {mode}: ratio {rows[-1]['ratio']:.3f}", flush=True)
    memory = {
        "largest_activation_per_step_mb": largest / 2**20,
        "largest_activation_at_chunk_mb": largest * args.chunk / 2**20,
        "largest_activation_unchunked_mb": largest * max(args.timesteps) / 2**20,
        "first_conv_batch_in_chunk": first_batch,
    }
    sj = [r for T in args.sj_timesteps for r in bench_spikingjelly(name, relu, calib, x, T, args,
                                                                   device)]
    return {"rows": rows, "memory": memory, "spikingjelly": sj}


def bench_spikingjelly(name: str, relu: nn.Module, calib: Tensor, x: Tensor, T: int,
                       args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The ReLU ANN with MaxNorm, converted and simulated by spikingjelly and by lowlat."""
    from spikingjelly.activation_based import ann2snn, functional

    sj = ann2snn.Converter(ann2snn.RateCodingRecipe(dataloader=[calib], mode="max"),
                           device=device).convert(copy.deepcopy(relu)).eval()
    sj_m = copy.deepcopy(sj)
    functional.set_step_mode(sj_m, "m")
    ours = convert_relu_ann(relu, activation_stats(fold_bn(relu), [calib]), "maxnorm")
    ours = ours.to(device).eval()

    def sj_single() -> Tensor:
        functional.reset_net(sj)
        return torch.stack([sj(x) for _ in range(T)])

    def sj_multi() -> Tensor:
        functional.reset_net(sj_m)
        return sj_m(x.unsqueeze(0).repeat(T, *([1] * x.dim())))

    impls: dict[str, Callable[[], Tensor]] = {
        "spikingjelly step-by-step ('s')": sj_single,
        "spikingjelly multi-step ('m')": sj_multi,
        f"lowlat chunked (chunk={min(args.chunk, T)})": lambda: run_snn(ours, x, T, args.chunk),
        "lowlat step-by-step (chunk=1)": lambda: run_snn(ours, x, T, 1),
    }
    for mode, chunk in (("fused", args.chunk), ("fused-step", 1)):
        if mode not in args.modes:  # the compiled scan on the same network; the others stay plain
            continue

        def fused_run(chunk: int = chunk) -> Tensor:
            set_fused(ours, True)
            try:
                return run_snn(ours, x, T, chunk)
            finally:
                set_fused(ours, False)

        impls[f"lowlat fused (chunk={min(chunk, T)})"] = fused_run
    times: dict[str, list[float]] = {k: [] for k in impls}
    outs: dict[str, Tensor] = {}
    with torch.no_grad():
        for k, fn in impls.items():  # warm-up, and the outputs to compare
            outs[k] = fn().sum(0)
        for _ in range(args.repeats):
            for k, fn in impls.items():
                times[k].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = next(iter(impls))
    ours_chunked, ours_step = list(impls)[2:4]
    rows = []
    for k in impls:
        rows.append({
            "model": name, "T": T, "impl": k, "ms": 1e3 * med[k],
            "images_per_s": args.batch / med[k],
            "sj_step_over_this": med[ref] / med[k],
            "out_max_abs_diff_vs_sj_step": float((outs[k] - outs[ref]).abs().max()),
        })
    print(f"  {name} T={T}: spikingjelly 's' / lowlat chunked = "
          f"{med[ref] / med[ours_chunked]:.2f}x, / lowlat step = {med[ref] / med[ours_step]:.2f}x",
          flush=True)
    return rows


def to_markdown(res: dict) -> str:
    lines = [
        "# SNN simulation throughput", "",
        f"Device: {res['device']}. torch {res['torch']}, spikingjelly {res['spikingjelly']}. "
        f"Batch {res['batch']}, median of {res['repeats']} runs after a warm-up.", "",
        f"Command: `{res['command']}`", "",
        "`ratio` = SNN time / (T x folded ReLU-ANN time) (the dense limit is 1); "
        "`ratio (QC)` uses the folded QC-ANN, the network that is converted. "
        "Firing rate: spikes per neuron per step, all IF layers. A '-cl' mode runs a "
        "channels-last copy of the SNN, and its ratios use the ANNs timed channels-last too.", "",
        "| model | T | mode | chunk | ANN ms (ReLU / QC) | SNN ms | ratio | ratio (QC) "
        "| firing rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} | {r['T']} | {r['mode']} | {r['chunk']} | {r['ann_relu_ms']:.0f} / "
            f"{r['ann_qc_ms']:.0f} | {r['snn_ms']:.0f} | {r['ratio']:.3f} | {r['ratio_qc']:.3f} "
            f"| {r['firing_rate']:.3f} |"
        )
    twins = [(r, b) for r in res["rows"] if r["mode"].endswith("-cl") for b in res["rows"]
             if (b["model"], b["T"], b["mode"]) == (r["model"], r["T"], r["mode"][:-3])]
    if twins:
        lines += ["", "## Channels-last (`eval.channels_last`), side by side in this run", "",
                  "Speed-up = the default layout's time / the channels-last copy's time, same "
                  "mode, chunk and input.", "", "| model | T | mode | ms (default / channels-last)"
                  " | speed-up |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['T']} | {b['mode']} | {b['snn_ms']:.0f} / "
                  f"{r['snn_ms']:.0f} | {b['snn_ms'] / r['snn_ms']:.2f}x |" for r, b in twins]
    lines += ["", "## Memory", ""]
    for name, m in res["memory"].items():
        lines.append(
            f"- {name}: largest IF input {m['largest_activation_per_step_mb']:.0f} MB a step; "
            f"{m['largest_activation_at_chunk_mb']:.0f} MB a tensor at chunk {res['chunk']} "
            f"({m['largest_activation_unchunked_mb']:.0f} MB unchunked at T="
            f"{max(res['timesteps'])}); first conv sees a batch of "
            f"{m['first_conv_batch_in_chunk']} in a chunk of 4 steps (once a chunk)."
        )
    lines.append(f"- peak resident memory of the whole run: {res['peak_rss_gb']:.1f} GB")
    if res["spikingjelly_rows"]:
        lines += [
            "", "## spikingjelly (same ReLU ANN, MaxNorm, same T and batch)", "",
            "Speed-up = spikingjelly step-by-step time / this implementation's time. "
            "`max abs diff out`: summed outputs against spikingjelly step-by-step. spikingjelly's "
            "default recipe scales the input by fl(1/θ) and fires at 1, which rounds differently "
            "from firing at θ when v lands within an ulp of θ; we attribute nonzero differences to "
            "such ties cascading through deep nets (not checked at this scale). With "
            "`neuron_factory=IFNode(v_threshold=θ)` the spike counts are identical on the small "
            "network of tests/test_spikingjelly.py.", "",
            "| model | T | implementation | ms | speed-up | max abs diff out |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["spikingjelly_rows"]:
            lines.append(
                f"| {r['model']} | {r['T']} | {r['impl']} | {r['ms']:.0f} | "
                f"{r['sj_step_over_this']:.2f}x | {r['out_max_abs_diff_vs_sj_step']:.2e} |"
            )
    return "\n".join(lines) + "\n"


def write_json(res: dict, out: Path) -> dict:
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if torch.cuda.is_available():
        res["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_snn.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dev = device_name(device, torch.get_num_threads())
    print(f"device: {dev}", flush=True)
    try:
        sj_version = importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:
        sj_version, args.sj_timesteps = "not installed", []
    res: dict = {
        "device": dev, "torch": torch.__version__, "spikingjelly": sj_version,
        "batch": args.batch, "repeats": args.repeats, "chunk": args.chunk,
        "timesteps": args.timesteps, "command": "python scripts/bench_snn.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("threads", "seed")),
        "rows": [], "memory": {}, "spikingjelly_rows": [],
    }
    for name in args.models:
        print(f"{name}:", flush=True)
        r = bench_model(name, args, device)
        res["rows"] += r["rows"]
        res["memory"][name] = r["memory"]
        res["spikingjelly_rows"] += r["spikingjelly"]
        write_json(res, args.out)  # after each model: a run cut short keeps what it measured
    md = to_markdown(write_json(res, args.out))
    (args.out / "bench_snn.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
