"""Lightning data modules that serve uint8 images and augment on the device.

Small image sets (digits, CIFAR, a CIFAR-sized image folder) are decoded once and held in memory
as a single uint8 tensor; loaders only index it, so they never limit training speed.
Augmentation and normalization run batched in :meth:`transform_batch` (called from
``on_after_batch_transfer``), i.e. on the GPU when training on one.

Every loader yields ``(x, y)`` with ``x`` uint8 ``[B, C, H, W]`` and ``y`` int64 ``[B]``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

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
    "LowLatDataModule",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SPLIT_DIRS = ("train", "test", "val")  # "val" is accepted as the test split when "test" is absent
_CACHE_VERSION = 1  # bump when the cached tensor layout changes

Split = tuple[Tensor, Tensor]  # (x uint8 [N, C, H, W], y int64 [N])


# --------------------------------------------------------------------------------------------
# Batched, device-side augmentation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


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
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = stratified_order(y, seed)
    n_val = int(round(val_fraction * len(y)))
    return order[n_val:], order[:n_val]


def _limit(n: int | None, size: int) -> int:
    return size if n is None else min(n, size)


# --------------------------------------------------------------------------------------------
# Loaders over in-memory tensors
# --------------------------------------------------------------------------------------------


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


def _batch_collate(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``__getitems__`` already returns a collated batch (module-level so workers can pickle)."""
    return batch


# --------------------------------------------------------------------------------------------
# Base module
# --------------------------------------------------------------------------------------------


