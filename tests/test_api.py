"""The Hydra-free API on users' models: torchvision networks converted, calibrated at T = 4 and
checked against the per-site reference; step-by-step vs time-folded runs; save/load; recording."""

import copy

import pytest
import torch
from torch import nn

from lowlat import api
from lowlat.activations import QCActivation
from lowlat.artifacts import load_artifact
from lowlat.methods import load_snn as load_registered
from lowlat.models import create_model
from lowlat.neurons import configure, spiking_layers
from tests.snn_reference import PerSiteReference, activation_call_sites

tv = pytest.importorskip("torchvision")
T = 4


def small_vgg11_bn(num_classes: int = 10) -> nn.Module:
    """torchvision's vgg11_bn features with a CIFAR-size classifier (512 -> 64 -> classes)."""
    m = tv.models.vgg11_bn(weights=None, num_classes=num_classes)
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier = nn.Sequential(nn.Linear(512, 64), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(64, num_classes))
    return m


def tiny_net(width: int = 4, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(width * 4 * 4, num_classes))


TORCHVISION = {
    "resnet18": (lambda: tv.models.resnet18(weights=None, num_classes=10), 16),
    "vgg11_bn": (small_vgg11_bn, 32),
    "mobilenet_v2": (lambda: tv.models.mobilenet_v2(weights=None, num_classes=10,
                                                    width_mult=0.25), 16),
    # channel shuffle: view(batch, groups, c // groups, h, w), transpose(1, 2), chunk(2, dim=1)
    "shufflenet_v2": (lambda: tv.models.shufflenet_v2_x0_5(weights=None, num_classes=10), 32),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_models_convert_and_calibrate(name):
    make, hw = TORCHVISION[name]
    torch.manual_seed(0)
    model = make().eval()
    xs = torch.rand(2, 3, hw, hw)  # few images: every layer is calibrated, 4 passes each
    qc = api.prepare(model, xs, pool="avg")
    snn = api.convert(qc, "lowlat-lmpc", T=T)  # signed LMPC: lowers the rate error
    assert len(spiking_layers(snn.net)) == activation_call_sites(model)
    reports = api.calibrate(snn, qc, xs)
    assert sum(r["mse_end"] for r in reports) < sum(r["mse_start"] for r in reports)
    ref = PerSiteReference(snn.net).simulate(xs, T)
    assert torch.allclose(snn.run(xs), ref, atol=1e-5)
    assert torch.allclose(snn(xs), ref.mean(0), atol=1e-5)


def test_relu6_lambda_capped_and_maxpool_replaced():
    m = tv.models.mobilenet_v2(weights=None, num_classes=10, width_mult=0.25).eval()
    qc = api.prepare(m, init=100.0)
    assert all(float(a.threshold) == 6.0 for a in qc.modules() if isinstance(a, QCActivation))
    qc = api.prepare(tiny_net(), torch.rand(4, 3, 8, 8), pool="avg")
    assert not any(isinstance(a, nn.MaxPool2d) for a in qc.modules())


@pytest.fixture(scope="module")
def tiny_snn():
    torch.manual_seed(0)
    xs = torch.rand(16, 3, 8, 8)
    snn = api.Converter(xs, T=T, method="lowlat", pool="avg", iterations=3, batch_size=8,
                        mean=[0.5] * 3, std=[0.25] * 3)(tiny_net())
    return snn, xs


def test_step_by_step_equals_time_folded_and_plain_call_is_stateless(tiny_snn):
    snn, xs = tiny_snn
    x = xs[:5]
    folded = snn.run(x)
    rec = snn.record(x)
    snn.reset()
    steps = torch.stack([snn.step(x, record=True) for _ in range(T)])
    for name, m in spiking_layers(snn.net):  # identical spikes; outputs to matmul rounding
        assert torch.equal(m.spike_count, rec.spikes[name])
    assert torch.allclose(steps, folded, atol=1e-6)
    with pytest.raises(RuntimeError, match="reset"):
        snn.step(xs[:2])
    configure(snn.net, steps=3, batch=7)  # state left by someone else
    assert torch.allclose(snn(x), folded.mean(0), atol=1e-6)
    assert torch.allclose(snn(xs[:2]), folded[:, :2].mean(0), atol=1e-6)  # another batch


def test_recording_matches_reference(tiny_snn):
    snn, xs = tiny_snn
    rec = snn.record(xs[:3])
    ref = PerSiteReference(snn.net)
    out = ref.simulate(snn.normalize(xs[:3]), T)
    assert torch.allclose(rec.output, out, atol=1e-5)
    for node, counts in ref.counts.items():
        assert torch.equal(rec.spikes[ref.site[node]], counts)
        assert torch.allclose(rec.v[ref.site[node]], ref.v[node], atol=1e-5)
    first, second = snn.net.get_submodule("0"), snn.net.get_submodule("4")
    fc = snn.net.get_submodule("7")
    # analog input: every MAC of the first conv at every step; then nonzero inputs x fan-out
    macs = first.out_channels * 8 * 8 * first.in_channels * 9
    assert rec.ops["0"] == macs * T * 3
    assert rec.ops["7"] == float(rec.spikes["5"].sum()) * fc.out_features
    assert rec.ops["4"] > 0 and second.out_channels
    rates = rec.firing_rates()
    assert rates["2"] == pytest.approx(float(rec.spikes["2"].sum()) / rec.spikes["2"].numel() / T)


def test_save_load_user_factory(tiny_snn, tmp_path):
    snn, xs = tiny_snn
    api.save_snn(tmp_path / "snn.pt", snn, tiny_net, {"width": 4})
    art = torch.load(tmp_path / "snn.pt", weights_only=True)
    assert art["arch"]["factory"] == "tests.test_api:tiny_net"
    assert art["preprocess"] == {"mean": [0.5] * 3, "std": [0.25] * 3} and art["T"] == T
    back = api.load_snn(tmp_path / "snn.pt")
    assert torch.equal(back.run(xs), snn.run(xs))
    for (_, a), (_, b) in zip(spiking_layers(back.net), spiking_layers(snn.net), strict=True):
        assert torch.equal(a.v0, b.v0) and torch.equal(a.theta, b.theta)
    with pytest.raises(ValueError, match="importable"):
        api.save_snn(tmp_path / "x.pt", snn, lambda: tiny_net())


def test_save_load_torchvision_and_registered(tmp_path):
    torch.manual_seed(0)
    xs = torch.rand(4, 3, 16, 16)
    m = tv.models.resnet18(weights=None, num_classes=10)
    snn = api.convert(api.prepare(m, xs, pool="avg"), "opti", T=2)
    api.save_snn(tmp_path / "r.pt", snn, "torchvision.models:resnet18", {"num_classes": 10})
    assert torch.equal(api.load_snn(tmp_path / "r.pt").run(xs), snn.run(xs))
    qc = create_model("small_cnn", num_classes=10, act_layer="qc", width=4)
    snn = api.convert(qc, "unbiased", T=2)
    api.save_snn(tmp_path / "s.pt", snn, "small_cnn", {"num_classes": 10, "width": 4})
    xs = torch.rand(2, 3, 32, 32)
    art = load_artifact(tmp_path / "s.pt", "snn")  # what the eval stage reads
    assert art["arch"]["name"] == "small_cnn"
    assert torch.equal(api.SpikingNetwork(load_registered(art), 2).run(xs), snn.run(xs))


def test_evaluate_and_fine_tune_with_dataloaders(tiny_snn):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    xs, ys = torch.rand(24, 3, 8, 8), torch.randint(0, 3, (24,))
    loader = DataLoader(TensorDataset(xs, ys), batch_size=8)
    qc = api.prepare(tiny_net(), loader, pool="avg")
    lam = [float(a.lam) for a in qc.modules() if isinstance(a, QCActivation)]
    qc = api.fine_tune(qc, loader, num_classes=3, epochs=1, lr=0.05, threshold_lr=0.5)
    assert [float(a.lam) for a in qc.modules() if isinstance(a, QCActivation)] != lam
    snn = api.convert(qc, "lowlat-lmpc", T=T)  # signed LMPC: lowers the rate error
    from_loader = api.calibrate(snn, qc, loader, n_images=16)
    fresh = api.convert(qc, "lowlat-lmpc", T=T)  # LMPC adds to the v(0) it finds: start anew
    assert [r["mse_end"] for r in from_loader] == pytest.approx(
        [r["mse_end"] for r in api.calibrate(fresh, qc, xs[:16])])  # same 16 images
    acc = api.evaluate(snn, loader, [2, T])
    assert acc[T] == pytest.approx(float((snn(xs).argmax(1) == ys).float().mean()))
    assert acc[2] == pytest.approx(float((snn(xs, T=2).argmax(1) == ys).float().mean()))


def test_fine_tune_with_a_teacher_leaves_it_as_it_was():
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    xs, ys = torch.rand(24, 3, 8, 8), torch.randint(0, 3, (24,))
    loader = DataLoader(TensorDataset(xs, ys), batch_size=8)
    ann = tiny_net()
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    qc = api.prepare(copy.deepcopy(ann), loader, pool="avg")
    qc = api.fine_tune(qc, loader, num_classes=3, epochs=1, lr=0.05, teacher=ann, kd=0.5)
    assert all(torch.equal(v, before[k]) for k, v in ann.state_dict().items())
    with pytest.raises(ValueError, match="teacher"):
        api.fine_tune(qc, loader, num_classes=3, kd=0.5)


def test_converter_calls_the_users_fine_tuning():
    seen = []

    def tune(qc: nn.Module) -> nn.Module:
        seen.append(sum(isinstance(m, QCActivation) for m in qc.modules()))
        return qc

    xs = torch.rand(4, 3, 8, 8)
    conv = api.Converter(xs, T=2, method="opti", pool="avg", fine_tune=tune)
    snn = conv(tiny_net())
    assert seen == [2] and len(spiking_layers(snn.net)) == 2 and conv.qcann is not None


def test_evaluate_snn_per_layer_ops_add_up(tiny_snn):
    from lowlat.simulate import evaluate_snn

    snn, xs = tiny_snn
    ys = torch.zeros(len(xs), dtype=torch.long)
    st = evaluate_snn(snn.net, [(xs[:8], ys[:8]), (xs[8:], ys[8:])], [2, T],
                      transform=snn.normalize, progress=False)
    for t in (2, T):
        assert sum(st.layer_ops[t].values()) == pytest.approx(st.ops[t] + st.first_ops[t])
    rec = snn.record(xs)  # one batch, one run: the same per-layer counts at T
    assert st.layer_ops[T] == pytest.approx(rec.ops)


class SeriesNet(nn.Module):
    """A [B, C, L] series model: Conv1d + BatchNorm1d, then two activations in a row (ReLU
    into a clip-ReLU, no weights between them) before the classifier."""

    def __init__(self):
        super().__init__()
        self.c, self.bn = nn.Conv1d(2, 6, 3, padding=1), nn.BatchNorm1d(6)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.c(x))).mean(2)  # [B, 6, L] -> [B, 6]
        return self.fc2(torch.clamp(torch.relu(self.fc1(h)), 0, 1.0))


