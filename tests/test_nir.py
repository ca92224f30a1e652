"""NIR export of a calibrated SNN: the graph reads back with ``nir`` and, run with the semantics
its metadata states, reproduces lowlat's outputs; run as NIR's literal IF it does not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowlat import api

nir = pytest.importorskip("nir")
from lowlat.interop import export_nir  # noqa: E402

T = 4


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.pool = nn.Conv2d(4, 4, 3, padding=1), nn.AvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(4 * 4 * 4, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = F.relu(self.c2(y) + y)
        return self.fc2(F.relu(self.fc1(torch.flatten(self.pool(y), 1))))


def simulate_nir(g, x: torch.Tensor, steps: int, lowlat_semantics: bool) -> torch.Tensor:
    """A plain NIR interpreter (dt = 1): each node sums its incoming edges. IF nodes follow
    either the exported metadata (subtract θ, fire on >=, start at v0) or NIR's own IF
    (reset to v_reset, fire on >, start at 0)."""
    incoming: dict[str, list[str]] = {k: [] for k in g.nodes}
    for a, b in g.edges:
        incoming[b].append(a)
    order, done = [], set()
    while len(order) < len(g.nodes):
        for k in g.nodes:
            if k not in done and all(a in done for a in incoming[k]):
                order.append(k)
                done.add(k)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    v: dict[str, torch.Tensor] = {}
    outs = []
    for _ in range(steps):
        val: dict[str, torch.Tensor] = {}
        for k in order:
            n = g.nodes[k]
            if isinstance(n, nir.Input):
                val[k] = x
                continue
            i = sum(val[a] for a in incoming[k])
            if isinstance(n, nir.Output):
                outs.append(i)
            elif isinstance(n, nir.Conv2d):
                val[k] = F.conv2d(i, t(n.weight), t(n.bias), tuple(n.stride), tuple(n.padding),
                                  tuple(n.dilation), n.groups)
            elif isinstance(n, nir.Affine):
                val[k] = F.linear(i, t(n.weight), t(n.bias))
            elif isinstance(n, nir.AvgPool2d):
                val[k] = F.avg_pool2d(i, tuple(n.kernel_size), tuple(n.stride), tuple(n.padding))
            elif isinstance(n, nir.Flatten):
                val[k] = i.flatten(n.start_dim + 1)
            elif isinstance(n, nir.Scale):
                val[k] = i * t(n.scale)
            elif isinstance(n, nir.IF):
                thr = t(n.v_threshold)
                start = t(n.metadata["v0"]) if lowlat_semantics else torch.zeros_like(thr)
                u = v.get(k, start) + t(n.r) * i
                if lowlat_semantics:
                    s = (u >= thr).float()
                    u = u - s * thr
                else:
                    s = (u > thr).float()
                    u = torch.where(s.bool(), t(n.v_reset), u)
                v[k], val[k] = u, s
            else:
                raise AssertionError(f"unexpected NIR node {type(n).__name__}")
    return torch.stack(outs)


@pytest.mark.parametrize("method", ["lmpc", "unbiased"])
def test_nir_export_reads_back_and_reproduces_lowlat(method, tmp_path):
    torch.manual_seed(0)
    xs = torch.rand(8, 3, 8, 8)
    qc = api.prepare(Residual().eval(), xs)
    snn = api.convert(qc, method, T=T)
    if method == "lmpc":
        api.calibrate(snn, qc, xs)  # per-channel v(0)
    g = export_nir(snn, xs)
    nir.write(tmp_path / "snn.nir", g)
    back = nir.read(tmp_path / "snn.nir")
    kinds = sorted(type(n).__name__ for n in back.nodes.values())
    assert kinds.count("IF") == 3 and kinds.count("Conv2d") == 2 and kinds.count("Affine") == 2
    assert back.metadata["T"] == T and "subtract" in back.metadata["semantics"]
    ours = snn.run(xs)
    assert torch.allclose(simulate_nir(back, xs, T, lowlat_semantics=True), ours, atol=1e-5)
    literal = simulate_nir(back, xs, T, lowlat_semantics=False)
    assert not torch.allclose(literal, ours, atol=1e-3)  # why the metadata is needed


def test_nir_export_refuses_unmapped_node_by_name():
    class MeanHead(Residual):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 8)

        def forward(self, x):
            return self.fc2(F.relu(self.head(F.relu(self.c1(x)).mean((2, 3)))))

    x = torch.rand(2, 3, 8, 8)
    snn = api.convert(api.prepare(MeanHead().eval(), x), "opti", T=T)
    with pytest.raises(NotImplementedError, match="'mean'"):
        export_nir(snn, x)
