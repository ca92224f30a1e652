"""Image folders too large for memory (ImageNet): one image decoded per item by loader workers.

Training uses ``RandomResizedCrop(image_size)``, evaluation ``Resize(image_size * 256 / 224) +
CenterCrop`` (so set ``crop_padding=0``). Works on folders and uncompressed ``.tar`` files
(random access by offset), not on ``.tar.gz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .augment import CIFAR10_MEAN, CIFAR10_STD
from .base import LowLatDataModule
from .cache import decode_image_bytes
from .index import (
    Labeled,
    check_num_classes,
    folder_classes,
    is_compressed,
    label_splits,
    resolve_root,
    scan_folder,
    scan_tar,
)
from .splits import ordered_test_indices, train_val_indices


class LazyImageDataset(Dataset):
    """Decodes one image per item from a file path or an ``(offset, size)`` in a tar."""

    def __init__(
        self,
        sources: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[Tensor], Tensor],
        tar_path: str | None = None,
    ) -> None:
        self.sources, self.labels = sources, labels
        self.transform, self.tar_path = transform, tar_path
        self._fh: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, src: Any) -> bytes:
        if self.tar_path is None:
            with open(src, "rb") as f:
                return f.read()
        if self._fh is None or self._pid != os.getpid():  # one handle per worker process
            self._fh, self._pid = open(self.tar_path, "rb"), os.getpid()
        offset, size = (int(v) for v in src)
        self._fh.seek(offset)
        return self._fh.read(size)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = decode_image_bytes(self._read(self.sources[i]))
        return self.transform(img), int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fh"], state["_pid"] = None, -1
        return state


class LazyImageFolderDataModule(LowLatDataModule):
    """``root/train/<class>/*`` and ``root/{test,val}/<class>/*``, decoded per item.

    Args:
        root: folder or uncompressed tar file.
        num_classes: expected number of classes; checked against the folders (ValueError).
            When None, classes are discovered in ``__init__``.
        image_size: output side length.
    """

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        image_size: int = 32,
        **kwargs: Any,
    ) -> None:
        self.root, self.is_tar = resolve_root(root)
        if self.is_tar and is_compressed(self.root):
            raise ValueError(
                f"in_memory=False needs random access: extract {self.root!r} or repack it as "
                "an uncompressed .tar (or use in_memory=True)"
            )
        self.in_memory = False
        self._expected_classes = num_classes
        self._index: Labeled | None = None
        self.classes: list[str] | None = None
        if num_classes is None:
            self.classes = self._discover_classes()
            num_classes = len(self.classes)
        super().__init__(num_classes, 3, image_size, CIFAR10_MEAN, CIFAR10_STD, **kwargs)

    def _discover_classes(self) -> list[str]:
        classes = self._entries().classes if self.is_tar else folder_classes(self.root)
        check_num_classes(self._expected_classes, classes, self.root)
        return classes

    def _entries(self) -> Labeled:
        """File paths, or ``(offset, size)`` of every image inside the tar, with labels."""
        if self._index is None:
            if self.is_tar:
                found = scan_tar(self.root, lambda _, m: (m.offset_data, m.size), stream=False)
            else:
                found = scan_folder(self.root)
            self._index = label_splits(found, self.root)
            check_num_classes(self._expected_classes, self._index.classes, self.root)
        return self._index

    def _build(self) -> dict[str, Dataset]:
        ent = self._entries()
        self.classes = ent.classes
        # paths -> fixed-width str arrays, so loader workers do not copy them via refcounts
        sources = {k: np.array(v) for k, v in ent.sources.items()}
        size = self.image_size
        train_tf = v2.RandomResizedCrop(size, antialias=True)
        eval_tf = v2.Compose(
            [v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
        )
        tar = self.root if self.is_tar else None
        y_tr = torch.from_numpy(ent.labels["train"])
        tr_idx, val_idx = (
            idx.numpy()
            for idx in train_val_indices(
                y_tr, self.val_fraction, self.seed, self.limit_train, self.limit_val
            )
        )
        te_idx = ordered_test_indices(torch.from_numpy(ent.labels["test"]), self.limit_test)

        def make(split: str, idx: np.ndarray, tf: Callable[[Tensor], Tensor]) -> Dataset:
            return LazyImageDataset(sources[split][idx], ent.labels[split][idx], tf, tar)

        return {
            "train": make("train", tr_idx, train_tf),
            "calib": make("train", tr_idx, eval_tf),  # same images, deterministic transform
            "val": make("train", val_idx, eval_tf),
            "test": make("test", te_idx.numpy(), eval_tf),
        }
