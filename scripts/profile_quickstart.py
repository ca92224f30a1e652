"""Where the quickstart's time goes: CPU and wall seconds per phase of ``stage=all``.

Runs ``python -m lowlat.run stage=all <overrides>`` in this process with timers around the
imports, each stage, each calibration (T, method) and each evaluation call, and writes them as
JSON. CPU seconds (user+sys of the whole process, ``time.process_time``) are the figure to
compare on a shared machine: wall seconds grow with other jobs' load, CPU seconds much less.
With ``--threads 1`` the run is single-threaded, so its CPU time is what an idle machine's wall
time would be (an upper bound of it with more threads).

    python scripts/profile_quickstart.py --out results/quickstart_profile.json -- \
        experiment=quickstart experiment_name=qs_prof
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import runpy
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

T_START = (time.process_time(), time.perf_counter())  # before torch/lightning are imported


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


class Recorder:
    """Accumulates (cpu, wall) seconds per label, in first-seen order."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, float]] = {}

    def add(self, label: str, cpu: float, wall: float) -> None:
        it = self.items.setdefault(label, {"cpu_s": 0.0, "wall_s": 0.0, "calls": 0})
        it["cpu_s"] += cpu
        it["wall_s"] += wall
        it["calls"] += 1

    def wrap(self, fn: Callable, label_of: Callable[..., str]) -> Callable:
        @functools.wraps(fn)
        def inner(*a, **kw):
            c0, w0 = _clock()
            try:
                return fn(*a, **kw)
            finally:
                c1, w1 = _clock()
                self.add(label_of(*a, **kw), c1 - c0, w1 - w0)
        return inner


def groups(items: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Calibration and evaluation items summed: phase2/calibrate, phase2/val, eval/<method>."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"cpu_s": 0.0, "wall_s": 0.0})
    for k, v in items.items():
        if k.startswith("phase2/"):
            g = k.split(" ")[0]
        elif k.startswith("eval/"):
            g = "eval/all methods"
        else:
            continue
        out[g]["cpu_s"] += v["cpu_s"]
        out[g]["wall_s"] += v["wall_s"]
    return dict(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    i = argv.index("--") if "--" in argv else len(argv)
    own, overrides = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/quickstart_profile.json"))
    p.add_argument("--label", default="", help="name of this variant in the JSON")
    args = p.parse_args(own)
    os.environ.setdefault("WANDB_MODE", "offline")
    load_start = os.getloadavg()

    rec = Recorder()
    import torch

    torch.set_num_threads(args.threads)
    import lowlat.run  # noqa: F401 - imported here so that its cost counts as import
    import lowlat.stages.evaluate as ev
    import lowlat.stages.phase2 as p2
    import lowlat.stages.train as tr

    c, w = _clock()
    rec.add("import", c - T_START[0], w - T_START[1])

    current = {"m": "?"}
    orig_cc = p2.calib_config

    def calib_config(ctx, method: str, T: int):
        current["m"] = f"{method} T={T}"
        return orig_cc(ctx, method, T)

    p2.calib_config = calib_config
    p2.calibrate = rec.wrap(p2.calibrate, lambda *a, **k: f"phase2/calibrate {current['m']}")
    p2.evaluate_snn = rec.wrap(p2.evaluate_snn, lambda *a, **k: f"phase2/val {current['m']}")
    ev.evaluate_snn = rec.wrap(
        ev.evaluate_snn, lambda *a, **k: f"eval/{k.get('desc', '?').split()[0]}")
    for mod, name in ((tr, "run_ann"), (tr, "run_phase1"), (p2, "run_phase2"), (ev, "run_eval")):
        setattr(mod, name, rec.wrap(getattr(mod, name), lambda *a, n=name, **k: f"stage/{n}"))
    sys.argv = [sys.argv[0], "stage=all", *overrides]
    c0, w0 = _clock()
    try:  # as `python -m lowlat.run`, so that Hydra finds conf/ next to the package
        runpy.run_module("lowlat.run", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    c1, w1 = _clock()
    rec.add("stage=all (after import)", c1 - c0, w1 - w0)
    rec.add("total (process)", c1 - T_START[0], w1 - T_START[1])
    out = {"label": args.label, "threads": args.threads, "overrides": overrides,
           "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
           "torch": torch.__version__, "items": rec.items, "groups": groups(rec.items)}
    width = max(len(k) for k in [*rec.items, *out["groups"]])
    for k, v in [*rec.items.items(), *out["groups"].items()]:
        print(f"{k:<{width}}  cpu {v['cpu_s']:7.1f} s  wall {v['wall_s']:7.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
