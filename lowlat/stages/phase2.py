"""Stage ``phase2``: qcann.pt -> snn_T<T>_<method>.pt for every T and calibrated method.

Each artifact records its calibration report and its top-1 on the validation split (what sweeps
and ablations choose on); the test split is read only by stage ``eval``. A (T, method) whose
artifact already matches the config and the QC-ANN is skipped, so a killed run resumes there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import torch
from omegaconf import OmegaConf

from lowlat import methods
from lowlat.artifacts import (
    SOURCE_FILE,
    ArtifactError,
    load_artifact,
    load_network,
    save_artifact,
    snn_name,
)
from lowlat.calibrate import CalibConfig, calibrate
from lowlat.conversions import effective_target, target_at_levels
from lowlat.finetune import ADDED_LATER, EXECUTION, FinetuneConfig, finetune, frozen_prefix
from lowlat.methods import START_SOURCE, calibration_pair, get_method, recipe
from lowlat.neurons import reset_states
from lowlat.simulate import evaluate_snn
from lowlat.stages.common import (
    ANY,
    ConfigError,
    Context,
    calibration_images,
    check_arch,
    finish_loggers,
    limited,
    log,
    log_metrics,
    transform_eval,
)
from lowlat.stages.derived import ann_stats
from lowlat.stages.resume import load_partial, partial_path, restore_snn, save_partial


def calib_config(ctx: Context, method: str, T: int) -> CalibConfig:
    """The CalibConfig of one (method, T): the method's recipe plus the config's LWC budget."""
    p = ctx.cfg.phase2
    r = recipe(method, OmegaConf.to_container(p.lowlat, resolve=True))
    return CalibConfig(
        T=T, lmpc=r.lmpc, lwc=r.lwc, formula=r.formula, granularity=r.granularity,
        iterations=int(p.lwc.iterations), batch_size=int(p.lwc.batch_size), lr=float(p.lwc.lr),
        optimizer=r.optimizer, momentum=float(p.lwc.momentum),
        weight_decay=float(p.lwc.weight_decay), gamma=float(p.lwc.gamma),
        accept="always" if r.accept == "val" else r.accept, lmpc_iterations=r.lmpc_iterations,
        eval_batch=int(p.calib_batch), max_chunk=int(ctx.cfg.eval.max_chunk),
        seed=int(ctx.cfg.seed), head=r.head, surrogate=r.surrogate)


def finetune_config(ctx: Context) -> FinetuneConfig:
    f = ctx.cfg.phase2.finetune
    return FinetuneConfig(iterations=int(f.iterations), lr=float(f.lr),
                          warmup=int(f.get("warmup", FinetuneConfig.warmup)),
                          seed=None if f.get("seed") is None else int(f.seed),
                          batch_size=int(f.batch_size), kd=float(f.kd), gamma=float(f.gamma),
                          eval_every=int(f.eval_every), neurons=bool(f.get("neurons", False)),
                          precision=str(f.get("precision", FinetuneConfig.precision)),
                          fused=bool(f.get("fused", FinetuneConfig.fused)),
                          channels_last=bool(f.get("channels_last",
                                                   FinetuneConfig.channels_last)),
                          frozen=int(f.get("frozen", FinetuneConfig.frozen)),
                          backward=str(f.get("backward", FinetuneConfig.backward)),
                          surrogate=str(f.get("surrogate", FinetuneConfig.surrogate)))


def _finetunes(ctx: Context, method: str) -> bool:
    return recipe(method, OmegaConf.to_container(ctx.cfg.phase2.lowlat, resolve=True)).finetune


def train_batches(dm, batch_size: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented, normalised training batches on ``device``, epoch after epoch."""
    while True:
        for x, y in dm.train_dataloader(batch_size):
            yield dm.transform_batch(x.to(device), train=True), y.to(device)


def start_source(ctx: Context, method: str) -> str:
    return methods.start_source(method, OmegaConf.to_container(ctx.cfg.phase2.lowlat,
                                                               resolve=True))


def _target(ctx: Context, method: str, T: int, src_art: dict) -> str:
    """'L' or 'T' (``methods.effective_target``) for one (method, T) and its source artifact."""
    r = recipe(method, OmegaConf.to_container(ctx.cfg.phase2.lowlat, resolve=True))
    return effective_target(r.target, src_art["act"].get("kwargs", {}).get("levels"), T)


