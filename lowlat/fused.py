"""Fused IF scan: the k time steps of one chunk as one compiled kernel (``torch.compile``).

Two uses: inference (:func:`fused_forward`, below) and training by BPTT
(:func:`fused_train_forward`, at the end: one forward and one backward kernel with the triangle
surrogate, the same gradients as the autograd graph of ``IFNeuron`` up to float rounding).

Why: the plain inference scan makes several elementwise passes over ``[B, ...]`` per time step
(add, compare, reset, and the amplitude once a chunk); simulation is bound by that memory traffic,
not by the convolutions. Inductor fuses the unrolled loop so that each input element is read once,
v stays in registers and each output element is written once (a Triton kernel on a GPU, C++/OpenMP
on a CPU).

Exactness: the kernel runs the same float operations in the same order as
``IFNeuron._forward_inference`` (``v + x``, then ``+ shift``; ``v >= θ``; ``v - s·θ`` with ``s·θ``
exact for s in {0, 1}; the amplitude multiplies a 0/1 spike) and inductor neither reassociates nor
contracts to FMA by default, so spikes and the membrane potential are bit-identical to the plain
path (``tests/test_fused.py``).

Selection: ``IFNeuron.fused`` (True / False / None = the process default), :func:`set_fused` on a
whole model, or the environment variable ``LOWLAT_FUSED=1`` (the config key ``eval.fused`` sets it
through the Hydra callback ``lowlat.hydra_callbacks.FusedFromConfig``, so no stage needs to pass
it on). If
compiling fails (no C compiler, unsupported platform) a warning is printed once and the plain path
is used from then on.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn

BLOCK = 16  # time steps unrolled in one kernel; longer chunks are run as several blocks
_state: dict = {"fn": None, "failed": False}


def default_enabled() -> bool:
    """The process default for neurons whose ``fused`` is None (env ``LOWLAT_FUSED``)."""
    return os.environ.get("LOWLAT_FUSED", "").strip().lower() in ("1", "true", "yes", "on")


def available() -> bool:
    """False once compiling failed in this process, or where dynamo cannot run at all."""
    if _state["failed"]:
        return False
    try:
        import torch._dynamo

        return bool(torch._dynamo.is_dynamo_supported())
    except Exception:  # noqa: BLE001 - any import problem means: no compiler
        return False


def _scan(xs: Tensor, v: Tensor, theta: Tensor, shift: Tensor, amp: Tensor, add_shift: bool,
          record: bool, c: Tensor | None = None,
          ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``xs [k, B, N]`` (may be stride-0 in k), ``v [B, N]`` or ``[N]``, parameters ``[N]``;
    ``c [B, N]``: a signed neuron's net count (``neurons.signed_step``), else None.

    Returns ``(amplitude·spikes [k, B, N], v [B, N], events [B, N] or None, c)``.
    """
    outs = []
    count = None
    for t in range(xs.shape[0]):
        v = v + xs[t]
        if add_shift:
            v = v + shift
        s = (v >= theta).to(v.dtype)
        if c is not None:
            s = s - ((v < 0) & (c > 0)).to(v.dtype)
            c = c + s
        v = v - s * theta
        outs.append(s * amp)
        if record:
            e = s.abs() if c is not None else s
            count = e if count is None else count + e
    return torch.stack(outs), v, count, c


def _compiled():
    if _state["fn"] is None:
        import torch._dynamo.config as dcfg

        # one graph per (block length, flags, input layout): more than dynamo's default of 8
        dcfg.recompile_limit = max(int(dcfg.recompile_limit), 64)
        _state["fn"] = torch.compile(_scan, dynamic=None)
    return _state["fn"]


def channels_last(xs: Tensor) -> bool:
    """``xs [k, B, C, H, W]`` stored channels-last (each image as H, W, C): the layout of a
    time-folded ``torch.channels_last`` activation, which the kernels read as it lies."""
    return (xs.dim() == 5 and not xs.is_contiguous()
            and xs.permute(0, 1, 3, 4, 2).is_contiguous())