class LowLatDataModule(L.LightningDataModule):
    """Shared splitting, loaders and batched augmentation.

    Subclasses implement :meth:`_load` returning ``(train, test)`` as in-memory ``(x, y)``
    tensors, or override :meth:`setup` and the ``_make_*`` hooks for lazy datasets.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        val_fraction: fraction of the training set held out (stratified, fixed by ``seed``);
            0 means no validation split, and the validation loader serves the test set.
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
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
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
        self._auto_augment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if autoaugment else None
        self._train: Split | None = None
        self._val: Split | None = None
        self._test: Split | None = None

    # ---- loading ------------------------------------------------------------------------

    def _load(self) -> tuple[Split, Split]:
        """Return ``(train, test)`` as in-memory uint8/int64 tensors."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load, split and limit once; later calls are no-ops (Lightning calls it per stage)."""
        if self._train is not None:
            return
        (x_tr, y_tr), (x_te, y_te) = self._load()
        tr_idx, val_idx = self._split(y_tr)
        # Class-interleaved order, so any prefix of the test batches (limit_test, a quick look
        # with eval.limit_batches) is a stratified subset, not the first classes only.
        te_idx = stratified_order(y_te, 0)[: _limit(self.limit_test, len(y_te))]  # seed-free
        x_te, y_te = x_te[te_idx], y_te[te_idx]
        self._test = (x_te, y_te)
        self._val = (x_tr[val_idx], y_tr[val_idx]) if len(val_idx) else None
        self._train = (x_tr[tr_idx], y_tr[tr_idx])

    def _split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Seeded stratified (train, val) indices of ``y`` after ``limit_train``/``limit_val``.

        The training indices are re-interleaved by class so that every prefix of the training
        set (``limit_train``, ``calibration_loader``) is itself stratified.
        """
        tr_idx, val_idx = split_indices(y, self.val_fraction, self.seed)
        tr_idx = tr_idx[stratified_order(y[tr_idx], self.seed + 1)]
        n_tr, n_val = _limit(self.limit_train, len(tr_idx)), _limit(self.limit_val, len(val_idx))
        return tr_idx[:n_tr], val_idx[:n_val]

    def _require_setup(self) -> None:
        if self._train is None:
            self.setup()

    # ---- loaders ------------------------------------------------------------------------

    def _tensor_loader(self, split: Split, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            TensorBatchDataset(*split),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=_batch_collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._tensor_loader(self._train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation split, or the test set when ``val_fraction == 0``."""
        self._require_setup()
        split = self._val if self._val is not None else self._test
        return self._tensor_loader(split, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._tensor_loader(self._test, self.eval_batch_size, shuffle=False)

    @property
    def train_size(self) -> int:
        """Number of training samples after split and ``limit_train`` (runs ``setup``)."""
        self._require_setup()
        return len(self._train[1])

    def _check_calibration_n(self, n: int) -> None:
        size = self.train_size
        if not 1 <= n <= size:
            raise ValueError(f"calibration n={n} must be between 1 and the training size {size}")

    def calibration_loader(self, n: int, batch_size: int) -> DataLoader:
        """The first ``n`` training images in fixed (stratified) order, un-augmented uint8.

        Callers normalize with ``transform_batch(x, train=False)`` themselves.
        """
        self._check_calibration_n(n)
        x, y = self._train
        return self._tensor_loader((x[:n], y[:n]), batch_size, shuffle=False)

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
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return out.sub_(mean).div_(std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment/normalize on the device; only the training loop augments."""
        x, y = batch
        train = self.trainer is not None and bool(self.trainer.training)
        return self.transform_batch(x, train=train), y


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------


class DigitsDataModule(LowLatDataModule):
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


# --------------------------------------------------------------------------------------------
# CIFAR (torchvision pickles)
# --------------------------------------------------------------------------------------------


class CIFARDataModule(LowLatDataModule):
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


# --------------------------------------------------------------------------------------------
# Image folders and tarballs
# --------------------------------------------------------------------------------------------


def decode_image_bytes(data: bytes) -> Tensor:
    """Encoded image -> uint8 RGB ``[3, H, W]``.

    torchvision's decoder (libjpeg-turbo, ~4x faster than PIL on small JPEGs and bit-identical
    on the CIFAR-10 JPEG copy); PIL for formats it does not read.
    """
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
        )
    except (RuntimeError, ValueError):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            arr = np.array(im.convert("RGB"))  # [H, W, 3]
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # -> [3, H, W]


def fit_image(img: Tensor, size: int) -> Tensor:
    """Resize the shorter side to ``size`` and center-crop square; no-op if already square."""
    if img.shape[-2:] == (size, size):
        return img
    img = v2.functional.resize(img, [size], antialias=True)
    return v2.functional.center_crop(img, [size, size])


def _parse_member(name: str) -> tuple[str, str, str] | None:
    """Tar member path -> (top folder or "", split, class) for ``[top/]split/class/file``."""
    parts = [p for p in name.split("/") if p not in (".", "")]  # str ops: 60k calls are hot
    if not parts or not parts[-1].lower().endswith(IMG_EXTENSIONS):
        return None
    if len(parts) == 4 and parts[0] not in _SPLIT_DIRS and parts[1] in _SPLIT_DIRS:
        return parts[0], parts[1], parts[2]
    if len(parts) == 3 and parts[0] in _SPLIT_DIRS:
        return "", parts[0], parts[1]
    return None


def _test_split_name(present: Sequence[str], where: str) -> str:
    if "test" in present:
        return "test"
    if "val" in present:
        return "val"
    raise FileNotFoundError(f"no test/<class>/ (or val/<class>/) images found in {where}")


class _Entries:
    """Per-split image sources and class names found in a folder or tar.

    ``sources`` are file paths (folders) or ``(offset, size)`` pairs (uncompressed tars), stored
    in numpy arrays so data-loader workers do not copy them through refcount updates.
    """

    def __init__(
        self, classes: list[str], sources: dict[str, np.ndarray], labels: dict[str, np.ndarray]
    ) -> None:
        self.classes, self.sources, self.labels = classes, sources, labels


def _label_splits(
    found: dict[str, list[tuple[str, Any]]], where: str
) -> tuple[list[str], dict[str, list[Any]], dict[str, np.ndarray]]:
    """``{split: [(class, source)]}`` -> sorted classes, ``{train,test: sources}``, labels."""
    if not found.get("train"):
        raise FileNotFoundError(f"no train/<class>/ images found in {where}")
    test_name = _test_split_name([k for k, v in found.items() if v], where)
    classes = sorted({c for c, _ in found["train"]})
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted({c for c, _ in found[test_name]} - set(index))
    if extra:
        raise ValueError(f"{where}: {test_name}/ has classes missing from train/: {extra}")
    sources, labels = {}, {}
    for split, name in (("train", "train"), ("test", test_name)):
        sources[split] = [s for _, s in found[name]]
        labels[split] = np.array([index[c] for c, _ in found[name]], dtype=np.int64)
    return classes, sources, labels


class LazyImageDataset(Dataset):
    """Decodes one image per item (for sets too large for memory, e.g. ImageNet)."""

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


class ImageFolderDataModule(LowLatDataModule):
    """``root/train/<class>/*`` and ``root/test/<class>/*`` as a folder or a tar(.gz).

    Class order is the sorted folder names (as ``torchvision.datasets.ImageFolder``). A tar may
    hold the layout under one top-level folder; ``val/`` is accepted when there is no ``test/``.

    With ``in_memory=True`` all images are decoded once (streaming through the tar, no
    extraction), resized/center-cropped to ``image_size`` and cached as a ``.pt`` file in
    ``cache_dir`` keyed by root path, size/mtime and ``image_size``. With ``in_memory=False``
    images are decoded per item: training uses ``RandomResizedCrop(image_size)``, evaluation
    ``Resize(image_size * 256 / 224) + CenterCrop`` (set ``crop_padding=0`` then). Lazy reading
    works on folders and uncompressed ``.tar`` files (random access), not on ``.tar.gz``.

    Args:
        root: folder or tar file.
        num_classes: expected number of classes; checked against the folders (ValueError).
            When None, classes are discovered in ``__init__`` (for a tar that means loading it).
        image_size: output side length.
        in_memory: decode everything once into a uint8 tensor.
        cache_dir: where decoded tensors are cached; None disables the cache.
    """

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        image_size: int = 32,
        in_memory: bool = True,
        cache_dir: str | None = "~/.cache/lowlat",
        **kwargs: Any,
    ) -> None:
        root = os.path.abspath(os.path.expanduser(str(root)))
        if not os.path.exists(root):
            raise FileNotFoundError(f"image folder root not found: {root!r}")
        self.root = root
        self.is_tar = os.path.isfile(root)
        if self.is_tar and not tarfile.is_tarfile(root):
            raise ValueError(f"{root!r} is a file but not a tar archive")
        if self.is_tar and not in_memory and _is_compressed(root):
            raise ValueError(
                f"in_memory=False needs random access: extract {root!r} or repack it as an "
                "uncompressed .tar (or use in_memory=True)"
            )
        self.in_memory = in_memory
        self.cache_dir = None if cache_dir is None else os.path.expanduser(str(cache_dir))
        self._image_size = image_size
        self._memory: dict[str, Any] | None = None  # decoded tensors (in_memory=True)
        self._entries: _Entries | None = None  # per-item sources (in_memory=False)
        self._lazy: dict[str, Dataset] | None = None
        self.classes: list[str] | None = None
        self.decode_seconds: float | None = None  # time of the last decode (None: cache hit)
        self._expected_classes = num_classes
        if num_classes is None:
            num_classes = len(self._discover_classes())
        super().__init__(num_classes, 3, image_size, CIFAR10_MEAN, CIFAR10_STD, **kwargs)

    # ---- discovery ----------------------------------------------------------------------

    def _base(self) -> str:
        """Folder holding train/ and test/: root, or its single subfolder that has them."""
        if os.path.isdir(os.path.join(self.root, "train")):
            return self.root
        subs = [e.path for e in os.scandir(self.root) if e.is_dir()]
        if len(subs) == 1 and os.path.isdir(os.path.join(subs[0], "train")):
            return subs[0]
        raise FileNotFoundError(f"no train/ folder in {self.root!r}")

    def _discover_classes(self) -> list[str]:
        if self.classes is None:
            if self.is_tar:
                self.classes = (
                    self._load_memory()["classes"] if self.in_memory else self._index().classes
                )
            else:
                train = os.path.join(self._base(), "train")
                self.classes = sorted(e.name for e in os.scandir(train) if e.is_dir())
        self._check_num_classes(self.classes)
        return self.classes

    def _check_num_classes(self, classes: list[str]) -> None:
        if self._expected_classes is not None and self._expected_classes != len(classes):
            shown = classes if len(classes) <= 20 else classes[:20] + ["..."]
            raise ValueError(
                f"num_classes={self._expected_classes} but {self.root!r} has {len(classes)} "
                f"class folders: {shown}"
            )

    def _scan_folder(self) -> dict[str, list[tuple[str, Any]]]:
        base = self._base()
        found: dict[str, list[tuple[str, Any]]] = {}
        for split in _SPLIT_DIRS:
            split_dir = os.path.join(base, split)
            if not os.path.isdir(split_dir):
                continue
            items = []
            for cls in sorted(e.name for e in os.scandir(split_dir) if e.is_dir()):
                cls_dir = os.path.join(split_dir, cls)
                files = sorted(f for f in os.listdir(cls_dir) if f.lower().endswith(IMG_EXTENSIONS))
                items += [(cls, os.path.join(cls_dir, f)) for f in files]
            found[split] = items
        return found

    def _index(self) -> _Entries:
        """Lazy mode: file paths, or (offset, size) of every image inside an uncompressed tar."""
        if self._entries is None:
            if self.is_tar:
                named: dict[str, list[tuple[str, str, tuple[int, int]]]] = {}
                tops = set()
                with tarfile.open(self.root, "r:") as tf:
                    for m in tf:
                        parsed = _parse_member(m.name) if m.isfile() else None
                        if parsed:
                            tops.add(parsed[0])
                            named.setdefault(parsed[1], []).append(
                                (m.name, parsed[2], (m.offset_data, m.size))
                            )
                _check_tops(tops, self.root)
                # same order as the in-memory path: by member name (class, then file)
                found = {
                    k: [(c, src) for _, c, src in sorted(v, key=lambda t: t[0])]
                    for k, v in named.items()
                }
            else:
                found = self._scan_folder()
            classes, sources, labels = _label_splits(found, self.root)
            arrays = {k: np.array(v) for k, v in sources.items()}  # paths -> fixed-width str
            self._entries = _Entries(classes, arrays, labels)
            self._check_num_classes(classes)
        return self._entries

    # ---- in-memory decode + cache -------------------------------------------------------

    def _cache_path(self) -> str | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256()
        h.update(f"{_CACHE_VERSION}|{self.root}|{self._image_size}".encode())
        if self.is_tar:
            st = os.stat(self.root)
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        else:  # a folder: every file's name, size and mtime
            for split, items in sorted(self._scan_folder().items()):
                for _, path in items:
                    st = os.stat(path)
                    h.update(f"|{split}|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
        name = Path(self.root).name.replace(".", "_")
        return os.path.join(self.cache_dir, f"{name}-{self._image_size}px-{h.hexdigest()[:16]}.pt")

    def _decode_all(self) -> dict[str, Any]:
        size = self._image_size
        found: dict[str, list[tuple[str, Tensor]]] = {}
        if self.is_tar:
            tops = set()
            named: dict[str, list[tuple[str, str, Tensor]]] = {}
            with tarfile.open(self.root, "r|*") as tf:  # one sequential pass, no seeking
                for m in tf:
                    parsed = _parse_member(m.name) if m.isfile() else None
                    if parsed:
                        tops.add(parsed[0])
                        img = fit_image(decode_image_bytes(tf.extractfile(m).read()), size)
                        named.setdefault(parsed[1], []).append((m.name, parsed[2], img))
            _check_tops(tops, self.root)
            # sort by member name (class, then file) so archive order does not matter
            found = {
                k: [(c, img) for _, c, img in sorted(v, key=lambda t: t[0])]
                for k, v in named.items()
            }
        else:
            for split, items in self._scan_folder().items():
                found[split] = []
                for cls, path in items:
                    with open(path, "rb") as f:
                        found[split].append((cls, fit_image(decode_image_bytes(f.read()), size)))
        classes, imgs, labels = _label_splits(found, self.root)
        out: dict[str, Any] = {"classes": classes}
        for split in ("train", "test"):
            out[f"{split}_x"] = torch.stack(imgs[split])  # [N, 3, size, size] uint8
            out[f"{split}_y"] = torch.from_numpy(labels[split])
        return out

    def _load_memory(self) -> dict[str, Any]:
        if self._memory is not None:
            return self._memory
        path = self._cache_path()
        if path is not None and os.path.exists(path):
            try:
                self._memory = torch.load(path, weights_only=True)
                return self._memory
            except Exception as e:  # corrupt/incompatible cache: rebuild it
                warnings.warn(f"ignoring unreadable cache {path}: {e}", stacklevel=2)
        t0 = time.perf_counter()
        self._memory = self._decode_all()
        self.decode_seconds = time.perf_counter() - t0
        if path is not None:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp{os.getpid()}"
                torch.save(self._memory, tmp)
                os.replace(tmp, path)  # atomic: concurrent readers never see a partial file
            except OSError as e:
                warnings.warn(f"could not write cache {path}: {e}", stacklevel=2)
        return self._memory

    def prepare_data(self) -> None:
        """Build the decode cache once (Lightning runs this on one process per node)."""
        if self.in_memory:
            self._load_memory()

    def _load(self) -> tuple[Split, Split]:
        mem = self._load_memory()
        self.classes = mem["classes"]
        self._check_num_classes(self.classes)
        return (mem["train_x"], mem["train_y"]), (mem["test_x"], mem["test_y"])

    # ---- lazy mode ----------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.in_memory:
            super().setup(stage)
            return
        if self._lazy is not None:
            return
        ent = self._index()
        self.classes = ent.classes
        size = self._image_size
        train_tf = v2.RandomResizedCrop(size, antialias=True)
        eval_tf = v2.Compose(
            [v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
        )
        tar = self.root if self.is_tar else None
        y_tr = torch.from_numpy(ent.labels["train"])
        tr_idx, val_idx = (idx.numpy() for idx in self._split(y_tr))
        y_te = torch.from_numpy(ent.labels["test"])
        n_te = _limit(self.limit_test, len(y_te))
        te_idx = stratified_order(y_te, 0)[:n_te].numpy()  # any prefix is stratified, seed-free

        def make(split: str, idx: np.ndarray, tf: Callable[[Tensor], Tensor]) -> Dataset:
            return LazyImageDataset(ent.sources[split][idx], ent.labels[split][idx], tf, tar)

        self._lazy = {
            "train": make("train", tr_idx, train_tf),
            "calib": make("train", tr_idx, eval_tf),  # same images, deterministic transform
            "test": make("test", te_idx, eval_tf),
        }
        if len(val_idx):
            self._lazy["val"] = make("train", val_idx, eval_tf)

    def _lazy_loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def _ensure_lazy(self) -> dict[str, Dataset]:
        if self._lazy is None:
            self.setup()
        return self._lazy

    def train_dataloader(self) -> DataLoader:
        if self.in_memory:
            return super().train_dataloader()
        return self._lazy_loader(self._ensure_lazy()["train"], self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.in_memory:
            return super().val_dataloader()
        lazy = self._ensure_lazy()
        return self._lazy_loader(lazy.get("val", lazy["test"]), self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        if self.in_memory:
            return super().test_dataloader()
        return self._lazy_loader(self._ensure_lazy()["test"], self.eval_batch_size, False)

    @property
    def train_size(self) -> int:
        if self.in_memory:
            return super().train_size
        return len(self._ensure_lazy()["train"])

    def calibration_loader(self, n: int, batch_size: int) -> DataLoader:
        if self.in_memory:
            return super().calibration_loader(n, batch_size)
        self._check_calibration_n(n)
        subset = torch.utils.data.Subset(self._ensure_lazy()["calib"], range(n))
        return self._lazy_loader(subset, batch_size, shuffle=False)


def _is_compressed(path: str) -> bool:
    with open(path, "rb") as f:
        magic = f.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00"


def _check_tops(tops: set[str], root: str) -> None:
    if len(tops) > 1:
        raise ValueError(f"{root!r} holds several top-level folders with train/: {sorted(tops)}")
