"""Rate-approximate backward for the time-folded linear layers of a fine-tune (``backward: rate``).

Why: with the neurons compiled (:mod:`lowlat.fused`), what is left of a BPTT step on a CPU is
mostly the convolutions' backward over the time-folded batch ``[T·B, ...]``. A conv, linear or
average-pooling layer is the same map at every step, so its exact gradients are sums over t:
``dL/dW = Σ_t g_t ⊗ x_t`` and ``dL/dx_t = Wᵀ g_t``. Taking the input and the output gradient at
their time averages (``x̄``, ``ḡ``; exact when either is constant over the T steps, as the
classifier's gradient is) gives ``dL/dW ≈ (Σ_t g_t) ⊗ x̄`` and ``dL/dx_t ≈ Wᵀ ḡ`` for every t: one
backward over ``[B, ...]`` instead of ``[T·B, ...]``. The neurons keep their exact BPTT, fed the
same gradient at every step. This is the idea of rate-based backpropagation (Yu et al., NeurIPS
2024) applied to the layers between the neurons only; it changes the gradients, so it is an option
of its own that must earn its place on validation (README "Lever 8").

``exact_input`` (``backward: rate_weights``) takes only the weight gradients from the averages and
keeps every input gradient exact, so the neurons' BPTT sees the true per-step signal.

The forward pass is untouched: the same spikes, the same loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RATE_LAYERS = (nn.Conv2d, nn.Linear, nn.AvgPool2d)


def _fold(t: Tensor, T: int) -> Tensor:
    return t.view(T, -1, *t.shape[1:])  # [T·B, ...] -> [T, B, ...]


def _spread(g: Tensor, T: int) -> Tensor:
    """The same gradient for every step: ``[B, ...] -> [T·B, ...]``."""
    return g.unsqueeze(0).expand(T, *g.shape).reshape(T * g.shape[0], *g.shape[1:])


class _RateConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, m: nn.Conv2d, T: int,
                exact_input: bool) -> Tensor:
        ctx.m, ctx.T, ctx.has_bias, ctx.exact_input = m, T, bias is not None, exact_input
        ctx.save_for_backward(_fold(x, T).mean(0), weight, x if exact_input else None)
        return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)

    @staticmethod
    def backward(ctx, g: Tensor):
        xbar, w, x = ctx.saved_tensors
        m, T, need = ctx.m, ctx.T, ctx.needs_input_grad
        geo = (list(m.stride), list(m.padding), list(m.dilation), False, [0, 0], m.groups)
        gsum = _fold(g, T).sum(0)  # [T·B, C, H, W] -> [B, C, H, W]
        bias = [w.shape[0]] if ctx.has_bias else None
        gx, gw, gb = torch.ops.aten.convolution_backward(
            gsum, xbar, w, bias, *geo, [need[0] and not ctx.exact_input, need[1], need[2]])
        if gx is not None:
            gx = _spread(gx / T, T)
        elif need[0]:  # exact_input: the input's gradient step by step, as plain autograd
            gx = torch.ops.aten.convolution_backward(g, x, w, None, *geo,
                                                     [True, False, False])[0]
        return gx, gw, gb, None, None, None


class _RateLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, T: int,
                exact_input: bool) -> Tensor:
        ctx.T, ctx.has_bias, ctx.exact_input = T, bias is not None, exact_input
        ctx.save_for_backward(_fold(x, T).mean(0), weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g: Tensor):
        xbar, w = ctx.saved_tensors
        T = ctx.T
        gsum = _fold(g, T).sum(0)  # [T·B, out] -> [B, out]
        gx = None
        if ctx.needs_input_grad[0]:
            gx = g @ w if ctx.exact_input else _spread(gsum @ w / T, T)
        gw = gsum.t() @ xbar if ctx.needs_input_grad[1] else None
        gb = gsum.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


class _RatePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, m: nn.AvgPool2d, T: int) -> Tensor:
        ctx.m, ctx.T = m, T
        ctx.save_for_backward(_fold(x, T)[0])  # only its shape matters for the backward
        return F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                            m.count_include_pad, m.divisor_override)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x0,), m, T = ctx.saved_tensors, ctx.m, ctx.T
        gx = torch.ops.aten.avg_pool2d_backward(
            _fold(g, T).mean(0), x0, _pair(m.kernel_size), _pair(m.stride or m.kernel_size),
            _pair(m.padding), m.ceil_mode, m.count_include_pad, m.divisor_override)
        return _spread(gx, T), None, None


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, tuple | list) else [v, v]


def _supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Conv2d):
        return m.padding_mode == "zeros" and isinstance(m.padding, tuple)  # not 'same'
    return isinstance(m, nn.Linear | nn.AvgPool2d)


@contextmanager
def rate_backward(net: nn.Module, T: int, batch: int,
                  exact_input: bool = False) -> Iterator[list[str]]:
    """Within the block, ``net``'s conv/linear/avg-pool layers that get a time-folded input
    (``[T·B, ...]``, B = ``batch``) while a gradient is needed run their backward on the time
    averages; every other call runs as before. Yields the names of the layers it covers.

    ``exact_input``: only the weight gradients from the averages, the input's gradient step by
    step as in BPTT (the neurons get their exact per-step signal; pooling runs as it is).
    """
    names = []
    for name, m in net.named_modules():
        if (not isinstance(m, RATE_LAYERS) or not _supported(m) or T < 2
                or (exact_input and isinstance(m, nn.AvgPool2d))):
            continue
        plain = m.forward

        def forward(x: Tensor, m=m, plain=plain) -> Tensor:
            needs = torch.is_grad_enabled() and (x.requires_grad or any(
                p.requires_grad for p in m.parameters(recurse=False)))
            if not needs or x.shape[0] != T * batch or x.dtype != torch.float32 or (
                    isinstance(m, nn.Linear) and x.dim() != 2):
                return plain(x)
            if isinstance(m, nn.Conv2d):
                return _RateConv.apply(x, m.weight, m.bias, m, T, exact_input)
            if isinstance(m, nn.Linear):
                return _RateLinear.apply(x, m.weight, m.bias, T, exact_input)
            return _RatePool.apply(x, m, T)

        m.forward = forward  # an instance attribute over the class's forward, deleted after
        names.append(name)
    try:
        yield names
    finally:
        for name in names:
            del net.get_submodule(name).forward
