"""The automatic chunk length of evaluate_snn: chosen from the tensor size, same results."""

import pytest
import torch
from torch import nn

from lowlat.neurons import IFNeuron
from lowlat.simulate import auto_chunk, evaluate_snn, neuron_step_bytes

MIB = 2**20


def test_auto_chunk_keeps_the_largest_tensor_within_the_budget():
    assert auto_chunk(4 * MIB, 16, 16.0) == 4
    assert auto_chunk(5 * MIB, 16, 16.0) == 3  # 15 MiB fits, 20 MiB does not
    assert auto_chunk(32 * MIB, 16, 16.0) == 1  # one step already exceeds it: step by step
    assert auto_chunk(1024, 8, 16.0) == 8  # never longer than max_chunk
    assert auto_chunk(64 * MIB, 8, None) == 8  # no budget: max_chunk as before
    with pytest.raises(ValueError):
        auto_chunk(1024, 0, 16.0)


def _net() -> nn.Module:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), IFNeuron(0.5), nn.AvgPool2d(2),
                        nn.Conv2d(4, 8, 3, padding=1), IFNeuron(0.3), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 10))
    for i, m in enumerate(m for m in net.modules() if isinstance(m, IFNeuron)):
        m.v0 = m.theta * 0.3 * (i + 1)
    return net.eval()


def test_neuron_step_bytes_is_the_largest_neuron_input_times_the_batch():
    net = _net()
    x = torch.randn(5, 3, 8, 8)
    # first neuron: 4·8·8 = 256 floats a sample, the second 8·4·4 = 128
    assert neuron_step_bytes(net, x) == 5 * 256 * 4
    assert all(m.v is None for m in net.modules() if isinstance(m, IFNeuron))  # left reset


def test_budgeted_chunks_give_the_same_results_as_full_chunks():
    net = _net()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    step = neuron_step_bytes(net, x)
    runs = {}
    for tag, budget in (("full", None), ("three", 3.5 * step / MIB), ("step", 0.5 * step / MIB)):
        runs[tag] = evaluate_snn(net, [(x, y), (x[:4], y[:4])], [1, 4, 8], max_chunk=8,
                                 chunk_mb=budget, progress=False)
    assert (runs["full"].chunk, runs["three"].chunk, runs["step"].chunk) == (8, 3, 1)
    ref = runs["full"]
    assert sum(sum(s.values()) for s in ref.spikes.values()) > 0  # something to compare
    for tag in ("three", "step"):
        st = runs[tag]
        assert st.correct == ref.correct and st.n == ref.n == 10
        assert st.spikes == ref.spikes and st.rmpe == ref.rmpe
        assert st.ops == ref.ops and st.layer_ops == ref.layer_ops