def _flat(p: Tensor, sample: torch.Size, nhwc: bool = False) -> Tensor:
    """A per-sample parameter (scalar, ``[C, 1, 1]``, ``[C, H, W]``, ...) as ``[N]``, in the
    element order of the activations (C, H, W or, ``nhwc``, H, W, C)."""
    p = p.expand(sample)
    return (p.permute(1, 2, 0) if nhwc else p).reshape(-1)


def _flat_inputs(neuron: nn.Module, xs: Tensor, k: int, static: bool):
    """``(B, sample shape, nhwc, x [k, B, N], θ, shift, amplitude [N], v [B, N] or v(0) [N])``.

    Every tensor is flattened in one element order, the one ``xs`` is stored in, so that
    channels-last activations need no copy; v is read in that order whatever its own layout.
    """
    b, sample, nhwc = xs.shape[1], xs.shape[2:], channels_last(xs)
    x3 = (xs.permute(0, 1, 3, 4, 2) if nhwc else xs).reshape(xs.shape[0], b, -1)  # a view
    if static:
        x3 = x3.expand(k, -1, -1)
    theta, shift, amp = (_flat(p, sample, nhwc)
                         for p in (neuron.theta, neuron.shift, neuron.amplitude))
    if neuron.v is None:
        v = _flat(neuron.v0, sample, nhwc)
    else:
        v = (neuron.v.permute(0, 2, 3, 1) if nhwc else neuron.v).reshape(b, -1)
    return b, sample, nhwc, x3, theta, shift, amp, v


def _flat_count(neuron: nn.Module, x3: Tensor, b: int, nhwc: bool) -> Tensor | None:
    """A signed neuron's net count as ``[B, N]`` in the order of ``x3``; None for plain ones."""
    if not neuron.is_signed:
        return None
    if neuron.count is None:
        return torch.zeros_like(x3[0])
    return (neuron.count.permute(0, 2, 3, 1) if nhwc else neuron.count).reshape(b, -1)


def _unflat(t: Tensor, n: int, sample: torch.Size, nhwc: bool) -> Tensor:
    """``[..., N]`` back to ``[n, *sample]`` (channels-last strides where ``nhwc``)."""
    if nhwc:
        c, h, w = sample
        return t.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return t.reshape(n, *sample)


def _give_up(e: Exception) -> None:
    """After any compiler failure: warn once, and the plain path from then on (None)."""
    _state["failed"] = True
    warnings.warn(f"lowlat.fused: torch.compile failed ({type(e).__name__}: {e}); "
                  "using the plain IF scan", RuntimeWarning, stacklevel=3)


def fused_forward(neuron: nn.Module, xs: Tensor, k: int, static: bool) -> Tensor | None:
    """Run one chunk of ``neuron`` (an ``IFNeuron``, inference) fused; None: use the plain path.

    ``xs`` is ``[k, B, ...]``, or ``[1, B, ...]`` when ``static`` (constant over the k steps).
    Updates ``neuron.v`` and ``neuron.spike_count`` exactly as the plain path does.
    """
    if not available() or not (xs.is_contiguous() or channels_last(xs)):
        return None
    b, sample, nhwc, x3, theta, shift, amp, v = _flat_inputs(neuron, xs, k, static)
    add_shift = bool(neuron.shift.any())
    outs, count, net = [], None, _flat_count(neuron, x3, b, nhwc)
    try:
        fn = _compiled()
        for t0 in range(0, k, BLOCK):
            y, v, c, net = fn(x3[t0:t0 + BLOCK], v, theta, shift, amp, add_shift, neuron.record,
                              net)
            outs.append(y)
            if c is not None:
                count = c if count is None else count + c
    except Exception as e:  # noqa: BLE001 - any compiler failure: warn once, stay correct
        return _give_up(e)
    neuron.v = _unflat(v, b, sample, nhwc)
    if net is not None:
        neuron.count = _unflat(net, b, sample, nhwc)
    if neuron.record:
        c = _unflat(count, b, sample, nhwc)
        neuron.spike_count = c if neuron.spike_count is None else neuron.spike_count + c
    y = _unflat(outs[0] if len(outs) == 1 else torch.cat(outs), k * b, sample, nhwc)
    return y.detach() if neuron.detach_output else y


