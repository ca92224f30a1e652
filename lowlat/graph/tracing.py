"""Tracing for conversion: one activation module, hence one IF neuron, per call site.

:func:`trace` returns an fx graph in which every activation *call site* is its own module
(a module called twice, like torchvision's ``BasicBlock.relu``, is split into copies; ``F.relu``,
``torch.relu``, ``x.relu()``, ``F.relu6``, ``F.hardtanh(x, 0, c)`` and ``clamp(x, min=0[, max=c])``
become ``nn.ReLU``/``nn.ReLU6``/``nn.Hardtanh(0, c)`` modules), so each site gets its own neuron
and its own membrane state. A clip whose floor is not 0 is not a ReLU: it is refused here.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowlat.activations import ACTIVATIONS
from lowlat.neurons import IFNeuron

ACT_FUNCTIONS = {F.relu: nn.ReLU, torch.relu: nn.ReLU, torch.relu_: nn.ReLU, F.relu6: nn.ReLU6}
ACT_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU}
CLAMPS = {torch.clamp, torch.clip, torch.clamp_min, F.hardtanh}  # clip-ReLUs when the floor is 0
CLAMP_METHODS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}


class ConversionError(ValueError):
    """A graph node the SNN simulator cannot run faithfully (message names it and the fix)."""


class _LeafActTracer(fx.Tracer):
    """Keeps activations and neurons as single graph nodes so they can be swapped by name."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True  # source lines for error messages

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (*ACTIVATIONS, IFNeuron))
                or type(m).__module__.startswith("onnx2torch")  # refused by name, not traced
                or super().is_leaf_module(m, qualname))


def _user_frame(tb) -> str:
    """``file:line`` of the innermost traceback frame outside torch (the user's forward)."""
    where = ""
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename
        if "/torch/" not in f and "/lowlat/graph/" not in f:
            where = f"{f}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _free_name(root: nn.Module, base: str) -> str:
    name, i = base, 1
    while True:
        try:
            root.get_submodule(name)
        except AttributeError:
            return name
        name, i = f"{base}_{i}", i + 1


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def where(node: fx.Node) -> str:
    """`` (file:line: code)`` of the source line that created ``node``, when fx recorded it."""
    lines = [ln.strip() for ln in (node.stack_trace or "").strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File ") and "/torch/" not in lines[i]:
            code = lines[i + 1] if i + 1 < len(lines) else ""
            return f" ({lines[i]}: {code})"
    return ""


def _functional_act(node: fx.Node) -> nn.Module | None:
    """The activation module a functional call is (``F.relu``, ``x.relu()``, a clamp with
    floor 0 ...), else None."""
    if node.op == "call_function" and node.target in ACT_FUNCTIONS:
        return ACT_FUNCTIONS[node.target]()
    if node.op == "call_method" and node.target in ACT_METHODS:
        return ACT_METHODS[node.target]()
    fn = node.op == "call_function"
    if not ((fn and node.target in CLAMPS) or (node.op == "call_method"
                                                and node.target in CLAMP_METHODS)):
        return None
    name = getattr(node.target, "__name__", node.target)
    hard = node.target is F.hardtanh
    lo_key, hi_key = ("min_val", "max_val") if hard else ("min", "max")
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get(lo_key, -1.0 if hard else None)
    hi = None if "clamp_min" in name else (
        node.args[2] if len(node.args) > 2 else node.kwargs.get(hi_key, 1.0 if hard else None))
    if isinstance(lo, int | float) and lo == 0 and (hi is None or (
            isinstance(hi, int | float) and hi > 0)):
        return nn.ReLU() if hi is None else nn.Hardtanh(0.0, float(hi))
    raise ConversionError(
        f"graph node {node.name!r}{where(node)} clips to [{lo}, {hi}] ({name}), which is not a "
        "ReLU; an IF neuron represents max(x, 0) and min(max(x, 0), c) only: use "
        "clamp(x, min=0[, max=c]), F.hardtanh(x, 0, c), nn.Hardtanh(0, c), ReLU or ReLU6")


def _check_module_act(node: fx.Node, m: nn.Module) -> None:
    """Refuse a Hardtanh module that is not a clip-ReLU (its floor is not 0)."""
    if isinstance(m, nn.Hardtanh) and not (m.min_val == 0 and m.max_val > 0):
        raise ConversionError(
            f"layer {node.target!r}{where(node)} is nn.Hardtanh({m.min_val}, {m.max_val}), which "
            "is not a ReLU; an IF neuron represents min(max(x, 0), c) only: nn.Hardtanh(0, c) "
            "or ReLU6")


def trace(model: nn.Module) -> fx.GraphModule:
    """fx-trace ``model`` with one activation module per call site (modules shared with it).

    Copies made for the second and later calls of a shared module are named ``<name>_1``, ...;
    functional activations become modules named after their graph node.
    """
    tracer = _LeafActTracer()
    try:
        graph = tracer.trace(model)
    except fx.proxy.TraceError as e:
        src = _user_frame(e.__traceback__)
        raise ConversionError(
            f"cannot trace {type(model).__name__}{' at ' + src if src else ''}: {e}. "
            "The forward pass branches or loops on tensor values, which a converted SNN cannot "
            "follow; make the branch depend on constructor arguments only (or move it out of "
            "forward)") from e
    if isinstance(model, fx.GraphModule):  # keep the user's source lines, not generated code
        lines = {n.name: n.stack_trace for n in model.graph.nodes if n.stack_trace}
        for node in graph.nodes:
            if node.name in lines and "<eval_with_key>" in (node.stack_trace or ""):
                node.stack_trace = lines[node.name]
    gm = fx.GraphModule(model, graph, model.__class__.__name__)
    seen: set[str] = set()
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ACTIVATIONS):
            _check_module_act(node, gm.get_submodule(node.target))
            if node.target in seen:  # a second call site: its own copy
                name = _free_name(gm, node.target)
                set_module(gm, name, copy.deepcopy(gm.get_submodule(node.target)))
                node.target = name
            seen.add(node.target)
            continue
        act = _functional_act(node)
        if act is not None:
            name = _free_name(gm, node.name)
            set_module(gm, name, act)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, (node.args[0],))
            new.meta, new.stack_trace = node.meta, node.stack_trace
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            seen.add(name)
    gm.graph.lint()
    gm.recompile()
    return gm
