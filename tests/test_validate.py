"""Every bad value is refused before any work, with the key named (property-style)."""

import random
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lowlat.stages.common import NUMBERS, ConfigError, validate
from lowlat.stages.schema import GROUPS, base_schema, schema_keys

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


def _typos(word: str, rng: random.Random) -> list[str]:
    """A dropped, a doubled and a swapped letter (what a tired hand types)."""
    i = rng.randrange(len(word))
    j = rng.randrange(len(word) - 1) if len(word) > 1 else 0
    swapped = word[:j] + word[j + 1:j + 2] + word[j] + word[j + 2:]
    return [word[:i] + word[i + 1:], word[:i] + word[i] + word[i:], swapped]


def test_misspelt_keys_are_refused_even_with_plus():
    """Property: every top-level key and every key of the sections the stages read, misspelt at
    random and added with `+`, is refused by name."""
    schema = base_schema()
    valid = set(schema_keys(schema))
    rng = random.Random(10)
    for key in sorted(valid):
        parent, _, leaf = key.rpartition(".")
        for typo in _typos(leaf, rng):
            bad = f"{parent}.{typo}" if parent else typo
            if bad in valid or not typo or not typo[0].isalpha():
                continue
            with pytest.raises(ConfigError, match=rf"unknown config key {re.escape(bad)}\b"):
                validate(_cfg(f"+{bad}=1"))


@pytest.mark.parametrize("override,needle", [
    ("+phase2.lmpc.formla=abs", "did you mean phase2.lowlat.formula"),
    ("+phase1.levls=3", "did you mean phase1.levels"),
    ("+typo=1", "unknown config key typo (valid keys: experiment_name"),
    ("+stage.nme=ann", "did you mean stage.name"),
    ("+model.width=4", "unknown config key model.width (valid keys of model: name, kwargs)"),
    ("+model.kwargs.widht=4", "model.kwargs of model small_cnn"),
    ("+data.fip=false", "did you mean data.flip"),
    ("+trainer.max_epoch=3", "did you mean trainer.max_epochs"),
    ("+logger.csv.save_di=x", "did you mean logger.csv.save_dir"),
    ("data._target_=lowlat.data.Nope", "data._target_: cannot import 'lowlat.data.Nope'"),
    ("phase2.lwc=3", "phase2.lwc must be a group of keys"),
    ("phase2.lowlat.head=softmax", "phase2.lowlat.head must be one of none, mse, kl"),
    ("phase2.lowlat.target=t", "phase2.lowlat.target must be one of L, T, finer, got 't'"),
    ("phase2.lowlat.surrogate=eq14", "phase2.lowlat.surrogate must be one of eq15, scaled"),
    ("ann.momentum=???", "ann.momentum"),
])
def test_unknown_keys_and_targets_name_the_key(override, needle):
    from omegaconf.errors import OmegaConfBaseException

    with pytest.raises((ConfigError, OmegaConfBaseException), match=re.escape(needle)):
        validate(_cfg(override))


def test_schema_groups_are_the_defaults_of_config_yaml():
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(CONF / "config.yaml").defaults
    groups = {next(iter(d)) for d in defaults if not isinstance(d, str)}
    assert groups - {"experiment", "hparams_search"} == set(GROUPS)


def test_target_T_needs_a_qcann_start():
    validate(_cfg("phase2.lowlat.target=T"))  # the default start (unbiased) has levels
    validate(_cfg("phase2.lowlat.start=channelnorm"))  # finer (the default) keeps a ReLU target
    with pytest.raises(ConfigError, match="target=T needs a QC-ANN start"):
        validate(_cfg("phase2.lowlat.target=T", "phase2.lowlat.start=channelnorm"))
