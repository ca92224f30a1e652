"""The signed IF neuron (method ``signed``): its step, its take-back spikes, its training graph,
its artifacts, and why it exists (the count of a T = L run follows the QC-ANN where plain IF
neurons do not)."""

import pytest
import torch
from torch import nn

from lowlat import api
from lowlat.activations import QCActivation
from lowlat.interop import export_nir
from lowlat.methods import convert, load_snn
from lowlat.neurons import IFNeuron, configure, reset_states, signed_step, spiking_layers
from lowlat.simulate import evaluate_snn, run_snn


def _neuron(theta=1.0, v0=0.5, signed=True) -> IFNeuron:
    m = IFNeuron(theta).set_signed(signed)
    m.v0 = torch.tensor(v0)
    return m


def _run(m: IFNeuron, xs: torch.Tensor) -> torch.Tensor:
    """Spikes (−1/0/1) of ``m`` for an input sequence ``xs`` [T, B, ...]."""
    T, B = xs.shape[:2]
    reset_states(m)
    m.steps, m.batch = T, B
    with torch.no_grad():
        return m(xs.flatten(0, 1)).view(T, B, *xs.shape[2:]) / m.amplitude


def test_signed_step_takes_a_spike_back_and_never_goes_below_zero():
    # θ = 1, v(0) = ½: input 1 then −1 sums to 0 -> round(0) = 0 spikes in all
    s, v, c = [], torch.tensor([0.5]), torch.tensor([0.0])
    for x in (1.0, -1.0, -1.0):
        si, v, c = signed_step(v, c, torch.tensor([x]), torch.tensor(1.0))
        s.append(float(si))
    assert s == [1.0, -1.0, 0.0]  # no −1 spike without a +1 one before it
    assert float(c) == 0.0 and float(v) == pytest.approx(-0.5)
    plain = _run(_neuron(signed=False), torch.tensor([1.0, -1.0, -1.0]).view(3, 1))
    assert plain.flatten().tolist() == [1.0, 0.0, 0.0]  # the plain neuron keeps its spike


def test_signed_count_keeps_its_invariant_and_rounds_the_sum_better_than_plain():
    torch.manual_seed(0)
    T, theta = 4, 0.8
    xs = torch.randn(T, 4000) * 0.6 + 0.15  # uneven input: signs change from step to step
    target = ((xs.sum(0) / theta + 0.5).floor()).clamp(0, T)  # the QC-ANN's count at L = T
    signed, plain = _run(_neuron(theta, 0.4), xs), _run(_neuron(theta, 0.4, False), xs)
    cs = signed.sum(0)
    assert bool((signed.cumsum(0) >= 0).all())  # the memory never goes below zero
    m = _neuron(theta, 0.4)
    _run(m, xs)
    assert torch.allclose(m.v, 0.4 + xs.sum(0) - cs * theta, atol=1e-5)  # v = v0 + Σx − c·θ
    hit_signed = float((cs == target).float().mean())
    hit_plain = float((plain.sum(0) == target).float().mean())
    assert hit_signed > hit_plain + 0.1, (hit_signed, hit_plain)


def test_graph_path_spikes_like_inference_and_carries_gradient():
    torch.manual_seed(1)
    T, B = 3, 64
    xs = torch.randn(T, B, 5) * 0.7
    m = _neuron(0.9, 0.45)
    want = _run(m, xs)
    m.surrogate, m.scaled_surrogate = True, True
    reset_states(m)
    x = xs.flatten(0, 1).clone().requires_grad_(True)
    y = m(x).view(T, B, 5) / m.amplitude
    assert torch.equal(y.detach(), want)
    assert bool((want == -1).any())  # the case exists in this input
    y.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0


def _qc(levels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 48), QCActivation(levels, 0.5, init_lambda=1.0),
                         nn.Linear(48, 48), QCActivation(levels, 0.5, init_lambda=0.8),
                         nn.Linear(48, 5)).eval()


def test_signed_snn_at_T_equals_L_follows_the_qcann_closer_than_unbiased():
    qc, L = _qc(), 4
    x = torch.randn(512, 6)
    want = qc(x)
    err = {}
    for method in ("unbiased", "signed"):
        out = run_snn(convert(method, qc), x, L).mean(0)  # [B, 5] mean logits
        err[method] = float((out - want).abs().mean())
    assert err["signed"] < 0.5 * err["unbiased"], err
    snn = convert("signed", qc)
    assert all(m.is_signed for _, m in spiking_layers(snn))
    assert "signed" in repr(snn)


