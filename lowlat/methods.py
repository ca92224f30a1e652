"""The method table: every conversion method lowlat evaluates, defined once.

Each :class:`Method` says which artifact it starts from, whether its network depends on T, how
it is built and how the report labels it. The stages, the report and the docs read this table;
adding a method is one entry here (and its test).

Two families stand side by side:

* **The paper's rows, as printed** (Xiong et al. 2025, Tables 1-3): ``phase1`` (QC-ANN converted
  as is, v(0) = s·θ, i.e. 0 for the paper's s = 0), ``opti`` (v(0) = θ/2, Bu et al. 2022),
  ``opt`` (θ/(2T) added each step, Deng & Gu 2021), ``lmpc`` (eq. 13 as printed: per neuron,
  ``v(0) = (T/N)·Σ|h − φ|`` from the Phase I start), ``lwc`` (Phase I + LWC by SGD, momentum
  0.9, every update kept), ``lmpc+lwc`` (both, layer by layer as in Fig. 2), and the baselines
  of Table 1 and 3 (``maxnorm``, ``robustnorm`` = Rueckauer et al.'s 99.9th percentile of the
  non-zero activations, ``ratenorm``).
* **lowlat's own variants**, named as such: ``unbiased`` (exact s = 0 → s = ½ rewrite),
  ``robustnorm_all`` (the percentile over all values, zeros included, as in the SpikingJelly
  tutorial), ``lowlat-lmpc``, ``lowlat-lwc`` and ``lowlat`` (LMPC, LWC and both with the
  recipe of ``phase2.lowlat``: by default the sign-preserving correction per neuron from the
  unbiased start and Adam, chosen on the validation split; see the README).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import fx, nn

from lowlat.activations import RELUS
from lowlat.artifacts import build_network
from lowlat.conversions import (
    ClipTarget,
    channelnorm,
    opt,
    opti,
    phase1,
    ratenorm,
    relu_thresholds,
    signed,
    stat_thresholds,
    unbiased,
)
from lowlat.convert import fold_bn, to_snn
from lowlat.graph import set_module
from lowlat.neurons import spiking_layers

Source = Literal["qcann", "ann", "ratenorm"]


@dataclass(frozen=True)
class Recipe:
    """How a calibrated method runs Phase II (LMPC and/or LWC, per layer as in Fig. 2)."""

    lmpc: bool
    lwc: bool
    start: str = "phase1"        # conversion it starts from: phase1 | opti | unbiased
    formula: str = "abs"         # LMPC: abs (eq. 13 as printed) | signed
    granularity: str = "neuron"  # LMPC: neuron (eq. 13's index i) | channel
    optimizer: str = "sgd"       # LWC: sgd (paper, momentum 0.9) | adam
    accept: str = "always"       # LWC: always (paper) | mse (keep a layer's update if it helps)
    #                              | val (keep the LWC pass only if it beats LMPC on validation)
    lmpc_iterations: int = 1     # LMPC: 1 (eq. 13) | k (repeat the signed correction)
    head: str = "none"           # after the layers: none (paper) | kl | mse (lowlat.head)
    target: str = "L"            # match: L (the QC-ANN, paper) | T (its rounding to T levels)
    #                              | finer (T levels where T > L, else L: effective_target)
    finetune: bool = False       # then the whole SNN by BPTT (phase2.finetune, lowlat.finetune)
    surrogate: str = "eq15"      # LWC's triangle: eq15 (paper) | scaled (÷ θ, lowlat.neurons)


LOWLAT_SURROGATE = "scaled"  # lowlat's LWC surrogate by default (phase2.lowlat.surrogate)
PAPER_LMPC = Recipe(lmpc=True, lwc=False)
PAPER_LWC = Recipe(lmpc=False, lwc=True)
PAPER_BOTH = Recipe(lmpc=True, lwc=True)
# lowlat-cn: the peer's channel-wise conversion, then one signed LMPC pass per channel. Repeating
# the pass hurt there (results/cifar10_cpu/levers_lmpc_L8s0.md: 52.19 -> 47.34 % at T = 2).
CHANNEL_LMPC = Recipe(lmpc=True, lwc=False, start="channelnorm", formula="signed",
                      granularity="channel")


@dataclass(frozen=True)
class Method:
    name: str
    label: str                      # the report's row name
    source: Source                  # artifact the method starts from
    paper: bool                     # a row of the paper (True) or lowlat's own (False)
    description: str
    per_T: bool = False             # its network depends on T (built once per T)
    convert: Callable[..., fx.GraphModule] | None = None  # (net, T=..., stats=...) -> SNN
    recipe: Recipe | None = None    # calibrated methods (built by stage phase2)
    lowlat_recipe: tuple[bool, bool] | None = None  # (lmpc, lwc) of phase2.lowlat's recipe
    finetune: bool = False          # end-to-end BPTT after the layers (phase2.finetune)
    start: str | None = None        # a calibrated method's own start (None: phase2.lowlat.start)
    stats: str | None = None        # key of the activation statistic used as θ (ReLU ANN)
    peer: bool = False              # another library's method (neither the paper's nor lowlat's)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return self.recipe is not None or self.lowlat_recipe is not None


# ------------------------------------------------------------------ calibration


def calibration_pair(start: str, net: nn.Module,
                     stats: dict[str, dict[str, Any]] | None = None,
                     ) -> tuple[fx.GraphModule, nn.Module]:
    """The SNN a calibration starts from and the network whose activations it matches.

    QC-ANN starts match the QC-ANN itself; ``channelnorm`` (from the ReLU ANN) matches the
    ANN's activations clipped at each channel's θ, the most its neurons can carry.
    """
    if start not in STARTS:
        raise ValueError(f"unknown calibration start {start!r}; valid: {', '.join(STARTS)}")
    if START_SOURCE[start] == "qcann":
        return STARTS[start](net), net
    snn = STARTS[start](net, stats=stats)
    return snn, clip_target(net, stat_thresholds(stats, "percentile_channel"))


def clip_target(ann: nn.Module, thresholds: dict[str, Any]) -> fx.GraphModule:
    """The ReLU ANN (BN folded) with every ReLU site clipped at its θ: the most a neuron of
    threshold θ can carry, what a start from the ReLU ANN is calibrated against."""
    target = fold_bn(ann)
    for name, m in list(target.named_modules()):
        if isinstance(m, RELUS):
            set_module(target, name, ClipTarget(thresholds[name]))
    target.recompile()
    return target.eval()


STARTS: dict[str, Callable[..., fx.GraphModule]] = {
    "phase1": phase1, "opti": opti, "unbiased": unbiased, "signed": signed,
    "channelnorm": channelnorm}
START_SOURCE: dict[str, Source] = {
    "phase1": "qcann", "opti": "qcann", "unbiased": "qcann", "signed": "qcann",
    "channelnorm": "ann"}

# ------------------------------------------------------------------ the table

_TABLE = [
    Method("phase1", "Phase I", "qcann", True,
           "QC-ANN converted as is: θ = λ, v(0) = s·θ (0 for the paper's s = 0)", convert=phase1),
    Method("opti", "Phase I+OptI", "qcann", True, "Phase I with v(0) = θ/2 (Bu et al. 2022)",
           convert=opti),
    Method("opt", "Phase I+Opt", "qcann", True,
           "Phase I plus θ/(2T) added to the input every step (Deng & Gu 2021)", per_T=True,
           convert=opt),
    Method("maxnorm", "Max Norm", "ann", True,
           "ReLU ANN, θ = the layer's maximum activation (Diehl et al. 2015)",
           convert=relu_thresholds, stats="max"),
    Method("robustnorm", "Robust Norm", "ann", True,
           "ReLU ANN, θ = 99.9th percentile of the layer's non-zero activations (Rueckauer 2017)",
           convert=relu_thresholds, stats="percentile_nonzero"),
    Method("ratenorm", "RateNorm", "ratenorm", True,
           "Rate Norm Layer ANN (Ding et al. 2021) converted with its learnt thresholds",
           convert=ratenorm),
    Method("lmpc", "Phase I+LMPC", "qcann", True,
           "Phase I, then eq. 13 as printed per neuron, layer by layer", per_T=True,
           recipe=PAPER_LMPC),
    Method("lwc", "Phase I+LWC", "qcann", True,
           "Phase I, then LWC (eqs. 14-17) by SGD with momentum 0.9, every update kept",
           per_T=True, recipe=PAPER_LWC),
    Method("lmpc+lwc", "Phase I+LMPC+LWC", "qcann", True,
           "Phase I, then per layer eq. 13 and LWC by SGD (Fig. 2)", per_T=True,
           recipe=PAPER_BOTH),
    Method("unbiased", "Unbiased", "qcann", False,
           "v(0) = θ/2 and −(½ − s)·θ/L each step: exact at T = L, unbiased elsewhere",
           convert=unbiased),
    Method("signed", "Unbiased + signed neurons", "qcann", False,
           "unbiased with signed IF neurons: a −1 spike where v < 0 while the neuron's net "
           "count is > 0 (the signed neuron with memory of Wang et al., IJCAI 2022, without its "
           "NeuronNorm); not a plain IF SNN: deployment needs ternary spikes",
           convert=signed),
    Method("robustnorm_all", "Robust Norm (all values)", "ann", False,
           "ReLU ANN, θ = 99.9th percentile of all activations, zeros included",
           convert=relu_thresholds, stats="percentile"),
    Method("channelnorm", "Channel Norm (SpikingJelly)", "ann", False,
           "ReLU ANN, θ per channel = its 99.9th percentile (zeros included), v(0) = θ/2: "
           "SpikingJelly 2.0's channel-wise RateCodingRecipe, the peer baseline",
           convert=channelnorm, stats="percentile_channel", peer=True),
    Method("lowlat-cn", "lowlat channel-wise + LMPC", "ann", False,
           "ReLU ANN converted as channelnorm (SpikingJelly's thresholds), then the signed "
           "LMPC per channel, layer by layer: no QC-ANN needed, best at large T", per_T=True,
           recipe=CHANNEL_LMPC),
    Method("lowlat-lmpc", "lowlat LMPC", "qcann", False,
           "LMPC with the phase2.lowlat recipe (default: signed, per neuron, up to 3 passes, "
           "unbiased start)",
           per_T=True, lowlat_recipe=(True, False)),
    Method("lowlat-lwc", "lowlat LWC", "qcann", False,
           "LWC with the phase2.lowlat recipe (default: unbiased start, Adam)",
           per_T=True, lowlat_recipe=(False, True)),
    Method("lowlat", "lowlat (LMPC+LWC)", "qcann", False,
           "LMPC then LWC per layer with the phase2.lowlat recipe (default: LWC kept only if it "
           "beats LMPC alone on validation)", per_T=True,
           lowlat_recipe=(True, True)),
    Method("lowlat-ft", "lowlat LMPC + fine-tune", "qcann", False,
           "lowlat-lmpc, then the whole SNN fine-tuned end to end by BPTT at its T on the "
           "training split (phase2.finetune: cross-entropy + KL to the ReLU ANN), the best state "
           "on validation kept (hybrid conversion, Rathi et al. 2020)", per_T=True,
           lowlat_recipe=(True, False), finetune=True),
    Method("lowlat-ft-signed", "lowlat signed + fine-tune", "qcann", False,
           "signed (no LMPC: at T = L it already follows the QC-ANN), then lowlat-ft's "
           "fine-tune (phase2.finetune) with the signed neurons in the graph; ternary spikes",
           per_T=True, lowlat_recipe=(False, False), finetune=True, start="signed"),
]
METHODS: dict[str, Method] = {m.name: m for m in _TABLE}
PAPER_METHODS = tuple(m.name for m in _TABLE if m.paper)
CALIBRATED = tuple(m.name for m in _TABLE if m.calibrated)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}") from None


def recipe(method: str | Method, lowlat: dict[str, Any] | None = None) -> Recipe:
    """The Phase II recipe of a calibrated method; ``lowlat`` is the ``phase2.lowlat`` config."""
    m = get_method(method) if isinstance(method, str) else method
    if m.recipe is not None:
        return m.recipe
    if m.lowlat_recipe is None:
        raise ValueError(f"method {m.name!r} is not calibrated")
    lw = dict(lowlat or {})
    return Recipe(lmpc=m.lowlat_recipe[0], lwc=m.lowlat_recipe[1],
                  start=m.start or str(lw.get("start", "unbiased")),
                  formula=str(lw.get("formula", "signed")),
                  granularity=str(lw.get("granularity", "neuron")),
                  optimizer=str(lw.get("optimizer", "adam")),
                  accept=str(lw.get("accept", "val")),
                  lmpc_iterations=int(lw.get("lmpc_iterations", 3)),
                  head=str(lw.get("head", "none")), target=str(lw.get("target", "finer")),
                  finetune=m.finetune, surrogate=str(lw.get("surrogate", LOWLAT_SURROGATE)))


def start_source(method: str | Method, lowlat: dict[str, Any] | None = None) -> Source:
    """The artifact a calibrated method's start is converted from (``qcann`` or ``ann``)."""
    return START_SOURCE[recipe(method, lowlat).start]


