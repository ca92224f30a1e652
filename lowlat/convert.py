"""ANN -> SNN conversion: fold BatchNorm (eq. 7), swap activations for IF neurons, set v(0).

Conversion traces the network with ``torch.fx`` (activations kept as leaf modules), so any
fx-traceable model built from conv/linear/pooling/add and one of the activations in
:mod:`lowlat.activations` converts; anything else is refused with the layer's name.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from lowlat.activations import ACTIVATIONS, RELUS, QCActivation, RateNorm, relu_cap
from lowlat.graph import (
    MAX_POOLS,
    ConversionError,
    check_convertible,
    set_module,
    trace,
)
from lowlat.neurons import IFNeuron

log = logging.getLogger(__name__)

__all__ = ["ConversionError", "activation_sites", "activation_stats", "check_convertible",
           "fold_bn", "replace_max_pooling", "swap_activations", "to_snn", "trace"]
_set_module = set_module  # old private name


def fold_bn(model: nn.Module) -> fx.GraphModule:
    """Fold each BatchNorm into the conv/linear before it (``W·γ/σ``, ``β + (b − μ)·γ/σ``).

    Returns a traced copy in eval mode; the input model is untouched.
    """
    gm = trace(copy.deepcopy(model).eval())
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_bn = node.op == "call_module" and isinstance(
            modules[node.target], nn.modules.batchnorm._BatchNorm)
        if not is_bn:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            log.warning("BatchNorm %s does not follow a conv/linear; left unfolded", node.target)
            continue
        layer, bn = modules[prev.target], modules[node.target]
        if isinstance(layer, nn.modules.conv._ConvNd):  # 1-3d, transposed too
            fused = fuse_conv_bn_eval(layer, bn, transpose=layer.transposed)
        elif isinstance(layer, nn.Linear):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            log.warning("BatchNorm %s follows %s; left unfolded", node.target, type(layer).__name__)
            continue
        set_module(gm, prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def activation_sites(model: nn.Module) -> dict[str, nn.Module]:
    """Activation modules by call-site name (the names the converted neurons will carry)."""
    return {n: m for n, m in trace(model).named_modules() if isinstance(m, ACTIVATIONS)}


def activation_names(model: nn.Module) -> list[str]:
    return list(activation_sites(model))


def _needs_graph(model: nn.Module) -> bool:
    """Whether module names alone cannot address every activation call site."""
    sites = activation_sites(model)
    return set(sites) != {n for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)}


def swap_activations(
    model: nn.Module, make: Callable[[str], nn.Module],
    types: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh),
) -> nn.Module:
    """Copy ``model`` and replace every activation call site of ``types`` by ``make(site)``.

    The copy keeps the model's own class when each site is its own module; a model that calls
    one module at several sites (or ``F.relu``) comes back as the per-site fx graph of
    :func:`lowlat.graph.trace`, so that each site gets its own threshold.
    """
    model = copy.deepcopy(model)
    if _needs_graph(model):
        model = trace(model)
    for name, m in list(model.named_modules()):
        if type(m) in types:
            set_module(model, name, make(name))
    if isinstance(model, fx.GraphModule):
        model.recompile()
    return model


def replace_max_pooling(model: nn.Module) -> nn.Module:
    """Copy ``model`` with every max-pooling module replaced by average pooling of the same
    window (spike trains can be average-pooled exactly; fine-tune afterwards)."""
    model = copy.deepcopy(model)
    adaptive = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d:
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d}
    windowed = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
    for name, m in list(model.named_modules()):
        if not isinstance(m, MAX_POOLS):
            continue
        dilation = getattr(m, "dilation", 1)  # adaptive pools have none
        if getattr(m, "return_indices", False) or any(
                d != 1 for d in (dilation if isinstance(dilation, tuple) else (dilation,))):
            raise ConversionError(f"max pooling {name!r} uses dilation or returns indices; "
                                  "no average pooling matches it")
        if type(m) in adaptive:
            new = adaptive[type(m)](m.output_size)
        else:
            new = windowed[type(m)](m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode,
                                    count_include_pad=False)
        set_module(model, name, new)
    return model


def to_snn(
    model: nn.Module, thresholds: dict[str, float | torch.Tensor] | None = None,
    gamma: float = 1.0,
) -> fx.GraphModule:
    """Fold BN and replace every activation call site by an :class:`IFNeuron` (θ = λ, spike
    value θ).

    ``thresholds`` gives θ per activation site for plain ReLU networks (MaxNorm, RobustNorm; a
    clip-ReLU, ReLU6 or Hardtanh(0, c), caps θ at c): a number, or a per-channel tensor shaped to
    broadcast over one sample (``[C, 1, 1]``, as :func:`activation_stats` returns it). QC and
    Rate-Norm activations carry their own threshold (per layer or per channel).
    """
    gm = fold_bn(model)
    check_convertible(gm)
    for name, m in list(gm.named_modules()):
        if isinstance(m, QCActivation | RateNorm):
            theta = m.threshold.detach().clone()
        elif isinstance(m, RELUS):
            if thresholds is None or name not in thresholds:
                raise ConversionError(
                    f"activation {name!r} is a plain {type(m).__name__}: give its threshold "
                    "(maxnorm/robustnorm statistics) or convert a QC-ANN"
                )
            theta = torch.as_tensor(thresholds[name], dtype=torch.float32).clamp(
                max=relu_cap(m))
        else:
            continue
        if not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
            raise ConversionError(f"activation {name!r} has a threshold that is not finite and "
                                  f"> 0 (min {float(theta.min())}); a silent channel or layer "
                                  "needs a positive floor")
        set_module(gm, name, IFNeuron(theta, gamma=gamma))
    gm.recompile()
    return gm


@torch.no_grad()
def activation_stats(
    model: nn.Module, batches: Iterable[torch.Tensor], percentile: float = 99.9,
    max_samples: int = 2_000_000, seed: int = 0,
) -> dict[str, dict[str, float | torch.Tensor]]:
    """Per-activation statistics of the outputs on ``batches`` (ANN in eval mode): ``max``,
    ``percentile`` over all values, zeros included (the SpikingJelly tutorial's RobustNorm),
    ``percentile_nonzero`` over the non-zero values only (Rueckauer et al. 2017's definition),
    each on a uniform subsample of at most ``max_samples`` values a layer, and
    ``percentile_channel``: the percentile of each output channel over samples and positions,
    zeros included (SpikingJelly's channel-wise recipe), as a tensor that broadcasts over one
    sample (``[C, 1, 1]`` or ``[C]``), from at most ``max_samples`` values a layer too, and
    ``max_channel``, each channel's maximum, in the same shape.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"activation statistics: percentile must be in (0, 100], got {percentile}")
    model = trace(model.eval())  # per call site: a shared module gets one statistic per site
    names = activation_names(model)
    if not names:
        raise ValueError("model has no ReLU, ReLU6 or lowlat activation to take statistics "
                         "from; the converter turns only those into IF neurons")
    gen = torch.Generator().manual_seed(seed)
    maxima: dict[str, float] = dict.fromkeys(names, 0.0)
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    per_channel: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    shapes: dict[str, tuple[int, ...]] = {}
    channel_max: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name):
        def fn(_m, _i, out):
            out = out.detach().float().cpu()
            if not bool(torch.isfinite(out).all()):
                raise ValueError(f"activation statistics: layer {name!r} output NaN or inf on "
                                 "the data; check the images (and the model) for NaN/inf")
            flat = out.flatten()
            maxima[name] = max(maxima[name], float(flat.max()))
            if flat.numel() > max_samples // 8:
                idx = torch.randint(flat.numel(), (max_samples // 8,), generator=gen)
                flat = flat[idx]
            samples[name].append(flat)
            c = out.shape[1] if out.dim() > 1 else 1
            shapes[name] = (c,) + (1,) * max(0, out.dim() - 2)
            cols = out.transpose(0, 1).reshape(c, -1)  # [B, C, ...] -> [C, B·...]
            keep = max(1, max_samples // (8 * c))
            if cols.shape[1] > keep:
                cols = cols[:, torch.randint(cols.shape[1], (keep,), generator=gen)]
            per_channel[name].append(cols)
            m = out.transpose(0, 1).reshape(c, -1).amax(dim=1)
            channel_max[name] = m if name not in channel_max else torch.maximum(
                channel_max[name], m)
        return fn

    mods = dict(model.named_modules())
    for n in names:
        hooks.append(mods[n].register_forward_hook(hook(n)))
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not samples[names[0]]:
        raise ValueError("activation statistics: the data gave no batches")
    out: dict[str, dict[str, float | torch.Tensor]] = {}
    for n in names:
        v = torch.cat(samples[n])
        if v.numel() > max_samples:
            v = v[torch.randperm(v.numel(), generator=gen)[:max_samples]]
        cols = torch.cat(per_channel[n], dim=1)  # [C, samples]
        k = max(1, min(cols.shape[1], int(round(percentile / 100 * cols.shape[1]))))
        pc = cols.kthvalue(k, dim=1).values.view(shapes[n])
        out[n] = {"max": maxima[n], "percentile": _percentile(v, percentile),
                  "percentile_nonzero": _percentile(v[v != 0], percentile),
                  "percentile_channel": pc, "max_channel": channel_max[n].view(shapes[n])}
    return out


def _percentile(v: torch.Tensor, q: float) -> float:
    """The q-th percentile (nearest rank) of ``v``; 0 for an empty tensor (a silent layer)."""
    if v.numel() == 0:
        return 0.0
    k = max(1, min(v.numel(), int(round(q / 100 * v.numel()))))
    return float(v.kthvalue(k).values)
