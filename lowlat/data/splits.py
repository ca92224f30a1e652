"""Seeded, stratified train/val/test index selection shared by every data module.

Every order here is class-interleaved, so any prefix (a ``limit_*``, a calibration subset, the
first test batches) holds the classes in proportion.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_val_fraction(val_fraction: float) -> float:
    """Refuse a validation share that would leave no validation split.

    Without one, model selection (best epoch, sweeps) would have to look at the test split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"data.val_fraction={val_fraction} is invalid: it must be in (0, 1), the share of "
            "the training set held out for validation (e.g. 0.1); the test split is never used "
            "for validation"
        )
    return float(val_fraction)


def stratified_order(y: Tensor, seed: int) -> Tensor:
    """A seeded permutation in which every prefix holds the classes in proportion.

    Each sample gets the key ``(rank within its class + u) / class size`` with ``u ~ U(0, 1)``
    and the rank taken from a random shuffle of the class; sorting by the key interleaves the
    classes. For balanced classes any prefix of ``num_classes`` samples holds every class once,
    so a validation split, ``limit_train`` or a calibration subset always covers all classes.
    """
    g = torch.Generator().manual_seed(seed)
    y = y.cpu()
    key = torch.empty(len(y), dtype=torch.float64)
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        perm = idx[torch.randperm(len(idx), generator=g)]
        u = torch.rand(len(idx), generator=g, dtype=torch.float64)
        key[perm] = (torch.arange(len(idx), dtype=torch.float64) + u) / len(idx)
    return torch.argsort(key, stable=True)


def split_indices(y: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified (train, val) index split; both keep the interleaved ``stratified_order``."""
    check_val_fraction(val_fraction)
    order = stratified_order(y, seed)
    n_val = int(round(val_fraction * len(y)))
    return order[n_val:], order[:n_val]


def limit(n: int | None, size: int) -> int:
    """``size`` capped at ``n`` (None: no cap)."""
    return size if n is None else min(n, size)


def train_val_indices(
    y: Tensor,
    val_fraction: float,
    seed: int,
    limit_train: int | None = None,
    limit_val: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Seeded stratified (train, val) indices of ``y`` after ``limit_train``/``limit_val``.

    The training indices are re-interleaved by class so that every prefix of the training set
    (``limit_train``, a calibration subset) is itself stratified.
    """
    tr_idx, val_idx = split_indices(y, val_fraction, seed)
    tr_idx = tr_idx[stratified_order(y[tr_idx], seed + 1)]
    n_tr, n_val = limit(limit_train, len(tr_idx)), limit(limit_val, len(val_idx))
    if n_val == 0:
        raise ValueError(
            f"data.val_fraction={val_fraction} (data.limit_val={limit_val}) leaves no validation "
            f"image out of {len(y)} training images: raise data.val_fraction or data.limit_val"
        )
    return tr_idx[:n_tr], val_idx[:n_val]


def ordered_test_indices(y: Tensor, limit_test: int | None = None) -> Tensor:
    """The first ``limit_test`` test indices in a seed-free class-interleaved order.

    Seed-free so test numbers are comparable across seeds; interleaved so any prefix of the
    test batches (``limit_test``, ``eval.limit_batches``) is a stratified subset.
    """
    return stratified_order(y, 0)[: limit(limit_test, len(y))]
