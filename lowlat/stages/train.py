"""Stages ``ann`` (ReLU ANN) and ``phase1`` (QC-ANN or Rate-Norm ANN fine-tuned from it)."""

from __future__ import annotations

import time

import hydra
import lightning as L
import torch
from torch import nn

from lowlat.activations import QCActivation, RateNorm
from lowlat.artifacts import ANN, QCANN, RATENORM, load_artifact, load_network, save_artifact
from lowlat.convert import swap_activations
from lowlat.distributed import after_fit
from lowlat.lit import BestWeights, Classifier, evaluate, first_nonfinite
from lowlat.models import create_model
from lowlat.stages.common import (
    Context,
    check_arch,
    finish_loggers,
    log,
    transform_eval,
)
from lowlat.stages.derived import ann_stats, network_macs
from lowlat.stages.resume import EpochCheckpoint, checkpoint_folder, clear, resume_path


def _fit(ctx: Context, model: nn.Module, dm, epochs: int, stage: str, artifact: str, fp: str,
         **opt) -> tuple[nn.Module, dict]:
    """Train with Lightning and keep the weights of the best validation epoch.

    Only the validation split is read here: the test split belongs to stage ``eval``. Every
    epoch is checkpointed under ``ckpt/``, tied to ``fp`` (the artifact's fingerprint), so a
    killed run continues from its last epoch; the caller clears it once the artifact is saved.
    """
    L.seed_everything(int(ctx.cfg.seed), workers=True)
    lit = Classifier(model, dm.num_classes, epochs=epochs, **opt)
    lit.set_train_mode()
    best = BestWeights("val/top1")
    folder = checkpoint_folder(ctx.run_dir, artifact)
    ckpt, first = resume_path(folder, fp, stage)
    loggers = ctx.loggers()
    trainer = hydra.utils.instantiate(
        ctx.cfg.trainer, max_epochs=epochs, logger=loggers,
        callbacks=[best, EpochCheckpoint(folder, fp)], default_root_dir=str(ctx.run_dir),
    )
    t0 = time.time()
    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    wall = time.time() - t0
    after_fit(trainer)  # DDP: the other ranks exit here; rank 0 alone evaluates and writes
    model = lit.model.cpu().eval()
    finish_loggers(loggers)
    bad = first_nonfinite(model)
    if bad is not None:  # never save a network that cannot be converted faithfully
        raise FloatingPointError(f"stage {stage}: parameter {bad!r} is NaN/inf after training; "
                                 "nothing was saved (lower the learning rate)")
    val = evaluate(model, dm.val_dataloader(), transform_eval(dm))
    metrics = {"val_top1": val, "best_val_top1": best.best, "best_epoch": best.epoch,
               "selected_on": "val", "epochs": epochs, "train_seconds": wall,
               "seconds_per_epoch": wall / max(1, trainer.current_epoch - first)}
    return model, metrics


# Phase I options added later, at the value that reproduces what came before: left out of the
# fingerprint there, so earlier QC-ANNs stay valid.
PHASE1_ADDED = {"kd": 0.0, "optimizer": "sgd"}


def ann_fingerprint(ctx: Context) -> str:
    return ctx.fp("data", "model", "ann", "seed")


def phase1_fingerprint(ctx: Context, ann_fp: str) -> str:
    return ctx.fp("phase1", upstream=ann_fp, omit={"phase1": PHASE1_ADDED})


def run_ann(ctx: Context) -> dict:
    cfg = ctx.cfg
    dm = ctx.datamodule()
    arch = ctx.arch(dm)
    L.seed_everything(int(cfg.seed))
    model = create_model(arch["name"], arch["num_classes"], arch["in_channels"], "relu",
                         **arch["kwargs"])
    fp = ann_fingerprint(ctx)
    model, metrics = _fit(ctx, model, dm, int(cfg.ann.epochs), "ann", ANN, fp, lr=cfg.ann.lr,
                          momentum=cfg.ann.momentum, weight_decay=cfg.ann.weight_decay)
    # eq. 18's denominator, measured once here for stage eval (on one validation image's shape)
    sample = transform_eval(dm)(next(iter(dm.val_dataloader()))[0][:1])
    metrics.update(macs=network_macs(model, sample), macs_input=list(sample.shape[1:]))
    save_artifact(ctx.run_dir / ANN, "ann", model, arch, {"name": "relu"}, metrics,
                  ctx.config_dict(), fp)
    clear(checkpoint_folder(ctx.run_dir, ANN))
    log.info("ANN validation top-1 %.4f -> %s", metrics["val_top1"], ctx.run_dir / ANN)
    return metrics


