"""Command-line entry: ``python -m lowlat.run stage=<name> experiment=<name> [key=value ...]``.

Stages: ``ann`` (ReLU ANN), ``phase1`` (QC-ANN), ``phase2`` (LMPC/LWC calibration), ``eval``
(accuracy at every T for every method) and ``all`` (each in order, skipping those whose artifact
already matches the config; ``force=true`` reruns them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from lowlat.artifacts import ANN, QCANN, RATENORM, ArtifactError, load_artifact
from lowlat.stages.common import Context, log, validate

STAGES = ("ann", "phase1", "phase2", "eval", "all")


def _stage_fns() -> dict[str, Callable[[Context], dict]]:
    from lowlat.stages.evaluate import run_eval
    from lowlat.stages.phase2 import run_phase2
    from lowlat.stages.train import run_ann, run_phase1

    return {"ann": run_ann, "phase1": run_phase1, "phase2": run_phase2, "eval": run_eval}


def _up_to_date(ctx: Context, name: str, stage: str, *keys: str,
                upstream: str = "") -> str | None:
    """Fingerprint of ``name`` if it exists and matches the current config, else None."""
    try:
        art = load_artifact(ctx.run_dir / name)
    except ArtifactError:
        return None
    fp = ctx.fp(*keys, upstream=upstream)
    if art.get("fingerprint") == fp and not ctx.cfg.force:
        log.info("stage %s: %s is up to date, skipped (force=true reruns it)", stage, name)
        return fp
    return None


def run_all(ctx: Context) -> dict:
    """Every stage in order, each skipped when its outputs match the config."""
    from lowlat.methods import get_method
    from lowlat.stages.evaluate import up_to_date

    fns = _stage_fns()
    out: dict = {}
    fp = _up_to_date(ctx, ANN, "ann", "data", "model", "ann", "seed")
    if fp is None:
        out["ann"] = fns["ann"](ctx)
        fp = load_artifact(ctx.run_dir / ANN)["fingerprint"]
    sources = {get_method(m).source for m in ctx.cfg.eval.methods}
    for act in ["qc"] + (["ratenorm"] if "ratenorm" in sources else []):
        sub = ctx.with_overrides({"phase1.activation": act})
        if _up_to_date(sub, QCANN if act == "qc" else RATENORM, "phase1", "phase1",
                       upstream=fp) is None:
            out[f"phase1_{act}"] = fns["phase1"](sub)
    out["phase2"] = fns["phase2"](ctx)  # skips every (T, method) already calibrated
    if up_to_date(ctx) and not ctx.cfg.force:
        log.info("stage eval: results.json is up to date, skipped (force=true reruns it)")
    else:
        out["eval"] = fns["eval"](ctx)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run the stage; return the objective's top-1 (for Optuna) when the results hold it."""
    stage = str(cfg.stage.name)
    try:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        validate(cfg)
        ctx = Context.from_cfg(cfg)
        fn = run_all if stage == "all" else _stage_fns()[stage]
        fn(ctx)
    except (ValueError, ArtifactError, FileNotFoundError, KeyError) as e:
        logging.getLogger("lowlat").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from lowlat.results import objective_value

    obj = cfg.get("objective") or {}
    return objective_value(ctx.run_dir, str(obj.get("method", "lowlat")), int(obj.get("T", 4)))


if __name__ == "__main__":
    main()
