"""The IF neuron and the simulator, exact where the theory is exact."""

import pytest
import torch
from torch import nn

from lowlat.activations import quantize_clip
from lowlat.convert import fold_bn, to_snn
from lowlat.models import create_model
from lowlat.neurons import IFNeuron, TriangleSpike, configure, if_step, reset_states
from lowlat.simulate import chunk_plan, evaluate_snn, run_snn


def _away_from_steps(n: int, lam: float, L: int, shift: float) -> torch.Tensor:
    """Inputs in [-λ/2, 1.5λ] whose z·L/λ + s is at least 0.1 away from an integer."""
    z = torch.linspace(-0.5 * lam, 1.5 * lam, n)
    frac = (z * L / lam + shift) % 1.0
    return z[(frac > 0.1) & (frac < 0.9)]


@pytest.mark.parametrize("shift,v0_frac", [(0.0, 0.0), (0.5, 0.5)])
def test_if_neuron_equals_qc_activation_at_T_equals_L(shift, v0_frac):
    lam, L = 1.7, 8
    z = _away_from_steps(4000, lam, L, shift)
    neuron = IFNeuron(theta=lam)
    neuron.v0 = torch.tensor(lam * v0_frac)
    reset_states(neuron)
    configure(neuron, steps=L, batch=z.numel())
    out = neuron(z.repeat(L)).view(L, -1)  # constant input, [T·B] -> [T, B]
    counts = (out / lam).round().sum(0)
    qc = quantize_clip(z, torch.tensor(lam), L, shift)
    # Integer spike counts equal the QC levels exactly; the rates agree to float rounding.
    assert torch.equal(counts, torch.floor(z * L / lam + shift).clamp(0, L))
    assert torch.equal(counts, (qc * L / lam).round())
    assert torch.allclose(out.sum(0) / L, qc, atol=1e-6)


def test_if_step_pure_function():
    v = torch.tensor([0.0, 0.9, 1.5])
    s, v2 = if_step(v, torch.tensor([0.5, 0.1, 0.6]), torch.tensor(1.0))
    assert torch.equal(s, torch.tensor([0.0, 1.0, 1.0]))
    assert torch.allclose(v2, torch.tensor([0.5, 0.0, 1.1]))


def test_bn_folding_matches():
    torch.manual_seed(0)
    for name in ("vgg16", "resnet20_thin"):
        m = create_model(name, act_layer="relu", width=0.25)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.normal_()
                mod.bias.data.normal_()
        m.eval()
        x = torch.randn(4, 3, 32, 32)
        folded = fold_bn(m)
        assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
        assert torch.allclose(folded(x), m(x), atol=1e-5, rtol=1e-5)


def _random_snn(name: str = "resnet20_thin"):
    torch.manual_seed(1)
    model = create_model(name, act_layer="qc", width=0.5)
    for mod in model.modules():
        if hasattr(mod, "lam"):
            mod.lam.data.fill_(0.7)
    snn = to_snn(model.eval())
    for i, (_, n) in enumerate((k, v) for k, v in snn.named_modules() if isinstance(v, IFNeuron)):
        n.v0 = n.theta * (0.1 * (i % 5))
    return snn


@pytest.mark.parametrize("name", ["resnet20_thin", "vgg16"])
def test_folded_and_step_by_step_identical(name):
    snn = _random_snn(name)
    x = torch.randn(6, 3, 32, 32)
    spikes = {}

    def grab(tag):
        def hook(mod, _i, out):
            spikes.setdefault(tag, {}).setdefault(mod, []).append(out.view(-1, 6, *out.shape[1:]))
        return hook

    outs = {}
    for tag, chunk in (("folded", 12), ("step", 1), ("mixed", 5)):
        hs = [m.register_forward_hook(grab(tag)) for m in snn.modules() if isinstance(m, IFNeuron)]
        outs[tag] = run_snn(snn, x, 12, chunk=chunk)
        for h in hs:
            h.remove()
    for tag in ("step", "mixed"):
        assert torch.equal(outs[tag], outs["folded"])
        for mod, chunks in spikes["folded"].items():
            assert torch.equal(torch.cat(spikes[tag][mod]), torch.cat(chunks))


