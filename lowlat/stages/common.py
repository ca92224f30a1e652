"""What every stage needs: the data module, the device, loggers, fingerprints, validation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lowlat.artifacts import fingerprint
from lowlat.models import model_entrypoint

log = logging.getLogger("lowlat")

METHODS = ("phase1", "opti", "opt", "unbiased", "maxnorm", "robustnorm", "ratenorm", "lmpc", "lwc",
           "lmpc+lwc")
CALIBRATED = ("lmpc", "lwc", "lmpc+lwc")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is valid."""


def validate(cfg: DictConfig) -> None:
    """Check the settings every stage relies on before anything is computed or written."""
    model_entrypoint(cfg.model.name)  # raises with the list of registered models
    if int(cfg.phase1.levels) < 1:
        raise ConfigError(f"phase1.levels (L) must be >= 1, got {cfg.phase1.levels}")
    if cfg.phase1.activation not in ("qc", "ratenorm"):
        raise ConfigError(
            f"phase1.activation must be qc or ratenorm, got {cfg.phase1.activation!r}")
    il = cfg.phase1.init_lambda
    if not (il in ("percentile", "max") or (isinstance(il, int | float) and il > 0)):
        raise ConfigError(f"phase1.init_lambda must be percentile, max or a number > 0, got {il!r}")
    for key in ("eval.timesteps", "phase2.timesteps"):
        ts = OmegaConf.select(cfg, key)
        if not ts or any(int(t) < 1 for t in ts):
            raise ConfigError(f"{key} must be a non-empty list of integers >= 1, got {ts}")
    for m in cfg.eval.methods:
        if m not in METHODS:
            raise ConfigError(f"eval.methods: unknown method {m!r}; valid: {', '.join(METHODS)}")
    for m in cfg.phase2.methods:
        if m not in CALIBRATED:
            raise ConfigError(f"phase2.methods: unknown {m!r}; valid: {', '.join(CALIBRATED)}")
    if int(cfg.phase2.calib_samples) < 1:
        raise ConfigError(f"phase2.calib_samples must be >= 1, got {cfg.phase2.calib_samples}")
    lm = cfg.phase2.lmpc
    for key, val, ok in (("formula", lm.formula, ("signed", "abs")),
                         ("granularity", lm.granularity, ("channel", "neuron")),
                         ("base", lm.base, ("zero", "half", "unbiased"))):
        if val not in ok:
            raise ConfigError(f"phase2.lmpc.{key} must be one of {ok}, got {val!r}")
    if cfg.phase2.lwc.optimizer not in ("adam", "sgd"):
        raise ConfigError(
            f"phase2.lwc.optimizer must be adam or sgd, got {cfg.phase2.lwc.optimizer!r}")


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

    def datamodule(self) -> L.LightningDataModule:
        dm = hydra.utils.instantiate(self.cfg.data)
        dm.setup()
        return dm

    def config_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg, resolve=True)  # type: ignore[return-value]

    def fp(self, *keys: str, upstream: str = "") -> str:
        """Fingerprint of the config sections a stage depends on (and its input artifact)."""
        def plain(v):
            return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v

        parts = {k: plain(OmegaConf.select(self.cfg, k)) for k in keys}
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


def finish_loggers(loggers: list) -> None:
    for lg in loggers:
        try:
            lg.finalize("success")
        except Exception:  # noqa: BLE001 - a logger failing to close must not fail the stage
            log.warning("logger %s failed to finalize", type(lg).__name__)
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass


def log_metrics(loggers: list, metrics: dict[str, float], step: int | None = None) -> None:
    for lg in loggers:
        lg.log_metrics(metrics, step=step)


def transform_eval(dm):
    return lambda x: dm.transform_batch(x, train=False)


def calibration_images(dm, n: int, batch_size: int,
                       device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` training images (no augmentation), normalised, in batches on ``device``."""
    out = []
    for x, y in dm.calibration_loader(n, batch_size):
        out.append((dm.transform_batch(x.to(device), train=False), y.to(device)))
    return out
