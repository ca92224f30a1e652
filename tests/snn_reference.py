"""An independent SNN reference for the tests: the converted graph stepped one time step at a
time on ``[B, ...]``, with one membrane state per IF *call site* (graph node), written from the
IF equations rather than through :class:`lowlat.neurons.IFNeuron.forward`."""

from __future__ import annotations

import torch
from torch import Tensor, fx

from lowlat.neurons import IFNeuron


class PerSiteReference(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.v: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}  # graph node -> spike count [B, ...]
        self.site: dict[str, str] = {}  # graph node -> neuron module

    def run_node(self, n: fx.Node):
        if n.op == "call_module" and isinstance(self.module.get_submodule(n.target), IFNeuron):
            m = self.module.get_submodule(n.target)
            x = self.env[n.args[0]]
            v = self.v.get(n.name, m.v0 + torch.zeros_like(x)) + x + m.shift
            s = (v >= m.theta).to(x.dtype)
            self.v[n.name] = v - s * m.theta
            self.counts[n.name] = self.counts.get(n.name, 0) + s
            self.site[n.name] = n.target
            return s * m.amplitude
        return super().run_node(n)

    @torch.no_grad()
    def simulate(self, x: Tensor, T: int) -> Tensor:
        """Outputs of every step ``[T, B, classes]``, from v(0)."""
        self.v, self.counts = {}, {}
        return torch.stack([self.run(x) for _ in range(T)])


def activation_call_sites(model: torch.nn.Module) -> int:
    """Activation call sites counted on a plain fx trace of the original model."""
    from torch import nn

    F = torch.nn.functional

    class Leaf(fx.Tracer):
        def is_leaf_module(self, m, q):
            return isinstance(m, nn.ReLU | nn.Hardtanh) or super().is_leaf_module(m, q)

    g = Leaf().trace(model)
    mods = dict(model.named_modules())
    return sum(
        (n.op == "call_module" and isinstance(mods[n.target], nn.ReLU | nn.Hardtanh))
        or (n.op == "call_function" and n.target in (torch.relu, F.relu, F.relu6, F.hardtanh,
                                                      torch.clamp))
        or (n.op == "call_method" and n.target in ("relu", "clamp"))
        for n in g.nodes)
