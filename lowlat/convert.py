"""ANN -> SNN conversion: fold BatchNorm (eq. 7), swap activations for IF neurons, set v(0).

Conversion traces the network with ``torch.fx`` (activations kept as leaf modules), so any
fx-traceable model built from conv/linear/pooling/add and one of the activations in
:mod:`lowlat.activations` converts; anything else is refused with the layer's name.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Iterable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from lowlat.activations import ACTIVATIONS, QCActivation, RateNorm
from lowlat.neurons import IFNeuron

log = logging.getLogger(__name__)

# Layers that act on each time step independently and linearly (or are pure reshapes), so they
# can run on the time-folded batch of spikes unchanged.
STATELESS = (
    nn.Conv1d, nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
    nn.Identity, nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d,
)
FUNCTIONS = {
    operator.add, operator.iadd, torch.add, torch.flatten, torch.cat, getattr, operator.getitem,
}
METHODS = {"flatten", "view", "reshape", "size", "add", "add_", "contiguous", "dim"}


class _LeafActTracer(fx.Tracer):
    """Keeps activations and neurons as single graph nodes so they can be swapped by name."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*ACTIVATIONS, IFNeuron)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    graph = _LeafActTracer().trace(model)
    return fx.GraphModule(model, graph, model.__class__.__name__)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


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
        if isinstance(layer, nn.Conv2d | nn.Conv1d):
            fused = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            log.warning("BatchNorm %s follows %s; left unfolded", node.target, type(layer).__name__)
            continue
        _set_module(gm, prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def check_convertible(gm: fx.GraphModule) -> None:
    """Raise ``ValueError`` naming the first layer the SNN simulator cannot run faithfully."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.MaxPool2d | nn.MaxPool1d | nn.AdaptiveMaxPool2d):
                raise ValueError(
                    f"layer {node.target!r} is {type(m).__name__}: max pooling of spike trains is "
                    "not rate-preserving; build the model with average pooling "
                    "(e.g. model.kwargs.pool=avg)"
                )
            if not isinstance(m, (*STATELESS, *ACTIVATIONS, IFNeuron)):
                raise ValueError(
                    f"layer {node.target!r} ({type(m).__name__}) is not supported by the SNN "
                    f"converter; supported: {', '.join(t.__name__ for t in STATELESS)} and "
                    "activations ReLU/QCActivation/RateNorm"
                )
        elif node.op == "call_function" and node.target not in FUNCTIONS:
            raise ValueError(
                f"graph node {node.name!r} calls {getattr(node.target, '__name__', node.target)}, "
                "which the SNN converter does not support (functional activations must be modules)"
            )
        elif node.op == "call_method" and node.target not in METHODS:
            raise ValueError(
                f"graph node {node.name!r} calls method .{node.target}(), not supported")


def activation_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]


def to_snn(
    model: nn.Module, thresholds: dict[str, float] | None = None, gamma: float = 1.0,
) -> fx.GraphModule:
    """Fold BN and replace every activation by an :class:`IFNeuron` (θ = λ, spike value θ).

    ``thresholds`` gives θ per activation name for plain ReLU networks (MaxNorm, RobustNorm);
    QC and Rate-Norm activations carry their own threshold.
    """
    gm = fold_bn(model)
    check_convertible(gm)
    for name, m in list(gm.named_modules()):
        if isinstance(m, QCActivation | RateNorm):
            theta = m.threshold.detach().clone()
        elif isinstance(m, nn.ReLU):
            if thresholds is None or name not in thresholds:
                raise ValueError(
                    f"activation {name!r} is a plain ReLU: give its threshold (maxnorm/robustnorm "
                    "statistics) or convert a QC-ANN"
                )
            theta = torch.tensor(float(thresholds[name]))
        else:
            continue
        if float(theta) <= 0:
            raise ValueError(f"activation {name!r} has threshold {float(theta)} <= 0")
        _set_module(gm, name, IFNeuron(theta, gamma=gamma))
    gm.recompile()
    return gm


@torch.no_grad()
def activation_stats(
    model: nn.Module, batches: Iterable[torch.Tensor], percentile: float = 99.9,
    max_samples: int = 2_000_000, seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per-activation statistics of the outputs on ``batches`` (ANN in eval mode): ``max``,
    ``percentile`` over all values, zeros included (the SpikingJelly tutorial's RobustNorm), and
    ``percentile_nonzero`` over the non-zero values only (Rueckauer et al. 2017's definition),
    each on a uniform subsample of at most ``max_samples`` values a layer.
    """
    model.eval()
    names = activation_names(model)
    if not names:
        raise ValueError("model has no activation layers to take statistics from")
    gen = torch.Generator().manual_seed(seed)
    maxima: dict[str, float] = dict.fromkeys(names, 0.0)
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []

    def hook(name):
        def fn(_m, _i, out):
            flat = out.detach().flatten().float().cpu()
            maxima[name] = max(maxima[name], float(flat.max()))
            if flat.numel() > max_samples // 8:
                idx = torch.randint(flat.numel(), (max_samples // 8,), generator=gen)
                flat = flat[idx]
            samples[name].append(flat)
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
    out = {}
    for n in names:
        v = torch.cat(samples[n])
        if v.numel() > max_samples:
            v = v[torch.randperm(v.numel(), generator=gen)[:max_samples]]
        out[n] = {"max": maxima[n], "percentile": _percentile(v, percentile),
                  "percentile_nonzero": _percentile(v[v != 0], percentile)}
    return out


def _percentile(v: torch.Tensor, q: float) -> float:
    """The q-th percentile (nearest rank) of ``v``; 0 for an empty tensor (a silent layer)."""
    if v.numel() == 0:
        return 0.0
    k = max(1, min(v.numel(), int(round(q / 100 * v.numel()))))
    return float(v.kthvalue(k).values)
