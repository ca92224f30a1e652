"""Lightning DDP inside a pipeline of stages: only rank 0 outlives ``trainer.fit``.

Why: the stages evaluate and write artifacts after fitting, and later stages (phase2, eval) are
not data-parallel. So after ``fit`` the other ranks leave (exit code 0) and rank 0 alone goes on.
With ``strategy=ddp`` Lightning relaunches the command once per extra rank and marks rank 0 with
``LOCAL_RANK`` & co.; rank 0 then waits for its workers, leaves the process group and clears
those variables, so that the next stage's Trainer (``stage=all``: phase1 after ann) launches
fresh workers, which rerun the command, skip the stages whose artifacts are already up to date
and join that fit. ``ddp_spawn``'s workers live inside ``fit`` (the safe choice in Hydra
multirun); only what the callbacks left in ``callback_metrics`` comes back, so the main process
recovers the best-epoch record from there.
"""

from __future__ import annotations

import os
import sys

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _leave_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def after_fit(trainer: L.Trainer) -> None:
    """Call right after ``trainer.fit``: returns on rank 0 only."""
    if trainer.world_size <= 1:
        return
    if trainer.global_rank != 0:
        _leave_group()
        sys.exit(0)
    launcher = getattr(trainer.strategy, "launcher", None)
    if isinstance(launcher, _MultiProcessingLauncher):  # ddp_spawn: this is the main process
        for cb in trainer.callbacks:
            if hasattr(cb, "recover"):
                cb.recover(trainer)
        n = trainer.callback_metrics.get("best/epochs_run")
        if n is not None:  # for seconds per epoch
            trainer.fit_loop.epoch_progress.current.completed = int(n)
        return
    if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
        for p in launcher.procs:
            p.wait()
        _leave_group()
        for k in _LAUNCH_ENV:
            os.environ.pop(k, None)
