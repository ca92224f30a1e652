"""ONNX in and out of lowlat (needs the ``onnx`` extra: ``onnx``, ``onnxscript``, ``onnx2torch``).

``export_onnx`` writes an ANN or a QC-ANN for deployment (the QC activation becomes
Clip/Floor/Mul nodes). ``from_onnx`` imports an ONNX model (a Keras/TensorFlow network exported
with tf2onnx, say) as a PyTorch module whose ops lowlat's converter understands, so it goes
through :func:`lowlat.api.prepare` like any other model. Its arguments are JSON-able, so
``"lowlat.interop:from_onnx"`` with ``{"path": ...}`` serves as the factory of
:func:`lowlat.api.save_snn`.
"""

from __future__ import annotations

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
