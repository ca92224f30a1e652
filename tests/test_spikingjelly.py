"""Cross-check against a peer: our MaxNorm conversion spikes exactly like spikingjelly's.

spikingjelly 2.0.0's ``RateCodingRecipe(mode="max")`` traces the ANN, fuses Conv-BN with the same
``fuse_conv_bn_eval`` as :func:`lowlat.convert.fold_bn`, records the maximum of every ReLU output
and replaces the ReLU with ``VoltageScaler(1/θ) -> IFNode(v_threshold=1, v_reset=None) ->
VoltageScaler(θ)``. The IF node integrates ``v += x``, fires at ``v - 1 >= 0`` (so ``>=``, like
ours), resets by subtraction and starts at v(0) = 0 — the same dynamics as :class:`IFNeuron` with
θ = max, in units of θ. What differs, and how the tests match it:

* Thresholds: spikingjelly measures the maxima on the BN-fused graph; ``activation_stats`` on the
  unfused ANN (conv, then BN) can differ by one ulp. We take the statistics on ``fold_bn(ann)``,
  which makes the thresholds bitwise equal (asserted). Its hook is also a momentum average over
  calibration batches, not a running maximum: both agree for one calibration batch.
* Units: spikingjelly scales the input by fl(1/θ) and fires at 1; we fire at θ. That is the same
  decision only up to float rounding: e.g. a neuron driven by exactly θ (the layer's maximum
  itself) reaches ``θ·fl(1/θ)``, which is 1 - 1 ulp for about 15% of thresholds, so spikingjelly
  fires one step later (T-1 spikes instead of T). :func:`test_rounding_difference_of_unit_scaling`
  pins this down. For an exact comparison we give spikingjelly's recipe a ``neuron_factory`` with
  ``v_threshold = θ``: the recipe then scales by θ/θ = 1 (exact) and fires at θ, the same floats
  as ours; the spike counts must then be identical, not just close.
* Time: spikingjelly runs step by step and recomputes the first conv every step; we run chunks of
  time steps (first conv once a chunk under direct encoding). Both give the same floats.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("spikingjelly")

from spikingjelly.activation_based import ann2snn, functional, neuron  # noqa: E402

from lowlat.convert import activation_stats, fold_bn  # noqa: E402
from lowlat.methods import convert_relu_ann  # noqa: E402
from lowlat.models import create_model  # noqa: E402
from lowlat.neurons import IFNeuron, spiking_layers  # noqa: E402
from lowlat.simulate import run_snn  # noqa: E402

T = 16


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and immune to OpenMP stalls on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _small_relu_cnn(seed: int) -> nn.Module:
    """conv-BN-ReLU x4 with avg pools and a linear head; BN in eval with nontrivial statistics."""
    torch.manual_seed(seed)
    ann = create_model("small_cnn", num_classes=10, in_channels=3, act_layer="relu", width=4)
    for m in ann.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.3)
    return ann.eval()


def _sj_convert(ann: nn.Module, x: Tensor, exact_units: bool) -> nn.Module:
    factory = (lambda s: neuron.IFNode(v_threshold=float(s), v_reset=None)) if exact_units else None
    recipe = ann2snn.RateCodingRecipe(dataloader=[x], mode="max", neuron_factory=factory)
    return ann2snn.Converter(recipe).convert(copy.deepcopy(ann))


@torch.no_grad()
def _sj_run(sj: nn.Module, x: Tensor, steps: int) -> tuple[list[Tensor], Tensor]:
    """Spike counts per IF layer and summed output, step by step (spikingjelly's 's' mode)."""
    nodes = [m for m in sj.modules() if isinstance(m, neuron.IFNode)]
    counts: list[Tensor] = [torch.zeros(())] * len(nodes)

    def hook(i: int):
        def fn(_m, _a, out: Tensor) -> None:
            counts[i] = counts[i] + out
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(nodes)]
    functional.reset_net(sj)
    out = sum(sj(x) for _ in range(steps))
    for h in handles:
        h.remove()
    return counts, out


def _sj_thresholds(sj: nn.Module) -> list[float]:
    return [float(m.scale) for n, m in sj.named_modules() if n.endswith("scaler1")]


