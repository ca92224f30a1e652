"""Integrate-and-fire neuron with reset by subtraction, run over time on time-folded batches.

The dynamics are one pure step function, :func:`if_step`. :class:`IFNeuron` holds the membrane
state between calls (so a long run can be cut into chunks of time steps, down to one step at a
time) and must be reset explicitly with :func:`reset_states` before each new input.

Layout: the stateless layers around a neuron see the time-folded batch ``[k·B, ...]`` (k time
steps of one chunk); the neuron views it as ``[k, B, ...]`` and scans over the first axis. An input
of only ``[B, ...]`` is constant in time (direct encoding of the image), so the layers before the
first neuron run once instead of k times.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowlat import fused


def if_step(v: Tensor, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """One IF step: ``v += x; s = v >= θ; v -= s·θ``. Returns ``(spike, v)``; spike is 0/1."""
    v = v + x
    s = (v >= theta).to(v.dtype)
    return s, v - s * theta


def signed_step(v: Tensor, c: Tensor, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the signed IF neuron with memory (SNM, Wang et al., IJCAI 2022): ``v += x``;
    ``s = +1`` if ``v >= θ``, ``−1`` if ``v < 0`` while the spikes sent so far ``c`` are > 0, else
    0; ``v -= s·θ; c += s``. Returns ``(spike, v, c)``; spike is −1/0/1.

    Why: a plain IF neuron cannot take back a spike that later input cancels (the unevenness
    error), so at T = L its count is not ``floor`` of its summed input; this one keeps
    ``v = v(0) + Σx − c·θ`` in ``[0, θ)`` whenever ``c > 0`` can fall, so its count follows the
    sum, never below 0.
    """
    v = v + x
    s = (v >= theta).to(v.dtype) - ((v < 0) & (c > 0)).to(v.dtype)
    return s, v - s * theta, c + s


SURROGATES = ("eq15", "scaled")  # the triangle as printed (height γ) | divided by θ


def triangle(v: Tensor, theta: Tensor, gamma: float, scaled: bool) -> Tensor:
    """The surrogate ``∂s/∂v``: ``γ·max(0, 1 − |v/θ − 1|)`` (eq. 15 on v/θ, height γ for every
    θ), or with ``scaled`` that divided by θ (the chain rule of ``H(v/θ − 1)``): then the gain
    through a spike's value θ·s and through the reset ``v −= θ·s`` is at most γ whatever θ is,
    while unscaled it is γ·θ, and at θ·γ > 2 the reset path grows the gradient step by step."""
    sg = gamma * (1.0 - (v / theta - 1.0).abs()).clamp(min=0.0)
    return sg / theta if scaled else sg


class TriangleSpike(torch.autograd.Function):
    """Heaviside spike with the triangle surrogate of :func:`triangle` (eq. 15)."""

    @staticmethod
    def forward(ctx, v: Tensor, theta: Tensor, gamma: float,  # type: ignore[override]
                scaled: bool = False) -> Tensor:
        ctx.save_for_backward(v, theta)
        ctx.gamma, ctx.scaled = gamma, scaled
        return (v >= theta).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        v, theta = ctx.saved_tensors
        g_v = grad * triangle(v, theta, ctx.gamma, ctx.scaled)
        g_theta = None
        if ctx.needs_input_grad[1]:  # a trained threshold (finetune): s depends on v/θ, so
            # ∂s/∂θ = ∂s/∂v · (−v/θ), summed over the dimensions θ was broadcast along
            g_theta = (-g_v * v / theta).sum_to_size(theta.shape)
        return g_v, g_theta, None, None


class NegativeSpike(torch.autograd.Function):
    """``−1`` where ``v < 0`` and ``allowed`` (the signed neuron's take-back spike), with the
    triangle of :func:`triangle` moved to ``v = 0``: ``∂s/∂v = γ·max(0, 1 − |v/θ|)`` (÷ θ when
    scaled), positive as for the +1 spike, since ``s`` rises from −1 to 0 as v crosses 0. The mask
    (memory > 0) and θ get no gradient: the spike's condition is ``v < 0``."""

    @staticmethod
    def forward(ctx, v: Tensor, allowed: Tensor, theta: Tensor, gamma: float,  # type: ignore[override]
                scaled: bool = False) -> Tensor:
        ctx.save_for_backward(v, allowed, theta)
        ctx.gamma, ctx.scaled = gamma, scaled
        return -((v < 0) & allowed).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        v, allowed, theta = ctx.saved_tensors
        g_v = grad * triangle(v + theta, theta, ctx.gamma, ctx.scaled) * allowed.to(grad.dtype)
        return g_v, None, None, None, None


