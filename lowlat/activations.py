"""ANN activations that the converter understands.

Every network in :mod:`lowlat.models` takes an ``act_layer`` factory, so the same definition builds
the ReLU ANN, the QC-ANN (:class:`QCActivation`), the Rate-Norm ANN (:class:`RateNorm`) and, after
conversion, the SNN (:class:`lowlat.neurons.IFNeuron`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn


def floor_ste(x: Tensor) -> Tensor:
    """``floor`` in the forward pass, identity gradient in the backward pass (paper eq. 10)."""
    return x + (torch.floor(x) - x).detach()


def quantize_clip(z: Tensor, lam: Tensor, levels: int, shift: float) -> Tensor:
    """``a = λ·clip(floor(z·L/λ + s)/L, 0, 1)`` (paper eq. 8; s = 0.5 gives QCFS).

    Pure function so the IF-equivalence tests and the calibration targets share one formula.
    """
    # Clip before the floor (equal for integer bounds) so the straight-through gradient is 1 on
    # the whole open range (0, L) of the continuous value, the lowest bin included.
    u = (z * levels / lam + shift).clamp(0.0, float(levels))
    return lam * floor_ste(u) / levels


class QCActivation(nn.Module):
    """Quantize-clip activation with a trainable threshold λ per layer or per channel.

    λ is stored as a plain parameter and clamped to ``min_lambda`` in the forward pass, so a
    negative step of the optimiser can never flip the sign of the threshold (λ <= 0 would turn
    the layer off or invert it). A per-channel λ is a tensor shaped to broadcast over one
    sample (``[C, 1, 1]`` after a conv, ``[C]`` after a linear layer), so the IF neurons it
    becomes take it as their threshold unchanged. A skeleton built with a scalar λ takes the
    shape of the λ in the state dict it loads.
    """

    def __init__(
        self, levels: int = 8, shift: float = 0.0, init_lambda: float | Tensor = 8.0,
        min_lambda: float = 1e-3,
    ) -> None:
        super().__init__()
        if isinstance(levels, bool) or levels != int(levels) or levels < 1:
            raise ValueError(f"QCActivation: levels must be a whole number >= 1 (L), got {levels}")
        if not 0.0 <= float(shift) <= 1.0:
            raise ValueError(f"QCActivation: shift must be in [0, 1] (s; 0: the paper's floor, "
                             f"0.5: QCFS's rounding), got {shift}")
        lam = torch.as_tensor(init_lambda, dtype=torch.float32).detach().clone()
        if not bool(torch.isfinite(lam).all()) or bool((lam <= 0).any()):
            raise ValueError(f"QCActivation: init_lambda (λ, a numeric init) must be finite "
                             f"and > 0, got {lam}")
        self.levels = int(levels)
        self.shift = float(shift)
        self.min_lambda = float(min_lambda)
        self.lam = nn.Parameter(lam)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        stored = state_dict.get(prefix + "lam")
        if stored is not None and stored.shape != self.lam.shape:
            self.lam = nn.Parameter(torch.empty_like(stored))  # per-channel λ from an artifact
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def threshold(self) -> Tensor:
        """The λ actually used (clamped), which becomes the IF threshold θ."""
        return self.lam.clamp(min=self.min_lambda)

    def forward(self, z: Tensor) -> Tensor:
        return quantize_clip(z, self.threshold, self.levels, self.shift)

    def extra_repr(self) -> str:
        shape = "" if self.lam.dim() == 0 else f" per channel {tuple(self.lam.shape)}"
        return (f"levels={self.levels}, shift={self.shift}, "
                f"lam={float(self.lam.detach().mean()):.4g}{shape}")


class RateNorm(nn.Module):
    """Rate Norm Layer (Ding et al., IJCAI 2021): ``θ·clamp(relu(x)/θ, 0, 1)``.

    ``θ = running_max·sigmoid(p)`` with ``p`` trainable; ``running_max`` tracks the batch maximum
    of ``relu(x)`` with momentum during training. The output is kept in activation units
    (multiplied back by θ), so the next layer's weights are unchanged and the converted IF neuron
    uses θ as both threshold and spike amplitude, exactly like the QC-ANN.
    """

    def __init__(self, momentum: float = 0.1, init_p: float = 2.0) -> None:
        super().__init__()
        self.momentum = momentum
        self.p = nn.Parameter(torch.tensor(float(init_p)))
        self.register_buffer("running_max", torch.tensor(1.0))
        self.register_buffer("initialised", torch.tensor(False))

    @property
    def threshold(self) -> Tensor:
        return (self.running_max * torch.sigmoid(self.p)).clamp(min=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(x)
        if self.training:
            with torch.no_grad():
                m = x.max()
                if not bool(self.initialised):
                    self.running_max.copy_(m)
                    self.initialised.fill_(True)
                else:
                    self.running_max.mul_(1 - self.momentum).add_(self.momentum * m)
        theta = self.threshold
        return theta * (x / theta).clamp(0.0, 1.0)


ActFactory = Callable[[], nn.Module]


def make_act_layer(name: str, **kwargs) -> ActFactory:
    """Activation factory by name: ``relu``, ``qc`` or ``ratenorm``."""
    if name == "relu":
        return functools.partial(nn.ReLU, inplace=False)
    if name == "qc":
        return functools.partial(QCActivation, **kwargs)
    if name == "ratenorm":
        return functools.partial(RateNorm, **kwargs)
    raise ValueError(f"unknown activation {name!r}; valid: relu, qc, ratenorm")


# A clip-ReLU min(max(x, 0), c) (nn.Hardtanh(0, c), ReLU6 = Hardtanh(0, 6)) is clip-linear: a QC
# activation (λ <= c) or an IF neuron (θ <= c) represents it. A Hardtanh whose floor is not 0 is
# not a ReLU and is refused by lowlat.graph.trace.
RELUS = (nn.ReLU, nn.Hardtanh)
ACTIVATIONS = (*RELUS, QCActivation, RateNorm)


def relu_cap(m: nn.Module) -> float:
    """The ceiling a ReLU-like site clips at (inf for a plain ReLU, c for Hardtanh(0, c))."""
    return float(m.max_val) if isinstance(m, nn.Hardtanh) else float("inf")
