"""The interface every stage uses: splits, loaders, calibration subset, batched transform.

Subclasses only say how to build the four data sets (:meth:`LowLatDataModule._build`) and how
a loader collates them; splitting rules, the test-loader guard and augmentation live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from .augment import cutout, normalize_, random_crop, random_hflip
from .splits import check_val_fraction

SPLITS = ("train", "val", "test", "calib")


class LowLatDataModule(L.LightningDataModule):
    """Shared arguments, loaders and batched augmentation.

    Every loader yields ``(x, y)`` with ``x`` uint8 ``[B, C, H, W]`` and ``y`` int64 ``[B]``;
    augmentation and normalization run batched in :meth:`transform_batch` (called from
    ``on_after_batch_transfer``), i.e. on the GPU when training on one.

    ``test_loader_calls`` counts calls to :meth:`test_dataloader`. It is the guard that lets
    tests prove no stage except final evaluation reads the test split.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        val_fraction: share of the training set held out for validation (stratified, fixed by
            ``seed``), in (0, 1): choices are made on it, never on the test split.
        seed: fixes the split and the order used by ``limit_*`` and ``calibration_loader``.
        crop_padding: zero padding of the random crop; 0 disables it.
        flip: random horizontal flip.
        autoaugment: torchvision AutoAugment with the CIFAR-10 policy.
        cutout: side of the Cutout square in pixels; 0 disables it.
        num_workers: loader worker processes (0 is right for in-memory tensors).
        limit_train, limit_test: keep only the first N samples (stratified order) after the
            split, for tiny tests and CPU-scale runs.
        limit_val: the same for the validation split (extension; default unlimited).
        mean, std: per-channel normalization; default is the data set's own.
    """

    #: ``collate_fn`` of every loader (None: PyTorch's default).
    collate: Callable[[Any], Any] | None = None

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        default_mean: Sequence[float],
        default_std: Sequence[float],
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        crop_padding: int = 4,
        flip: bool = True,
        autoaugment: bool = False,
        cutout: int = 0,
        num_workers: int = 0,
        limit_train: int | None = None,
        limit_test: int | None = None,
        limit_val: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_val_fraction(val_fraction)
        if crop_padding < 0 or cutout < 0:
            raise ValueError(f"crop_padding ({crop_padding}) and cutout ({cutout}) must be >= 0")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in (default_mean if mean is None else mean))
        self.std = tuple(float(s) for s in (default_std if std is None else std))
        if len(self.mean) != in_channels or len(self.std) != in_channels:
            raise ValueError(
                f"mean {self.mean} and std {self.std} need {in_channels} values (one per channel)"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.crop_padding = crop_padding
        self.flip = flip
        self.autoaugment = autoaugment
        self.cutout = cutout
        self.num_workers = num_workers
        self.limit_train = limit_train
        self.limit_test = limit_test
        self.limit_val = limit_val
        self.test_loader_calls = 0
        self._auto_augment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if autoaugment else None
        self._sets: dict[str, Dataset] | None = None

    # ---- data sets ----------------------------------------------------------------------

    def _build(self) -> dict[str, Dataset]:
        """Return the ``SPLITS`` data sets; ``calib`` is the training set, un-augmented."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load, split and limit once; later calls are no-ops (Lightning calls it per stage)."""
        if self._sets is None:
            sets = self._build()
            assert set(sets) == set(SPLITS), sorted(sets)
            self._sets = sets

    def _set(self, split: str) -> Dataset:
        if self._sets is None:
            self.setup()
        return self._sets[split]

    # ---- loaders ------------------------------------------------------------------------

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=type(self).collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """Shuffled training batches (``data.batch_size`` unless ``batch_size`` is given)."""
        return self._loader(self._set("train"), batch_size or self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """The held-out part of the training set (never the test split)."""
        return self._loader(self._set("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test split, for final evaluation only; counted in ``test_loader_calls``."""
        self.test_loader_calls += 1
        return self._loader(self._set("test"), self.eval_batch_size, shuffle=False)

    @property
    def train_size(self) -> int:
        """Number of training samples after split and ``limit_train`` (runs ``setup``)."""
        return len(self._set("train"))

    def calibration_loader(self, n: int, batch_size: int) -> DataLoader:
        """The first ``n`` training images in fixed (stratified) order, un-augmented uint8.

        Callers normalize with ``transform_batch(x, train=False)`` themselves.
        """
        size = self.train_size
        if not 1 <= n <= size:
            raise ValueError(f"calibration n={n} must be between 1 and the training size {size}")
        return self._loader(Subset(self._set("calib"), range(n)), batch_size, shuffle=False)

    # ---- augmentation -------------------------------------------------------------------

    def transform_batch(
        self, x: Tensor, train: bool, generator: torch.Generator | None = None
    ) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> normalized float32, augmented when ``train``.

        Runs on ``x``'s device. Order follows the usual CIFAR recipe: crop, flip, AutoAugment
        (on uint8), scale to [0, 1], Cutout (zero pixels, i.e. before normalization), normalize.
        ``generator`` (on ``x``'s device) makes crop/flip/Cutout reproducible; AutoAugment uses
        the global RNG.
        """
        if x.dtype != torch.uint8:
            raise TypeError(f"transform_batch expects uint8 images, got {x.dtype}")
        if train:
            if self.crop_padding > 0:
                x = random_crop(x, self.crop_padding, generator)
            if self.flip:
                x = random_hflip(x, generator)
            if self._auto_augment is not None:
                # AutoAugment draws one policy per call, so apply it per sample (a loop: about
                # 0.2 ms per 32x32 image on CPU) to keep per-sample diversity.
                x = torch.stack([self._auto_augment(img) for img in x])
        out = x.to(torch.float32).div_(255.0)
        if train and self.cutout > 0:
            out = cutout(out, self.cutout, generator)
        return normalize_(out, self.mean, self.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment/normalize on the device; only the training loop augments."""
        x, y = batch
        train = self.trainer is not None and bool(self.trainer.training)
        return self.transform_batch(x, train=train), y