def artifact_fp(ctx: Context, method: str, T: int, source_fp: str, target: str = "L",
                teacher_fp: str | None = None) -> str:
    """What a calibrated artifact depends on: its recipe, budget, data size and its source
    artifact (and, for a start from the ReLU ANN, the statistics its thresholds come from; for
    a fine-tuned method, its budget, augmentation and teacher)."""
    keys = ["phase2.calib_samples", "seed", "data.val_fraction"]
    if start_source(ctx, method) == "ann":
        keys += ["eval.stat_images", "eval.robust_percentile"]
    cc = calib_config(ctx, method, T).fingerprint()
    extra = "" if target == "L" else f":target={target}"  # earlier artifacts stay valid
    if _finetunes(ctx, method):
        keys += ["phase2.finetune", "data.crop_padding", "data.flip", "data.autoaugment",
                 "data.cutout"]
        extra += f":finetune:teacher={teacher_fp}"
    return ctx.fp(*keys, upstream=f"{source_fp}:{method}:{cc}{extra}",
                  omit={"phase2.finetune": {**ADDED_LATER, **dict.fromkeys(EXECUTION, ANY)}})


def run_phase2(ctx: Context) -> dict:
    cfg, p = ctx.cfg, ctx.cfg.phase2
    arts: dict[str, dict] = {}
    sources = {start_source(ctx, m) for m in p.methods}
    if any(_finetunes(ctx, m) for m in p.methods) and float(p.finetune.kd) > 0:
        sources.add("ann")  # the fine-tune's teacher
    for src in sorted(sources):
        arts[src] = load_artifact(ctx.run_dir / SOURCE_FILE[src], src)
        check_arch(ctx, arts[src], ctx.run_dir / SOURCE_FILE[src])
    todo = []
    for T in sorted(int(t) for t in p.timesteps):
        for method in p.methods:
            src_art = arts[start_source(ctx, method)]
            fp = artifact_fp(ctx, method, T, src_art["fingerprint"],
                             _target(ctx, method, T, src_art),
                             arts["ann"]["fingerprint"] if "ann" in arts else None)
            try:
                done = load_artifact(ctx.run_dir / snn_name(T, method), "snn")
            except ArtifactError:
                done = None
            if done is not None and done.get("fingerprint") == fp and not cfg.force:
                log.info("phase2 %s T=%d: %s is up to date, skipped", method, T,
                         snn_name(T, method))
                continue
            todo.append((T, method, fp))
    if not todo:
        return {}
    dm = ctx.datamodule()
    if int(p.calib_samples) > dm.train_size:
        raise ValueError(f"phase2.calib_samples={p.calib_samples} exceeds the training set "
                         f"({dm.train_size} images)")
    nets = {src: load_network(a).to(ctx.device) for src, a in arts.items()}
    frozen = finetune_config(ctx).frozen
    for method in {m for _, m, _ in todo if _finetunes(ctx, m) and frozen}:  # before any work
        try:
            frozen_prefix(nets[start_source(ctx, method)], frozen)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    stats = None
    if "ann" in nets:  # per-channel thresholds of a start from the ReLU ANN (as stage eval)
        n = min(int(cfg.eval.stat_images), dm.train_size)
        stats = ann_stats(ctx, arts["ann"], nets["ann"], dm, n, float(cfg.eval.robust_percentile),
                          ctx.device)
    xs = torch.cat([x for x, _ in calibration_images(
        dm, int(p.calib_samples), int(p.calib_batch), ctx.device)])  # [N, C, H, W]
    tf = transform_eval(dm)
    val = limited(dm.val_dataloader(), cfg.eval.limit_batches)
    loggers = ctx.loggers()
    step = 0
    out = {}
    for T, method, fp in todo:
        cc = calib_config(ctx, method, T)
        torch.manual_seed(int(cfg.seed))
        r = recipe(method, OmegaConf.to_container(p.lowlat, resolve=True))
        start = r.start
        src_art = arts[START_SOURCE[start]]
        snn, target = calibration_pair(start, nets[START_SOURCE[start]], stats)
        eff = _target(ctx, method, T, src_art)
        if eff == "T":  # match the QC-ANN rounded to T levels (methods.target_at_levels)
            target = target_at_levels(target, T)
        snn = snn.to(ctx.device)
        # a killed run left the layers it finished in a partial file: resume after them
        part_path = partial_path(ctx.run_dir / snn_name(T, method))
        part = load_partial(part_path, fp)
        finished: list[dict] = [] if part is None else list(part["reports"])
        t0 = time.time() - (0.0 if part is None else float(part["seconds"]))
        c0 = time.process_time() - (0.0 if part is None else float(part.get("cpu_seconds", 0.0)))
        if part is not None:
            restore_snn(snn, part["state_dict"])
            snn.to(ctx.device)
            log.info("phase2 %s T=%d: resuming after layers %s (%s)", method, T,
                     ", ".join(part["done"]), part_path.name)

        def log_layer(rep: dict, T=T, method=method, part_path=part_path, fp=fp,
                      finished=finished, snn=snn, t0=t0, c0=c0) -> None:
            nonlocal step
            log.info("T=%d %s %s: MSE %s", T, method, rep["layer"], {
                k: round(v, 6) for k, v in rep.items() if k.startswith(("mse", "head_loss_"))})
            log_metrics(loggers, {f"phase2/{method}/T{T}/{k}": float(v)
                                  for k, v in rep.items() if k.startswith("mse")}, step)
            step += 1
            finished.append(rep)
            save_partial(part_path, snn, finished, fp, time.time() - t0, time.process_time() - c0)

        def val_acc(net, desc: str, T: int = T) -> tuple[float, int]:
            reset_states(net)
            st = evaluate_snn(net, val, [T], transform=tf, max_chunk=int(cfg.eval.max_chunk),
                              device=ctx.device, stats=False, desc=f"{desc} T={T} (val)",
                              channels_last=True if cfg.eval.get("channels_last") else None)
            return st.accuracy()[T], st.n

        if cc.lmpc or cc.lwc or cc.head != "none":  # a start that is fine-tuned as it is skips it
            calibrate(snn, target, xs, cc, log=log_layer, done=[r["layer"] for r in finished])
        reports = finished
        val_top1, n_val = val_acc(snn, method)
        metrics: dict = {}
        if recipe(method, OmegaConf.to_container(p.lowlat, resolve=True)).accept == "val" \
                and cc.lwc:
            # keep the weight calibration only if it beats the same pass without it, on the
            # validation split: a falling rate MSE does not protect the accuracy (issue 9)
            alt, _ = calibration_pair(start, nets[START_SOURCE[start]], stats)
            alt = alt.to(ctx.device)
            if cc.lmpc or cc.head != "none":
                calibrate(alt, target, xs, replace(cc, lwc=False), progress=False)
            alt_top1, _ = val_acc(alt, f"{method} without LWC")
            metrics.update(lwc_kept=alt_top1 <= val_top1, val_top1_without_lwc=alt_top1,
                           val_top1_with_lwc=val_top1)
            if alt_top1 > val_top1:
                log.info("phase2 %s T=%d: LWC lowered validation top-1 (%.4f -> %.4f): "
                         "discarded", method, T, alt_top1, val_top1)
                snn, val_top1 = alt, alt_top1
        if r.finetune:
            fc = finetune_config(ctx)
            rep = finetune(snn, train_batches(dm, fc.batch_size, ctx.device), T, fc,
                           lambda net, m=method: val_acc(net, f"{m} fine-tune")[0],
                           teacher=nets.get("ann") if fc.kd > 0 else None,
                           seed=int(cfg.seed) if fc.seed is None else fc.seed,
                           start=val_top1)
            log.info("phase2 %s T=%d: fine-tune validation top-1 %.4f -> %.4f (best at step "
                     "%d)", method, T, val_top1, rep["ft_val_best"], rep["ft_best_iteration"])
            reports = [*reports, rep]
            metrics.update(val_top1_before_ft=val_top1, ft_kept=rep["ft_val_best"] > val_top1)
            val_top1 = rep["ft_val_best"]
        seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
        reset_states(snn)
        metrics.update({"val_top1": val_top1, "val_images": n_val, "calib_seconds": seconds,
                        "calib_cpu_seconds": cpu_seconds, "layers": reports})
        save_artifact(ctx.run_dir / snn_name(T, method), "snn", snn.cpu(), src_art["arch"],
                      src_art["act"], metrics, ctx.config_dict(), fp, T=T, method=method,
                      label=get_method(method).label, upstream=src_art["fingerprint"],
                      recipe={**cc.__dict__, "start": start, "target": eff,
                              "target_setting": r.target,
                              **({"finetune": finetune_config(ctx).fingerprint()}
                                 if r.finetune else {})})
        part_path.unlink(missing_ok=True)  # the artifact holds it all now
        log_metrics(loggers, {f"phase2/{method}/T{T}/val_top1": val_top1,
                              f"phase2/{method}/T{T}/calib_seconds": seconds}, step)
        log.info("phase2 %s T=%d: validation top-1 %.4f (calibration %.1f s wall, %.1f s CPU)",
                 method, T, val_top1, seconds, cpu_seconds)
        out[f"{method}/T{T}"] = val_top1
    finish_loggers(loggers)
    return out
