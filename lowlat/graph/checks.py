"""Graph checks for conversion: what the time-folded SNN simulator can run faithfully.

:func:`check_convertible` walks a traced graph once, tracking which values are static (computed
from the image before the first neuron, ``[B, ...]``) and which are time-folded spikes
(``[k·B, ...]``); it refuses, by node and source line, what the simulator cannot run faithfully,
and rewrites the two patterns it can make valid: a reshape to the batch size taken elsewhere
(``x.view(b, -1)``) and a static value added to spikes (a skip connection taken before the first
neuron).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from lowlat.activations import ACTIVATIONS
from lowlat.graph.tracing import ConversionError
from lowlat.graph.tracing import where as _where
from lowlat.neurons import IFNeuron

# Layers that act on each time step independently and linearly (or are pure reshapes), so they
# can run on the time-folded batch of spikes unchanged.
STATELESS = (
    nn.modules.conv._ConvNd, nn.Linear, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd,
    nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
MAX_POOL_HINT = (
    "max pooling of spike trains is not rate-preserving; replace it by average pooling "
    "(lowlat.convert.replace_max_pooling(model), or lowlat.api.prepare(model, pool='avg'), "
    "then fine-tune)"
)
LINEAR_FUNCTIONS = {  # per-sample linear ops that take one signal and act on dims >= 1
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.pad,
    F.interpolate, F.pixel_shuffle, F.pixel_unshuffle,
}
# per-sample reshapes named by their dims: the dims they take must not include the batch (0)
DIM_METHODS = {"transpose": ("dim0", "dim1"), "unsqueeze": ("dim",), "squeeze": ("dim",),
               "permute": ()}  # permute's dims are read whole
DIM_FUNCTIONS = {torch.transpose: "transpose", torch.unsqueeze: "unsqueeze",
                 torch.squeeze: "squeeze", torch.permute: "permute"}
SPLITS = {"chunk", "split", "tensor_split"}  # x.<split>(n, dim) -> a tuple of tensors
SPLIT_FUNCTIONS = {torch.chunk: "chunk", torch.split: "split", torch.tensor_split: "tensor_split"}
SHAPE_ARITHMETIC = {operator.floordiv, operator.mul, operator.add, operator.sub, operator.mod,
                    operator.truediv, operator.neg}  # on sizes and constants (channels // groups)
ADDS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
SCALES = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
SUPPORTED = (
    "conv (1-3d, transposed)/linear/BatchNorm/average pooling/flatten/dropout/padding/upsampling "
    "modules, ReLU and clip-ReLUs (ReLU6, Hardtanh(0, c), F.relu, clamp(x, min=0[, max=c])) and "
    "lowlat's activations, add/sub, cat(dim>=1), mean/sum(dim>=1), scaling by a constant, "
    "F.pad, F.interpolate, flatten(start_dim>=1), transpose/permute/unsqueeze/squeeze of dims "
    ">= 1, view/reshape(x.size(0), ...)"
)
STATIC, TIMED, META, BATCH, CONST = "static", "timed", "meta", "batch", "const"


def time_broadcast(x: Tensor, like: Tensor) -> Tensor:
    """A static ``[B, ...]`` value repeated for each step of time-folded ``like`` ``[k·B, ...]``."""
    if x.shape[0] == like.shape[0]:
        return x
    k = like.shape[0] // x.shape[0]
    return x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)  # [k, B, ...] -> [k·B, ...]


# fx names a function in generated code after its module: keep the name saved SNNs' graphs
# (lowlat.api.save_snn) recorded before lowlat.graph became a package, so they load unchanged.
time_broadcast.__module__ = "lowlat.graph"


def _fname(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _refuse(node: fx.Node, what: str, fix: str) -> ConversionError:
    return ConversionError(f"graph node {node.name!r}{_where(node)} {what}; {fix}")


def _arg(node: fx.Node, i: int, key: str, default=None):
    """Argument ``i`` (counting ``self`` for methods) or keyword ``key``."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def _dims(d) -> list[int]:
    return [d] if isinstance(d, int) else list(d)


