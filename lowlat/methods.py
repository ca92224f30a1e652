"""Conversion methods, each a pure function from trained networks to an SNN for a given T.

``phase1``: the QC-ANN converted as is, v(0) = 0. ``opti``: v(0) = θ/2 (Bu et al., AAAI 2022).
``opt``: a current of θ/(2T) added at every step (Deng & Gu, ICLR 2021). ``maxnorm`` /
``robustnorm``: the ReLU ANN with θ = max / 99.9th percentile of each layer's activations
(Diehl 2015; Rueckauer 2017). ``ratenorm``: the Rate-Norm ANN (Ding et al., IJCAI 2021).
``unbiased`` (ours): v(0) = θ/2 plus a current of −(1/2 − s)·θ/L every step, the exact rewrite
of ``floor(z·L/λ + s)`` as ``floor((z − (1/2 − s)·λ/L)·L/λ + 1/2)``: equal to the QC-ANN at T = L
like ``phase1``, but without ``phase1``'s systematic −θ/(2L) rate bias at every other T.
The calibrated methods (lmpc, lwc, lmpc+lwc) come from :mod:`lowlat.calibrate`.
"""

from __future__ import annotations

import warnings

from torch import fx, nn

from lowlat.activations import QCActivation
from lowlat.artifacts import build_network
from lowlat.convert import to_snn
from lowlat.neurons import IFNeuron, spiking_layers

TIME_INDEPENDENT = ("phase1", "opti", "unbiased", "maxnorm", "robustnorm", "ratenorm")


def set_v0_fraction(snn: nn.Module, fraction: float) -> nn.Module:
    """v(0) = fraction·θ in every neuron."""
    for _, m in spiking_layers(snn):
        m.v0 = m.theta.detach().clone() * fraction
    return snn


def set_step_shift(snn: nn.Module, T: int) -> nn.Module:
    """Add θ/(2T) to the input current of every step (Deng & Gu's bias shift)."""
    for _, m in spiking_layers(snn):
        m.shift = m.theta.detach().clone() / (2 * T)
    return snn


def convert_qcann(qcann: nn.Module, method: str, T: int | None = None) -> fx.GraphModule:
    qc = {n: m for n, m in qcann.named_modules() if isinstance(m, QCActivation)}
    snn = to_snn(qcann)
    if method == "unbiased":
        set_v0_fraction(snn, 0.5)
        for name, m in spiking_layers(snn):
            a = qc[name]
            m.shift = -(0.5 - a.shift) * m.theta.detach().clone() / a.levels
        return snn
    if method == "phase1":
        return snn
    if method == "opti":
        return set_v0_fraction(snn, 0.5)
    if method == "opt":
        if T is None:
            raise ValueError("method 'opt' depends on T; give T")
        return set_step_shift(snn, T)
    raise ValueError(f"convert_qcann: unknown method {method!r}")


def convert_relu_ann(ann: nn.Module, stats: dict[str, dict[str, float]],
                     method: str) -> fx.GraphModule:
    key = {"maxnorm": "max", "robustnorm": "percentile"}[method]
    return to_snn(ann, thresholds={n: max(s[key], 1e-6) for n, s in stats.items()})


def load_snn(art: dict) -> fx.GraphModule:
    """Rebuild a calibrated SNN from its artifact (skeleton → conversion → stored buffers);
    registered architectures and user factories (:func:`lowlat.api.save_snn`) alike."""
    snn = to_snn(build_network(art["arch"], art["act"]))
    state = art["state_dict"]
    for name, m in spiking_layers(snn):
        m.v0 = state[f"{name}.v0"].clone()
        m.shift = state[f"{name}.shift"].clone()
    snn.load_state_dict(state)
    if art.get("graph") is not None and art["graph"] != snn.code:
        warnings.warn(f"load_snn: {art['arch'].get('factory', art['arch'].get('name'))} now "
                      "traces to a different graph than the saved one; check the factory",
                      stacklevel=2)
    return snn.eval()


def neuron_names(snn: nn.Module) -> list[str]:
    return [n for n, m in snn.named_modules() if isinstance(m, IFNeuron)]
