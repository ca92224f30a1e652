"""LMPC and LWC on small networks whose answers can be computed by hand."""

import pytest
import torch
from torch import nn

from lowlat.activations import QCActivation
from lowlat.calibrate import (
    CalibConfig,
    ann_activation,
    calibrate,
    layer_mse,
    lmpc_layer,
    lwc_layer,
    snn_rate,
)
from lowlat.convert import to_snn
from lowlat.neurons import IFNeuron, configure, reset_states


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(6, 16), QCActivation(levels=8, init_lambda=1.5),
        nn.Linear(16, 12), QCActivation(levels=8, init_lambda=1.0),
        nn.Linear(12, 3),
    )
    with torch.no_grad():
        net[0].bias.uniform_(-0.2, 0.6)
        net[2].weight.mul_(1.5)
    return net.eval()


@pytest.mark.parametrize("formula", ["signed", "abs"])
@pytest.mark.parametrize("start", [0.0, 0.5])
def test_lmpc_moves_v0_as_eq13(formula, start):
    ann, xs, T = _net(), torch.rand(200, 6) * 2, 4
    snn = to_snn(ann)
    # the second layer sees a non-uniform spike train from the first (bursts, then silence)
    theta = snn.get_submodule("3").theta
    snn.get_submodule("3").v0 = theta * start  # the start: Phase I (0) or OptI (θ/2)
    phi = snn_rate(snn, "3", xs, T)
    h = ann_activation(ann, "3", xs)
    err = h - phi if formula == "signed" else (h - phi).abs()
    expected = theta * start + T * err.mean(0)  # eq. 13, per neuron, added to the start
    v0 = lmpc_layer(snn, ann, "3", xs, T, batch=64, formula=formula, granularity="neuron")
    assert torch.allclose(v0, expected, atol=1e-5)
    assert torch.equal(snn.get_submodule("3").v0, v0)


def test_lmpc_refuses_unknown_settings():
    ann, xs = _net(), torch.rand(8, 6)
    with pytest.raises(ValueError, match="formula"):
        lmpc_layer(to_snn(ann), ann, "3", xs, 2, 8, formula="absolute")
    with pytest.raises(ValueError, match="granularity"):
        lmpc_layer(to_snn(ann), ann, "3", xs, 2, 8, granularity="layer")


def test_lmpc_reduces_layer_error():
    ann, xs, T = _net(), torch.rand(400, 6) * 2, 4
    snn = to_snn(ann)
    before = layer_mse(snn, ann, "3", xs, T, 128)
    lmpc_layer(snn, ann, "3", xs, T, 128, granularity="neuron")
    after = layer_mse(snn, ann, "3", xs, T, 128)
    assert after < 0.8 * before


def test_lwc_reduces_mse_and_only_touches_its_layer():
    ann, xs, T = _net(1), torch.rand(256, 6) * 2, 4
    snn = to_snn(ann)
    w0 = snn.get_submodule("0").weight.clone()
    rep = lwc_layer(snn, ann, "3", xs, T, iterations=60, batch_size=128, lr=3e-3)
    assert rep.kept and rep.mse_after < rep.mse_before
    assert torch.equal(snn.get_submodule("0").weight, w0)  # earlier layer untouched


@pytest.mark.parametrize("accept", ["mse", "always"])
def test_lwc_accept_rule(accept):
    """An update that certainly hurts (a weight decay that flips and grows the weights) is
    discarded under accept='mse' and kept under the paper's accept='always'."""
    ann, xs, T = _net(2), torch.rand(128, 6) * 2, 8
    snn = to_snn(ann)
    w = snn.get_submodule("0").weight.clone()
    before = layer_mse(snn, ann, "1", xs, T, 64)
    rep = lwc_layer(snn, ann, "1", xs, T, iterations=3, batch_size=64, lr=0.5, optimizer="sgd",
                    weight_decay=5.0, accept=accept)
    assert rep.mse_after > rep.mse_before == pytest.approx(before)
    now = layer_mse(snn, ann, "1", xs, T, 64)
    if accept == "mse":
        assert not rep.kept and torch.equal(snn.get_submodule("0").weight, w)
        assert now == pytest.approx(before)
    else:
        assert rep.kept and not torch.equal(snn.get_submodule("0").weight, w)
        assert now == pytest.approx(rep.mse_after)


def test_bptt_reaches_the_first_step():
    neuron = IFNeuron(theta=1.0)
    neuron.surrogate = True
    T, B = 6, 5
    x = (torch.rand(T, B) * 0.6).requires_grad_(True)
    reset_states(neuron)
    configure(neuron, steps=T, batch=B)
    out = neuron(x.flatten(0, 1)).view(T, B)
    out[-1].sum().backward()  # loss at step T only
    assert x.grad[0].abs().sum() > 0  # ... depends on the input at step 1


def test_calibrate_full_network_improves_every_layer():
    ann, xs, T = _net(3), torch.rand(256, 6) * 2, 2
    snn = to_snn(ann)
    reports = calibrate(snn, ann, xs, CalibConfig(T=T, iterations=30, batch_size=128, lr=3e-3,
                                                   eval_batch=128, accept="mse"), progress=False)
    assert [r["layer"] for r in reports] == ["1", "3"]
    for r in reports:
        assert r["mse_end"] <= r["mse_start"]


