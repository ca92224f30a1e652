"""Data modules whose images fit in memory as one uint8 tensor.

Small image sets (digits, CIFAR, a CIFAR-sized image folder) are decoded once; loaders only
index the tensor a whole batch at a time, so they never limit training speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import LowLatDataModule
from .splits import ordered_test_indices, train_val_indices

Split = tuple[Tensor, Tensor]  # (x uint8 [N, C, H, W], y int64 [N])


class TensorBatchDataset(Dataset):
    """uint8 images and labels in memory, fetched a whole batch per call.

    ``DataLoader`` calls ``__getitems__`` with the batch's index list, so a batch is one
    tensor index instead of ``batch_size`` item calls plus a ``torch.stack``.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def batch_collate(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``__getitems__`` already returns a collated batch (module-level so workers can pickle)."""
    return batch


class InMemoryDataModule(LowLatDataModule):
    """A data module over in-memory tensors: subclasses implement :meth:`_load` only."""

    collate = staticmethod(batch_collate)

    def _load(self) -> tuple[Split, Split]:
        """Return ``(train, test)`` as in-memory uint8/int64 tensors."""
        raise NotImplementedError

    def _build(self) -> dict[str, Dataset]:
        (x_tr, y_tr), (x_te, y_te) = self._load()
        tr_idx, val_idx = train_val_indices(
            y_tr, self.val_fraction, self.seed, self.limit_train, self.limit_val
        )
        te_idx = ordered_test_indices(y_te, self.limit_test)
        train = TensorBatchDataset(x_tr[tr_idx], y_tr[tr_idx])
        return {
            "train": train,
            "calib": train,  # augmentation happens in transform_batch, so the same tensor
            "val": TensorBatchDataset(x_tr[val_idx], y_tr[val_idx]),
            "test": TensorBatchDataset(x_te[te_idx], y_te[te_idx]),
        }
