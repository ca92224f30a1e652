"""Every bad value is refused before any work, with the key named (property-style)."""

import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lowlat.stages.common import NUMBERS, ConfigError, validate

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=tiny", *overrides])


def _invalid(lo, hi, kind, rng: random.Random) -> list:
    bad: list = ["abc", "[1,2]", "null_value", "nan", "inf", "true"]
    if lo is not None:
        bad.append(lo - rng.uniform(0.5, 1e6))
        if kind is int:
            bad.append(lo + 0.5)
    if hi is not None:
        bad.append(hi + rng.uniform(0.01, 1e3))
    return bad


@pytest.mark.parametrize("key,lo,hi,kind", NUMBERS, ids=[n[0] for n in NUMBERS])
def test_invalid_numbers_are_refused_by_key(key, lo, hi, kind):
    rng = random.Random(key)
    for v in _invalid(lo, hi, kind, rng):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(_cfg(f"{key}={v}"))


def test_valid_config_passes_and_lists_are_required():
    validate(_cfg())
    for key in ("phase2.timesteps", "eval.timesteps", "eval.methods"):
        with pytest.raises(ConfigError, match=f"{key} must be a list"):
            validate(_cfg(f"{key}=4"))
    for dev, needle in (("bogus", "device must be"), ("cuda:0", "no CUDA")):
        with pytest.raises(ConfigError, match=needle):
            validate(_cfg(f"device={dev}"))


def test_calibrated_rows_need_their_phase2_method():
    with pytest.raises(ConfigError, match="lowlat-lwc"):
        validate(_cfg("eval.methods=[phase1,lowlat-lwc]", "phase2.methods=[lowlat]"))
