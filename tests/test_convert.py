import pytest
import torch
from torch import nn

from lowlat.convert import activation_stats, to_snn
from lowlat.methods import convert_qcann, convert_relu_ann
from lowlat.models import create_model
from lowlat.neurons import IFNeuron


def test_maxpool_refused_with_advice():
    m = create_model("vgg16", act_layer="qc", width=0.125, pool="max")
    with pytest.raises(ValueError, match="average pooling"):
        to_snn(m)


def test_unknown_layer_named():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.weird = nn.Softplus()

        def forward(self, x):
            return self.weird(self.conv(x))

    with pytest.raises(ValueError, match="'weird'"):
        to_snn(Net())


def test_plain_relu_needs_thresholds():
    with pytest.raises(ValueError, match="plain ReLU"):
        to_snn(create_model("small_cnn", width=4))


def test_methods_set_v0_and_shift():
    qc = create_model("small_cnn", act_layer="qc", width=4).eval()
    opti = convert_qcann(qc, "opti")
    opt = convert_qcann(qc, "opt", T=4)
    for (_, a), (_, b) in zip(
        ((n, m) for n, m in opti.named_modules() if isinstance(m, IFNeuron)),
        ((n, m) for n, m in opt.named_modules() if isinstance(m, IFNeuron)), strict=True,
    ):
        assert torch.allclose(a.v0, a.theta / 2)
        assert torch.allclose(b.shift, b.theta / 8)


def test_maxnorm_thresholds_from_stats():
    ann = create_model("small_cnn", width=4).eval()
    xs = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    stats = activation_stats(ann, xs, percentile=99.9)
    snn = convert_relu_ann(ann, stats, "maxnorm")
    thetas = {n: float(m.theta) for n, m in snn.named_modules() if isinstance(m, IFNeuron)}
    assert thetas == pytest.approx({n: s["max"] for n, s in stats.items()})
    assert all(s["percentile"] <= s["max"] for s in stats.values())
