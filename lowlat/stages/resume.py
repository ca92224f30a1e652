"""Resume after a kill: epoch checkpoints of ``ann``/``phase1``, per-layer files of ``phase2``.

Both are tied to the fingerprint of the artifact they will become: a checkpoint or partial file
made under another config is never resumed (it is deleted, and the log says so), and both are
deleted once that artifact is written. Both hold the random state too, so a resumed run gives
the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from lowlat.artifacts import FORMAT, atomic_write
from lowlat.lit import first_nonfinite
from lowlat.stages.common import log

CKPT_DIR = "ckpt"
LAST = "last.ckpt"


def rng_state() -> dict[str, Any]:
    """Every global random state training draws from (shuffling, augmentation)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}  # plain: weights_only loads
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochCheckpoint(L.Callback):
    """Writes ``<folder>/last.ckpt`` atomically after every epoch's validation.

    That is where Lightning's own ModelCheckpoint saves, the point its resume logic expects.
    The random states go in with the callback's own state, so shuffling and augmentation after
    a resume draw what an uninterrupted run draws.
    """

    def __init__(self, folder: Path, fp: str) -> None:
        self.folder, self.fp = Path(folder), fp
        self._rng: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.folder / LAST

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fp, "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("fingerprint") != self.fp:  # resume_path() checked it already
            raise RuntimeError(f"{self.path} was made under another config")
        self._rng = state_dict["rng"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restore the random state here, not on loading: between the two, Lightning opens a
        training loader iterator that an uninterrupted run does not, and it draws a seed."""
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if first_nonfinite(pl_module.model) is not None:
            return  # the epoch-end check stops the fit; never resume into NaN weights
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def checkpoint_folder(run_dir: Path, artifact: str) -> Path:
    """``<run_dir>/ckpt/<artifact stem>``: one folder per artifact (qcann and ratenorm apart)."""
    return Path(run_dir) / CKPT_DIR / Path(artifact).stem


def resume_path(folder: Path, fp: str, stage: str) -> tuple[str | None, int]:
    """``last.ckpt`` of ``folder`` and the first epoch left to train if it was made under the
    fingerprint ``fp``, else ``(None, 0)``. One of another config, or unreadable, is deleted."""
    path = folder / LAST
    if not path.is_file():
        return None, 0
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        have = ckpt["callbacks"][EpochCheckpoint.__qualname__]["fingerprint"]
    except Exception as e:  # noqa: BLE001 - unreadable: start afresh rather than fail
        log.warning("stage %s: cannot read the checkpoint %s (%s): training from epoch 0",
                    stage, path, e)
        clear(folder)
        return None, 0
    if have != fp:
        log.warning("stage %s: checkpoint %s was made under another config (fingerprint %s, "
                    "now %s): deleted, training from epoch 0", stage, path, have, fp)
        clear(folder)
        return None, 0
    first = int(ckpt["epoch"]) + 1  # the checkpoint closes that epoch
    log.info("stage %s: resuming from %s at epoch %d", stage, path, first)
    return str(path), first


def clear(folder: Path) -> None:
    """Delete a checkpoint folder (its artifact is written, or it is stale)."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # ckpt/ itself, once empty


# ---- phase2: one partial file per (T, method), rewritten after every calibrated layer ------

def partial_path(artifact: Path) -> Path:
    """``snn_T2_lowlat.pt`` -> ``snn_T2_lowlat.partial.pt``, next to it."""
    return artifact.with_name(artifact.stem + ".partial.pt")


def load_partial(path: Path, fp: str) -> dict[str, Any] | None:
    """The partial calibration at ``path`` if made under ``fp``; a stale one is deleted."""
    if not path.is_file():
        return None
    try:
        part = torch.load(path, map_location="cpu", weights_only=True)
        ok = part.get("format") == FORMAT and part.get("kind") == "partial"
    except Exception:  # noqa: BLE001 - a torn or foreign file is simply not resumed
        ok, part = False, {}
    if not ok or part.get("fingerprint") != fp:
        log.warning("%s was made under another config or cannot be read: ignored, "
                    "calibrating from the first layer", path)
        path.unlink(missing_ok=True)
        return None
    return part


def save_partial(path: Path, snn: torch.nn.Module, reports: list[dict], fp: str,
                 seconds: float, cpu_seconds: float = 0.0) -> None:
    """The SNN after its finished layers, their reports and names, tied to ``fp``; the wall
    and process CPU seconds spent so far, so that a resumed run reports the whole cost."""
    state = {k: v.detach().cpu().clone() for k, v in snn.state_dict().items()}
    payload = {"format": FORMAT, "kind": "partial", "fingerprint": fp, "state_dict": state,
               "reports": list(reports), "done": [r["layer"] for r in reports],
               "seconds": seconds, "cpu_seconds": cpu_seconds}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def restore_snn(snn: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a partial calibration's state: v(0) and shift first, since LMPC changed shapes."""
    from lowlat.neurons import spiking_layers

    for name, m in spiking_layers(snn):
        m.v0 = state[f"{name}.v0"].clone()
        m.shift = state[f"{name}.shift"].clone()
    snn.load_state_dict(state)
