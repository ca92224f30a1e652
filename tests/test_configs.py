"""Every experiment composes from the real config tree and builds its data module and model."""

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lowlat.models import create_model
from lowlat.stages.common import validate

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    cfg = _compose(f"experiment={experiment}")
    OmegaConf.resolve(cfg)
    validate(cfg)
    assert cfg.experiment_name == experiment
    assert cfg.data._target_.startswith("lowlat.data.")
    # the model builds with the data's shape
    create_model(cfg.model.name, 10, 3, "qc", **cfg.model.kwargs)


@pytest.mark.parametrize("experiment", ["cifar10_vgg16", "cifar100_resnet20"])
def test_paper_recipe(experiment):
    cfg = _compose(f"experiment={experiment}")
    assert cfg.ann.lr == 0.1 and cfg.ann.momentum == 0.9 and cfg.ann.weight_decay == 5e-4
    assert cfg.ann.epochs == 300 and cfg.phase1.levels == 8 and cfg.phase1.lr == 1e-5
    assert cfg.phase2.lwc.batch_size == 1024
    assert cfg.phase2.lwc.lr == (1e-4 if experiment.startswith("cifar10_") else 1e-5)
    assert cfg.data.batch_size == 128


def test_quickstart_datamodule_instantiates():
    cfg = _compose("experiment=quickstart")
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.num_classes == 10 and dm.in_channels == 1
