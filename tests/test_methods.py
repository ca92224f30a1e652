"""Each method name builds the network its definition in lowlat/methods.py says."""

import pytest
import torch
from torch import nn

from lowlat.activations import QCActivation
from lowlat.calibrate import lwc_layer
from lowlat.convert import activation_stats, to_snn
from lowlat.methods import (
    CALIBRATED,
    METHODS,
    PAPER_METHODS,
    START_SOURCE,
    convert,
    get_method,
    recipe,
)
from lowlat.models import create_model
from lowlat.neurons import spiking_layers
from lowlat.simulate import run_snn


def _qc(shift: float = 0.0, levels: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), QCActivation(levels, shift, init_lambda=1.3),
                         nn.Linear(7, 3), QCActivation(levels, shift, init_lambda=0.7),
                         nn.Linear(3, 2)).eval()


@pytest.mark.parametrize("s", [0.0, 0.5])
def test_qc_conversions_set_v0_and_shift(s):
    qc, T, L = _qc(s), 4, 8
    expect = {  # method -> (v0 / θ, shift / θ)
        "phase1": (s, 0.0), "opti": (0.5, 0.0), "opt": (s, 1 / (2 * T)),
        "unbiased": (0.5, -(0.5 - s) / L)}
    for name, (v0, shift) in expect.items():
        snn = convert(name, qc, T=T)
        for _, m in spiking_layers(snn):
            assert torch.allclose(m.v0, m.theta * v0), name
            assert torch.allclose(m.shift, m.theta * shift), name


@pytest.mark.parametrize("s", [0.0, 0.5])
def test_phase1_is_exact_at_T_equals_L(s):
    """With v(0) = s·θ, T = L reproduces floor(z·L/λ + s) for a constant input (the QC-ANN)."""
    L = 4
    net = nn.Sequential(nn.Linear(5, 64), QCActivation(L, s, init_lambda=1.0)).eval()
    x = torch.randn(256, 5)
    want = net(x)
    out = run_snn(convert("phase1", net), x, L)  # [T, B, 64]: spikes x θ per step
    assert torch.allclose(out.mean(0), want, atol=1e-5)
    if s == 0.0:  # the literal Phase I start v(0) = 0 is what makes this exact
        off = run_snn(convert("opti", net), x, L).mean(0)
        assert not torch.allclose(off, want, atol=1e-5)


def test_relu_conversions_use_their_statistic():
    ann = create_model("small_cnn", width=4).eval()
    xs = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    stats = activation_stats(ann, xs, percentile=99.9)
    for name, key in (("maxnorm", "max"), ("robustnorm", "percentile_nonzero"),
                      ("robustnorm_all", "percentile")):
        snn = convert(name, ann, stats=stats)
        for layer, m in spiking_layers(snn):
            assert float(m.theta) == pytest.approx(max(stats[layer][key], 1e-6)), name
    # Rueckauer's definition ignores the zeros, so its threshold is never below the other one
    for s in stats.values():
        assert s["percentile_nonzero"] >= s["percentile"]


def test_paper_recipes_are_fixed_and_ours_follow_the_config():
    assert recipe("lmpc").lmpc and not recipe("lmpc").lwc
    for m in ("lmpc", "lwc", "lmpc+lwc"):
        r = recipe(m, {"formula": "signed", "optimizer": "adam", "start": "opti"})  # ignored
        assert (r.start, r.formula, r.granularity, r.optimizer, r.accept) == (
            "phase1", "abs", "neuron", "sgd", "always")
    r = recipe("lowlat", {"start": "unbiased", "formula": "abs", "granularity": "neuron",
                          "optimizer": "sgd", "accept": "always"})
    assert (r.lmpc, r.lwc, r.start, r.formula, r.granularity, r.optimizer, r.accept) == (
        True, True, "unbiased", "abs", "neuron", "sgd", "always")
    assert recipe("lowlat-lmpc").lmpc and not recipe("lowlat-lmpc").lwc
    assert recipe("lowlat-lwc").lwc and not recipe("lowlat-lwc").lmpc


def test_table_is_consistent():
    for name, m in METHODS.items():
        assert m.name == name and m.label
        assert (m.convert is None) == m.calibrated, name  # built by conversion XOR calibration
        assert m.per_T or not m.calibrated
    assert set(PAPER_METHODS) >= {"phase1", "opti", "opt", "lmpc", "lwc", "lmpc+lwc", "maxnorm",
                                  "robustnorm", "ratenorm"}
    assert set(CALIBRATED) == {"lmpc", "lwc", "lmpc+lwc", "lowlat-cn", "lowlat-lmpc",
                               "lowlat-lwc", "lowlat", "lowlat-ft", "lowlat-ft-signed"}
    trains = [m.name for m in METHODS.values() if m.finetune]
    assert trains == ["lowlat-ft", "lowlat-ft-signed"]  # only they train the SNN
    for m in METHODS.values():  # a fixed start is converted from the artifact the method names
        start = m.recipe.start if m.recipe is not None else m.start
        if start is not None:
            assert START_SOURCE[start] == m.source, m.name
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="calibrated"):
        convert("lmpc", _qc())


@pytest.mark.parametrize("optimizer,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_lwc_uses_the_named_optimizer(monkeypatch, optimizer, cls):
    made = []

    class Spy(cls):
        def __init__(self, params, **kw):
            made.append(kw)
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, cls.__name__, Spy)
    qc = _qc()
    lwc_layer(to_snn(qc), qc, "3", torch.rand(32, 5), 4, iterations=1, batch_size=16, lr=1e-3,
              optimizer=optimizer)
    assert len(made) == 1
    if optimizer == "sgd":
        assert made[0]["momentum"] == 0.9  # the paper's SGD


def test_target_at_levels_rounds_a_copy_to_T_levels():
    from lowlat.conversions import target_at_levels

    qc = _qc(0.5, levels=4)
    x = torch.randn(512, 5)
    two = target_at_levels(qc, 2)
    assert [m.levels for m in qc.modules() if isinstance(m, QCActivation)] == [4, 4]
    assert [m.levels for m in two.modules() if isinstance(m, QCActivation)] == [2, 2]
    assert [m.levels for m in target_at_levels(qc, 8).modules()
            if isinstance(m, QCActivation)] == [8, 8]  # T > L: the finer rounding
    # the hidden activation takes at most the 3 values a 2-step rate can carry
    h = two[1](two[0](x))
    assert set((h / two[1].threshold * 2).round().unique().tolist()) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="no QC activation"):
        target_at_levels(nn.Sequential(nn.Linear(5, 3), nn.ReLU()), 2)


def test_lowlat_recipe_reads_head_and_target():
    r = recipe("lowlat", {"head": "kl", "target": "T"})
    assert (r.head, r.target) == ("kl", "T")
    assert (recipe("lowlat").head, recipe("lowlat").target) == ("none", "finer")
    assert recipe("lmpc+lwc", {"target": "T"}).target == "L"  # the paper's rows are fixed


def test_effective_target_takes_the_finer_rounding():
    from lowlat.conversions import effective_target

    assert [effective_target("finer", 4, T) for T in (2, 4, 8)] == ["L", "L", "T"]
    assert effective_target("finer", None, 8) == "L"  # a ReLU target: already the finest
    assert (effective_target("L", 2, 8), effective_target("T", 4, 2)) == ("L", "T")
    with pytest.raises(ValueError, match="target must be one of L, T, finer"):
        effective_target("coarse", 4, 2)
