"""ONNX export of the ANN / QC-ANN and ONNX import for conversion; NIR export of the SNN."""

import warnings

import pytest
import torch
from torch import nn

from lowlat import api
from lowlat.neurons import spiking_layers
from tests.snn_reference import PerSiteReference

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
from lowlat.interop import export_onnx, from_onnx  # noqa: E402

T = 4


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.pool = nn.Conv2d(4, 4, 3, padding=1), nn.AvgPool2d(2)
        self.fc, self.relu = nn.Linear(4 * 4 * 4, 3), nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.relu(self.bn(self.c1(x)))
        y = self.relu(self.c2(y) + y)
        return self.fc(torch.flatten(self.pool(y), 1)) + 0.5 * self.head(y.mean((2, 3)))


def _onnx_run(path, x: torch.Tensor) -> torch.Tensor:
    from onnx.reference import ReferenceEvaluator

    return torch.from_numpy(ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})[0])


def test_onnx_export_of_ann_and_qcann(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(5, 3, 8, 8)
    ann = Small().eval()
    qc = api.prepare(ann, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, m in (("ann", ann), ("qc", qc)):
            path = export_onnx(m, x[:2], tmp_path / f"{name}.onnx")  # batch 2, run on 5
            onnx.checker.check_model(str(path))
            assert torch.allclose(_onnx_run(path, x), m(x), atol=1e-5)


def test_onnx_import_converts_like_the_torch_model(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    ann = Small().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(ann, x, tmp_path / "m.onnx")
    imported = from_onnx(tmp_path / "m.onnx")
    assert torch.allclose(imported(x), ann(x), atol=1e-5)
    snn = api.convert(api.prepare(imported, x), "opti", T=T)
    assert len(spiking_layers(snn.net)) == 2
    assert torch.allclose(snn.run(x), PerSiteReference(snn.net).simulate(x, T), atol=1e-5)
    # the importer is a factory save_snn can store: JSON-able arguments
    api.save_snn(tmp_path / "snn.pt", snn, "lowlat.interop:from_onnx",
                 {"path": str(tmp_path / "m.onnx")})
    assert torch.allclose(api.load_snn(tmp_path / "snn.pt").run(x), snn.run(x), atol=1e-6)