def convert(method: str, net: nn.Module, T: int | None = None,
            stats: dict[str, dict[str, float]] | None = None) -> fx.GraphModule:
    """The uncalibrated SNN of ``method`` from its source network (see ``Method.source``)."""
    m = get_method(method)
    if m.convert is None:
        raise ValueError(f"method {method!r} is calibrated: build it with lowlat.calibrate "
                         f"(stage phase2), starting from {recipe(m).start!r}")
    return m.convert(net, T=T, stats=stats, key=m.stats)


def convert_qcann(qcann: nn.Module, method: str, T: int | None = None) -> fx.GraphModule:
    """A QC-ANN conversion (``phase1``, ``opti``, ``opt``, ``unbiased``)."""
    if method not in STARTS and method != "opt":
        raise ValueError(f"convert_qcann: unknown method {method!r}; valid: "
                         f"{', '.join([*STARTS, 'opt'])}")
    return convert(method, qcann, T=T)


def convert_relu_ann(ann: nn.Module, stats: dict[str, dict[str, float]],
                     method: str) -> fx.GraphModule:
    """A ReLU-ANN conversion (``maxnorm``, ``robustnorm``, ``robustnorm_all``)."""
    if get_method(method).source != "ann":
        raise ValueError(f"convert_relu_ann: {method!r} does not start from the ReLU ANN")
    return convert(method, ann, stats=stats)


