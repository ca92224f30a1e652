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
@pytest.mark.parametrize("base", ["zero", "half"])
def test_lmpc_moves_v0_as_eq13(formula, base):
    ann, xs, T = _net(), torch.rand(200, 6) * 2, 4
    snn = to_snn(ann)
    # the second layer sees a non-uniform spike train from the first (bursts, then silence)
    snn.get_submodule("3").v0 = torch.tensor(0.5 if base == "half" else 0.0)
    phi = snn_rate(snn, "3", xs, T)
    h = ann_activation(ann, "3", xs)
    err = h - phi if formula == "signed" else (h - phi).abs()
    theta = snn.get_submodule("3").theta
    expected = theta * (0.5 if base == "half" else 0.0) + T * err.mean(0)  # eq. 13, per neuron
    snn.get_submodule("3").v0 = torch.tensor(123.0)  # must be replaced, not accumulated
    v0 = lmpc_layer(snn, ann, "3", xs, T, batch=64, formula=formula, granularity="neuron",
                    base=base)
    assert torch.allclose(v0, expected, atol=1e-5)


def test_lmpc_reduces_layer_error():
    ann, xs, T = _net(), torch.rand(400, 6) * 2, 4
    snn = to_snn(ann)
    before = layer_mse(snn, ann, "3", xs, T, 128)
    lmpc_layer(snn, ann, "3", xs, T, 128, granularity="neuron", base="zero")
    after = layer_mse(snn, ann, "3", xs, T, 128)
    assert after < 0.8 * before


def test_lwc_reduces_mse_and_only_touches_its_layer():
    ann, xs, T = _net(1), torch.rand(256, 6) * 2, 4
    snn = to_snn(ann)
    w0 = snn.get_submodule("0").weight.clone()
    rep = lwc_layer(snn, ann, "3", xs, T, iterations=60, batch_size=128, lr=3e-3)
    assert rep.kept and rep.mse_after < rep.mse_before
    assert torch.equal(snn.get_submodule("0").weight, w0)  # earlier layer untouched


def test_lwc_discards_an_update_that_hurts():
    ann, xs, T = _net(2), torch.rand(128, 6) * 2, 4
    snn = to_snn(ann)
    w = snn.get_submodule("2").weight.clone()
    rep = lwc_layer(snn, ann, "3", xs, T, iterations=5, batch_size=64, lr=50.0,
                    optimizer="sgd")
    if not rep.kept:  # a huge step made it worse: the old weights are back
        assert torch.equal(snn.get_submodule("2").weight, w)
    assert layer_mse(snn, ann, "3", xs, T, 64) <= rep.mse_before + 1e-12


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
                                                   eval_batch=128), progress=False)
    assert [r["layer"] for r in reports] == ["1", "3"]
    for r in reports:
        assert r["mse_end"] <= r["mse_start"]