def test_series_model_channel_lmpc_normalisation_and_stacked_activations():
    torch.manual_seed(0)
    x, y = torch.randn(64, 2, 12), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    mean, std = [0.5, -0.5], [2.0, 0.5]
    snn = api.Converter(loader, T=T, method="lowlat", n_images=32, granularity="channel",
                        mean=mean, std=std)(SeriesNet().eval())
    v0 = [m.v0 for _, m in spiking_layers(snn.net)]
    assert v0[0].shape == (6, 1)  # per channel of [C, L], not per neuron
    # the SNN normalises each channel of its raw [B, C, L] input itself
    norm = (x[:4] - torch.tensor(mean).view(1, 2, 1)) / torch.tensor(std).view(1, 2, 1)
    ref = PerSiteReference(snn.net).simulate(norm, T)
    assert torch.allclose(snn(x[:4]), ref.mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="mean has 3 values but the input"):
        api.Converter(loader, T=T, mean=[0.0] * 3, std=[1.0] * 3)(SeriesNet().eval())
    with pytest.raises(ValueError, match="std finite and > 0"):
        api.Converter(loader, T=T, mean=mean, std=[1.0, 0.0])(SeriesNet().eval())


@pytest.mark.parametrize("name", ["squeezenet1_1", "densenet121", "googlenet", "mnasnet0_5",
                                  "regnet_x_400mf"])
def test_more_torchvision_families_convert_exactly(name):
    """Fire modules and cat, BatchNorm before ReLU (DenseNet), Inception branches, depthwise
    blocks, grouped convs: converted (max pooling replaced) and equal to the reference."""
    kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None, num_classes=10, **kw).eval()
    xs = torch.rand(2, 3, 32, 32)
    snn = api.convert(api.prepare(model, xs, pool="avg"), "opti", T=T)
    assert len(spiking_layers(snn.net)) == activation_call_sites(model)
    assert torch.allclose(snn.run(xs), PerSiteReference(snn.net).simulate(xs, T), atol=1e-5)
