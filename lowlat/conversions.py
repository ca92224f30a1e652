"""How each start is built from its network, and what a calibration matches.

The conversions (``phase1``, ``opti``, ``opt``, ``unbiased``, the ReLU-ANN thresholds of MaxNorm,
RobustNorm and SpikingJelly's channel-wise recipe, Rate Norm) are pure functions of a network;
:mod:`lowlat.methods` names them in its table. The targets say what LMPC/LWC match: the QC-ANN
as trained, its rounding to T levels (:func:`target_at_levels`, chosen by
:func:`effective_target`), or the ReLU ANN clipped at θ (:class:`ClipTarget`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from lowlat.activations import QCActivation
from lowlat.convert import to_snn
from lowlat.neurons import spiking_layers


def _qc_levels_shift(model: nn.Module) -> tuple[int, float]:
    qc = [m for m in model.modules() if isinstance(m, QCActivation)]
    if not qc:
        raise ValueError("this method converts a QC-ANN, but the network has no QCActivation")
    return qc[0].levels, qc[0].shift


def set_v0_fraction(snn: nn.Module, fraction: float) -> nn.Module:
    """v(0) = fraction·θ in every neuron."""
    for _, m in spiking_layers(snn):
        m.v0 = m.theta.detach().clone() * fraction
    return snn


def phase1(qcann: nn.Module, **_: Any) -> fx.GraphModule:
    """Phase I: v(0) = s·θ, so T = L reproduces ``floor(z·L/λ + s)`` exactly (s = 0: v(0) = 0)."""
    _, s = _qc_levels_shift(qcann)
    return set_v0_fraction(to_snn(qcann), s)


def opti(qcann: nn.Module, **_: Any) -> fx.GraphModule:
    _qc_levels_shift(qcann)
    return set_v0_fraction(to_snn(qcann), 0.5)


def opt(qcann: nn.Module, T: int | None = None, **_: Any) -> fx.GraphModule:
    """Phase I plus a current of θ/(2T) at every step (Deng & Gu's threshold shift)."""
    if T is None:
        raise ValueError("method 'opt' depends on T; give T")
    snn = phase1(qcann)
    for _, m in spiking_layers(snn):
        m.shift = m.theta.detach().clone() / (2 * T)
    return snn


def unbiased(qcann: nn.Module, **_: Any) -> fx.GraphModule:
    """v(0) = θ/2 and a current of −(½ − s)·θ/L: ``floor(zL/λ + s) = floor((z − (½−s)λ/L)L/λ + ½)``
    exactly, so T = L matches the QC-ANN and every other T loses Phase I's −θ/(2L) rate bias."""
    levels, s = _qc_levels_shift(qcann)
    snn = set_v0_fraction(to_snn(qcann), 0.5)
    for _, m in spiking_layers(snn):
        m.shift = -(0.5 - s) * m.theta.detach().clone() / levels
    return snn


def signed(qcann: nn.Module, **_: Any) -> fx.GraphModule:
    """:func:`unbiased` with signed neurons (``neurons.signed_step``, the SNM neuron of Wang et
    al., IJCAI 2022, without their NeuronNorm): a neuron takes back a spike that later input
    cancels, so at T = L each count is the rounding of its summed input, as in the QC-ANN."""
    snn = unbiased(qcann)
    for _, m in spiking_layers(snn):
        m.set_signed(True)
    return snn


def stat_thresholds(stats: dict[str, dict[str, Any]] | None, key: str) -> dict[str, torch.Tensor]:
    if stats is None:
        raise ValueError("MaxNorm/RobustNorm/ChannelNorm need activation statistics of the "
                         "ReLU ANN")
    # a silent layer or channel (statistic 0) gets a tiny positive θ, as SpikingJelly's eps
    return {n: torch.as_tensor(s[key], dtype=torch.float32).clamp(min=1e-6)
            for n, s in stats.items()}


def relu_thresholds(ann: nn.Module, stats: dict[str, dict[str, Any]] | None = None,
                    key: str = "max", **_: Any) -> fx.GraphModule:
    return to_snn(ann, thresholds=stat_thresholds(stats, key))


def channelnorm(ann: nn.Module, stats: dict[str, dict[str, Any]] | None = None,
                **_: Any) -> fx.GraphModule:
    """SpikingJelly 2.0's ``RateCodingRecipe(mode='99.9%', channel_wise=True,
    half_threshold=True)``: θ per output channel = the channel's 99.9th percentile (zeros
    included), v(0) = θ/2, spikes carry θ."""
    th = stat_thresholds(stats, "percentile_channel")
    return set_v0_fraction(to_snn(ann, thresholds=th), 0.5)


class ClipTarget(nn.Module):
    """``clamp(x, 0, θ)``: what an IF neuron of threshold θ can represent of a ReLU."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("theta", theta.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), self.theta)


TARGETS = ("L", "T", "finer")


def effective_target(mode: str, levels: int | None, T: int) -> str:
    """What a calibration at T matches: ``'L'`` (the QC-ANN as trained) or ``'T'`` (its
    rounding to T levels). ``'finer'`` takes whichever has more levels; ``levels`` is the
    QC-ANN's L (None: a start without levels, which only ``'L'`` fits)."""
    if mode not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {mode!r}")
    if mode == "finer":
        return "T" if levels is not None and T > levels else "L"
    return mode


def target_at_levels(target: nn.Module, levels: int) -> nn.Module:
    """A copy of a QC-ANN target whose activations round to ``levels`` levels (same λ).

    Why: a T-step rate takes T + 1 values. At T < L the SNN cannot reach the L-level target and
    the T-level rounding of the same network is what it can match; at T > L the finer rounding
    is closer to the ReLU network (``scripts/levers.py`` variant ``qc:T`` measures both). The
    lever ``target=T`` of ``scripts/levers.py``; lowlat only (the paper matches the QC-ANN).
    """
    out = copy.deepcopy(target)
    qcs = [m for m in out.modules() if isinstance(m, QCActivation)]
    if not qcs:
        raise ValueError("target_at_levels: the target has no QC activation (a start from the "
                         "ReLU ANN has no levels to round to)")
    for m in qcs:
        m.levels = int(levels)
    return out.eval()


def ratenorm(rn: nn.Module, **_: Any) -> fx.GraphModule:
    return to_snn(rn)
