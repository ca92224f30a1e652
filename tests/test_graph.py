"""Conversion of user graphs: one neuron per activation call site, and refusals that name the
node, its source line and the fix. Every converted network is checked against the per-site
reference simulator of ``tests/snn_reference.py``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowlat.activations import QCActivation
from lowlat.convert import ConversionError, swap_activations, to_snn
from lowlat.neurons import spiking_layers
from lowlat.simulate import run_snn
from tests.snn_reference import PerSiteReference, activation_call_sites

T = 4


def _qc_snn(model: nn.Module, lam: float = 0.6) -> torch.fx.GraphModule:
    snn = to_snn(swap_activations(model.eval(), lambda _n: QCActivation(4, init_lambda=lam)))
    for _, m in spiking_layers(snn):
        m.v0 = m.theta / 2
    return snn


def _check_against_reference(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    snn = _qc_snn(model)
    assert len(spiking_layers(snn)) == activation_call_sites(model)
    ref = PerSiteReference(snn).simulate(x, T)
    assert float(ref.abs().sum()) > 0
    for chunk in (1, 3, T):  # chunking must not change a spike
        assert torch.allclose(run_snn(snn, x, T, chunk=chunk), ref, atol=1e-5)
    return snn


class SharedReLU(nn.Module):
    """One ReLU module called at three sites, as torchvision's BasicBlock does (twice)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = self.relu(self.c1(x))
        y = self.relu(self.c2(y) + y)
        return self.fc(self.relu(y).mean((2, 3)))


class Functional(nn.Module):
    """F.relu, ReLU6, F.adaptive_avg_pool2d, a constant scale, a skip from before the first
    neuron and a reshape to a batch size read from the input."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.act6 = nn.ReLU6()
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        b = x.shape[0]
        y = self.c1(x)
        z = self.c2(F.relu(y)) + y  # skip taken before the first neuron
        z = self.act6(z) * 0.5
        z = F.adaptive_avg_pool2d(z, 2)
        return self.fc(F.relu(z).view(b, -1))


def test_shared_module_gets_one_neuron_per_call_site():
    torch.manual_seed(0)
    snn = _check_against_reference(SharedReLU(), torch.rand(3, 3, 8, 8))
    assert [n for n, _ in spiking_layers(snn)] == ["relu", "relu_1", "relu_2"]


def test_functional_ops_skip_from_input_and_batch_reshape_convert():
    torch.manual_seed(0)
    _check_against_reference(Functional(), torch.rand(3, 3, 8, 8))
    # the batch size read from the input does not fix the SNN's batch
    snn = _qc_snn(Functional())
    assert run_snn(snn, torch.rand(5, 3, 8, 8), T).shape == (T, 5, 5)


def _refusal(forward, match: str) -> str:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            return forward(self, x)

    with pytest.raises(ConversionError, match=match) as e:
        to_snn(swap_activations(Net(), lambda _n: QCActivation(4)))
    return str(e.value)


def test_refusals_name_node_source_line_and_fix():
    msg = _refusal(lambda s, x: s.fc(torch.sigmoid(s.c(x)).flatten(1)),
                   "'sigmoid'.*does not support")
    assert "test_graph.py" in msg and "supported:" in msg
    msg = _refusal(lambda s, x: s.fc(F.max_pool2d(F.relu(s.c(x)), 1).flatten(1)),
                   "max_pool2d.*avg_pool2d")
    assert "model.kwargs" not in msg
    _refusal(lambda s, x: s.fc(F.relu(s.c(x)).view(2, -1)), "leading dimension 2.*flatten")
    _refusal(lambda s, x: F.relu(s.c(x)) * F.relu(s.c(x) + 1), "multiplies two signals")
    _refusal(lambda s, x: F.relu(s.c(x)).mean(0), "batch dimension")
    _refusal(lambda s, x: s.fc(torch.flatten(F.relu(s.c(x)))), "batch dimension")
    _refusal(lambda s, x: F.relu(s.c(x)).new_zeros(x.size(0)), "batch size")


def test_data_dependent_branch_gets_a_hint():
    def fwd(s, x):
        y = F.relu(s.c(x))
        if y.sum() > 0:
            return y
        return -y

    msg = _refusal(fwd, "branches or loops on tensor values")
    assert "test_graph.py:" in msg


def test_max_pool_module_hint_offers_the_library_option():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    with pytest.raises(ConversionError, match="replace_max_pooling") as e:
        to_snn(swap_activations(m, lambda _n: QCActivation(4)))
    assert "model.kwargs" not in str(e.value)


class ClipsAndLinearOps(nn.Module):
    """Clip-ReLUs in four spellings and the per-sample linear ops a user's model may hold:
    a [B, L, C] series transposed into Conv1d, Conv3d with BatchNorm3d, a transposed conv with
    BatchNorm, padding (module and F.pad reflect) and upsampling (module and F.interpolate)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(6)
        self.clip = nn.Hardtanh(0.0, 0.5)
        self.c3 = nn.Conv3d(1, 3, 3, padding=1)
        self.bn3 = nn.BatchNorm3d(3)
        self.c2 = nn.Conv2d(3, 4, 3)
        self.t = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.bnt = nn.BatchNorm2d(4)
        self.pad = nn.ZeroPad2d(1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.fc = nn.Linear(6 + 4, 5)

    def forward(self, x):  # x: [B, 8, 4] series; an image [B, 1, 4, 4, 4] made from it
        a = self.clip(self.bn1(self.c1(x.transpose(1, 2))))  # [B, 4, 8] -> [B, 6, 8]
        a = F.hardtanh(a.permute(0, 2, 1) * 2.0, 0.0, 0.8).mean(1)  # [B, 8, 6] -> [B, 6]
        v = x.reshape(x.size(0), 1, 2, 4, 4)  # [B, 32] -> [B, 1, 2, 4, 4]
        v = torch.clamp(self.bn3(self.c3(v)), min=0).mean(2)  # [B, 3, 4, 4]
        v = self.pad(self.c2(v).clamp(0, 0.7))  # [B, 4, 2, 2] -> [B, 4, 4, 4]
        v = F.relu(self.bnt(self.t(F.pad(v, (1, 1, 1, 1), mode="reflect"))))  # [B, 4, 12, 12]
        v = F.interpolate(self.up(v), size=(3, 3)).mean((2, 3))  # [B, 4]
        return self.fc(torch.cat([a, v.unsqueeze(-1).squeeze(-1)], 1))


def test_clip_relus_and_linear_ops_convert_against_reference():
    torch.manual_seed(0)
    model = ClipsAndLinearOps()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(3, 8, 4)
    from lowlat.convert import fold_bn

    with torch.no_grad():  # folding BN into Conv1d/Conv3d/ConvTranspose2d keeps the function
        assert torch.allclose(fold_bn(model)(x), model.eval()(x), atol=1e-5)
    snn = _check_against_reference(model, x)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in snn.modules())
    assert len(spiking_layers(snn)) == 5
    # prepare caps λ at each clip's ceiling (0.5, 0.8, 0.7) and leaves plain ReLUs uncapped
    from lowlat import api

    caps = sorted(float(a.threshold) for a in api.prepare(model, init=3.0).modules()
                  if isinstance(a, QCActivation))
    assert caps == pytest.approx([0.5, 0.7, 0.8, 3.0, 3.0])


