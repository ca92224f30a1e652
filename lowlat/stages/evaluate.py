"""Stage ``eval``: accuracy at every T, firing rates, RMPE shares and energy for each method."""

from __future__ import annotations

import itertools
import time

from lowlat.artifacts import ArtifactError, load_artifact, load_network, read_json
from lowlat.convert import activation_stats
from lowlat.lit import evaluate
from lowlat.methods import (
    convert_qcann,
    convert_relu_ann,
    load_snn,
    to_snn,
)
from lowlat.results import rows_from_stats, update_results
from lowlat.simulate import evaluate_snn, layer_macs
from lowlat.stages.common import (
    CALIBRATED,
    Context,
    calibration_images,
    finish_loggers,
    log,
    log_metrics,
    transform_eval,
)


def snn_artifact_name(T: int, method: str) -> str:
    """``snn_T<T>.pt`` holds the full method (lmpc+lwc); the ablations get a suffix."""
    return f"snn_T{T}.pt" if method == "lmpc+lwc" else f"snn_T{T}_{method}.pt"


def run_eval(ctx: Context) -> dict:
    _cfg, e = ctx.cfg, ctx.cfg.eval
    dm = ctx.datamodule()
    tf = transform_eval(dm)
    timesteps = sorted(int(t) for t in e.timesteps)
    test = list(itertools.islice(dm.test_dataloader(), e.limit_batches)) \
        if e.limit_batches else dm.test_dataloader()
    qc_art = load_artifact(ctx.run_dir / "qcann.pt", "qcann")
    qcann = load_network(qc_art)
    ann_art = ann = stats = None
    summary = {"qcann_top1": qc_art["metrics"]["test_top1"],
               "ann_top1": qc_art["metrics"].get("ann_test_top1")}
    sample = next(iter(dm.test_dataloader()))[0][:1]
    ann_macs = sum(layer_macs(to_snn(qcann), tf(sample)).values())
    summary["ann_macs"] = ann_macs
    previous = read_json(ctx.run_dir / "results.json", default={"rows": []})
    done = {(r["method"], int(r["T"])): r.get("source_fp") for r in previous["rows"]}
    rows = []
    for method in e.methods:
        t0 = time.time()
        kw = dict(transform=tf, max_chunk=int(e.max_chunk), device=ctx.device,
                  stats=bool(e.stats), desc=method)
        if method in ("phase1", "opti", "unbiased"):
            st = evaluate_snn(convert_qcann(qcann, method), test, timesteps, **kw)
            rows += rows_from_stats(method, st, ann_macs)
        elif method in ("maxnorm", "robustnorm"):
            if ann is None:
                ann_art = load_artifact(ctx.run_dir / "ann.pt", "ann")
                ann = load_network(ann_art)
                n = min(int(e.stat_batches) * dm.batch_size, dm.train_size)
                xs = [x for x, _ in calibration_images(dm, n, dm.batch_size, "cpu")]
                stats = activation_stats(ann, xs, percentile=float(e.robust_percentile))
                summary["ann_top1"] = ann_art["metrics"]["test_top1"]
            st = evaluate_snn(convert_relu_ann(ann, stats, method), test, timesteps, **kw)
            rows += rows_from_stats(method, st, ann_macs)
        elif method == "ratenorm":
            rn_art = load_artifact(ctx.run_dir / "ratenorm.pt", "ratenorm")
            summary["ratenorm_ann_top1"] = rn_art["metrics"]["test_top1"]
            st = evaluate_snn(to_snn(load_network(rn_art)), test, timesteps, **kw)
            rows += rows_from_stats(method, st, ann_macs)
        elif method == "opt":
            for T in timesteps:  # the shift depends on T: one run per T
                st = evaluate_snn(convert_qcann(qcann, "opt", T), test, [T], **kw)
                rows += rows_from_stats(method, st, ann_macs)
        elif method in CALIBRATED:
            found = False
            for T in timesteps:
                try:
                    art = load_artifact(ctx.run_dir / snn_artifact_name(T, method), "snn")
                except ArtifactError:
                    continue
                found = True
                source = f"{art['fingerprint']}:{e.limit_batches}"
                if done.get((method, T)) == source:
                    continue  # phase2 already evaluated this very artifact on this test set
                st = evaluate_snn(load_snn(art), test, [T], **kw)
                rows += rows_from_stats(method, st, ann_macs, source_fp=source)
            if not found:
                log.warning("eval: no %s artifacts in %s (run stage=phase2)", method, ctx.run_dir)
        update_results(ctx.run_dir, [r for r in rows if r["method"] == method], **summary)
        log.info("eval %s: %s (%.1fs)", method, ", ".join(
            f"T={r['T']}:{r['top1']:.4f}" for r in rows if r["method"] == method),
            time.time() - t0)
    summary["qcann_top1_recomputed"] = evaluate(qcann, test, tf)
    loggers = ctx.loggers()
    log_metrics(loggers, {f"eval/{r['method']}/T{r['T']}/top1": r["top1"] for r in rows})
    finish_loggers(loggers)
    data = update_results(ctx.run_dir, rows, **summary)
    log.info("results: %s", ctx.run_dir / "results.csv")
    return data
