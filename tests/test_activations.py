import pytest
import torch

from lowlat.activations import QCActivation, RateNorm, quantize_clip


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_quantize_clip_exact_values(shift):
    lam, L = torch.tensor(2.0), 4  # step λ/L = 0.5
    z = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.49, 0.5, 0.74, 0.76, 1.0, 1.99, 2.0, 5.0])
    out = quantize_clip(z, lam, L, shift)
    # floor(z·L/λ + s)/L, clipped to [0, 1], times λ
    expected = {
        0.0: [0, 0, 0, 0, 0, 0.5, 0.5, 0.5, 1.0, 1.5, 2.0, 2.0],
        0.5: [0, 0, 0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 2.0],
    }[shift]
    assert torch.equal(out, torch.tensor(expected))


def test_qc_straight_through_gradients():
    act = QCActivation(levels=4, shift=0.0, init_lambda=2.0)
    z = torch.tensor([-1.0, 0.3, 1.1, 3.0], requires_grad=True)
    act(z).sum().backward()
    # inside (0, λ) d/dz = 1 (STE), the lowest bin included; outside d/dz = 0
    assert torch.equal(z.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    # d/dλ: inside floor(z·L/λ + s)/L − z/λ (the QCFS/LSQ gradient), 1 above λ, 0 below 0
    expected = (0 / 4 - 0.3 / 2) + (2 / 4 - 1.1 / 2) + 1.0
    assert act.lam.grad.item() == pytest.approx(expected, abs=1e-6)


def test_qc_guards():
    with pytest.raises(ValueError, match="levels"):
        QCActivation(levels=0)
    with pytest.raises(ValueError, match="init_lambda"):
        QCActivation(init_lambda=-1.0)
    act = QCActivation(init_lambda=1.0)
    with torch.no_grad():
        act.lam.fill_(-3.0)  # an optimiser step past zero must not flip the threshold
    assert act.threshold.item() > 0
    assert (act(torch.randn(100)) >= 0).all()


def test_ratenorm_bounds_and_running_max():
    rn = RateNorm(momentum=1.0)
    x = torch.linspace(-1, 4, 50)
    rn.train()
    y = rn(x)
    assert rn.running_max.item() == pytest.approx(4.0)
    theta = rn.threshold.item()
    assert y.max().item() == pytest.approx(theta) and y.min().item() == 0.0
    y.sum().backward()
    assert rn.p.grad is not None
