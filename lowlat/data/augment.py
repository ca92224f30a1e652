"""Batched augmentation that runs on the images' device (one kernel per op, no per-image loop).

Every function takes uint8 or float ``[B, C, H, W]`` and an optional ``generator`` on the same
device, so a seeded generator makes the result reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` and crop back to ``H x W`` at a random offset per sample.

    Vectorized with one advanced-indexing gather, so it costs a single kernel on the GPU.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # [B, C, H+2p, W+2p]
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    rows = oy[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = ox[:, None] + torch.arange(w, device=dev)  # [B, W]
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # [B, C, H, W]


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero a ``size x size`` square per sample (DeVries & Taylor 2017).

    The centre is uniform over the image, so squares may be clipped at the border as in the
    original Cutout.
    """
    b, _, h, w = x.shape
    dev = x.device
    y0 = torch.randint(0, h, (b,), device=dev, generator=generator) - size // 2
    x0 = torch.randint(0, w, (b,), device=dev, generator=generator) - size // 2
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    in_y = (ar_h >= y0[:, None]) & (ar_h < y0[:, None] + size)  # [B, H]
    in_x = (ar_w >= x0[:, None]) & (ar_w < x0[:, None] + size)  # [B, W]
    mask = in_y[:, :, None] & in_x[:, None, :]  # [B, H, W]
    return x.masked_fill(mask[:, None], 0)


def normalize_(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """In place ``(x - mean) / std`` per channel of float ``[B, C, H, W]``."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
