"""Stage ``phase2``: convert the QC-ANN and calibrate it (LMPC, LWC, both) for each T."""

from __future__ import annotations

import time

import torch
from omegaconf import OmegaConf

from lowlat.artifacts import load_artifact, load_network, save_artifact
from lowlat.calibrate import CalibConfig, calibrate
from lowlat.methods import convert_qcann
from lowlat.neurons import reset_states
from lowlat.results import read_json, rows_from_stats, update_results
from lowlat.simulate import evaluate_snn, layer_macs
from lowlat.stages.common import Context, calibration_images, finish_loggers, log, log_metrics
from lowlat.stages.evaluate import snn_artifact_name, transform_eval

FLAGS = {"lmpc": (True, False), "lwc": (False, True), "lmpc+lwc": (True, True)}


def run_phase2(ctx: Context) -> dict:
    cfg, p = ctx.cfg, ctx.cfg.phase2
    qc_art = load_artifact(ctx.run_dir / "qcann.pt", "qcann")
    dm = ctx.datamodule()
    if int(p.calib_samples) > dm.train_size:
        raise ValueError(f"phase2.calib_samples={p.calib_samples} exceeds the training set "
                         f"({dm.train_size} images)")
    qcann = load_network(qc_art).to(ctx.device)
    xs = torch.cat([x for x, _ in calibration_images(
        dm, int(p.calib_samples), int(p.calib_batch), ctx.device)])  # [N, C, H, W]
    if xs.shape[0] == 0:
        raise ValueError("phase2: the calibration set is empty")
    tf = transform_eval(dm)
    test = dm.test_dataloader()
    if cfg.eval.limit_batches:
        import itertools
        test = list(itertools.islice(test, cfg.eval.limit_batches))
    sample = next(iter(dm.test_dataloader()))[0][:1]
    ann_macs = sum(layer_macs(convert_qcann(qcann.cpu(), "phase1"), tf(sample)).values())
    qcann = qcann.to(ctx.device)
    loggers = ctx.loggers()
    step = 0
    rows, summary = [], {}
    for T in sorted(int(t) for t in p.timesteps):
        for method in p.methods:
            do_lmpc, do_lwc = FLAGS[method]
            cc = CalibConfig(
                T=T, lmpc=do_lmpc, lwc=do_lwc, formula=p.lmpc.formula,
                granularity=p.lmpc.granularity, base=p.lmpc.base,
                iterations=int(p.lwc.iterations), batch_size=int(p.lwc.batch_size),
                lr=float(p.lwc.lr), optimizer=p.lwc.optimizer,
                weight_decay=float(p.lwc.weight_decay),
                gamma=float(p.lwc.gamma), eval_batch=int(p.calib_batch),
                max_chunk=int(cfg.eval.max_chunk), seed=int(cfg.seed))
            torch.manual_seed(int(cfg.seed))
            start = "unbiased" if p.lmpc.base == "unbiased" else "phase1"
            snn = convert_qcann(qcann, start).to(ctx.device)

            def log_layer(rep: dict, T=T, method=method) -> None:
                nonlocal step
                log.info("T=%d %s %s: MSE %s", T, method, rep["layer"], {
                    k: round(v, 6) for k, v in rep.items() if k.startswith("mse")})
                log_metrics(loggers, {f"phase2/{method}/T{T}/{k}": float(v)
                                      for k, v in rep.items() if k.startswith("mse")}, step)
                step += 1

            t0 = time.time()
            reports = calibrate(snn, qcann, xs, cc, log=log_layer)
            seconds = time.time() - t0
            reset_states(snn)
            fp = ctx.fp("phase2", "eval.max_chunk", upstream=qc_art["fingerprint"])
            st = evaluate_snn(snn, test, [T], transform=tf, max_chunk=int(cfg.eval.max_chunk),
                              device=ctx.device, stats=bool(cfg.eval.stats), desc=f"{method} T={T}")
            new = rows_from_stats(method, st, ann_macs,
                                  source_fp=f"{fp}:{cfg.eval.limit_batches}")
            rows += new
            update_results(ctx.run_dir, new)  # now, so a kill later loses no finished row
            metrics = {"top1": new[0]["top1"], "calib_seconds": seconds, "layers": reports}
            save_artifact(ctx.run_dir / snn_artifact_name(T, method), "snn", snn.cpu(),
                          qc_art["arch"], qc_art["act"], metrics, ctx.config_dict(), fp,
                          T=T, method=method, calib=OmegaConf.to_container(p, resolve=True))
            log_metrics(loggers, {f"phase2/{method}/T{T}/top1": new[0]["top1"]}, step)
            log.info("phase2 %s T=%d: test top-1 %.4f (calibration %.1fs)", method, T,
                     new[0]["top1"], seconds)
    finish_loggers(loggers)
    prev = read_json(ctx.run_dir / "results.json", default={})
    summary["qcann_top1"] = qc_art["metrics"]["test_top1"]
    summary["ann_top1"] = prev.get("ann_top1") or qc_art["metrics"].get("ann_test_top1")
    return update_results(ctx.run_dir, rows, **summary)
