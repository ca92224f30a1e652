"""Output-head calibration (lowlat.head): the identity it relies on, that it fits, and refusals."""

import pytest
import torch
from torch import nn

from lowlat.activations import QCActivation
from lowlat.convert import to_snn
from lowlat.head import calibrate_head, find_head, head_inputs
from lowlat.simulate import run_snn


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 32), QCActivation(levels=4, shift=0.5, init_lambda=1.0),
        nn.Linear(32, 16), QCActivation(levels=4, shift=0.5, init_lambda=1.0),
        nn.Linear(16, 5),
    ).eval()


def test_mean_output_is_head_of_mean_input():
    ann, xs, T = _net(), torch.rand(64, 6) * 2, 3
    snn = to_snn(ann)
    name, head = find_head(snn, xs)
    assert name == "4" and head is snn.get_submodule("4")
    r, y = head_inputs(snn, head, xs, T, max_chunk=2)  # chunks of 2 + 1 steps
    torch.testing.assert_close(y, run_snn(snn, xs, T).mean(0))
    torch.testing.assert_close(head(r), y, rtol=1e-5, atol=1e-5)
    counts = torch.unique(r / snn.get_submodule("3").amplitude * T).round()
    assert set(counts.tolist()) <= set(range(T + 1))  # the input is a spike count / T


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_head_fit_moves_the_snn_toward_the_teacher(loss):
    ann, xs, T = _net(1), torch.rand(256, 6) * 2, 2
    snn = to_snn(ann)
    before = run_snn(snn, xs, T).mean(0)
    w = snn.get_submodule("4").weight
    w0 = w.clone()
    rep = calibrate_head(snn, ann, xs, T, loss=loss, iterations=200, lr=1e-2)
    after = run_snn(snn, xs, T).mean(0)
    assert rep["layer"] == "head:4" and rep["head_loss_after"] < 0.7 * rep["head_loss_before"]
    assert not torch.equal(w0, w)  # the head moved
    z = ann(xs)
    agree = lambda y: float((y.argmax(1) == z.argmax(1)).float().mean())  # noqa: E731
    assert agree(after) >= agree(before)
    if loss == "mse":
        assert float(((after - z) ** 2).mean()) < float(((before - z) ** 2).mean())


def test_refuses_what_it_cannot_fit():
    ann = _net()
    snn = to_snn(ann)
    bad = nn.Sequential(snn, nn.Softmax(-1))  # not linear after the head
    with pytest.raises(ValueError, match="not linear in the input of '0.4'"):
        calibrate_head(bad, nn.Sequential(ann, nn.Softmax(-1)), torch.rand(16, 6) * 2, 2)
    two = nn.Sequential(snn, nn.Linear(5, 5))  # two layers after the last IF layer
    with pytest.raises(ValueError, match=r"exactly one conv/linear layer.*\['0.4', '1'\]"):
        find_head(two, torch.rand(4, 6))
    with pytest.raises(ValueError, match="head loss must be one of mse, kl"):
        calibrate_head(snn, ann, torch.rand(4, 6), 2, loss="ce")


def test_calibrate_fits_the_head_last_and_keeps_old_fingerprints():
    from dataclasses import asdict

    from lowlat.calibrate import CalibConfig, calibrate

    ann, xs = _net(2), torch.rand(128, 6) * 2
    snn = to_snn(ann)
    reps = calibrate(snn, ann, xs, CalibConfig(T=2, lwc=False, formula="signed", head="kl",
                                               head_lr=1e-2), progress=False)
    assert [r["layer"] for r in reps] == ["1", "3", "head:4"]
    assert reps[-1]["head_loss_after"] < reps[-1]["head_loss_before"]
    # a resumed run whose partial file already holds the head does not fit it twice
    again = calibrate(snn, ann, xs, CalibConfig(T=2, lwc=False, head="kl"), progress=False,
                      done=["1", "3", "head:4"])
    assert again == []
    # artifacts calibrated before the option existed keep their fingerprint
    old = asdict(CalibConfig(T=2))
    for k in ("head", "head_iterations", "head_lr", "surrogate"):  # options added since
        old.pop(k)
    assert CalibConfig(T=2).fingerprint() == old
    assert CalibConfig(T=2, head="mse").fingerprint()["head"] == "mse"
    with pytest.raises(ValueError, match="cannot be combined with a subset of layers"):
        calibrate(snn, ann, xs, CalibConfig(T=2, head="kl"), layers=["1"], progress=False)
    with pytest.raises(ValueError, match="head must be one of none, mse, kl"):
        calibrate(snn, ann, xs, CalibConfig(T=2, head="soft"), progress=False)

