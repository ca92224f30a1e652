"""The converted network users hold: :class:`SpikingNetwork` (its own time loop, step-by-step
use, recording) and the :class:`Recording` of one run. Built by :mod:`lowlat.api`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from lowlat.neurons import configure, reset_states, spiking_layers
from lowlat.simulate import check_steps, op_counter, run_snn


def normalizer(mean: Any = None, std: Any = None) -> Callable[[Tensor], Tensor]:
    """``x ↦ (x − mean) / std`` per channel (identity without either), so a saved SNN carries
    the preprocessing its ANN was trained with."""
    if mean is None and std is None:
        return lambda x: x
    m = torch.as_tensor(mean if mean is not None else 0.0, dtype=torch.float32).flatten()
    s = torch.as_tensor(std if std is not None else 1.0, dtype=torch.float32).flatten()
    if not bool(torch.isfinite(m).all()) or not bool(torch.isfinite(s).all()) or bool(
            (s <= 0).any()):
        raise ValueError(f"input normalisation: mean must be finite and std finite and > 0, got "
                         f"mean={m.tolist()}, std={s.tolist()}")

    def norm(x: Tensor) -> Tensor:
        c = x.shape[1] if x.dim() > 1 else 1
        for name, v in (("mean", m), ("std", s)):
            if v.numel() not in (1, c):
                raise ValueError(f"input normalisation: {name} has {v.numel()} values but the "
                                 f"input {tuple(x.shape)} has {c} channels (dim 1); give one "
                                 "value or one per channel")
        shape = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 1 else (-1,)  # [B, C, ...] any rank
        return (x.float() - m.to(x.device).view(shape)) / s.to(x.device).view(shape)

    return norm


class SpikingNetwork(nn.Module):
    """A converted SNN with its own time loop.

    ``snn(x)`` runs T steps on the time-folded batch from a fresh state and returns the output
    averaged over time ``[B, classes]`` (comparable to the ANN's); ``run`` returns every step
    ``[T, B, classes]``; ``step(x)`` advances one time step and keeps the membrane state until
    ``reset()`` (SpikingJelly's ``reset_net``), with the same spikes as ``run``.
    ``net`` is the fx graph of IF neurons (the engine used by :mod:`lowlat.simulate`).
    """

    def __init__(self, net: fx.GraphModule, T: int, mean=None, std=None,
                 method: str = "") -> None:
        super().__init__()
        self.net, self.T, self.method = net, check_steps(T), method
        self.mean = None if mean is None else [float(v) for v in torch.as_tensor(mean).flatten()]
        self.std = None if std is None else [float(v) for v in torch.as_tensor(std).flatten()]
        self.normalize = normalizer(self.mean, self.std)
        self._batch: int | None = None  # batch of the step-by-step sequence under way

    def run(self, x: Tensor, T: int | None = None, chunk: int | None = None) -> Tensor:
        """``[T, B, classes]`` from a fresh state; ``chunk`` steps per call (default all)."""
        self._batch = None
        return run_snn(self.net, self.normalize(x), self.T if T is None else T, chunk)

    def forward(self, x: Tensor, T: int | None = None) -> Tensor:
        return self.run(x, T).mean(0)

    def reset(self) -> None:
        reset_states(self.net)
        self._batch = None

    @torch.no_grad()
    def step(self, x: Tensor, record: bool = False) -> Tensor:
        """One time step ``[B, classes]``, continuing from the state of the previous step
        (``record``: neurons accumulate ``spike_count`` since the reset)."""
        b = x.shape[0]
        if self._batch is None:
            reset_states(self.net)
            self._batch = b
        elif b != self._batch:
            raise RuntimeError(f"step: a batch of {b} inside a sequence of batch {self._batch}; "
                               "call reset() before a new input")
        configure(self.net, steps=1, batch=b, record=record)
        return self.net(self.normalize(x))

    @torch.no_grad()
    def record(self, x: Tensor, T: int | None = None) -> Recording:
        """Run T steps and return per-layer spike counts, v(T) and synaptic operations."""
        T = self.T if T is None else check_steps(T)
        xs = self.normalize(x)
        counter = op_counter(self.net, xs)
        counter.steps, counter.batch = T, x.shape[0]
        try:
            self._batch = None
            out = run_snn(self.net, xs, T, record=True)
        finally:
            counter.remove()
            configure(self.net, steps=1, batch=None, record=False)
        layers = spiking_layers(self.net)
        return Recording(
            output=out, T=T,
            spikes={n: m.spike_count.clone() for n, m in layers},
            v=({n: m.v.clone() for n, m in layers}),
            ops=dict(counter.per_layer))


@dataclass
class Recording:
    """Per-layer statistics of one run (SpikingJelly's monitors): ``spikes`` and ``v`` per neuron
    site ``[B, ...]`` (spike count over T, membrane potential after step T); ``ops`` per
    conv/linear layer: synaptic operations over the batch and T steps (nonzero inputs × fan-out;
    the first layer, fed the analog image, counts its MACs)."""

    output: Tensor  # [T, B, classes]
    T: int
    spikes: dict[str, Tensor]
    v: dict[str, Tensor]
    ops: dict[str, float]

    def firing_rates(self) -> dict[str, float]:
        """Spikes per neuron per time step, per layer."""
        return {n: float(s.sum()) / (s.numel() * self.T) for n, s in self.spikes.items()}