def test_max_pooling_of_any_rank_becomes_average_pooling():
    from lowlat.convert import replace_max_pooling

    m = replace_max_pooling(nn.Sequential(nn.MaxPool3d(2), nn.AdaptiveMaxPool3d(1),
                                          nn.MaxPool1d(3, 2), nn.AdaptiveMaxPool1d(2)))
    assert [type(x) for x in m] == [nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AvgPool1d,
                                    nn.AdaptiveAvgPool1d]
    with pytest.raises(ConversionError, match="dilation"):
        replace_max_pooling(nn.Sequential(nn.MaxPool2d(2, dilation=2)))


def test_clips_that_are_not_relus_and_batch_reshapes_are_refused():
    _refusal(lambda s, x: F.relu(s.c(x)).clamp(-1, 1), r"clips to \[-1, 1\].*not a ReLU")
    _refusal(lambda s, x: F.hardtanh(s.c(x)), r"clips to \[-1.0, 1.0\]")
    _refusal(lambda s, x: F.relu(s.c(x)).transpose(0, 1), "dims \\[0, 1\\].*batch dimension")
    _refusal(lambda s, x: F.relu(s.c(x)).squeeze(), "squeeze.*batch dimension")
    _refusal(lambda s, x: F.relu(s.c(x)).permute(1, 0, 2, 3), "permute.*batch dimension")
    _refusal(lambda s, x: F.relu(s.c(x)).chunk(2)[0], "chunk along dim 0, the batch")
    _refusal(lambda s, x: (s.fc(F.relu(s.c(x)).flatten(1)), x), "returns a tuple, not one tensor")
    _refusal(lambda s, x: {"y": s.fc(F.relu(s.c(x)).flatten(1))}, "returns a dict")
    _refusal(lambda s, x: F.log_softmax(s.fc(F.relu(s.c(x)).flatten(1)), 1),
             "log_softmax on the network's output.*apply log_softmax outside the SNN")
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh(-1.0, 1.0))
    with pytest.raises(ConversionError, match=r"'1'.*Hardtanh\(-1.0, 1.0\), which is not a ReLU"):
        to_snn(swap_activations(m, lambda _n: QCActivation(4), types=()))
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Unflatten(0, (2, -1)))
    with pytest.raises(ConversionError, match="Unflatten"):
        to_snn(swap_activations(m, lambda _n: QCActivation(4)))