def test_signed_events_count_both_signs():
    qc = _qc()
    snn = convert("signed", qc)
    x, y = torch.randn(64, 6), torch.randint(0, 5, (64,))
    st = evaluate_snn(snn, [(x, y)], [4], progress=False)
    configure(snn, 4, 64)
    reset_states(snn)
    events: dict[str, float] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: events.__setitem__(
        n, float(out.abs().gt(0).sum()))) for n, m in spiking_layers(snn)]
    with torch.no_grad():
        snn(x.expand(4, *x.shape).flatten(0, 1))
    for h in hooks:
        h.remove()
    assert st.spikes[4] == pytest.approx(events)


def test_signed_flag_is_saved_and_old_state_dicts_load_as_plain(tmp_path):
    snn = convert("signed", _qc())
    state = snn.state_dict()
    assert all(bool(state[f"{n}.signed"]) for n, _ in spiking_layers(snn))
    plain = convert("unbiased", _qc())
    plain.load_state_dict(state)
    assert all(m.is_signed for _, m in spiking_layers(plain))
    old = {k: v for k, v in state.items() if not k.endswith(".signed")}  # before the buffer
    again = convert("signed", _qc())
    again.load_state_dict(old)
    assert not any(m.is_signed for _, m in spiking_layers(again))


def test_saved_signed_snn_reloads_signed(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    xs = torch.rand(16, 3, 8, 8)
    qc = api.prepare(net.eval(), xs)
    snn = api.convert(qc, "signed", T=2)
    assert all(m.is_signed for _, m in spiking_layers(snn.net))
    with pytest.raises(NotImplementedError, match="signed"):
        export_nir(snn, xs)


def test_signed_artifact_round_trip_through_load_snn(tmp_path):
    from lowlat.artifacts import load_artifact, save_artifact

    arch = {"name": "small_cnn", "num_classes": 10, "in_channels": 3, "kwargs": {"width": 4}}
    act = {"name": "qc", "kwargs": {"levels": 2, "shift": 0.5}}
    from lowlat.artifacts import build_network

    snn = convert("signed", build_network(arch, act).eval())
    save_artifact(tmp_path / "s.pt", "snn", snn, arch, act, {}, {}, "fp", T=2, method="signed")
    back = load_snn(load_artifact(tmp_path / "s.pt", "snn"))
    assert all(m.is_signed for _, m in spiking_layers(back))
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(run_snn(back, x, 2), run_snn(snn, x, 2))


@pytest.mark.parametrize("scaled", [False, True])
def test_surrogates_rise_with_v_for_both_spike_signs(scaled):
    """Both spikes step up as v rises (−1 -> 0 at v = 0, 0 -> 1 at v = θ): the surrogate of each
    is a positive triangle centred on its step, masked where no −1 spike is allowed."""
    from lowlat.neurons import NegativeSpike, TriangleSpike

    theta = torch.tensor(2.0)
    v = torch.linspace(-3.0, 5.0, 81, requires_grad=True)
    allowed = torch.arange(81) % 2 == 0
    neg = NegativeSpike.apply(v, allowed, theta, 1.0, scaled)
    (g_neg,) = torch.autograd.grad(neg.sum(), v)
    pos = TriangleSpike.apply(v, theta, 1.0, scaled)
    (g_pos,) = torch.autograd.grad(pos.sum(), v)
    scale = 1 / 2.0 if scaled else 1.0
    want_neg = (1 - (v.detach() / 2.0).abs()).clamp(min=0) * scale * allowed
    want_pos = (1 - (v.detach() / 2.0 - 1).abs()).clamp(min=0) * scale
    assert torch.allclose(g_neg, want_neg) and torch.allclose(g_pos, want_pos)
    assert bool((g_neg >= 0).all()) and float(g_neg.max()) == pytest.approx(scale)
    assert torch.equal(neg.detach(), -((v.detach() < 0) & allowed).float())


@pytest.mark.parametrize("channels_last", [False, True])
def test_signed_spikes_do_not_depend_on_chunking_or_layout(channels_last):
    """The memory is carried from one chunk to the next like v, in any memory layout."""
    from lowlat.models import create_model

    torch.manual_seed(2)
    model = create_model("small_cnn", act_layer="qc", width=4).eval()
    snn = convert("signed", model)
    x = torch.randn(5, 3, 32, 32)
    whole = run_snn(snn, x, 6)
    if channels_last:
        snn = snn.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for chunk in (1, 4):
        assert torch.equal(run_snn(snn, x, 6, chunk=chunk), whole)
    assert bool((whole != 0).any())
