"""Channels-last memory layout for 2-d CNNs, in the fine-tune and in SNN inference.

Why: a CPU's oneDNN convolutions run faster on NHWC tensors, and the compiled neuron kernels
(:mod:`lowlat.fused`) read a channels-last activation as it lies, so a whole SNN step can stay in
that layout. The layout changes how a step is computed, never what it computes; the network is
handed back in the layout it came in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

CL = torch.channels_last
_VIEW = "view size is not compatible"


def is_channels_last(net: nn.Module) -> bool:
    """True when a 4-d weight of ``net`` is stored channels-last (and not also plainly
    contiguous, as a 1×1 kernel is in both layouts)."""
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=CL)
               for p in net.parameters())


def relayout(nets: tuple[nn.Module | None, ...], channels_last: bool, key: str) -> None:
    """Every 4-d weight and buffer of ``nets`` channels-last (or back to the default layout),
    the same Parameter objects, so an optimizer holding them stays valid.

    Channels-last is for 2-d CNNs: a 5-d tensor (a 3-d conv) is refused by name, naming the
    config ``key`` to turn off, before anything is changed."""
    nets = tuple(n for n in nets if n is not None)
    if channels_last:
        for name, t in (x for n in nets for x in [*n.named_parameters(), *n.named_buffers()]):
            if t.dim() == 5:
                raise ValueError(f"{key}: {name!r} is 5-d (a 3-d convolution); channels-last "
                                 f"is for 2-d CNNs: set {key}=false")
    for net in nets:
        net.to(memory_format=CL if channels_last else torch.contiguous_format)


@contextlib.contextmanager
def layout(net: nn.Module, channels_last: bool | None, key: str) -> Iterator[None]:
    """Run ``net`` channels-last (True), in the default layout (False) or as it is (None); its
    own layout comes back afterwards. A ``.view()`` that the layout breaks is re-raised with the
    fix."""
    before = is_channels_last(net)
    if channels_last is not None and channels_last != before:
        relayout((net,), channels_last, key)
    try:
        yield
    except RuntimeError as e:
        if channels_last and is_view_error(e):
            raise view_error(e, key) from e
        raise
    finally:
        if channels_last is not None and channels_last != before:
            relayout((net,), before, key)


def view_error(e: RuntimeError, key: str) -> RuntimeError:
    """The error a ``.view()`` on a channels-last activation raises, with what to change."""
    return RuntimeError(f"{key}=true: {e} The model reshapes an activation with .view(); use "
                        f".reshape() or .flatten() there, or set {key}=false")


def is_view_error(e: RuntimeError) -> bool:
    return _VIEW in str(e)


def as_layout(x: Tensor, channels_last: bool | None) -> Tensor:
    """A 4-d input batch in the layout of the network it feeds (unchanged for None or other
    ranks)."""
    if channels_last is None or x.dim() != 4:
        return x
    return x.contiguous(memory_format=CL if channels_last else torch.contiguous_format)
