"""Lightning data modules that serve uint8 images and augment on the device.

Every loader yields ``(x, y)`` with ``x`` uint8 ``[B, C, H, W]`` and ``y`` int64 ``[B]``; the
stages use only the :class:`LowLatDataModule` interface (``setup``, the four loaders,
``calibration_loader``, ``transform_batch``, ``num_classes``, ``in_channels``, ``train_size``,
``batch_size``).

Modules by job: ``augment`` (batched device-side augmentation, normalization statistics),
``splits`` (seeded stratified splits), ``base`` (the shared interface), ``memory`` (in-memory
tensors), ``small`` (digits, CIFAR pickles), ``index`` (finding images in a folder or tar),
``cache`` (decoding once, with a cache), ``lazy`` (per-item decoding), ``folder`` (the image
folder modes and the ``ImageFolderDataModule`` factory that the configs name).
"""

from .augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    cutout,
    random_crop,
    random_hflip,
)
from .base import LowLatDataModule
from .cache import decode_image_bytes, fit_image
from .folder import ImageFolderDataModule, InMemoryImageFolderDataModule
from .lazy import LazyImageDataset, LazyImageFolderDataModule
from .memory import InMemoryDataModule, TensorBatchDataset
from .small import CIFARDataModule, DigitsDataModule
from .splits import split_indices, stratified_order

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFARDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "InMemoryImageFolderDataModule",
    "LazyImageDataset",
    "LazyImageFolderDataModule",
    "LowLatDataModule",
    "TensorBatchDataset",
    "cutout",
    "decode_image_bytes",
    "fit_image",
    "random_crop",
    "random_hflip",
    "split_indices",
    "stratified_order",
]