def test_iterated_lmpc_shrinks_the_bias_further_and_never_worsens_it():
    ann, xs, T = _net(), torch.rand(300, 6) * 2, 2

    def bias(snn) -> float:
        return float((ann_activation(ann, "3", xs) - snn_rate(snn, "3", xs, T)).mean(0)
                     .abs().sum())

    once, iterated = to_snn(ann), to_snn(ann)
    start = bias(once)
    lmpc_layer(once, ann, "3", xs, T, 64, iterations=1)
    lmpc_layer(iterated, ann, "3", xs, T, 64, iterations=4)
    assert bias(iterated) <= bias(once) < start
    assert bias(iterated) < 0.9 * bias(once)  # T = 2: one step leaves part of the bias
    with pytest.raises(ValueError, match="iterations"):
        lmpc_layer(to_snn(ann), ann, "3", xs, T, 64, formula="abs", iterations=2)


@pytest.mark.parametrize("lmpc,lwc,accept", [(True, False, "always"), (True, True, "always"),
                                             (False, True, "mse"), (True, True, "mse")])
def test_calibrate_reports_true_mses_and_simulates_each_state_once(monkeypatch, lmpc, lwc,
                                                                   accept):
    """The report's MSEs are those of the layer's states, and no state is simulated twice
    (LMPC's first pass gives the start's MSE; the end is read from the last measurement)."""
    import lowlat.calibrate as cal

    ann, xs, T = _net(2), torch.rand(96, 6) * 2, 4
    snn, ref = to_snn(ann), to_snn(ann)
    calls = []
    real = cal.snn_rate
    monkeypatch.setattr(cal, "snn_rate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = CalibConfig(T=T, lmpc=lmpc, lwc=lwc, iterations=3, batch_size=32, lr=3e-3,
                      accept=accept, eval_batch=96)
    reports = calibrate(snn, ann, xs, cfg, progress=False)
    passes = len(calls)
    # the same steps by hand, every state measured on its own
    for rep in reports:
        name = rep["layer"]
        assert rep["mse_start"] == pytest.approx(layer_mse(ref, ann, name, xs, T, 96), rel=1e-6)
        if lmpc:
            lmpc_layer(ref, ann, name, xs, T, 96)
            assert rep["mse_after_lmpc"] == pytest.approx(layer_mse(ref, ann, name, xs, T, 96))
        if lwc:
            lwc_layer(ref, ann, name, xs, T, 3, 32, 3e-3, accept=accept, eval_batch=96)
        assert rep["mse_end"] == pytest.approx(layer_mse(ref, ann, name, xs, T, 96), rel=1e-6)
        assert rep["mse_end"] == pytest.approx(layer_mse(snn, ann, name, xs, T, 96), rel=1e-6)
    # per layer: LMPC's pass + its check; LWC: a probe, its iterations and its end
    per_layer = (2 if lmpc else 1) + ((1 + 3 + 1) if lwc else 0)
    assert passes == per_layer * len(reports)


def _scaled_net(c: float) -> tuple[nn.Module, nn.Module]:
    """``_net`` without biases and with every λ multiplied by ``c``: fed ``c·x`` it is ``c``
    times ``_net`` fed ``x`` (positively homogeneous), so its SNN spikes exactly alike."""
    ann = _net()
    for i in (0, 2, 4):
        ann[i].bias = None
    with torch.no_grad():
        for i in (1, 3):
            ann[i].lam.mul_(c)
    snn = to_snn(ann)
    for m in snn.modules():
        if isinstance(m, IFNeuron):
            m.v0 = m.theta / 2
    return ann, snn


@pytest.mark.parametrize("surrogate", ["scaled", "eq15"])
def test_lwc_scaled_surrogate_follows_the_chain_rule_under_scaling(surrogate):
    """With the triangle divided by θ, LWC on a network c times larger gets exactly c² times the
    gradient of its c² times larger loss, so SGD at lr/c² takes the same steps; the printed form
    also multiplies the gradient through the reset by θ and does not."""
    xs, T, c = torch.rand(64, 6) * 2, 4, 4.0
    (ann1, snn1), (ann4, snn4) = _scaled_net(1.0), _scaled_net(c)
    kw = dict(T=T, iterations=5, batch_size=32, optimizer="sgd", momentum=0.9,
              surrogate=surrogate)
    lwc_layer(snn1, ann1, "3", xs, lr=0.05, **kw)
    lwc_layer(snn4, ann4, "3", xs * c, lr=0.05 / c**2, **kw)
    w1, w4 = snn1.get_submodule("2").weight, snn4.get_submodule("2").weight
    assert not torch.allclose(w1, ann1[2].weight, atol=1e-4)  # LWC moved the weights
    assert torch.allclose(w1, w4, atol=1e-5) == (surrogate == "scaled")


def test_lwc_surrogate_is_checked_and_left_out_of_old_fingerprints():
    ann, xs = _net(), torch.rand(16, 6)
    with pytest.raises(ValueError, match="surrogate must be one of eq15, scaled"):
        lwc_layer(to_snn(ann), ann, "3", xs, 4, 1, 8, 1e-3, surrogate="sigmoid")
    assert "surrogate" not in CalibConfig(T=2).fingerprint()  # artifacts from before stay valid
    assert CalibConfig(T=2, surrogate="scaled").fingerprint()["surrogate"] == "scaled"
    assert "surrogate" not in CalibConfig(T=2, lwc=False, surrogate="scaled").fingerprint()