class IFNeuron(nn.Module):
    """IF neuron replacing one activation layer.

    Buffers (saved in the state dict, so a calibrated SNN is self-contained):
      ``theta``: firing threshold (the QC-ANN's λ, or a MaxNorm/RobustNorm statistic);
      ``amplitude``: value carried by a spike (θ, so the rate times θ matches the ANN activation);
      ``v0``: initial membrane potential, broadcastable to one sample's shape (LMPC, OptI);
      ``shift``: current added at every step (the θ/(2T) bias shift of Deng & Gu);
      ``signed``: a bool scalar; True makes it the signed neuron of :func:`signed_step`, which
      sends −1 spikes (method ``signed``); absent in older artifacts, where it is False.
    """

    def __init__(self, theta: float | Tensor = 1.0, amplitude: float | Tensor | None = None,
                 gamma: float = 1.0, fused: bool | None = None) -> None:
        super().__init__()
        theta = torch.as_tensor(theta, dtype=torch.float32).clone()
        if bool((theta <= 0).any()):
            raise ValueError(f"IFNeuron: threshold must be > 0, got {theta}")
        amp = theta.clone() if amplitude is None else torch.as_tensor(amplitude).float().clone()
        self.register_buffer("theta", theta)
        self.register_buffer("amplitude", amp)
        self.register_buffer("v0", torch.zeros(()))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self._signed = False
        self.gamma = gamma
        self.scaled_surrogate = False  # the triangle divided by θ (see triangle)
        self.surrogate = False  # use TriangleSpike (for BPTT) instead of a hard threshold
        self.detach_output = False  # cut the graph here (layer-wise calibration)
        self.steps = 1  # time steps in the current chunk
        self.batch: int | None = None  # samples per time step; None: infer from the first input
        self.record = False  # accumulate spike counts for statistics
        self.fused = fused  # compiled scan at inference (lowlat.fused); None: LOWLAT_FUSED
        self.fused_train = False  # compiled forward/backward kernels for BPTT (lowlat.fused)
        self.v: Tensor | None = None
        self.count: Tensor | None = None  # [B, ...] net spikes sent so far (signed neurons)
        self.spike_count: Tensor | None = None  # [B, ...] spikes so far, −1 spikes too (record)

    def reset(self) -> None:
        self.v = None
        self.count = None
        self.spike_count = None

    @property
    def is_signed(self) -> bool:
        """Read from a Python mirror of the ``signed`` buffer: no device sync per call."""
        return getattr(self, "_signed", False)

    def set_signed(self, flag: bool) -> IFNeuron:
        self.signed = torch.tensor(bool(flag), device=self.theta.device)
        self._signed = bool(flag)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # artifacts written before signed neurons existed hold plain IF neurons
        state_dict.setdefault(prefix + "signed", torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._signed = bool(self.signed)

    def _spike(self, v: Tensor) -> Tensor:
        if self.surrogate and torch.is_grad_enabled():
            return TriangleSpike.apply(v, self.theta, self.gamma, self.scaled_surrogate)
        return (v >= self.theta).to(v.dtype)

    def _negative_spike(self, v: Tensor, allowed: Tensor) -> Tensor:
        if self.surrogate and torch.is_grad_enabled():
            return NegativeSpike.apply(v, allowed, self.theta, self.gamma, self.scaled_surrogate)
        return -((v < 0) & allowed).to(v.dtype)

    def forward(self, x: Tensor) -> Tensor:
        k = self.steps
        b = self.batch if self.batch is not None else x.shape[0] // k
        static = x.shape[0] == b and k > 1
        if not static and x.shape[0] != k * b:
            raise RuntimeError(
                f"IFNeuron got a batch of {x.shape[0]}, expected {b} (static) or {k}x{b}"
            )
        xs = x.unsqueeze(0) if static else x.view(k, b, *x.shape[1:])  # [k or 1, B, ...]
        state = (self.v, self.v0, self.theta, self.amplitude, self.shift)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, *state))  # e.g. a frozen prefix
        signed = self.is_signed
        if not needs_grad and all(t is None or t.dtype == x.dtype for t in state):
            return self._forward_inference(xs, k, static)
        if self.surrogate and getattr(self, "fused_train", False) and torch.is_grad_enabled():
            y = fused.fused_train_forward(self, xs, k, static)
            if y is not None:
                return y
        if self.v is None:  # float32 at least: a bf16 input (autocast) must not round v
            self.v = (self.v0 + torch.zeros_like(xs[0])).to(
                torch.promote_types(x.dtype, torch.float32))
        v = self.v
        count = self.count  # a signed neuron's net spikes so far
        if signed and count is None:
            count = torch.zeros_like(v)
        x_shift = self.shift
        out = []
        for t in range(k):
            v = v + (xs[0] if static else xs[t]) + x_shift
            s = self._spike(v)
            if signed:  # a −1 spike where v < 0 and spikes were sent (signed_step)
                s = s + self._negative_spike(v, count > 0)
                count = count + s.detach()
            v = v - s * self.theta
            out.append(s)
        spikes = torch.stack(out)  # [k, B, ...]
        self.v = v.detach() if not torch.is_grad_enabled() else v
        self.count = count
        if self.record:
            c = (spikes.detach().abs() if signed else spikes.detach()).sum(0)
            self.spike_count = c if self.spike_count is None else self.spike_count + c
        y = (spikes * self.amplitude).flatten(0, 1)  # [k, B, ...] -> [k·B, ...]
        return y.detach() if self.detach_output else y

    def _forward_inference(self, xs: Tensor, k: int, static: bool) -> Tensor:
        """The same spikes as the graph-building loop, at a third of its memory traffic.

        Simulation is bound by elementwise passes over [k, B, ...] tensors, not by the convs, so:
        spikes are written straight into one preallocated output (no list + ``torch.stack``),
        ``v >= θ`` lands as 0/1 in the output's dtype (no bool->float copy), the reset is one
        fused ``v -= s·θ`` (``addcmul_``; ``s·θ`` is exact for s in {0, 1}, so the rounding is that
        of ``v - s·θ``) and the amplitude is applied once per chunk. The first ``v + x`` allocates
        a fresh state (from v(0) directly: ``v0 + 0 + x == v0 + x``), so a tensor read from
        ``self.v`` earlier is never modified in place.
        """
        flag = getattr(self, "fused", None)  # modules pickled before the option existed
        if flag or (flag is None and fused.default_enabled()):
            y = fused.fused_forward(self, xs, k, static)
            if y is not None:
                return y
        if self.is_signed:
            return self._forward_signed(xs, k, static)
        theta, shift = self.theta, self.shift
        add_shift = bool(shift.any())  # v + x + 0 is v + x exactly: skip the pass
        out = torch.empty_like(xs if not static else xs.expand(k, *xs.shape[1:]))
        v = self.v if self.v is not None else self.v0
        for t in range(k):
            xt = xs[0] if static else xs[t]
            v = v + xt if t == 0 else v.add_(xt)
            if add_shift:
                v.add_(shift)
            s = out[t]
            torch.ge(v, theta, out=s)
            v.addcmul_(s, theta, value=-1.0)
        self.v = v
        if self.record:
            c = out.sum(0)
            self.spike_count = c if self.spike_count is None else self.spike_count + c
        y = out.mul_(self.amplitude).flatten(0, 1)  # [k, B, ...] -> [k·B, ...]
        return y.detach() if self.detach_output else y

    def _forward_signed(self, xs: Tensor, k: int, static: bool) -> Tensor:
        """Inference of the signed neuron (:func:`signed_step`), its memory held in ``count``."""
        out = torch.empty_like(xs if not static else xs.expand(k, *xs.shape[1:]))
        v = self.v if self.v is not None else self.v0 + torch.zeros_like(xs[0])
        c = self.count if self.count is not None else torch.zeros_like(v)
        for t in range(k):
            out[t], v, c = signed_step(v, c, (xs[0] if static else xs[t]) + self.shift,
                                       self.theta)
        self.v, self.count = v, c
        if self.record:
            n = out.abs().sum(0)  # events: a −1 spike costs what a +1 does
            self.spike_count = n if self.spike_count is None else self.spike_count + n
        y = out.mul_(self.amplitude).flatten(0, 1)  # [k, B, ...] -> [k·B, ...]
        return y.detach() if self.detach_output else y

    def extra_repr(self) -> str:
        sign = ", signed" if self.is_signed else ""
        return f"theta={float(self.theta.mean()):.4g}, v0_shape={tuple(self.v0.shape)}{sign}"


def spiking_layers(model: nn.Module) -> list[tuple[str, IFNeuron]]:
    """The IF neurons of ``model`` in definition (= forward) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, IFNeuron)]


def reset_states(model: nn.Module) -> None:
    for _, m in spiking_layers(model):
        m.reset()


def configure(model: nn.Module, steps: int, batch: int | None, record: bool = False) -> None:
    """Tell every neuron the chunk length and batch size of the next calls."""
    for _, m in spiking_layers(model):
        m.steps, m.batch, m.record = steps, batch, record
