"""Image folders and tarballs: ``root/train/<class>/*`` and ``root/test/<class>/*``.

Two modes, two classes: :class:`InMemoryImageFolderDataModule` decodes everything once (CIFAR-
sized sets), :class:`~lowlat.data.lazy.LazyImageFolderDataModule` decodes per item (ImageNet).
:func:`ImageFolderDataModule` picks one by ``in_memory``, so configs keep a single target.
"""

from __future__ import annotations

import os
from typing import Any

from .augment import CIFAR10_MEAN, CIFAR10_STD
from .cache import load_decoded
from .index import check_num_classes, folder_classes, resolve_root
from .lazy import LazyImageFolderDataModule
from .memory import InMemoryDataModule, Split


class InMemoryImageFolderDataModule(InMemoryDataModule):
    """An image folder or tar(.gz) decoded once into one uint8 tensor.

    Images are streamed (a tar is not extracted), resized/center-cropped to ``image_size`` and
    cached as a ``.pt`` file in ``cache_dir``, keyed by root path, size/mtime and
    ``image_size``. Class order is the sorted folder names (as ``torchvision``'s
    ``ImageFolder``). A tar may hold the layout under one top-level folder; ``val/`` is
    accepted when there is no ``test/``.

    Args:
        root: folder or tar file.
        num_classes: expected number of classes; checked against the folders (ValueError).
            When None, classes are discovered in ``__init__`` (for a tar that means decoding it).
        image_size: output side length.
        cache_dir: where decoded tensors are cached; None disables the cache.
    """

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        image_size: int = 32,
        cache_dir: str | None = "~/.cache/lowlat",
        **kwargs: Any,
    ) -> None:
        self.root, self.is_tar = resolve_root(root)
        self.in_memory = True
        self.cache_dir = None if cache_dir is None else os.path.expanduser(str(cache_dir))
        self._image_size = image_size
        self._expected_classes = num_classes
        self._decoded: dict[str, Any] | None = None
        self.classes: list[str] | None = None
        self.decode_seconds: float | None = None  # time of the last decode (None: cache hit)
        if num_classes is None:
            self.classes = self._decode()["classes"] if self.is_tar else folder_classes(root)
            num_classes = len(self.classes)
        super().__init__(num_classes, 3, image_size, CIFAR10_MEAN, CIFAR10_STD, **kwargs)

    def _decode(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded, self.decode_seconds = load_decoded(
                self.root, self.is_tar, self._image_size, self.cache_dir
            )
        return self._decoded

    def prepare_data(self) -> None:
        """Build the decode cache once (Lightning runs this on one process per node)."""
        self._decode()

    def _load(self) -> tuple[Split, Split]:
        mem = self._decode()
        self.classes = mem["classes"]
        check_num_classes(self._expected_classes, self.classes, self.root)
        return (mem["train_x"], mem["train_y"]), (mem["test_x"], mem["test_y"])


def ImageFolderDataModule(  # named like a class: it stands for the two classes in configs
    root: str, in_memory: bool = True, **kwargs: Any
) -> InMemoryImageFolderDataModule | LazyImageFolderDataModule:
    """The in-memory (``in_memory=True``) or lazy image-folder data module for ``root``.

    Keeps ``_target_: lowlat.data.ImageFolderDataModule`` with ``in_memory:`` selectable from
    the command line. ``cache_dir`` only applies to the in-memory mode and is ignored otherwise.
    """
    if in_memory:
        return InMemoryImageFolderDataModule(root, **kwargs)
    kwargs.pop("cache_dir", None)
    return LazyImageFolderDataModule(root, **kwargs)