@pytest.mark.parametrize("seed,chunk", [(0, 1), (1, 8)])
def test_maxnorm_spike_counts_equal_spikingjelly(seed: int, chunk: int) -> None:
    ann = _small_relu_cnn(seed)
    x = torch.rand(8, 3, 16, 16)  # the calibration batch is also the test input
    sj = _sj_convert(ann, x, exact_units=True)
    ours = convert_relu_ann(ann, activation_stats(fold_bn(ann), [x]), "maxnorm")
    layers = spiking_layers(ours)
    assert all(float(m.v0) == 0.0 for _, m in layers)
    assert [float(m.theta) for _, m in layers] == _sj_thresholds(sj)

    sj_counts, sj_out = _sj_run(sj, x, T)
    out = run_snn(ours, x, T, chunk=chunk, record=True)
    assert len(sj_counts) == len(layers) == 4
    for (name, m), c in zip(layers, sj_counts, strict=True):
        assert torch.equal(m.spike_count, c), name
        assert 0 < float(c.sum()) < c.numel() * T, name  # the comparison is not vacuous
    assert torch.allclose(out.sum(0), sj_out, atol=1e-5, rtol=0)


def test_default_recipe_agrees_up_to_unit_rounding() -> None:
    """spikingjelly's default units (scale by 1/θ, fire at 1): equal here, up to ties in general.

    Counts can only differ where v lands within float rounding of θ (see the module docstring),
    so we allow a vanishing share of differing neurons, each off by at most one spike per tie.
    """
    ann = _small_relu_cnn(0)
    x = torch.rand(8, 3, 16, 16)
    sj = _sj_convert(ann, x, exact_units=False)
    ours = convert_relu_ann(ann, activation_stats(fold_bn(ann), [x]), "maxnorm")
    sj_counts, _ = _sj_run(sj, x, T)
    run_snn(ours, x, T, record=True)
    differ = sum(int((m.spike_count != c).sum()) for (_, m), c in zip(spiking_layers(ours),
                                                                     sj_counts, strict=True))
    total = sum(c.numel() for c in sj_counts)
    assert differ <= 1e-3 * total, (differ, total)


def test_rounding_difference_of_unit_scaling() -> None:
    """A neuron driven by exactly θ: ours fires every step; θ·fl(1/θ) < 1 delays spikingjelly's."""
    theta = next(t for t in torch.linspace(0.5, 2.0, 1000) if float(t * (1.0 / t)) < 1.0)
    x = theta.reshape(1, 1)
    sj_unit = nn.Sequential(ann2snn.modules.VoltageScaler(1.0 / float(theta)),
                            neuron.IFNode(v_threshold=1.0, v_reset=None))
    sj_theta = neuron.IFNode(v_threshold=float(theta), v_reset=None)
    ours = IFNeuron(theta)
    run_snn(ours, x, T, record=True)
    with torch.no_grad():
        functional.reset_net(sj_unit)
        functional.reset_net(sj_theta)
        unit = sum(sj_unit(x) for _ in range(T))
        same = sum(sj_theta(x) for _ in range(T))
    assert float(ours.spike_count) == float(same) == T
    assert float(unit) == T - 1


def test_channelnorm_is_spikingjellys_channel_wise_recipe() -> None:
    """SpikingJelly's RateCodingRecipe(mode='99.9%', channel_wise=True, half_threshold=True)
    and lowlat's ``channelnorm`` give the same network: with SpikingJelly's per-channel
    thresholds in our neurons, the outputs agree to float rounding at every step; and our
    own thresholds (nearest-rank percentile) are close to SpikingJelly's (interpolated)."""
    from lowlat.methods import convert

    ann = _small_relu_cnn(3)
    x = torch.rand(8, 3, 16, 16)
    recipe = ann2snn.RateCodingRecipe(dataloader=[x], mode="99.9%", channel_wise=True,
                                      half_threshold=True)
    sj = ann2snn.Converter(recipe).convert(copy.deepcopy(ann))
    sj_th = [m.scale.detach().clone() for n, m in sj.named_modules() if n.endswith("scaler1")]
    stats = activation_stats(fold_bn(ann), [x], percentile=99.9)
    ours = convert("channelnorm", ann, stats=stats)
    layers = spiking_layers(ours)
    assert len(layers) == len(sj_th) == 4
    for (_, m), t in zip(layers, sj_th, strict=True):
        ours_t, sj_t = m.theta.flatten(), t.flatten()
        # nearest rank (ours) vs linear interpolation (torch.quantile): neighbouring order
        # statistics, so close for most channels, apart only where a channel has few values
        assert float(((sj_t - ours_t) / sj_t).abs().median()) < 0.02
        m.theta = t.view(m.theta.shape).clone()  # SpikingJelly's θ, our dynamics
        m.amplitude, m.v0 = m.theta.clone(), m.theta / 2
    functional.reset_net(sj)
    sj_out = torch.stack([sj(x) for _ in range(T)]).cumsum(0)
    out = run_snn(ours, x, T, chunk=4).cumsum(0)
    assert torch.allclose(out, sj_out, atol=1e-4, rtol=1e-4)