def load_snn(art: dict) -> fx.GraphModule:
    """Rebuild a calibrated SNN from its artifact (skeleton → conversion → stored buffers);
    registered architectures and user factories (:func:`lowlat.api.save_snn`) alike."""
    net = build_network(art["arch"], art["act"])
    placeholder = None
    if art["act"].get("name") == "relu":  # a start from the ReLU ANN: θ comes from the state
        from lowlat.convert import activation_names
        placeholder = dict.fromkeys(activation_names(net), 1.0)
    snn = to_snn(net, thresholds=placeholder)
    state = art["state_dict"]
    for name, m in spiking_layers(snn):  # per-neuron / per-channel buffers take stored shapes
        for buf in ("theta", "amplitude", "v0", "shift"):
            setattr(m, buf, state[f"{name}.{buf}"].clone())
    snn.load_state_dict(state)
    if art.get("graph") is not None and art["graph"] != snn.code:
        warnings.warn(f"load_snn: {art['arch'].get('factory', art['arch'].get('name'))} now "
                      "traces to a different graph than the saved one; check the factory",
                      stacklevel=2)
    return snn.eval()


def methods_markdown() -> str:
    """The table as Markdown, for the docs (``python -m lowlat.methods``)."""
    lines = ["| method | row label | paper's row | from | per T | definition |",
             "|---|---|---|---|---|---|"]
    for m in _TABLE:
        lines.append(f"| `{m.name}` | {m.label} | {'yes' if m.paper else 'no'} | {m.source}.pt | "
                     f"{'yes' if m.per_T else 'no'} | {m.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(methods_markdown(), end="")
