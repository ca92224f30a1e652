"""Peak memory of SNN simulation and calibration versus T, batch and chunk (the chunking trade-off).

Each setting runs in a fresh subprocess so that its high-water mark is its own: on the CPU the
peak resident set size (``ru_maxrss``) minus the resident size just before the run (model built,
input made), on a GPU ``torch.cuda.max_memory_allocated``. Memory, unlike time, does not depend on
the machine's load. Writes ``bench_memory.json`` and ``bench_memory.md`` after every setting.

    python scripts/bench_memory.py --out results
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

MB = 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(s: dict) -> dict:
    """One setting, in this process: ``{"kind": "sim"|"calib", "T", "batch", "chunk", ...}``."""
    from lowlat.calibrate import CalibConfig, calibrate
    from lowlat.convert import to_snn
    from lowlat.models import create_model
    from lowlat.neurons import spiking_layers
    from lowlat.simulate import run_snn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    dev = torch.device(s["device"])
    qc = create_model(s["model"], 10, 3, "qc", width=s["width"]).eval().to(dev)
    snn = to_snn(qc).to(dev)
    x = torch.randn(s["batch"], 3, 32, 32, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _rss_bytes()
    if s["kind"] == "sim":
        run_snn(snn, x, s["T"], chunk=s["chunk"])
    else:  # LMPC + 2 LWC iterations of the first IF layer (the largest feature map)
        first = spiking_layers(snn)[0][0]
        cfg = CalibConfig(T=s["T"], iterations=2, batch_size=s["batch"], eval_batch=s["batch"],
                          max_chunk=s["chunk"])
        calibrate(snn, qc, x, cfg, layers=[first], progress=False)
    out = dict(s)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / MB
    else:
        out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss) / MB
    return out


def settings(args: argparse.Namespace) -> list[dict]:
    common = {"model": args.model, "width": args.width, "device": args.device}
    out = []
    for kind, ts in (("sim", args.sim_timesteps), ("calib", args.calib_timesteps)):
        for T in ts:
            for b in args.batches:
                for chunk in sorted({1, min(args.chunk, T), T}):
                    out.append({**common, "kind": kind, "T": T, "batch": b, "chunk": chunk})
    return out


def to_markdown(res: dict) -> str:
    lines = [
        "# Peak memory of simulation and calibration", "",
        f"`{res['model']}` width {res['width']}, 32x32 input, device {res['device']}, "
        f"torch {res['torch']}. Peak {res['measure']} above the level before the run, MB; one "
        "subprocess per setting. sim: `run_snn` for T steps; calib: LMPC + 2 LWC iterations "
        "(BPTT) of the first IF layer, LWC batch = batch.", "",
        f"Command: `{res['command']}`", "",
        "| kind | T | batch | chunk | peak MB | MB per sample |", "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['kind']} | {r['T']} | {r['batch']} | {r['chunk']} | "
                     f"{r['peak_mb']:.0f} | {r['peak_mb'] / r['batch']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sim-timesteps", nargs="+", type=int, default=[8, 32])
    p.add_argument("--calib-timesteps", nargs="+", type=int, default=[2, 8])
    p.add_argument("--batches", nargs="+", type=int, default=[32, 128])
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return {}
    res = {"model": args.model, "width": args.width, "device": args.device,
           "torch": torch.__version__,
           "measure": "CUDA memory allocated" if args.device == "cuda" else "resident set size",
           "command": "python scripts/bench_memory.py " + " ".join(argv or sys.argv[1:]),
           "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for s in settings(args):
        r = subprocess.run([sys.executable, __file__, "--one", json.dumps(s)],
                           capture_output=True, text=True, check=True)
        res["rows"].append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{s['kind']} T={s['T']} B={s['batch']} chunk={s['chunk']}: "
              f"{res['rows'][-1]['peak_mb']:.0f} MB", flush=True)
        (args.out / "bench_memory.json").write_text(json.dumps(res, indent=1))
        (args.out / "bench_memory.md").write_text(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
