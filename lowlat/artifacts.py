"""Self-describing, atomically written artifacts passed between stages.

Each artifact is a plain dict that ``torch.load(weights_only=True)`` accepts: the architecture
(registry name and arguments), the activation recipe, the state dict, metrics, the resolved
config and a fingerprint of the settings that produced it. It is written to a temporary file in
the same folder and renamed, so a crash or a kill never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowlat.activations import make_act_layer
from lowlat.models import create_model

FORMAT = 1
# The pipeline's hand-offs, named once: ann.pt -> qcann.pt (ratenorm.pt) -> snn_T<T>_<method>.pt
ANN, QCANN, RATENORM = "ann.pt", "qcann.pt", "ratenorm.pt"
ANN_STATS = "ann_stats.pt"  # ann.pt's activation statistics (lowlat.stages.derived)
SOURCE_FILE = {"ann": ANN, "qcann": QCANN, "ratenorm": RATENORM}
PRODUCER = {"ann": "stage=ann", "qcann": "stage=phase1",
            "ratenorm": "stage=phase1 phase1.activation=ratenorm", "snn": "stage=phase2"}


def snn_name(T: int, method: str) -> str:
    """The calibrated SNN of one (T, method): ``snn_T4_lmpc+lwc.pt``."""
    return f"snn_T{int(T)}_{method}.pt"


class ArtifactError(RuntimeError):
    """A missing, foreign or inconsistent artifact."""


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (the config subset a stage depends on)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` and rename onto ``path`` only once it fully succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def save_artifact(path: str | Path, kind: str, model: nn.Module, arch: dict, act: dict,
                  metrics: dict, config: dict, fp: str, **extra: Any) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT, "kind": kind, "arch": arch, "act": act, "state_dict": state,
        "metrics": metrics, "config": config, "fingerprint": fp, "created": time.time(), **extra,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_artifact(path: str | Path, kind: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        hint = f" (run {PRODUCER[kind]} first)" if kind in PRODUCER else ""
        raise ArtifactError(f"artifact {path} not found{hint}")
    try:
        art = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or corrupted file must not crash with a pickle trace
        raise ArtifactError(f"cannot read artifact {path}: {e}") from e
    if not isinstance(art, dict) or art.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a lowlat artifact (format {FORMAT})")
    if kind is not None and art["kind"] != kind:
        raise ArtifactError(f"{path} holds a {art['kind']!r} artifact, expected {kind!r}")
    return art


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The callable named ``'package.module:qualname'``."""
    mod, _, name = path.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ArtifactError(f"cannot import the model factory {path!r}: {e}") from e
    return obj


def build_network(arch: dict, act: dict) -> nn.Module:
    """Rebuild the (A)NN skeleton described by an artifact, before loading its weights.

    ``arch`` names a registered model, or (user models, :mod:`lowlat.api`) an importable
    ``factory`` and its ``kwargs``: the factory's model gets its max pooling replaced by average
    pooling (a converted network has none) and every ReLU/ReLU6 call site swapped for ``act``.
    """
    if "factory" in arch:
        from lowlat.convert import replace_max_pooling, swap_activations

        make = make_act_layer(act["name"], **act.get("kwargs", {}))
        model = replace_max_pooling(import_factory(arch["factory"])(**arch.get("kwargs", {})))
        return swap_activations(model, lambda _name: make())
    return create_model(
        arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
        act_layer=make_act_layer(act["name"], **act.get("kwargs", {})), **arch.get("kwargs", {}),
    )


def load_network(art: dict) -> nn.Module:
    """The ANN or QC-ANN stored in an ``ann``/``qcann``/``ratenorm`` artifact, in eval mode."""
    model = build_network(art["arch"], art["act"])
    model.load_state_dict(art["state_dict"])
    return model.eval()


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text())


def write_text(path: str | Path, text: str) -> None:
    def w(tmp: str) -> None:
        Path(tmp).write_text(text)
    atomic_write(path, w)


def datamodule_of(art: dict):
    """The data module an artifact was made with (its resolved ``data`` config), set up: scripts
    that re-read a run's splits use the same data, split and transforms as its stages."""
    import hydra
    from omegaconf import OmegaConf

    dm = hydra.utils.instantiate(OmegaConf.create(art["config"]["data"]))
    dm.setup()
    return dm