def phase1_artifact_name(activation: str) -> str:
    return QCANN if activation == "qc" else RATENORM


def run_phase1(ctx: Context) -> dict:
    _cfg, p = ctx.cfg, ctx.cfg.phase1
    ann_art = load_artifact(ctx.run_dir / ANN, "ann")
    check_arch(ctx, ann_art, ctx.run_dir / ANN)
    dm = ctx.datamodule()
    ann = load_network(ann_art)
    n = min(int(p.init_batches) * dm.batch_size, dm.train_size)
    stats = ann_stats(ctx, ann_art, ann, dm, n, float(p.init_percentile))
    act_name = str(p.activation)
    if act_name == "qc":
        per_channel = str(p.granularity) == "channel"
        suffix = "_channel" if per_channel else ""

        def init(name: str) -> torch.Tensor:
            if p.init_lambda in ("percentile", "max"):
                lam = torch.as_tensor(stats[name][f"{p.init_lambda}{suffix}"])
            else:
                lam = torch.full(stats[name]["percentile_channel"].shape if per_channel else (),
                                 float(p.init_lambda))
            return lam.float().clamp(min=1e-3)

        model = swap_activations(ann, lambda n: QCActivation(
            int(p.levels), float(p.shift), init_lambda=init(n)))
        act = {"name": "qc", "kwargs": {"levels": int(p.levels), "shift": float(p.shift)}}
    else:
        def make_rn(name: str) -> RateNorm:
            rn = RateNorm()
            rn.running_max.fill_(max(stats[name]["max"], 1e-3))
            rn.initialised.fill_(True)
            return rn

        model = swap_activations(ann, make_rn)
        act = {"name": "ratenorm", "kwargs": {}}
    init_top1 = evaluate(model, dm.val_dataloader(), transform_eval(dm))
    out = ctx.run_dir / phase1_artifact_name(act_name)
    fp = phase1_fingerprint(ctx, ann_art["fingerprint"])
    kd, optimizer = float(p.get("kd", 0.0)), str(p.get("optimizer", "sgd"))
    model, metrics = _fit(
        ctx, model, dm, int(p.epochs), "phase1", out.name, fp, lr=p.lr, momentum=p.momentum,
        weight_decay=p.weight_decay, threshold_lr=p.threshold_lr,
        threshold_weight_decay=p.threshold_weight_decay, freeze_bn=bool(p.freeze_bn),
        teacher=load_network(ann_art) if kd > 0 else None, kd=kd, optimizer=optimizer)
    metrics["ann_val_top1"] = ann_art["metrics"].get("val_top1",
                                                     ann_art["metrics"].get("best_val_top1"))
    metrics["init_val_top1"] = init_top1
    metrics["freeze_bn"] = bool(p.freeze_bn)
    metrics["granularity"] = str(p.granularity)
    metrics["kd"], metrics["optimizer"] = kd, optimizer
    metrics["thresholds"] = {n: float(m.threshold.mean()) for n, m in model.named_modules()
                             if isinstance(m, QCActivation | RateNorm)}
    save_artifact(out, "qcann" if act_name == "qc" else "ratenorm", model, ann_art["arch"], act,
                  metrics, ctx.config_dict(), fp)
    clear(checkpoint_folder(ctx.run_dir, out.name))
    log.info("validation top-1: ANN %.4f | %s %.4f (before fine-tuning %.4f) -> %s",
             metrics["ann_val_top1"], act_name.upper(), metrics["val_top1"], init_top1, out)
    return metrics