def set_fused(model: nn.Module, fused: bool | None) -> None:
    """Fused scan (True), plain scan (False) or the process default (None) on every neuron."""
    from lowlat.neurons import spiking_layers

    for _, m in spiking_layers(model):
        m.fused = fused



# ---- training: the IF scan with the triangle surrogate as one forward and one backward kernel ----

def _train_fwd(xs: Tensor, v: Tensor, theta: Tensor, shift: Tensor, amp: Tensor,
               add_shift: bool, c: Tensor | None = None,
               ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """``xs [k, B, N]``; returns ``(amplitude·spikes [k, B, N], u [k, B, N], v, m, c)``, u the
    membrane potential before each step's spike test. ``c``: the net count of a signed neuron
    (``neurons.signed_step``), then ``m [k, B, N]`` says where a −1 spike was allowed (c > 0);
    u and m are all the backward pass needs."""
    ys, us, ms = [], [], []
    for t in range(xs.shape[0]):
        v = v + xs[t]
        if add_shift:
            v = v + shift
        us.append(v)
        s = (v >= theta).to(v.dtype)
        if c is not None:
            m = c > 0
            ms.append(m)
            s = s - ((v < 0) & m).to(v.dtype)
            c = c + s
        v = v - s * theta
        ys.append(s * amp)
    return torch.stack(ys), torch.stack(us), v, (torch.stack(ms) if ms else None), c


def _train_bwd(gy: Tensor, gv: Tensor, u: Tensor, theta: Tensor, amp: Tensor, gamma: float,
               need_theta: bool, need_amp: bool, scaled: bool = False, m: Tensor | None = None,
               ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """BPTT through the k steps of :func:`_train_fwd`, newest first.

    The gradients of ``IFNeuron``'s autograd graph (``TriangleSpike``, reset by subtraction
    through the spike, amplitude): per step ``g_s = g_y·a − g_v·θ``, ``g_u = g_v + g_s·sg(u)``,
    ``g_θ += −g_s·sg(u)·u/θ − s·g_v``, ``g_a += g_y·s``. A signed neuron (``m``, where its −1
    spike was allowed) adds ``g_s·m·sg(u + θ)`` to ``g_u`` (``NegativeSpike``; no θ term).
    Returns ``(g_x [k, B, N], g_v(0), g_θ, g_a)`` with ``g_θ``, ``g_a`` per element ``[B, N]``
    (None when not needed).
    """
    gxs = []
    gth = torch.zeros_like(gv) if need_theta else None
    gam = torch.zeros_like(gv) if need_amp else None
    for t in range(u.shape[0] - 1, -1, -1):
        ut = u[t]
        s = (ut >= theta).to(ut.dtype)
        sg = gamma * (1.0 - (ut / theta - 1.0).abs()).clamp(min=0.0)
        if scaled:  # lowlat.neurons.triangle
            sg = sg / theta
        gs = gy[t] * amp - gv * theta
        gsv = gs * sg
        if m is not None:
            s = s - ((ut < 0) & m[t]).to(ut.dtype)
            sgn = gamma * (1.0 - (ut / theta).abs()).clamp(min=0.0) * m[t].to(ut.dtype)
            gneg = gs * (sgn / theta if scaled else sgn)
        if gth is not None:
            gth = gth - gsv * ut / theta - s * gv
        if gam is not None:
            gam = gam + gy[t] * s
        gv = gv + gsv
        if m is not None:
            gv = gv + gneg
        gxs.append(gv)
    gxs.reverse()
    return torch.stack(gxs), gv, gth, gam


_train_state: dict = {"fwd": None, "bwd": None}


def _train_kernels():
    if _train_state["fwd"] is None:
        import torch._dynamo.config as dcfg

        dcfg.recompile_limit = max(int(dcfg.recompile_limit), 64)
        _train_state["fwd"] = torch.compile(_train_fwd, dynamic=None)
        _train_state["bwd"] = torch.compile(_train_bwd, dynamic=None)
    return _train_state["fwd"], _train_state["bwd"]


class _FusedIFTrain(torch.autograd.Function):
    """One chunk of an IF neuron with the triangle surrogate; flat ``[k, B, N]`` layout. ``c``:
    a signed neuron's net count (no gradient), returned updated as the third output."""

    @staticmethod
    def forward(ctx, x3, v, theta, amp, shift, gamma, add_shift,  # type: ignore[override]
                scaled=False, c=None):
        fwd, _ = _train_kernels()
        ys, us, ms, vk = [], [], [], v
        for t0 in range(0, x3.shape[0], BLOCK):
            y, u, vk, m, c = fwd(x3[t0:t0 + BLOCK], vk, theta, shift, amp, add_shift, c)
            ys.append(y)
            us.append(u)
            ms.append(m)
        u = us[0] if len(us) == 1 else torch.cat(us)
        m = None if ms[0] is None else (ms[0] if len(ms) == 1 else torch.cat(ms))
        ctx.save_for_backward(u, theta, amp, m)
        ctx.gamma, ctx.scaled, ctx.v_shape = gamma, scaled, v.shape
        if c is not None:
            ctx.mark_non_differentiable(c)
        return (ys[0] if len(ys) == 1 else torch.cat(ys)), vk, c

    @staticmethod
    def backward(ctx, gy, gv, _gc=None):  # type: ignore[override]
        _, bwd = _train_kernels()
        u, theta, amp, m = ctx.saved_tensors
        need_theta, need_amp = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        gv = gv.expand(u.shape[1:]).contiguous()
        gxs, gth, gam = [], None, None
        k = u.shape[0]
        for t0 in reversed(range(0, k, BLOCK)):
            gx, gv, th, am = bwd(gy[t0:t0 + BLOCK], gv, u[t0:t0 + BLOCK], theta, amp, ctx.gamma,
                                 need_theta, need_amp, ctx.scaled,
                                 None if m is None else m[t0:t0 + BLOCK])
            gxs.append(gx)
            if need_theta:
                gth = th if gth is None else gth + th
            if need_amp:
                gam = am if gam is None else gam + am
        gxs.reverse()
        gx = gxs[0] if len(gxs) == 1 else torch.cat(gxs)
        g_v0 = gv.sum_to_size(ctx.v_shape)
        return (gx, g_v0, gth.sum(0) if need_theta else None,
                gam.sum(0) if need_amp else None, None, None, None, None, None)


def fused_train_forward(neuron: nn.Module, xs: Tensor, k: int, static: bool) -> Tensor | None:
    """Run one chunk of ``neuron`` (an ``IFNeuron`` with ``surrogate`` on) fused, with the graph
    for BPTT; None: use the plain path. Same gradients as the plain graph up to float rounding
    (``tests/test_fused.py``)."""
    if not available() or neuron.shift.requires_grad:
        return None
    b, sample, nhwc, x3, theta, shift, amp, v = _flat_inputs(neuron, xs, k, static)
    c = _flat_count(neuron, x3, b, nhwc)
    try:
        y, v, c = _FusedIFTrain.apply(x3, v, theta, amp, shift, float(neuron.gamma),
                                      bool(neuron.shift.any()),
                                      bool(neuron.scaled_surrogate), c)
    except Exception as e:  # noqa: BLE001 - any compiler failure: warn once, stay correct
        return _give_up(e)
    neuron.v = _unflat(v, b, sample, nhwc)
    if c is not None:
        neuron.count = _unflat(c, b, sample, nhwc)
    if neuron.record:
        c = _unflat((y.detach() != 0).sum(0).to(y.dtype), b, sample, nhwc)
        neuron.spike_count = c if neuron.spike_count is None else neuron.spike_count + c
    y = _unflat(y, k * b, sample, nhwc)
    return y.detach() if neuron.detach_output else y
