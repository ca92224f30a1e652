"""Fused IF scan: the k time steps of one chunk as one compiled kernel (``torch.compile``).

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
          record: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``xs [k, B, N]`` (may be stride-0 in k), ``v [B, N]`` or ``[N]``, parameters ``[N]``.

    Returns ``(amplitude·spikes [k, B, N], v [B, N], spike counts [B, N] or None)``.
    """
    outs = []
    count = None
    for t in range(xs.shape[0]):
        v = v + xs[t]
        if add_shift:
            v = v + shift
        s = (v >= theta).to(v.dtype)
        v = v - s * theta
        outs.append(s * amp)
        if record:
            count = s if count is None else count + s
    return torch.stack(outs), v, count


def _compiled():
    if _state["fn"] is None:
        import torch._dynamo.config as dcfg

        # one graph per (block length, flags, input layout): more than dynamo's default of 8
        dcfg.recompile_limit = max(int(dcfg.recompile_limit), 64)
        _state["fn"] = torch.compile(_scan, dynamic=None)
    return _state["fn"]


def _flat(p: Tensor, sample: torch.Size) -> Tensor:
    """A per-sample parameter (scalar, ``[C, 1, 1]``, ``[C, H, W]``, ...) as ``[N]``."""
    return p.expand(sample).reshape(-1)


def fused_forward(neuron: nn.Module, xs: Tensor, k: int, static: bool) -> Tensor | None:
    """Run one chunk of ``neuron`` (an ``IFNeuron``, inference) fused; None: use the plain path.

    ``xs`` is ``[k, B, ...]``, or ``[1, B, ...]`` when ``static`` (constant over the k steps).
    Updates ``neuron.v`` and ``neuron.spike_count`` exactly as the plain path does.
    """
    if not available() or not xs.is_contiguous():
        return None
    b, sample = xs.shape[1], xs.shape[2:]
    x3 = xs.view(xs.shape[0], b, -1)
    if static:
        x3 = x3.expand(k, -1, -1)
    theta, shift, amp = (_flat(p, sample) for p in (neuron.theta, neuron.shift, neuron.amplitude))
    add_shift = bool(neuron.shift.any())
    v = neuron.v.reshape(b, -1) if neuron.v is not None else _flat(neuron.v0, sample)
    outs, count = [], None
    try:
        fn = _compiled()
        for t0 in range(0, k, BLOCK):
            y, v, c = fn(x3[t0:t0 + BLOCK], v, theta, shift, amp, add_shift, neuron.record)
            outs.append(y)
            if c is not None:
                count = c if count is None else count + c
    except Exception as e:  # noqa: BLE001 - any compiler failure: warn once, stay correct
        _state["failed"] = True
        warnings.warn(f"lowlat.fused: torch.compile failed ({type(e).__name__}: {e}); "
                      "using the plain IF scan", RuntimeWarning, stacklevel=2)
        return None
    neuron.v = v.view(b, *sample)
    if neuron.record:
        c = count.view(b, *sample)
        neuron.spike_count = c if neuron.spike_count is None else neuron.spike_count + c
    y = (outs[0] if len(outs) == 1 else torch.cat(outs)).view(k * b, *sample)
    return y.detach() if neuron.detach_output else y


def set_fused(model: nn.Module, fused: bool | None) -> None:
    """Fused scan (True), plain scan (False) or the process default (None) on every neuron."""
    from lowlat.neurons import spiking_layers

    for _, m in spiking_layers(model):
        m.fused = fused

