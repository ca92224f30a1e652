"""The rate-approximate backward (lowlat.ratebackward, ``phase2.finetune.backward=rate``): the
forward is untouched, the gradients are exact where the maths says they are (an output gradient
or an input constant over the T steps), the layers are restored after, and a fine-tune learns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowlat.ratebackward import rate_backward

T, B = 3, 4


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))


def _grads(net: nn.Module, x: torch.Tensor, loss_fn, rate: bool, exact_input: bool = False):
    x = x.clone().requires_grad_(True)
    net.zero_grad(set_to_none=True)
    if rate:
        with rate_backward(net, T, B, exact_input) as names:
            assert names == (["0", "3"] if exact_input else ["0", "1", "3"])
            y = net(x)
            loss_fn(y).backward()
    else:
        y = net(x)
        loss_fn(y).backward()
    return y.detach(), x.grad, [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("exact_input", [False, True])
def test_exact_when_the_output_gradient_is_the_same_at_every_step(exact_input):
    """A loss on the time-averaged output (what the fine-tune's loss is) gives every layer a
    gradient constant over t: then all gradients, the input's included, are the exact ones."""
    net, x = _net(), torch.randn(T * B, 3, 8, 8)  # an input that varies over t
    r = torch.randn(B, 5)

    def loss(y):
        return (y.view(T, B, 5).mean(0) * r).sum()  # [T·B, 5] -> [T, B, 5]

    y0, gx0, gp0 = _grads(net, x, loss, rate=False)
    y1, gx1, gp1 = _grads(net, x, loss, rate=True, exact_input=exact_input)
    assert torch.equal(y0, y1)  # the forward is untouched
    torch.testing.assert_close(gx1, gx0)
    for a, b in zip(gp1, gp0, strict=True):
        torch.testing.assert_close(a, b)


def test_exact_weight_gradients_when_the_input_is_the_same_at_every_step():
    net = _net()
    x = torch.randn(B, 3, 8, 8).repeat(T, 1, 1, 1)  # [B, ...] -> [T·B, ...], constant over t
    r = torch.randn(T * B, 5)

    def loss(y):
        return (y * r).sum()  # a different gradient at every step

    _, gx0, gp0 = _grads(net, x, loss, rate=False)
    _, gx1, gp1 = _grads(net, x, loss, rate=True)
    torch.testing.assert_close(gp1[0], gp0[0])  # the conv's weight and bias: exact
    torch.testing.assert_close(gp1[1], gp0[1])
    g0, g1 = gx0.view(T, B, 3, 8, 8), gx1.view(T, B, 3, 8, 8)
    torch.testing.assert_close(g1.sum(0), g0.sum(0))  # the input's: exact summed over t ...
    torch.testing.assert_close(g1[0], g1[1])  # ... and the same at every step
    assert not torch.allclose(g0[0], g0[1])  # (where the exact one differs)


def test_rate_weights_keeps_every_input_gradient_exact():
    """``exact_input`` (backward: rate_weights): a gradient that differs at every step reaches
    the input exactly; the weight gradients are the time-average ones."""
    net, x = _net(), torch.randn(T * B, 3, 8, 8)
    r = torch.randn(T * B, 5)

    def loss(y):
        return (y * r).sum()

    _, gx0, gp0 = _grads(net, x, loss, rate=False)
    _, gx1, gp1 = _grads(net, x, loss, rate=True, exact_input=True)
    _, gx2, gp2 = _grads(net, x, loss, rate=True)
    torch.testing.assert_close(gx1, gx0)  # exact, step by step
    torch.testing.assert_close(gp1[0], gp2[0])  # the conv's weights: from the averages ...
    assert not torch.allclose(gp1[0], gp0[0])  # ... which differ from the exact ones here
    torch.testing.assert_close(gp1[1], gp0[1])  # biases are sums: exact either way


def test_layers_are_restored_and_untouched_without_a_gradient():
    net, x = _net(), torch.randn(T * B, 3, 8, 8)
    ref = net(x)
    with rate_backward(net, T, B):
        with torch.no_grad():
            assert torch.equal(net(x), ref)
        y = net(torch.randn(B, 3, 8, 8))  # a batch that is not time-folded: the plain layers
        assert "Rate" not in type(y.grad_fn).__name__
    assert all("forward" not in vars(m) for m in net.modules())
    with pytest.raises(RuntimeError):
        with rate_backward(net, T, B):
            raise RuntimeError("an error inside the block")
    assert all("forward" not in vars(m) and "_rate_forward" not in vars(m)
               for m in net.modules())
