"""Stage ``eval``: the final table. The only stage that reads the test split, and the only
writer of ``results.*``.

For every method of ``eval.methods`` (see :mod:`lowlat.methods`) and every T: top-1 on the
validation split (``val_top1``) and on the test split (``top1``), with firing rates (per layer and
network-wide), RMPE shares and the eq. 18 energy ratio measured on the test split. Calibrated
methods are read from ``snn_T<T>_<method>.pt`` at ``phase2.timesteps``. Every input is checked
before any work, and the results files are rewritten from scratch (rows of methods evaluated so
far while running, ``complete: true`` at the end), so no stale row survives.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import OmegaConf

from lowlat.artifacts import (
    ANN,
    QCANN,
    SOURCE_FILE,
    ArtifactError,
    load_artifact,
    load_network,
    snn_name,
)
from lowlat.lit import evaluate
from lowlat.methods import convert as convert_method
from lowlat.methods import get_method, load_snn, start_source
from lowlat.results import rows_from_stats, write_results
from lowlat.simulate import evaluate_snn
from lowlat.stages.common import (
    ANY,
    Context,
    check_arch,
    finish_loggers,
    limited,
    log,
    log_metrics,
    transform_eval,
)
from lowlat.stages.derived import ann_stats, network_macs


def _inputs(ctx: Context) -> tuple[dict[str, dict], dict[tuple[int, str], dict]]:
    """Load every artifact the configured methods need, or refuse before any work."""
    e, run = ctx.cfg.eval, ctx.run_dir
    methods = [get_method(m) for m in e.methods]
    arts = {"qcann": load_artifact(run / QCANN, "qcann")}
    check_arch(ctx, arts["qcann"], run / QCANN)
    for src in sorted({m.source for m in methods} - {"qcann"}):
        arts[src] = load_artifact(run / SOURCE_FILE[src], src)
    if (run / ANN).is_file() and "ann" not in arts:
        arts["ann"] = load_artifact(run / ANN, "ann")
    snns = {}
    for m in (m for m in methods if m.calibrated):
        src = start_source(m, OmegaConf.to_container(ctx.cfg.phase2.lowlat, resolve=True))
        if src not in arts:
            arts[src] = load_artifact(run / SOURCE_FILE[src], src)
        for T in sorted(int(t) for t in ctx.cfg.phase2.timesteps):
            art = load_artifact(run / snn_name(T, m.name), "snn")
            if art.get("upstream") != arts[src]["fingerprint"]:
                raise ArtifactError(
                    f"{run / snn_name(T, m.name)} was calibrated from another "
                    f"{SOURCE_FILE[src]} (stale); "
                    f"rerun stage=phase2 'phase2.timesteps=[{T}]' 'phase2.methods=[{m.name}]'")
            snns[(T, m.name)] = art
    return arts, snns


def eval_fingerprint(ctx: Context, arts: dict[str, dict], snns: dict) -> str:
    """What the results depend on: the eval settings and every input artifact."""
    ups = sorted(a["fingerprint"] for a in [*arts.values(), *snns.values()])
    # how the SNNs are run, not what they compute: never in the fingerprint
    return ctx.fp("eval", "phase2.timesteps", "data", upstream=",".join(ups),
                  omit={"eval": {"channels_last": ANY}})


def up_to_date(ctx: Context) -> bool:
    """True if results.json is complete and was made from the current inputs and settings."""
    from lowlat.artifacts import read_json

    try:
        arts, snns = _inputs(ctx)
    except ArtifactError:
        return False
    res = read_json(ctx.run_dir / "results.json", default={}) or {}
    return bool(res.get("complete")) and res.get("fingerprint") == eval_fingerprint(ctx, arts,
                                                                                      snns)


def _describe(ctx: Context, arts: dict[str, dict]) -> dict[str, Any]:
    cfg = ctx.cfg
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {"experiment": str(cfg.experiment_name),
            "dataset": {k: data.get(k) for k in ("_target_", "name", "root", "num_classes")
                        if k in data},
            "model": arts["qcann"]["arch"], "qc": arts["qcann"]["act"],
            "splits": {"chosen_on": "validation (val_top1; best epochs, defaults, sweeps)",
                       "reported": "test (top1)"}}


def _ann_macs(arts: dict[str, dict], nets: dict[str, torch.nn.Module],
              sample: torch.Tensor) -> float:
    """The MACs stage ``ann`` stored in ann.pt when they describe this QC-ANN's network on
    inputs of this shape; else (an older ann.pt, none) measured on the QC-ANN, as before."""
    ann = arts.get("ann", {})
    m = ann.get("metrics", {})
    if ("macs" in m and m.get("macs_input") == list(sample.shape[1:])
            and ann["arch"] == arts["qcann"]["arch"]):
        return m["macs"]
    return network_macs(nets["qcann"], sample)


def run_eval(ctx: Context) -> dict:
    e = ctx.cfg.eval
    arts, snns = _inputs(ctx)
    dm = ctx.datamodule()
    tf = transform_eval(dm)
    timesteps = sorted(int(t) for t in e.timesteps)
    val = list(limited(dm.val_dataloader(), e.limit_batches))
    test_loader = dm.test_dataloader()  # the one read of the test split
    test = list(limited(test_loader, e.limit_batches))
    summary = _describe(ctx, arts)
    summary["fingerprint"] = eval_fingerprint(ctx, arts, snns)
    summary["val_images"] = sum(len(y) for _, y in val)
    summary["test_images"] = sum(len(y) for _, y in test)
    ds = getattr(test_loader, "dataset", None)
    summary["test_images_total"] = len(ds) if ds is not None and hasattr(ds, "__len__") else None
    nets = {src: load_network(a) for src, a in arts.items()}
    for src, net in nets.items():  # the ANNs the rows start from, on both splits
        key = {"ann": "ann", "qcann": "qcann", "ratenorm": "ratenorm_ann"}[src]
        summary[f"{key}_val_top1"] = evaluate(net, val, tf)
        summary[f"{key}_top1"] = evaluate(net, test, tf)
    summary["ann_macs"] = ann_macs = _ann_macs(arts, nets, tf(val[0][0][:1]))
    stats = None
    rows: list[dict] = []
    kw = dict(transform=tf, max_chunk=int(e.max_chunk), device=ctx.device,
              channels_last=True if e.get("channels_last", False) else None)
    for name in e.methods:
        m, t0 = get_method(name), time.time()
        extra = {"label": m.label, "paper": m.paper}
        if m.calibrated:
            for T in sorted(int(t) for t in ctx.cfg.phase2.timesteps):
                art = snns[(T, name)]
                snn = load_snn(art)
                v = art["metrics"].get("val_top1")
                if art["metrics"].get("val_images") != summary["val_images"]:
                    v = evaluate_snn(snn, val, [T], stats=False, desc=f"{name} val",
                                     **kw).accuracy()[T]
                st = evaluate_snn(snn, test, [T], stats=bool(e.stats), desc=name, **kw)
                rows += rows_from_stats(name, st, ann_macs, val_top1=v, **extra)
        else:
            if m.stats and stats is None:
                n = min(int(e.stat_images), dm.train_size)
                stats = ann_stats(ctx, arts["ann"], nets["ann"], dm, n, float(e.robust_percentile))
                summary["stat_images"] = n
            plan = [[T] for T in timesteps] if m.per_T else [timesteps]
            for ts in plan:
                snn = convert_method(name, nets[m.source], T=ts[0], stats=stats)
                v = evaluate_snn(snn, val, ts, stats=False, desc=f"{name} val", **kw).accuracy()
                st = evaluate_snn(snn, test, ts, stats=bool(e.stats), desc=name, **kw)
                rows += [{**r, "val_top1": v[r["T"]]}
                         for r in rows_from_stats(name, st, ann_macs, **extra)]
        for r in rows:
            if r["method"] == name and r.get("silent_layers"):
                log.warning("eval %s T=%d: layers without a single spike on the test split: %s",
                            name, r["T"], ", ".join(r["silent_layers"]))
        write_results(ctx.run_dir, rows, summary, complete=False)  # a kill keeps finished rows
        log.info("eval %s: %s (%.1fs)", name, ", ".join(
            f"T={r['T']}: val {r['val_top1']:.4f} test {r['top1']:.4f}"
            for r in rows if r["method"] == name), time.time() - t0)
    loggers = ctx.loggers()
    log_metrics(loggers, {f"eval/{r['method']}/T{r['T']}/{k}": r[k] for r in rows
                          for k in ("top1", "val_top1")})
    finish_loggers(loggers)
    data = write_results(ctx.run_dir, rows, summary, complete=True)
    log.info("results: %s", ctx.run_dir / "results.csv")
    return data
