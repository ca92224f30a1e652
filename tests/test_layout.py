"""Channels-last SNN inference (``eval.channels_last``): the same spikes and accuracy, the network
handed back in its own layout, and the models it cannot serve refused by name."""

import copy

import pytest
import torch
from torch import nn

from lowlat import fused
from lowlat.activations import QCActivation
from lowlat.convert import to_snn
from lowlat.layout import is_channels_last
from lowlat.models import create_model
from lowlat.simulate import evaluate_snn, run_snn
from lowlat.stages.common import ConfigError, Context, validate
from lowlat.stages.evaluate import eval_fingerprint
from tests.test_configs import _compose

CL = torch.channels_last


def _snn() -> nn.Module:
    torch.manual_seed(0)
    qc = create_model("small_cnn", num_classes=10, in_channels=3, act_layer="qc", width=8)
    with torch.no_grad():
        for m in qc.modules():  # thresholds at which a random network fires at a few % per step
            if isinstance(m, QCActivation):
                m.lam.fill_(0.5)
    return to_snn(qc.eval()).eval()


@pytest.mark.parametrize("fused_flag", [
    False, pytest.param(True, marks=[pytest.mark.slow, pytest.mark.skipif(
        not fused.available(), reason="torch.compile unsupported here")])])
def test_channels_last_inference_gives_the_same_results(fused_flag):
    snn = _snn()
    before = copy.deepcopy(snn.state_dict())
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g))
               for _ in range(2)]
    res = {cl: evaluate_snn(snn, batches, [1, 3, 8], max_chunk=4, fused=fused_flag,
                            progress=False, channels_last=cl) for cl in (False, True)}
    assert res[True].correct == res[False].correct
    for T in (1, 3, 8):
        for name, n in res[False].spikes[T].items():  # float rounding may flip a rare tie
            assert abs(res[True].spikes[T][name] - n) <= 1e-3 * n + 2, (T, name)
    assert sum(res[True].spikes[8].values()) > 0
    assert not is_channels_last(snn)  # handed back as it came, the same values
    assert all(torch.equal(v, before[k]) for k, v in snn.state_dict().items())
    x = batches[0][0]
    out = {cl: run_snn(snn, x, 5, chunk=2, fused=fused_flag, channels_last=cl)
           for cl in (False, True)}
    torch.testing.assert_close(out[True], out[False], rtol=1e-4, atol=1e-4)


def test_a_network_keeps_its_own_layout():
    """``None`` runs the network as it lies (the fine-tune validates a channels-last network
    this way, its inputs follow); ``False`` runs it in the default layout, then restores it."""
    snn = _snn().to(memory_format=CL)
    batches = [(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))]
    for cl in (None, False, True):
        evaluate_snn(snn, batches, [2], progress=False, stats=False, channels_last=cl)
        assert is_channels_last(snn), cl


class _ViewHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = QCActivation(2, 0.5, init_lambda=1.0)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


def test_channels_last_inference_refusals_name_the_key():
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    snn = to_snn(_ViewHead().eval())
    with pytest.raises(RuntimeError, match=r"eval.channels_last=true.*\.view\(\).*reshape"):
        evaluate_snn(snn, batches, [2], progress=False, channels_last=True)
    assert snn.conv.weight.is_contiguous()  # restored after the failure
    evaluate_snn(snn, batches, [2], progress=False)  # the default layout serves it
    net3d = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), QCActivation(2, 0.5, init_lambda=1.0),
                          nn.Flatten(), nn.Linear(2 * 4 * 4 * 4, 3)).eval()
    with pytest.raises(ValueError, match=r"eval.channels_last: '0.weight' is 5-d.*=false"):
        evaluate_snn(to_snn(net3d), [(torch.randn(2, 1, 4, 4, 4), torch.zeros(2).long())], [2],
                     progress=False, channels_last=True)


def test_eval_key_is_checked_and_never_in_the_fingerprint():
    with pytest.raises(ConfigError, match="eval.channels_last must be true or false"):
        validate(_compose("eval.channels_last=1"))

    def fp(*o: str) -> str:
        return eval_fingerprint(Context.from_cfg(_compose(*o)), {}, {})

    assert fp("eval.channels_last=true") == fp()  # results made either way stay valid
    assert fp("eval.max_chunk=4") != fp()  # the fingerprint does see the eval section


def test_bench_snn_times_the_channels_last_twin(tmp_path):
    """``scripts/bench_snn.py`` with a '-cl' mode times a channels-last copy beside the default
    and writes the side-by-side table (a dry run at 1/8 width: figures, not speeds, checked)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_snn.py"
    spec = importlib.util.spec_from_file_location("bench_snn", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--models", "vgg16", "--timesteps", "2", "--batch", "4", "--repeats", "1",
                      "--device", "cpu", "--width", "0.125", "--sj-timesteps", "--modes",
                      "chunked", "chunked-cl", "--out", str(tmp_path)])
    assert [r["mode"] for r in res["rows"]] == ["chunked", "chunked-cl"]
    assert all(r["snn_ms"] > 0 for r in res["rows"])
    md = (tmp_path / "bench_snn.md").read_text()
    assert "| vgg16 | 2 | chunked |" in md.split("## Channels-last")[1]