def test_accuracy_at_every_T_in_one_run_matches_separate_runs():
    snn = _random_snn()
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))
    st = evaluate_snn(snn, [(x, y)], [1, 3, 8], max_chunk=4, progress=False)
    for T in (1, 3, 8):
        pred = run_snn(snn, x, T).sum(0).argmax(1)
        assert st.correct[T] == int((pred == y).sum())
    # firing rate = spikes / (neurons · samples · T), spikes counted on the neurons' outputs
    counts: dict[str, list[int]] = {}
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, n=n: counts.setdefault(n, []).append(
            (int(torch.count_nonzero(out)), out.numel())))
        for n, m in snn.named_modules() if isinstance(m, IFNeuron)]
    run_snn(snn, x, 8)
    for h in hooks:
        h.remove()
    expected = {n: sum(c for c, _ in v) / sum(t for _, t in v) for n, v in counts.items()}
    fr = st.firing_rates()[8]
    assert fr == pytest.approx(expected, rel=1e-12) and any(v > 0 for v in fr.values())
    assert set(st.rmpe_share()[8]) == set(fr)


def test_chunk_plan():
    assert chunk_plan([1, 2, 4, 8], 16) == [1, 1, 2, 4]
    assert chunk_plan([10], 4) == [4, 4, 2]
    with pytest.raises(ValueError):
        chunk_plan([4], 0)


def test_triangle_surrogate_gradient():
    theta = torch.tensor(2.0)
    v = torch.tensor([-1.0, 0.5, 1.0, 2.0, 2.5, 3.9, 4.5], requires_grad=True)
    gamma = 1.5
    TriangleSpike.apply(v, theta, gamma).sum().backward()
    expected = gamma * torch.clamp(1 - (v.detach() / theta - 1).abs(), min=0)
    assert torch.allclose(v.grad, expected)
    assert v.grad[3].item() == pytest.approx(gamma)  # the peak sits at v = θ
    # a trainable threshold gets ∂s/∂v · (−v/θ), summed over its broadcast (per channel here)
    th = torch.tensor([[1.0], [2.0]], requires_grad=True)
    vv = torch.tensor([[0.5, 1.2, 3.0], [1.5, 2.0, 2.5]], requires_grad=True)
    TriangleSpike.apply(vv, th, gamma).sum().backward()
    sg = gamma * torch.clamp(1 - (vv.detach() / th.detach() - 1).abs(), min=0)
    torch.testing.assert_close(th.grad, (-sg * vv.detach() / th.detach()).sum(1, keepdim=True))
    u = torch.tensor(0.8, requires_grad=True)  # a 0-dim θ keeps its shape
    TriangleSpike.apply(vv.detach(), u, gamma).sum().backward()
    assert u.grad.shape == () and u.grad.item() < 0  # a higher threshold, fewer spikes


def test_neuron_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        IFNeuron(theta=0.0)


def test_unbiased_conversion_is_exact_at_T_equals_L_and_unbiased_beyond():
    from lowlat.activations import QCActivation
    from lowlat.methods import convert_qcann

    lam, L = 1.3, 8
    net = nn.Sequential(nn.Linear(1, 1), QCActivation(levels=L, shift=0.0, init_lambda=lam))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    z = _away_from_steps(3000, lam, L, 0.0)
    qc = net(z[:, None]).detach()
    for method in ("phase1", "unbiased"):  # both are exact at T = L ...
        snn = convert_qcann(net.eval(), method)
        assert torch.allclose(run_snn(snn, z[:, None], L).mean(0), qc, atol=1e-5)
    # ... but at T >> L the literal conversion drifts to clip(z) (+θ/(2L) on average) while the
    # unbiased one stays centred on the QC-ANN's mean
    T = 256
    inside = (z > 0) & (z < lam)
    for method, bias in (("phase1", lam / (2 * L)), ("unbiased", 0.0)):
        rate = run_snn(convert_qcann(net, method), z[:, None], T).mean(0)
        err = (rate - qc)[inside].mean().item()
        assert err == pytest.approx(bias, abs=0.01)
