"""Building blocks shared by the networks."""

from __future__ import annotations

from torch import nn

from lowlat.activations import ActFactory


def conv_bn_act(cin: int, cout: int, act_layer: ActFactory, stride: int = 1) -> list[nn.Module]:
    """3x3 conv (no bias: BN follows) + BN + activation, as a flat list for ``nn.Sequential``."""
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        act_layer(),
    ]


def make_pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(2)
    if kind == "max":
        return nn.MaxPool2d(2)
    raise ValueError(f"pool must be 'avg' or 'max', got {kind!r}")
