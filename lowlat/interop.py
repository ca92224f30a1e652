"""ONNX in and out of lowlat (needs the ``onnx`` extra: ``onnx``, ``onnxscript``, ``onnx2torch``).

``export_onnx`` writes an ANN or a QC-ANN for deployment (the QC activation becomes
Clip/Floor/Mul nodes). ``from_onnx`` imports an ONNX model (a Keras/TensorFlow network exported
with tf2onnx, say) as a PyTorch module whose ops lowlat's converter understands, so it goes
through :func:`lowlat.api.prepare` like any other model. Its arguments are JSON-able, so
``"lowlat.interop:from_onnx"`` with ``{"path": ...}`` serves as the factory of
:func:`lowlat.api.save_snn`.
"""

from __future__ import annotations

import operator
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from lowlat.graph import set_module

OPSET = 17  # onnx2torch converts opsets up to 17 for the ops of CNNs (AveragePool-19 is not)


def export_onnx(model: nn.Module, sample: Tensor, path: str | Path, opset: int = OPSET) -> Path:
    """Write ``model`` (eval mode, BN folded by the exporter) to ``path`` with a dynamic batch
    axis; the input is named ``input``, the output ``output``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model.eval(), (sample,), str(path), dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def _replace(g: fx.Graph, node: fx.Node, op: str, target, args, kwargs=None) -> None:
    with g.inserting_before(node):
        new = g.create_node(op, target, args, kwargs or {})
    node.replace_all_uses_with(new)
    g.erase_node(node)


def _inline_identity_initializers(model):
    """Give each ``Identity(initializer)`` output its own initializer: torch's exporter shares
    equal constants (e.g. zero biases) through Identity nodes, which onnx2torch cannot read."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            graph.node.remove(node)
    return model


def from_onnx(path: str | Path) -> fx.GraphModule:
    """The ONNX model at ``path`` as an fx module of plain PyTorch ops (via ``onnx2torch``):
    constants become buffers, binary math and static-axis mean/sum reductions become torch calls,
    global average pooling becomes ``F.adaptive_avg_pool2d``; module names lose ``/``."""
    import onnx
    from onnx2torch import convert

    gm = convert(_inline_identity_initializers(onnx.load(str(path))))
    g = gm.graph
    for node in list(g.nodes):
        if node.op != "call_module":
            continue
        m = gm.get_submodule(node.target)
        cls = type(m).__name__
        if cls == "OnnxConstant" and isinstance(getattr(m, "value", None), Tensor):
            _replace(g, node, "get_attr", f"{node.target}.value", ())
        elif cls == "OnnxBinaryMathOperation" and m.broadcast is None:
            _replace(g, node, "call_function", m.math_op_function, node.args)
        elif cls in ("OnnxReduceStaticAxes", "OnnxReduceSumStaticAxes") and getattr(
                m, "axes", None) and getattr(m, "operation_type", "ReduceSum") in (
                "ReduceMean", "ReduceSum"):
            method = "mean" if getattr(m, "operation_type", "") == "ReduceMean" else "sum"
            _replace(g, node, "call_method", method, (node.args[0], tuple(m.axes)),
                     {"keepdim": m.keepdims})
        elif cls.startswith("OnnxGlobalAveragePool"):
            _replace(g, node, "call_function", F.adaptive_avg_pool2d, (node.args[0], 1))
    for node in g.nodes:  # readable names without '/' (they appear in error messages)
        if node.op == "call_module" and not re.fullmatch(r"[\w.]+", node.target):
            new = re.sub(r"\W+", "_", node.target).strip("_") or "m"
            while hasattr(gm, new):
                new += "_"
            set_module(gm, new, gm.get_submodule(node.target))
            node.target = new
    g.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


# NIR (https://neuroir.org) describes IF neurons as ``dv/dt = R·I``, spike when ``v > v_threshold``,
# then ``v = v_reset``, starting from rest. lowlat's neuron differs in four ways, stated in the
# export's metadata: it subtracts θ on a spike (reset by subtraction keeps the residue), fires on
# ``v >= θ``, starts from v(0) (OptI/LMPC), and emits spikes of value θ (a ``Scale`` node after
# each ``IF`` here). A per-step input shift is folded into the bias of the layer feeding it.
NIR_SEMANTICS = (
    "lowlat IF, discrete time (dt = 1, r = 1): v[t] = v[t-1] + I[t]; s[t] = (v[t] >= v_threshold);"
    " v[t] -= s[t]*v_threshold (reset by subtraction, not to v_reset); v[0] = metadata 'v0' "
    "(not 0); the spike value is the following Scale node (θ); the image is the input current "
    "of every time step (direct encoding); outputs are averaged over T steps."
)


