"""A small timm-style registry of network constructors."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lowlat.activations import ActFactory, make_act_layer

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its own name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3,
    act_layer: ActFactory | str = "relu", **kwargs,
) -> nn.Module:
    """Build a registered network. ``act_layer`` is a factory or a name (relu, qc, ratenorm)."""
    if isinstance(act_layer, str):
        act_layer = make_act_layer(act_layer)
    return model_entrypoint(name)(
        num_classes=num_classes, in_channels=in_channels, act_layer=act_layer, **kwargs
    )
