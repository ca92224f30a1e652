"""Hydra callbacks (``hydra.callbacks`` in conf/config.yaml): config keys that act process-wide.

Kept apart from the modules they configure so that ``import lowlat.neurons`` does not import Hydra.
"""

from __future__ import annotations

import os

from hydra.experimental.callback import Callback


class FusedFromConfig(Callback):
    """``eval.fused`` -> ``LOWLAT_FUSED`` (read by ``lowlat.fused``) for the job, restored after."""

    def __init__(self) -> None:
        self._old: str | None = None

    def on_job_start(self, config, **_kw) -> None:
        self._old = os.environ.get("LOWLAT_FUSED")
        flag = bool(config.get("eval", {}).get("fused", False))
        os.environ["LOWLAT_FUSED"] = "1" if flag else "0"

    def on_job_end(self, config, job_return, **_kw) -> None:
        if self._old is None:
            os.environ.pop("LOWLAT_FUSED", None)
        else:
            os.environ["LOWLAT_FUSED"] = self._old