def export_nir(snn: nn.Module, sample: Tensor):
    """The converted SNN (:class:`lowlat.api.SpikingNetwork` or its ``net``) as a ``nir.NIRGraph``.

    Maps Conv2d, Linear (Affine), IF (+ Scale for the spike value), AvgPool2d, Flatten and
    additions (a unit ``Scale`` node summing its incoming edges); anything else raises
    ``NotImplementedError`` naming the node. What NIR's IF cannot say (reset by subtraction,
    ``>=``, v(0)) is in each IF node's metadata and the graph's ``metadata['semantics']``.
    """
    import nir
    import numpy as np
    from torch.fx.passes.shape_prop import ShapeProp

    from lowlat.graph import time_broadcast
    from lowlat.neurons import IFNeuron, configure, reset_states

    net = getattr(snn, "net", snn)
    x = snn.normalize(sample[:1]) if hasattr(snn, "normalize") else sample[:1]
    reset_states(net)
    configure(net, steps=1, batch=None)
    ShapeProp(net).propagate(x)
    reset_states(net)

    def shape(n: fx.Node) -> tuple[int, ...]:
        return tuple(n.meta["tensor_meta"].shape[1:])  # one sample, no batch

    def arr(t: Tensor, shp=None):
        a = t.detach().cpu().double().numpy()
        return np.broadcast_to(a, shp).copy() if shp is not None else a

    nodes: dict = {}
    edges: list[tuple[str, str]] = []
    src: dict[fx.Node, str] = {}
    biases: dict[str, Tensor] = {}  # nir node -> bias to which a neuron's shift is added

    def link(n: fx.Node, name: str, node) -> None:
        nodes[name] = node
        for a in n.all_input_nodes:
            if a in src:
                edges.append((src[a], name))
        src[n] = name

    for n in net.graph.nodes:
        if n.op == "placeholder":
            nodes["input"] = nir.Input({"input": np.array(shape(n))})
            src[n] = "input"
            continue
        if n.op == "output":
            (a,) = n.all_input_nodes
            nodes["output"] = nir.Output({"output": np.array(shape(a))})
            edges.append((src[a], "output"))
            continue
        m = net.get_submodule(n.target) if n.op == "call_module" else None
        f = n.target
        if isinstance(m, nn.Dropout | nn.Identity) or f is time_broadcast:
            src[n] = src[n.args[0]]  # identity; the input is presented at every step
        elif isinstance(m, nn.Conv2d):
            b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_channels)
            biases[n.name] = b.clone()
            link(n, n.name, nir.Conv2d(shape(n.args[0])[-2:], arr(m.weight), m.stride, m.padding,
                                       m.dilation, m.groups, arr(b)))
        elif isinstance(m, nn.Linear):
            b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
            biases[n.name] = b.clone()
            link(n, n.name, nir.Affine(arr(m.weight), arr(b)))
        elif isinstance(m, IFNeuron):
            if m.is_signed:
                raise NotImplementedError(f"NIR export: neuron {n.target!r} is signed (it sends "
                                          "-1 spikes), which NIR's IF node cannot express; "
                                          "export an SNN of a method with plain IF neurons")
            shp = shape(n)
            prev = n.args[0]
            if prev.target in (operator.add, operator.iadd, torch.add) and len(prev.users) == 1:
                prev = next((a for a in prev.all_input_nodes  # the summed current: fold there
                             if a.name in biases and len(a.users) == 1), prev)
            if bool(m.shift.any()):
                if not (prev.name in biases and len(prev.users) == 1):
                    raise NotImplementedError(f"NIR export: neuron {n.target!r} has an input "
                                              "shift but no conv/linear layer of its own to take "
                                              "it as bias")
                per_channel = m.shift.detach().expand(shp).reshape(shp[0], -1)  # [C, rest]
                if not bool((per_channel == per_channel[:, :1]).all()):
                    raise NotImplementedError(f"NIR export: neuron {n.target!r} has a shift "
                                              "that varies within a channel")
                nodes[prev.name].bias = arr(biases[prev.name] + per_channel[:, 0])
            meta = {"v0": arr(m.v0, shp), "reset": "subtract", "spike_condition": ">=",
                    "lowlat_name": n.target}
            link(n, n.name, nir.IF(np.ones(shp), arr(m.theta, shp), np.zeros(shp),
                                   metadata=meta))
            nodes[f"{n.name}_spike_value"] = nir.Scale(arr(m.amplitude, shp))
            edges.append((n.name, f"{n.name}_spike_value"))
            src[n] = f"{n.name}_spike_value"
        elif isinstance(m, nn.AvgPool2d) or (isinstance(m, nn.AdaptiveAvgPool2d) or
                                             f is F.adaptive_avg_pool2d):
            if isinstance(m, nn.AvgPool2d):
                if m.padding not in (0, (0, 0)) and not m.count_include_pad:
                    raise NotImplementedError(f"NIR export: {n.target!r} pads without counting "
                                              "the padding; NIR's AvgPool2d cannot say so")
                k, s, p = m.kernel_size, m.stride or m.kernel_size, m.padding
            else:
                hin = shape(n.args[0])[-2:]
                hout = shape(n)[-2:]
                if any(i % o for i, o in zip(hin, hout, strict=True)):
                    raise NotImplementedError(f"NIR export: {n.name!r} pools {hin} to {hout}")
                k = s = tuple(i // o for i, o in zip(hin, hout, strict=True))
                p = 0
            link(n, n.name, nir.AvgPool2d(np.array(_pair(k)), np.array(_pair(s)),
                                          np.array(_pair(p))))
        elif isinstance(m, nn.Flatten) or f is torch.flatten or (n.op == "call_method"
                                                                  and f == "flatten"):
            start = m.start_dim if m is not None else (n.args[1] if len(n.args) > 1 else
                                                       n.kwargs.get("start_dim", 0))
            link(n, n.name, nir.Flatten({"input": np.array(shape(n.args[0]))}, start - 1))
        elif f in (operator.add, operator.iadd, torch.add):
            link(n, n.name, nir.Scale(np.ones(shape(n))))  # sums its incoming edges
        else:
            what = type(m).__name__ if m is not None else _name(f)
            raise NotImplementedError(f"NIR export: node {n.name!r} ({what}) has no NIR "
                                      "equivalent here; mapped: Conv2d, Linear, IF, AvgPool2d, "
                                      "Flatten, add")
    meta = {"producer": "lowlat", "T": int(getattr(snn, "T", 0)), "semantics": NIR_SEMANTICS}
    return nir.NIRGraph(nodes, edges, metadata=meta)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, tuple | list) else (int(v), int(v))


def _name(f) -> str:
    return f if isinstance(f, str) else getattr(f, "__name__", str(f))
