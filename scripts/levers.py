"""The accuracy levers of issue 9, measured on the VALIDATION split only, with their CPU cost.

Each ``--variant`` is one Phase II recipe applied to every run folder (``--run``: a QC-ANN
``qcann.pt`` and its ReLU ``ann.pt``, e.g. one per L / shift / λ granularity) at every T:

    conv:<method>                      an uncalibrated method of lowlat.methods (unbiased, ...)
    art:<method>[:head=kl|mse]         the run's calibrated snn_T<T>_<method>.pt, as it is or
                                       with its output head refitted (lowlat.head);
    art:<method>:from=<T'>             the one calibrated at T', run for each --timesteps T
    qc:T                               the QC-ANN (no SNN) evaluated with L = T levels: the
                                       accuracy of an SNN that rounded exactly as a T-step rate
    <name>:key=value,key=value         a calibration; keys (defaults in brackets):
        start [unbiased] | lmpc [1] | lwc [0] | formula [signed] | granularity [neuron]
        lmpc_iterations [1] | optimizer [adam] | lr [1e-4] | iterations [30] | batch [256]
        accept [always] (always | mse | val: keep LWC only if it beats LMPC alone on validation)
        head [none] (kl | mse: refit the classifier after the last IF layer, lowlat.head)
        target [L] (L: the QC-ANN as trained | T: the same λ rounded to T levels | finer:
                    T where T > L, else L)

    python scripts/levers.py --run runs/c10_L4s05 --timesteps 2 4 --val-batches 20 \\
        --variant conv:unbiased "lmpc:lmpc=1" "lmpc3:lmpc=1,lmpc_iterations=3" --name lmpc

Writes ``levers_<name>.json`` and ``.md`` under ``--out`` (rows appended as they are measured,
so a run cut short keeps what it measured). The test split is never read.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from lowlat.activations import QCActivation
from lowlat.artifacts import ANN, QCANN, datamodule_of, load_artifact, load_network, snn_name
from lowlat.calibrate import CalibConfig, calibrate
from lowlat.conversions import TARGETS, effective_target, target_at_levels
from lowlat.convert import activation_stats
from lowlat.head import HEAD_LOSSES, calibrate_head
from lowlat.lit import evaluate
from lowlat.methods import START_SOURCE, calibration_pair, convert, get_method, load_snn
from lowlat.neurons import SURROGATES
from lowlat.simulate import evaluate_snn

DEFAULTS = {"start": "unbiased", "lmpc": "1", "lwc": "0", "formula": "signed",
            "granularity": "neuron", "lmpc_iterations": "1", "optimizer": "adam", "lr": "1e-4",
            "iterations": "30", "batch": "256", "accept": "always", "head": "none",
            "target": "L", "surrogate": "eq15"}


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    if name == "conv":
        get_method(rest)  # refuses an unknown method by name
        return f"conv:{rest}", {"method": rest}
    if name == "qc" and rest == "T":
        return "qc:T", {"qc_levels": "T"}
    if name == "art":
        method, _, opts = rest.partition(":")
        get_method(method)
        kv = {"artifact": method, "head": "none"}
        for opt in filter(None, opts.split(",")):
            k, _, v = opt.partition("=")
            if not ((k == "head" and v in HEAD_LOSSES) or (k == "from" and v.isdigit())):
                raise SystemExit(f"variant {spec!r}: after art:<method> only head=<"
                                 f"{'|'.join(HEAD_LOSSES)}> and from=<T> are valid")
            kv[k] = v
        return f"art:{rest}", kv
    kv = dict(DEFAULTS)
    for item in filter(None, rest.split(",")):
        k, sep, v = item.partition("=")
        if not sep or k not in DEFAULTS:
            raise SystemExit(f"variant {spec!r}: unknown setting {k!r}; valid: "
                             f"{', '.join(DEFAULTS)}")
        kv[k] = v
    if kv["surrogate"] not in SURROGATES:
        raise SystemExit(f"variant {spec!r}: surrogate must be one of {', '.join(SURROGATES)}, "
                         f"got {kv['surrogate']!r}")
    if kv["target"] not in TARGETS:
        raise SystemExit(f"variant {spec!r}: target must be one of {', '.join(TARGETS)}, "
                         f"got {kv['target']!r}")
    return name, kv


def calib_config(T: int, kv: dict[str, str], lwc: bool | None = None) -> CalibConfig:
    return CalibConfig(
        T=T, lmpc=kv["lmpc"] == "1", lwc=(kv["lwc"] == "1") if lwc is None else lwc,
        formula=kv["formula"], granularity=kv["granularity"],
        lmpc_iterations=int(kv["lmpc_iterations"]), optimizer=kv["optimizer"],
        lr=float(kv["lr"]), iterations=int(kv["iterations"]), batch_size=int(kv["batch"]),
        accept="always" if kv["accept"] == "val" else kv["accept"], head=kv["head"],
        surrogate=kv["surrogate"])


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", nargs="+", required=True, help="run folders with qcann.pt, ann.pt")
    ap.add_argument("--variant", nargs="+", required=True)
    ap.add_argument("--timesteps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--calib-samples", type=int, default=1024)
    ap.add_argument("--stat-images", type=int, default=5120)
    ap.add_argument("--val-batches", type=int, default=None, help="limit the validation split")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default="results/cifar10_cpu")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    meta: dict = {"split": "validation", "chosen_on": "validation", "runs": {}, "rows": rows,
                  "command": shlex.join(["python", "scripts/levers.py",
                                         *(sys.argv[1:] if argv is None else argv)])}
    for run in map(Path, args.run):
        qc_art = load_artifact(run / QCANN, "qcann")
        nets = {"qcann": load_network(qc_art), "ann": load_network(load_artifact(run / ANN))}
        dm = datamodule_of(qc_art)
        tf = lambda x, dm=dm: dm.transform_batch(x, train=False)  # noqa: E731
        val = list(itertools.islice(dm.val_dataloader(), args.val_batches))
        xs = torch.cat([tf(x) for x, _ in dm.calibration_loader(args.calib_samples, 256)])
        stats = None
        p1 = qc_art["config"]["phase1"]
        meta["runs"][str(run)] = desc = {
            "levels": qc_art["act"]["kwargs"]["levels"], "shift": qc_art["act"]["kwargs"]["shift"],
            "lambda": p1.get("granularity", "layer"), "phase1_epochs": p1["epochs"],
            "qcann_val_top1": qc_art["metrics"].get("val_top1"),
            "val_images": sum(len(y) for _, y in val), "calib_samples": args.calib_samples}

        def acc(snn, T: int, val=val, tf=tf) -> float:
            return evaluate_snn(snn, val, [T], transform=tf, stats=False,
                                progress=False).accuracy()[T]

        for T, (name, kv) in itertools.product(args.timesteps, variants):
            art = None
            if "artifact" in kv:  # from=<T'>: the artifact calibrated at T', run for T steps
                art = load_artifact(run / snn_name(int(kv.get("from", T)), kv["artifact"]),
                                    "snn")
                kv = {**kv, "start": art["recipe"]["start"]}
            needs_stats = kv.get("start") == "channelnorm" or (
                "method" in kv and get_method(kv["method"]).stats is not None)
            if needs_stats and stats is None:
                n = min(args.stat_images, dm.train_size)
                stats = activation_stats(nets["ann"], [tf(x) for x, _ in
                                                       dm.calibration_loader(n, 256)])
            t0, c0 = time.time(), time.process_time()
            row = {"run": str(run), "T": T, "variant": name, **{k: desc[k] for k in (
                "levels", "shift", "lambda")}}
            if "qc_levels" in kv:
                qc = copy.deepcopy(nets["qcann"])
                for m in qc.modules():
                    if isinstance(m, QCActivation):
                        m.levels = T
                row["val_top1"] = evaluate(qc, val, tf)
            elif art is not None:
                row["calibrated_at_T"] = int(kv.get("from", T))
                snn = load_snn(art)
                if kv["head"] != "none":
                    _, target = calibration_pair(kv["start"], nets[START_SOURCE[kv["start"]]],
                                                 stats)
                    rep = calibrate_head(snn, target, xs, T, kv["head"])
                    row.update(head_loss_before=rep["head_loss_before"],
                               head_loss_after=rep["head_loss_after"])
                row["val_top1"] = acc(snn, T)
            elif "method" in kv:
                m = get_method(kv["method"])
                row["val_top1"] = acc(convert(m.name, nets[m.source], T=T, stats=stats), T)
            else:
                row.update(kv)
                snn, target = calibration_pair(kv["start"], nets[START_SOURCE[kv["start"]]],
                                               stats)
                if effective_target(kv["target"], desc["levels"], T) == "T":
                    target = target_at_levels(target, T)
                reps = calibrate(snn, target, xs, calib_config(T, kv), progress=False)
                row["val_top1"] = acc(snn, T)
                if kv["accept"] == "val" and kv["lwc"] == "1":
                    alt, _ = calibration_pair(kv["start"], nets[START_SOURCE[kv["start"]]],
                                              stats)
                    calibrate(alt, target, xs, calib_config(T, kv, lwc=False), progress=False)
                    row["val_top1_without_lwc"] = a = acc(alt, T)
                    row["lwc_kept"] = a <= row["val_top1"]
                    row["val_top1"] = max(a, row["val_top1"])
                heads = [r for r in reps if r["layer"].startswith("head:")]
                reps = [r for r in reps if not r["layer"].startswith("head:")]
                if heads:
                    row["head_loss_before"] = heads[0]["head_loss_before"]
                    row["head_loss_after"] = heads[0]["head_loss_after"]
                if kv["lwc"] == "1":
                    row["lwc_mse_drop"] = sum(r["mse_before_lwc"] - r["mse_after_lwc"]
                                              for r in reps) / len(reps)
            row["seconds"] = round(time.time() - t0, 1)  # wall: depends on the machine's load
            row["cpu_seconds"] = round(time.process_time() - c0, 1)  # this process, all threads
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(out, args.name, meta)
    return write(out, args.name, meta)


def write(out: Path, name: str, meta: dict) -> Path:
    (out / f"levers_{name}.json").write_text(json.dumps(meta, indent=1))
    md = [f"# Levers: {name} (validation split; wall and process CPU seconds, 2-core machine)", "",
          f"`{meta['command']}`", "",
          "| QC-ANN (run) | L | s | λ | phase1 epochs | QC-ANN val % | val images |",
          "|---|---|---|---|---|---|---|"]
    for run, d in meta["runs"].items():
        q = d["qcann_val_top1"]
        md.append(f"| {run} | {d['levels']} | {d['shift']} | {d['lambda']} | "
                  f"{d['phase1_epochs']} | {'?' if q is None else f'{100 * q:.2f}'} | "
                  f"{d['val_images']} |")
    md += ["", "| run | T | variant | settings | val top-1 % | without LWC % | wall s | CPU s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in meta["rows"]:
        settings = ", ".join(f"{k}={r[k]}" for k in DEFAULTS if k in r and r[k] != DEFAULTS[k])
        wo = r.get("val_top1_without_lwc")
        md.append(f"| {Path(r['run']).name} | {r['T']} | {r['variant']} | {settings} | "
                  f"{100 * r['val_top1']:.2f} | {'' if wo is None else f'{100 * wo:.2f}'} | "
                  f"{r['seconds']:.0f} | {r.get('cpu_seconds', float('nan')):.0f} |")
    path = out / f"levers_{name}.md"
    path.write_text("\n".join(md) + "\n")
    return path


if __name__ == "__main__":
    main()