def check_convertible(gm: fx.GraphModule) -> None:
    """Raise :class:`ConversionError` naming the first node the SNN simulator cannot run
    faithfully, and rewrite in place the batch-size reshapes and static + spike additions it can
    make valid on the time-folded batch."""
    modules = dict(gm.named_modules())
    kind: dict[fx.Node, str] = {}
    tuples: set[fx.Node] = set()  # results of chunk/split: indexing them picks a tensor
    g = gm.graph

    def k(a) -> str:
        return kind.get(a, CONST) if isinstance(a, fx.Node) else CONST

    for node in list(g.nodes):
        if node.op == "placeholder":
            kind[node] = STATIC
            continue
        if node.op == "get_attr":
            kind[node] = CONST
            continue
        if node.op == "output":
            ret = node.args[0]
            if not isinstance(ret, fx.Node):
                what = ("tuple" if isinstance(ret, tuple | list) else "dict"
                        if isinstance(ret, dict) else type(ret).__name__)
                raise _refuse(node, f"returns a {what}, not one tensor",
                              "the SNN averages one output over time steps: return the logits "
                              "alone (wrap the model, or take the tensor you need in forward)")
            continue
        inputs = node.all_input_nodes
        if node.op == "call_function" and node.target is getattr:
            kind[node] = META
            continue
        is_view = (node.op == "call_method" and node.target in ("view", "reshape")) or (
            node.op == "call_function" and node.target is torch.reshape)
        if not is_view:
            for a in inputs:
                if kind.get(a) == BATCH:
                    raise _refuse(node, f"uses the batch size (from {a.name!r}) in "
                                  f"{_fname(node.target)}",
                                  "the simulator folds time into the batch ([T·B, ...]), so only "
                                  "view/reshape(x.size(0), ...) may use it; use x.flatten(1)")
        tensors = [a for a in inputs if kind.get(a) in (STATIC, TIMED)]
        out = TIMED if any(kind[a] == TIMED for a in tensors) else (
            STATIC if tensors else CONST)
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, MAX_POOLS):
                raise _refuse(node, f"is layer {node.target!r} ({type(m).__name__})",
                              MAX_POOL_HINT)
            if isinstance(m, (*ACTIVATIONS, IFNeuron)):
                kind[node] = TIMED
                continue
            if not isinstance(m, STATELESS):
                raise _refuse(node, f"is layer {node.target!r} ({type(m).__name__}), which the "
                              "SNN converter does not support", f"supported: {SUPPORTED}")
            if isinstance(m, nn.Flatten) and m.start_dim == 0:
                raise _refuse(node, f"is {node.target!r}, nn.Flatten(start_dim=0), which mixes "
                              "samples", "use nn.Flatten() (start_dim=1)")
            if isinstance(m, nn.Unflatten) and m.dim == 0:
                raise _refuse(node, f"is {node.target!r}, nn.Unflatten(dim=0), which splits the "
                              "batch", "unflatten a dimension >= 1")
            kind[node] = out
            continue
        t = node.target
        fn = node.op == "call_function"
        name = _fname(t)
        if (node.op == "call_method" and t == "size") or (fn and t is operator.getitem
                                                           and k(node.args[0]) == META):
            idx = _arg(node, 1, "dim")
            kind[node] = BATCH if idx == 0 else META
            continue
        if node.op == "call_method" and t in ("dim", "contiguous", "clone", "detach"):
            kind[node] = META if t == "dim" else out
            continue
        if is_view:
            shape = list(node.args[1:]) if node.op == "call_method" else [node.args[1]]
            if len(shape) == 1 and isinstance(shape[0], list | tuple):
                shape = list(shape[0])
            lead = shape[0] if shape else None
            if isinstance(lead, fx.Node) and kind.get(lead) == BATCH:
                with g.inserting_before(node):  # the reshaped tensor's own leading dim
                    own = g.call_method("size", (node.args[0], 0))
                kind[own] = BATCH
                node.replace_input_with(lead, own)  # also inside a shape tuple
            elif lead != -1:
                raise _refuse(node, f"reshapes to a leading dimension {lead!r}",
                              "on the time-folded batch [T·B, ...] the leading dimension must be "
                              "-1 or x.size(0); use x.flatten(1) or x.view(x.size(0), ...)")
            kind[node] = k(node.args[0])
            continue
        if fn and t is operator.getitem and node.args[0] in tuples:
            kind[node] = k(node.args[0])  # one piece of a chunk/split
            continue
        if fn and t in SHAPE_ARITHMETIC and not tensors:
            kind[node] = META  # sizes and constants only (a batch size was refused above)
            continue
        if (node.op == "call_method" and t in SPLITS) or (fn and t in SPLIT_FUNCTIONS):
            t = SPLIT_FUNCTIONS[t] if fn else t
            d = _arg(node, 2, "dim", 0)
            if not isinstance(d, int) or d == 0:
                raise _refuse(node, f"calls {t} along dim {d!r}, the batch dimension",
                              f"{t} along a dimension >= 1 (x.{t}(..., dim=1))")
            kind[node] = out
            tuples.add(node)
            continue
        if fn and t is operator.getitem:
            idx = node.args[1]
            first = idx[0] if isinstance(idx, tuple) and idx else idx
            if not (first is Ellipsis or first == slice(None)):
                raise _refuse(node, f"indexes the batch dimension with {idx!r}",
                              "index only dimensions >= 1 (x[:, ...])")
            kind[node] = out
            continue
        if (fn and t in ADDS) or (node.op == "call_method" and t in ("add", "add_", "sub",
                                                                     "sub_")):
            _broadcast_static(g, node, tensors, kind)
            kind[node] = out
            continue
        if (fn and t is torch.cat) or (node.op == "call_method" and t == "cat"):
            if _arg(node, 1, "dim", 0) == 0:
                raise _refuse(node, "concatenates along the batch dimension",
                              "concatenate along dim >= 1")
            _broadcast_static(g, node, tensors, kind)
            kind[node] = out
            continue
        if (fn and t in SCALES) or (node.op == "call_method" and t in ("mul", "div",
                                                                       "mul_", "div_")):
            if len(tensors) > 1:
                raise _refuse(node, f"multiplies two signals ({name})", "a product of spike "
                              "trains is not the product of their rates; scale by a constant")
            if (fn and t in (operator.truediv, operator.itruediv, torch.div)) or t in (
                    "div", "div_"):
                if k(node.args[1]) in (STATIC, TIMED):
                    raise _refuse(node, "divides by a signal", "divide by a constant")
            kind[node] = out
            continue
        if (fn and t in (torch.mean, torch.sum, torch.flatten)) or (
                node.op == "call_method" and t in ("mean", "sum", "flatten")):
            d = _arg(node, 1, "start_dim" if name == "flatten" else "dim",
                     0 if name == "flatten" else None)
            if d is None or 0 in _dims(d):
                raise _refuse(node, f"calls {name} over the batch dimension (dim {d})",
                              "reduce or flatten dimensions >= 1 only (e.g. x.mean((2, 3)), "
                              "torch.flatten(x, 1))")
            kind[node] = out
            continue
        if fn and t in LINEAR_FUNCTIONS:
            if len(tensors) > 1:
                raise _refuse(node, f"calls {name} with {len(tensors)} signals",
                              "pass one signal; the other arguments must be constants")
            kind[node] = out
            continue
        if (node.op == "call_method" and t in DIM_METHODS) or (fn and t in DIM_FUNCTIONS):
            t = DIM_FUNCTIONS[t] if fn else t
            if t == "permute":  # x.permute(0, 2, 1) or x.permute((0, 2, 1))
                dims = list(node.args[1:]) or _dims(node.kwargs.get("dims", []))
                if len(dims) == 1 and isinstance(dims[0], list | tuple):
                    dims = list(dims[0])
                ok = bool(dims) and dims[0] == 0 and 0 not in dims[1:]
            else:
                dims = [_arg(node, i + 1, key) for i, key in enumerate(DIM_METHODS[t])]
                ok = all(isinstance(d, int) and d != 0 for d in dims)
            if not ok:
                raise _refuse(node, f"calls {t} with dims {dims}, which may move or drop the "
                              "batch dimension",
                              "the simulator folds time into the batch ([T·B, ...]); name "
                              "dims >= 1 (x.squeeze(-1), x.transpose(1, 2), x.permute(0, ...))")
            kind[node] = out
            continue
        if fn and t in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                        F.adaptive_max_pool2d, F.adaptive_max_pool3d):
            raise _refuse(node, f"calls {name}", "max pooling of spike trains is not "
                          "rate-preserving; use F.avg_pool2d or nn.AvgPool2d and fine-tune")
        if [u.op for u in node.users] == ["output"]:  # a read-out after the last layer
            raise _refuse(node, f"calls {name} on the network's output, which the SNN "
                          "converter does not support", "return the logits and apply "
                          f"{name} outside the SNN, to its time-averaged output")
        raise _refuse(node, f"calls {name}, which the SNN converter does not support",
                      f"supported: {SUPPORTED}")
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()


def _broadcast_static(g: fx.Graph, node: fx.Node, tensors: list[fx.Node],
                      kind: dict[fx.Node, str]) -> None:
    """Repeat each static input of a node that also takes spikes once per time step."""
    timed = [a for a in tensors if kind[a] == TIMED]
    if not timed:
        return
    for a in tensors:
        if kind[a] == STATIC:
            with g.inserting_before(node):
                rep = g.call_function(time_broadcast, (a, timed[0]))
            kind[rep] = TIMED
            node.replace_input_with(a, rep)
