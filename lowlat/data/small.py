"""Small data sets held in memory: scikit-learn's digits and torchvision's CIFAR pickles."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .augment import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .memory import InMemoryDataModule, Split


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the offline quickstart.

    The test set is a fixed stratified 20 % (``random_state=0``, independent of ``seed``) so
    test numbers are comparable across seeds; train/val come from the rest.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(10, 1, 8, (0.5,), (0.5,), **kwargs)

    def _load(self) -> tuple[Split, Split]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        # pixel values are 0..16; scale to the full uint8 range
        x = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8))
        x = x.unsqueeze(1).contiguous()  # [N, 8, 8] -> [N, 1, 8, 8]
        y = torch.from_numpy(digits.target.astype(np.int64))
        tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
        tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
        return (x[tr], y[tr]), (x[te], y[te])


class CIFARDataModule(InMemoryDataModule):
    """CIFAR-10/100 from torchvision's pickle files, held in memory as uint8.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: folder holding ``cifar-10-batches-py`` / ``cifar-100-python``.
        download: let torchvision download the files (needs internet).
    """

    _DATASETS = {
        "cifar10": (10, CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (100, CIFAR100_MEAN, CIFAR100_STD),
    }

    def __init__(
        self,
        name: str = "cifar10",
        root: str = "data/cifar10",
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        if name not in self._DATASETS:
            raise ValueError(f"unknown CIFAR name {name!r}; valid names: {sorted(self._DATASETS)}")
        num_classes, mean, std = self._DATASETS[name]
        super().__init__(num_classes, 3, 32, mean, std, **kwargs)
        self.name = name
        self.root = os.path.expanduser(str(root))
        self.download = download

    def _dataset(self, train: bool) -> Any:
        from torchvision import datasets

        cls = datasets.CIFAR10 if self.name == "cifar10" else datasets.CIFAR100
        try:
            return cls(self.root, train=train, download=self.download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"{self.name} pickle files not found (or corrupted) under root={self.root!r}. "
                "Set data.download=true to fetch them (needs internet), or use the "
                "cifar10_folder data config (data=cifar10_folder) to read a JPEG image folder/"
                "tarball instead."
            ) from e

    def prepare_data(self) -> None:
        """Download once (rank 0) when asked; ``setup`` then reads the files."""
        if self.download:
            self._dataset(train=True)
            self._dataset(train=False)

    def _load(self) -> tuple[Split, Split]:
        out = []
        for train in (True, False):
            ds = self._dataset(train)
            x = torch.from_numpy(np.ascontiguousarray(ds.data))  # [N, 32, 32, 3] uint8
            x = x.permute(0, 3, 1, 2).contiguous()  # -> [N, 3, 32, 32]
            out.append((x, torch.as_tensor(ds.targets, dtype=torch.int64)))
        return out[0], out[1]
