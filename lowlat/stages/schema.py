"""Keys the config may hold: a typo is refused before any work, even when added with ``+``.

Hydra refuses ``phase1.levls=3`` but accepts ``+phase1.levls=3``, and suggests ``+`` itself when
a key is unknown; the key would then be ignored silently. The sections every stage reads (``ann``,
``phase1``, ``phase2``, ``eval``, ``objective``, ``stage``, ``model``) and the top-level keys
are checked against ``conf/config.yaml``; the contents of the swappable groups (``data``,
``trainer``, ``logger.*``) differ by choice, so they are checked against the signature of their
``_target_``, and ``model.kwargs`` by building the model on the meta device.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

BASE = Path(__file__).resolve().parents[2] / "conf" / "config.yaml"
GROUPS = ("data", "model", "stage", "trainer", "logger", "paths")  # keys that vary by choice
STRICT = ("ann", "phase1", "phase2", "eval", "objective", "stage", "model")
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def _error(msg: str) -> Exception:
    from lowlat.stages.common import ConfigError

    return ConfigError(msg)


def base_schema(path: Path = BASE) -> dict[str, Any] | None:
    """``conf/config.yaml`` without its defaults list and Hydra's settings (None if absent)."""
    if not path.is_file():
        return None
    base = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(base, dict)
    base.pop("defaults", None)
    base.pop("hydra", None)
    base["stage"] = {"name": None}
    base["model"] = {"name": None, "kwargs": None}  # kwargs: checked by check_targets
    return base


def schema_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a (nested) mapping, leaves and sections."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}{k}"
            yield from schema_keys(v, f"{prefix}{k}.")


def _leaves(node: Any, prefix: str) -> Iterator[str]:
    if OmegaConf.is_dict(node) and len(node):
        for k in node:
            yield from _leaves(node._get_node(k), f"{prefix}.{k}")
    else:
        yield prefix


def _unknown(key: str, valid: list[str]) -> Exception:
    """One line naming ``key`` and the nearest valid keys (its siblings, else same depth)."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k for k in valid if k.rpartition(".")[0] == parent]
    if parent in valid or not parent:
        near = [f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(
            leaf, [k.rpartition(".")[2] for k in siblings], n=2, cutoff=0.6)]
    else:
        near = difflib.get_close_matches(
            key, [k for k in valid if k.count(".") == key.count(".")], n=1, cutoff=0.6)
    if near:
        hint = f"did you mean {' or '.join(near)}?"
    else:
        hint = f"valid keys{f' of {parent}' if parent else ''}: " + ", ".join(
            k.rpartition(".")[2] for k in siblings)
    return _error(f"unknown config key {key} ({hint})")


def _walk(cfg: DictConfig, schema: dict, prefix: str, valid: list[str]) -> None:
    for k in cfg:
        key = f"{prefix}{k}"
        if k not in schema:
            leaf = next(_leaves(cfg._get_node(k), key))
            raise _unknown(leaf, valid)
        sub = schema[k]
        if isinstance(sub, dict) and key.split(".")[0] in STRICT:
            node = cfg._get_node(k)
            if not OmegaConf.is_dict(node):
                raise _error(f"{key} must be a group of keys ({', '.join(sub)}), got "
                             f"{OmegaConf.select(cfg, str(k))!r}")
            _walk(node, sub, f"{key}.", valid)


def check_keys(cfg: DictConfig, schema: dict[str, Any] | None = None) -> None:
    """Refuse any key of the strict sections or the top level that the base config lacks."""
    schema = base_schema() if schema is None else schema
    if schema is None:  # installed without the conf/ tree: nothing to compare with
        return
    top = dict(schema)
    for g in GROUPS:
        top.setdefault(g, None)
    _walk(cfg, top, "", list(schema_keys(top)))


def _accepted(obj: Callable) -> set[str] | None:
    """Keyword names ``obj`` takes; None if it takes any (``**kwargs`` we cannot follow).

    lowlat's own classes forward ``**kwargs`` to their base class, so those are followed.
    """
    fns = [c.__dict__["__init__"] for c in inspect.getmro(obj) if "__init__" in c.__dict__] \
        if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for fn in fns:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}
        if not getattr(fn, "__module__", "").startswith("lowlat."):
            return None
    return None


def check_targets(cfg: DictConfig) -> None:
    """``_target_`` of data, trainer and each logger imports, and takes the keys given to it;
    ``model.kwargs`` are arguments of the registered model."""
    from hydra._internal.utils import _locate  # get_object minus its own error log line

    sections = {"data": cfg.get("data"), "trainer": cfg.get("trainer")}
    for name, lg in (cfg.get("logger") or {}).items():
        sections[f"logger.{name}"] = lg
    for key, node in sections.items():
        if node is None or not OmegaConf.is_dict(node) or "_target_" not in node:
            continue
        target = str(node._target_)
        try:
            obj = _locate(target)
        except Exception as e:  # noqa: BLE001 - any import failure is the same user error
            why = " ".join(str(e).split())
            raise _error(f"{key}._target_: cannot import {target!r} ({why})") from None
        names = _accepted(obj)
        for k in node:
            if names is not None and k not in HYDRA_KEYS and k not in names:
                raise _unknown(f"{key}.{k}", [key, *(f"{key}.{n}" for n in sorted(names))])
    _check_model(cfg)


def _check_model(cfg: DictConfig) -> None:
    """Build the model on the meta device (no memory, no time): its kwargs must be accepted."""
    import torch

    from lowlat.models import create_model

    kwargs = OmegaConf.to_container(cfg.model.get("kwargs") or {}, resolve=True)
    assert isinstance(kwargs, dict)
    try:
        with torch.device("meta"):
            create_model(str(cfg.model.name), 10, 3, "relu", **kwargs)
    except TypeError as e:
        raise _error(f"model.kwargs of model {cfg.model.name}: {e}") from None
