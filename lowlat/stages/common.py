"""What every stage needs: the data module, the device, loggers, fingerprints, validation."""

from __future__ import annotations

import itertools
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lowlat.artifacts import fingerprint
from lowlat.conversions import TARGETS
from lowlat.finetune import PRECISIONS, FinetuneConfig
from lowlat.head import HEAD_LOSSES
from lowlat.models import create_model, model_entrypoint
from lowlat.neurons import SURROGATES

log = logging.getLogger("lowlat")
ANY = object()  # in ``Context.fp``'s ``omit``: the key is left out whatever its value

class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is valid."""


def _one_of(key: str, val, ok: tuple) -> None:
    if val not in ok:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, ok))}, got {val!r}")


# (key, lowest valid, highest valid, type): checked before any stage runs, the key named.
NUMBERS = [
    ("seed", 0, None, int), ("phase1.levels", 1, None, int), ("phase1.epochs", 1, None, int),
    ("phase1.lr", 0, None, float), ("phase1.shift", 0, 1, float),
    ("phase1.init_percentile", 0, 100, float), ("phase1.init_batches", 1, None, int),
    ("phase1.threshold_lr", 0, None, float), ("phase1.kd", 0, 1, float),
    ("ann.epochs", 1, None, int), ("ann.lr", 0, None, float), ("eval.max_chunk", 1, None, int),
    ("eval.stat_images", 1, None, int), ("eval.robust_percentile", 0, 100, float),
    ("phase2.calib_samples", 1, None, int), ("phase2.calib_batch", 1, None, int),
    ("phase2.lwc.lr", 0, None, float), ("phase2.lwc.iterations", 0, None, int),
    ("phase2.lwc.batch_size", 1, None, int), ("phase2.lwc.gamma", 0, None, float),
    ("phase2.lwc.momentum", 0, 1, float), ("phase2.lwc.weight_decay", 0, None, float),
    ("phase2.lowlat.lmpc_iterations", 1, None, int),
    ("phase2.finetune.iterations", 1, None, int), ("phase2.finetune.lr", 0, None, float),
    ("phase2.finetune.batch_size", 1, None, int), ("phase2.finetune.kd", 0, 1, float),
    ("phase2.finetune.gamma", 0, None, float), ("phase2.finetune.eval_every", 1, None, int),
    ("phase2.finetune.warmup", 0, None, int), ("phase2.finetune.seed", 0, None, int),
]


def _number(cfg: DictConfig, key: str, lo: float | None, hi: float | None, kind: type) -> None:
    v = OmegaConf.select(cfg, key)
    if v is None:
        return
    ok = isinstance(v, int | float) and not isinstance(v, bool) and (
        kind is float or isinstance(v, int)) and math.isfinite(v)
    strict_lo = key.endswith(("lr", "gamma")) or key == "phase1.lr"
    if ok and lo is not None:
        ok = v > lo if strict_lo else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        rng = (f"{'>' if strict_lo else '>='} {lo}" if hi is None else f"in [{lo}, {hi}]")
        raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'} {rng}, "
                          f"got {v!r}")


def _check_frozen(cfg: DictConfig, k: int) -> None:
    """A frozen prefix longer than the configured model, refused before stage ann trains it (stage
    phase2 checks the trained network again, e.g. a model this cannot build from its name)."""
    from lowlat.finetune import frozen_prefix
    from lowlat.methods import recipe

    lw = OmegaConf.to_container(cfg.phase2.lowlat, resolve=True)
    if not any(recipe(m, lw).finetune for m in cfg.phase2.methods):
        return
    try:
        net = create_model(str(cfg.model.name), **OmegaConf.to_container(
            cfg.model.get("kwargs") or {}, resolve=True))
    except Exception:  # noqa: BLE001 - needs the data's shape: stage phase2 checks it
        return
    try:
        frozen_prefix(net, k)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def validate(cfg: DictConfig) -> None:
    """Check the settings every stage relies on before anything is computed or written."""
    from lowlat.methods import CALIBRATED, METHODS, STARTS
    from lowlat.stages.schema import check_keys, check_targets

    check_keys(cfg)  # a typo added with `+` is not silently ignored
    # every `???` and `${...}` now, not when a stage first reads it (OmegaConf names the key)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    model_entrypoint(cfg.model.name)  # raises with the list of registered models
    check_targets(cfg)
    for key, lo, hi, kind in NUMBERS:
        _number(cfg, key, lo, hi, kind)
    vf = OmegaConf.select(cfg, "data.val_fraction")
    if vf is not None and not 0 < float(vf) < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {vf}: model selection and "
                          "every tuned default need a validation split that is not the test split")
    _one_of("phase1.activation", cfg.phase1.activation, ("qc", "ratenorm"))
    _one_of("phase1.granularity", cfg.phase1.get("granularity", "layer"), ("layer", "channel"))
    _one_of("phase1.optimizer", cfg.phase1.get("optimizer", "sgd"), ("sgd", "adam"))
    if cfg.phase1.get("optimizer", "sgd") == "adam" and float(cfg.phase1.momentum) != 0.9:
        raise ConfigError(f"phase1.momentum={cfg.phase1.momentum} is SGD's and would be ignored "
                          "with phase1.optimizer=adam; leave it at 0.9 or use optimizer=sgd")
    il = cfg.phase1.init_lambda
    if not (il in ("percentile", "max") or (isinstance(il, int | float) and il > 0)):
        raise ConfigError(f"phase1.init_lambda must be percentile, max or a number > 0, got {il!r}")
    for key in ("eval.timesteps", "phase2.timesteps", "eval.methods", "phase2.methods"):
        if not OmegaConf.is_list(OmegaConf.select(cfg, key)):
            raise ConfigError(f"{key} must be a list, e.g. {key}=[2,4]; got "
                              f"{OmegaConf.select(cfg, key)!r}")
    for key in ("eval.timesteps", "phase2.timesteps"):
        ts = OmegaConf.select(cfg, key)
        if not ts or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1
                             for t in ts):
            raise ConfigError(f"{key} must be a non-empty list of integers >= 1, got {list(ts)}")
    dev = str(cfg.device)
    if dev != "auto":
        try:
            d = torch.device(dev)
        except RuntimeError:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {dev!r}") from None
        if d.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={dev}: no CUDA device on this machine; use device=cpu "
                              "or device=auto")
        if d.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {dev!r}")
    for m in cfg.eval.methods:
        if m not in METHODS:
            raise ConfigError(f"eval.methods: unknown method {m!r}; valid: {', '.join(METHODS)}")
    for m in cfg.phase2.methods:
        if m not in CALIBRATED:
            raise ConfigError(f"phase2.methods: {m!r} is not a calibrated method; valid: "
                              f"{', '.join(CALIBRATED)}")
    missing = [m for m in cfg.eval.methods if m in CALIBRATED and m not in cfg.phase2.methods]
    if missing:
        raise ConfigError(f"eval.methods has {', '.join(missing)}, which phase2.methods "
                          f"({', '.join(cfg.phase2.methods)}) does not calibrate: add them to "
                          "phase2.methods or remove them from eval.methods")
    lw = cfg.phase2.lowlat
    _one_of("phase2.lowlat.start", lw.start, tuple(STARTS))
    _one_of("phase2.lowlat.formula", lw.formula, ("signed", "abs"))
    _one_of("phase2.lowlat.granularity", lw.granularity, ("channel", "neuron"))
    _one_of("phase2.lowlat.optimizer", lw.optimizer, ("adam", "sgd"))
    _one_of("phase2.lowlat.accept", lw.accept, ("mse", "always", "val"))
    _one_of("phase2.lowlat.head", lw.get("head", "none"), HEAD_LOSSES)
    _one_of("phase2.lowlat.target", lw.get("target", "L"), TARGETS)
    _one_of("phase2.lowlat.surrogate", lw.get("surrogate", "scaled"), SURROGATES)
    for key in ("neurons", "fused", "channels_last"):
        flag = cfg.phase2.get("finetune", {}).get(key, False)
        if not isinstance(flag, bool):
            raise ConfigError(f"phase2.finetune.{key} must be true or false, got {flag!r}")
    for key in ("fused", "channels_last", "stats"):
        flag = cfg.eval.get(key, False)
        if not isinstance(flag, bool):
            raise ConfigError(f"eval.{key} must be true or false, got {flag!r}")
    _one_of("phase2.finetune.precision", cfg.phase2.get("finetune", {}).get("precision", "fp32"),
            PRECISIONS)
    ft = cfg.phase2.get("finetune", {})
    frozen = ft.get("frozen", 0)
    if isinstance(frozen, bool) or not isinstance(frozen, int) or frozen < 0:
        raise ConfigError(f"phase2.finetune.frozen must be an integer >= 0 (leading conv/linear "
                          f"layers kept as calibrated), got {frozen!r}")
    try:  # the fine-tune's own checks (backward, and what it cannot run with), named as keys
        FinetuneConfig(backward=str(ft.get("backward", "bptt")),
                       precision=str(ft.get("precision", "fp32")), frozen=frozen,
                       surrogate=str(ft.get("surrogate", FinetuneConfig.surrogate)))
    except ValueError as e:
        raise ConfigError(f"phase2.{e}") from None
    if frozen:
        _check_frozen(cfg, frozen)
    if ft.get("warmup", 0) >= ft.get("iterations", 1):
        raise ConfigError(f"phase2.finetune.warmup ({ft.get('warmup')}) must be below "
                          f"phase2.finetune.iterations ({ft.get('iterations')})")
    if lw.get("target", "L") == "T" and lw.start == "channelnorm":
        # (finer is satisfied by the ReLU target, the limit of many levels: it keeps it)
        raise ConfigError("phase2.lowlat.target=T needs a QC-ANN start (the channelnorm start "
                          "matches the ReLU ANN, which has no levels): set "
                          "phase2.lowlat.target=L or finer, or phase2.lowlat.start to phase1, "
                          "opti or unbiased")


@dataclass
class Context:
    cfg: DictConfig
    run_dir: Path
    device: torch.device

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Context:
        dev = str(cfg.device)
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(cfg=cfg, run_dir=Path(cfg.paths.run_dir), device=torch.device(dev))

    def with_overrides(self, values: dict[str, Any]) -> Context:
        """A copy of this context whose config has ``values`` set (the original is untouched)."""
        cfg = self.cfg.copy()
        for k, v in values.items():
            OmegaConf.update(cfg, k, v, merge=False)
        return Context(cfg=cfg, run_dir=self.run_dir, device=self.device)

    def datamodule(self) -> L.LightningDataModule:
        dm = hydra.utils.instantiate(self.cfg.data)
        dm.setup()
        return dm

    def config_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg, resolve=True)  # type: ignore[return-value]

    def fp(self, *keys: str, upstream: str = "", omit: dict[str, dict] | None = None) -> str:
        """Fingerprint of the config sections a stage depends on (and its input artifact).

        ``omit``: per section, keys left out while they hold the given value (an option added
        later, at its default, leaves the artifacts made before it valid), or whatever they hold
        when that value is :data:`ANY` (an execution detail such as a compiled kernel).
        """
        def plain(v):
            return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v

        parts = {k: plain(OmegaConf.select(self.cfg, k)) for k in keys}
        for k, defaults in (omit or {}).items():
            if isinstance(parts.get(k), dict):
                parts[k] = {n: v for n, v in parts[k].items()
                            if n not in defaults or (defaults[n] is not ANY and defaults[n] != v)}
        return fingerprint({"sections": parts, "upstream": upstream})

    def loggers(self) -> list:
        cfg = self.cfg.get("logger") or {}
        return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None]

    def arch(self, dm) -> dict[str, Any]:
        return {
            "name": str(self.cfg.model.name), "num_classes": int(dm.num_classes),
            "in_channels": int(dm.in_channels),
            "kwargs": OmegaConf.to_container(self.cfg.model.get("kwargs") or {}, resolve=True),
        }


def check_arch(ctx: Context, art: dict, path: Path) -> None:
    """Refuse an upstream artifact built for another model than the configured one."""
    want = {"name": str(ctx.cfg.model.name),
            "kwargs": OmegaConf.to_container(ctx.cfg.model.get("kwargs") or {}, resolve=True)}
    have = {"name": art["arch"].get("name"), "kwargs": art["arch"].get("kwargs") or {}}
    if want != have:
        from lowlat.artifacts import PRODUCER, ArtifactError

        raise ArtifactError(
            f"{path} holds model {have['name']} {have['kwargs']}, but the config asks for "
            f"model={want['name']} {want['kwargs']}: rerun {PRODUCER.get(art['kind'], 'it')} "
            "with this model, or use the model it was made with")


def finish_loggers(loggers: list) -> None:
    for lg in loggers:
        try:
            lg.finalize("success")
        except Exception:  # noqa: BLE001 - a logger failing to close must not fail the stage
            log.warning("logger %s failed to finalize", type(lg).__name__)
    wandb = sys.modules.get("wandb")  # only if a logger imported it: importing costs seconds
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def log_metrics(loggers: list, metrics: dict[str, float], step: int | None = None) -> None:
    for lg in loggers:
        lg.log_metrics(metrics, step=step)


def limited(loader, limit_batches: int | None):
    """The first ``limit_batches`` batches of ``loader`` (all of it for None/0), as a list."""
    return list(itertools.islice(loader, int(limit_batches))) if limit_batches else loader


def transform_eval(dm):
    return lambda x: dm.transform_batch(x, train=False)


def calibration_images(dm, n: int, batch_size: int,
                       device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` training images (no augmentation), normalised, in batches on ``device``."""
    out = []
    for x, y in dm.calibration_loader(n, batch_size):
        out.append((dm.transform_batch(x.to(device), train=False), y.to(device)))
    return out
