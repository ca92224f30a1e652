"""Per-channel thresholds: QC-ANN λ per channel, IF θ per channel, and the channel-wise
conversion of the ReLU ANN (SpikingJelly's recipe) with its calibration target."""

import torch
from torch import nn

from lowlat.activations import QCActivation, quantize_clip
from lowlat.artifacts import load_network, save_artifact
from lowlat.calibrate import CalibConfig, ann_activation, calibrate, snn_rate
from lowlat.convert import activation_stats, to_snn
from lowlat.methods import calibration_pair, convert, load_snn
from lowlat.models import create_model
from lowlat.neurons import spiking_layers
from lowlat.simulate import run_snn


def _conv_qc(lam: torch.Tensor, levels: int = 4, shift: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), QCActivation(levels, shift, lam),
                         nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()


def test_per_channel_lambda_quantises_each_channel_with_its_own_threshold():
    lam = torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1)
    act = QCActivation(4, 0.5, lam)
    z = torch.rand(2, 4, 3, 3) * 5
    y = act(z)
    for c in range(4):
        assert torch.equal(y[:, c], quantize_clip(z[:, c], lam[c, 0, 0], 4, 0.5))
    assert "per channel" in repr(act)


def test_per_channel_lambda_survives_an_artifact(tmp_path):
    """A skeleton built with a scalar λ takes the per-channel λ of the stored state dict."""
    arch = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "kwargs": {"width": 4}}
    net = create_model("small_cnn", 10, 1, "relu", width=4).eval()
    from lowlat.convert import swap_activations
    shapes = {n: s["percentile_channel"].shape
              for n, s in activation_stats(net, [torch.randn(4, 1, 8, 8)]).items()}
    lam = {}

    def make(name: str) -> QCActivation:
        lam[name] = torch.rand(shapes[name]) + 0.5
        return QCActivation(4, 0.5, lam[name])

    qc = swap_activations(net, make).eval()
    act = {"name": "qc", "kwargs": {"levels": 4, "shift": 0.5}}
    save_artifact(tmp_path / "qcann.pt", "qcann", qc, arch, act, {}, {}, "fp")
    art = torch.load(tmp_path / "qcann.pt", weights_only=True)
    back = load_network(art)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(back(x), qc(x))
    got = {n: m.lam for n, m in back.named_modules() if isinstance(m, QCActivation)}
    assert all(torch.equal(got[n], lam[n]) for n in lam)


def test_if_with_per_channel_theta_matches_qc_at_T_equals_L():
    """s = 0.5, v(0) = θ/2: T = L reproduces the per-channel QC activation exactly."""
    lam = torch.tensor([0.5, 1.0, 2.0, 3.0]).view(4, 1, 1)
    net = _conv_qc(lam, levels=4)
    snn = convert("opti", net)
    (_, neuron), = spiking_layers(snn)
    assert neuron.theta.shape == (4, 1, 1)
    x = torch.randn(2, 3, 5, 5)
    z = net[0](x)
    want = net[1](z)
    seen = {}
    neuron.register_forward_hook(lambda m, i, o: seen.setdefault("y", []).append(o))
    run_snn(snn, x, 4, chunk=4)
    rate = seen["y"][0].view(4, 2, 4, 5, 5).sum(0) / 4  # [T·B, C, H, W] -> [B, C, H, W]
    assert torch.allclose(rate, want, atol=1e-6)


def _relu_cnn() -> nn.Module:
    torch.manual_seed(1)
    net = create_model("small_cnn", 10, 1, "relu", width=4)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_channelnorm_thresholds_are_the_channel_percentiles():
    net = _relu_cnn()
    xs = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    stats = activation_stats(net, xs, percentile=99.9)
    snn = convert("channelnorm", net, stats=stats)
    for name, m in spiking_layers(snn):
        pc = stats[name]["percentile_channel"]
        assert m.theta.shape == pc.shape and m.theta.dim() >= 1 and m.theta.numel() > 1
        assert torch.equal(m.theta, pc.clamp(min=1e-6))
        assert torch.equal(m.v0, m.theta / 2)
        # each channel's percentile lies between its median and its maximum
        assert bool((pc <= stats[name]["max_channel"]).all())
    assert not torch.equal(*[m.theta.flatten()[:2] for _, m in spiking_layers(snn)][0].unbind())


def test_channelnorm_calibration_targets_the_clipped_ann_and_round_trips(tmp_path):
    net = _relu_cnn()
    xs = torch.randn(64, 1, 8, 8)
    stats = activation_stats(net, [xs])
    snn, target = calibration_pair("channelnorm", net, stats)
    names = [n for n, _ in spiking_layers(snn)]

    def bias(name: str) -> float:  # per-channel mean rate error, what signed LMPC removes
        e = ann_activation(target, name, xs) - snn_rate(snn, name, xs, 8)
        return float(e.mean(dim=(0, 2, 3)).abs().sum())

    before = bias(names[0])
    calibrate(snn, target, xs, CalibConfig(T=8, lmpc=True, lwc=False, granularity="channel"),
              layers=names[:1], progress=False)
    assert bias(names[0]) < 0.75 * before
    # targets never exceed θ: what the neuron can carry
    h = target(xs)
    assert torch.isfinite(h).all()
    arch = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "kwargs": {"width": 4}}
    save_artifact(tmp_path / "snn.pt", "snn", snn, arch, {"name": "relu"}, {}, {}, "fp")
    back = load_snn(torch.load(tmp_path / "snn.pt", weights_only=True))
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(run_snn(back, x, 3), run_snn(snn, x, 3))


def test_to_snn_refuses_a_non_positive_channel_threshold():
    import pytest

    from lowlat.graph import ConversionError
    net = _relu_cnn()
    stats = activation_stats(net, [torch.randn(4, 1, 8, 8)])
    th = {n: torch.ones_like(s["percentile_channel"]) for n, s in stats.items()}
    first = next(iter(th))
    th[first][1] = 0.0
    with pytest.raises(ConversionError, match=first):
        to_snn(net, thresholds=th)


def test_the_peers_row_is_not_labelled_as_lowlats():
    from lowlat.report import label

    assert label("channelnorm") == "Channel Norm (SpikingJelly)"
    assert label("lowlat-cn").endswith("(lowlat)") and label("lmpc") == "Phase I+LMPC"
