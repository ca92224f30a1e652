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
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lowlat.artifacts import ANN, QCANN, RATENORM, ArtifactError, load_artifact
from lowlat.stages.common import Context, log, validate

STAGES = ("ann", "phase1", "phase2", "eval", "all")


def _stage_fns() -> dict[str, Callable[[Context], dict]]:
    from lowlat.stages.evaluate import run_eval
    from lowlat.stages.phase2 import run_phase2
    from lowlat.stages.train import run_ann, run_phase1

    return {"ann": run_ann, "phase1": run_phase1, "phase2": run_phase2, "eval": run_eval}


def _up_to_date(ctx: Context, name: str, stage: str, fp: str) -> str | None:
    """``fp`` (the stage's own fingerprint of the current config) if ``name`` exists and was
    made with it, else None."""
    try:
        art = load_artifact(ctx.run_dir / name)
    except ArtifactError:
        return None
    if art.get("fingerprint") == fp and not ctx.cfg.force:
        log.info("stage %s: %s is up to date, skipped (force=true reruns it)", stage, name)
        return fp
    return None


def run_all(ctx: Context) -> dict:
    """Every stage in order, each skipped when its outputs match the config."""
    from lowlat.methods import get_method
    from lowlat.stages.evaluate import up_to_date
    from lowlat.stages.train import ann_fingerprint, phase1_fingerprint

    fns = _stage_fns()
    out: dict = {}
    fp = _up_to_date(ctx, ANN, "ann", ann_fingerprint(ctx))
    if fp is None:
        out["ann"] = fns["ann"](ctx)
        fp = load_artifact(ctx.run_dir / ANN)["fingerprint"]
    sources = {get_method(m).source for m in ctx.cfg.eval.methods}
    for act in ["qc"] + (["ratenorm"] if "ratenorm" in sources else []):
        sub = ctx.with_overrides({"phase1.activation": act})
        if _up_to_date(sub, QCANN if act == "qc" else RATENORM, "phase1",
                       phase1_fingerprint(sub, fp)) is None:
            out[f"phase1_{act}"] = fns["phase1"](sub)
    out["phase2"] = fns["phase2"](ctx)  # skips every (T, method) already calibrated
    if up_to_date(ctx) and not ctx.cfg.force:
        log.info("stage eval: results.json is up to date, skipped (force=true reruns it)")
    else:
        out["eval"] = fns["eval"](ctx)
    return out


USER_ERRORS = (ValueError, ArtifactError, FileNotFoundError, KeyError, FloatingPointError,
               InstantiationException, OmegaConfBaseException)
_entered = False  # whether Hydra got as far as calling main (see cli)


def one_line(e: BaseException) -> str:
    """The error on one line, naming the config key when Hydra/OmegaConf know it."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    key = getattr(e, "full_key", None)
    rest = []
    for ln in lines:
        if ln.startswith("full_key:"):
            key = key or ln.partition(":")[2].strip()
        elif not ln.startswith(("object_type=", "Set the environment variable HYDRA_FULL")):
            rest.append(ln.replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception",
                                   ""))
    msg = " ".join(rest) or type(e).__name__
    return f"{key}: {msg}" if key and key not in msg else msg


def report(msg: str) -> None:
    """Print a user error once, on stderr; the job's log file records it too."""
    print(f"error: {msg}", file=sys.stderr)
    rec = logging.getLogger("lowlat").makeRecord("lowlat", logging.ERROR, __file__, 0, msg,
                                                 None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(rec)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run the stage; return the objective's top-1 (for Optuna) when the results hold it.

    Every user error (a bad value or key, a missing or stale artifact, a target Hydra cannot
    build, a diverged training) ends here: one line on stderr and exit status 2.
    """
    global _entered
    _entered = True
    try:
        stage = str(cfg.stage.name)
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        validate(cfg)
        ctx = Context.from_cfg(cfg)
        fn = run_all if stage == "all" else _stage_fns()[stage]
        fn(ctx)
    except USER_ERRORS as e:
        report(one_line(e))
        sys.exit(2)
    from lowlat.results import objective_value

    obj = cfg.get("objective") or {}
    return objective_value(ctx.run_dir, str(obj.get("method", "lowlat")), int(obj.get("T", 4)))


def cli() -> None:
    """``main`` whose refusals by Hydra itself (an unknown group option, a malformed override)
    exit 2 like every other user error; a crash inside a stage keeps Hydra's status 1."""
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and not _entered:
            sys.exit(2)
        raise


if __name__ == "__main__":
    cli()
