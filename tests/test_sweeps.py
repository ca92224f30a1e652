"""Every sweep parameter must be a real config key: a typo would only fail hours into a sweep."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
SEARCHES = sorted((CONF / "hparams_search").glob("*.yaml"))


def _compose(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", ["experiment=quickstart", *overrides],
                       return_hydra_config=hydra_cfg)


def _search_group() -> str:
    """``hparams_search=`` if conf/config.yaml lists the group in its defaults, else ``+...``."""
    defaults = yaml.safe_load((CONF / "config.yaml").read_text()).get("defaults", [])
    listed = any(isinstance(d, dict) and "hparams_search" in d for d in defaults)
    return "hparams_search" if listed else "+hparams_search"


def _wandb_sample(spec: dict) -> object:
    """One value a W&B sweep could send for a parameter spec."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][0]
    lo, hi = spec["min"], spec["max"]
    dist = spec.get("distribution", "")
    if dist.startswith("int") or isinstance(lo, int) and isinstance(hi, int):
        return (lo + hi) // 2
    return math.sqrt(lo * hi) if "log" in dist else (lo + hi) / 2


def _optuna_sample(expr: str) -> str:
    """A value inside an Optuna sweep expression (``interval(a, b)``, ``range(a, b)``, a list)."""
    if m := re.search(r"(interval|range)\(\s*([^,\s]+)\s*,", expr):
        return m.group(2)
    return expr.split(",")[0].strip()


def _cases() -> list[tuple[str, str, object]]:
    cases = []
    for f in SWEEPS:
        for key, spec in yaml.safe_load(f.read_text())["parameters"].items():
            cases.append((f.name, key, _wandb_sample(spec)))
    for f in SEARCHES:
        params = ((yaml.safe_load(f.read_text()).get("hydra") or {}).get("sweeper") or {}).get(
            "params") or {}
        for key, expr in params.items():
            cases.append((f.name, key, _optuna_sample(str(expr))))
    return cases


@pytest.mark.parametrize(("source", "key", "value"), _cases(),
                         ids=lambda v: str(v) if not isinstance(v, float) else f"{v:g}")
def test_sweep_parameter_is_a_config_key(source: str, key: str, value: object) -> None:
    cfg = _compose([f"{key}={value}"])  # no '+': fails if the key does not exist
    got = OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True) if OmegaConf.is_config(
        OmegaConf.select(cfg, key)) else OmegaConf.select(cfg, key)
    want = yaml.safe_load(str(value)) if isinstance(value, str) else value
    assert got == want, f"{source}: {key}={value!r} composed to {got!r}"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_wandb_sweep_file(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    cmd = sweep["command"]
    assert cmd[cmd.index("-m") + 1] == "lowlat.run" and "${args_no_hyphens}" in cmd
    assert sweep["metric"]["name"].startswith("phase2/") and sweep["metric"]["goal"] == "maximize"
    assert sweep["metric"]["name"].endswith("/val_top1")  # sweeps choose on validation only
    fixed = [c for c in cmd if "=" in c and not c.startswith("${")]
    fixed = [c.replace("${oc.env:WANDB_RUN_ID,local}", "local") for c in fixed]
    cfg = _compose([c for c in fixed if not c.startswith("experiment=")])
    assert cfg.stage.name == "all" and "wandb" in cfg.logger


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.name)
def test_hparams_search_composes(path: Path) -> None:
    if "optuna" in path.read_text() and importlib.util.find_spec(
            "hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip("hydra-optuna-sweeper is not installed (pip install lowlat[sweep])")
    cfg = _compose([f"{_search_group()}={path.stem}"], hydra_cfg=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
    if "optuna" in path.stem:
        assert "optuna" in cfg.hydra.sweeper._target_
        assert cfg.hydra.sweeper.direction == "maximize"
        assert "TPESampler" in cfg.hydra.sweeper.sampler._target_


def test_slurm_launcher_composes() -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher is not installed (pip install lowlat[sweep])")
    cfg = _compose(["hydra/launcher=slurm"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1
