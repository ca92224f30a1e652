"""Tests for image folders and tars (in memory with a cache, lazy), and their errors."""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lowlat.data.cache as cache_mod
from lowlat.data import (
    CIFAR10_MEAN,
    ImageFolderDataModule,
    InMemoryImageFolderDataModule,
    LazyImageFolderDataModule,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]  # one dominant channel per class


def images(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _png(color: tuple[int, int, int], size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tree(classes=("cat", "ant", "bee"), n_train: int = 4, n_test: int = 2) -> dict[str, bytes]:
    """relative path -> encoded image; class k has dominant channel COLORS[k] (sorted names)."""
    files = {}
    for name in classes:
        color = COLORS[sorted(classes).index(name)]
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                files[f"{split}/{name}/{i:04d}.png"] = _png(color, seed=i)
    files["train/bee/big.jpg"] = _jpeg(COLORS[1], (48, 40))  # resized + center-cropped to 32
    return files


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    (root / "README.txt").write_text("not an image")
    return root


def _write_tar(path: Path, files: dict[str, bytes], top: str = "", mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for rel, blob in files.items():
            info = tarfile.TarInfo(f"{top}{rel}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def _check_labels(x: torch.Tensor, y: torch.Tensor) -> None:
    """The dominant channel of each image is its label (COLORS order = sorted class names)."""
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
    assert torch.equal(x.float().mean((2, 3)).argmax(1), y)


@pytest.mark.parametrize("kind", ["folder", "targz"])
def test_image_folder_in_memory_and_cache(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _tree(n_train=8)
    if kind == "folder":
        root = _write_folder(tmp_path / "imgs", files)
    else:
        root = _write_tar(tmp_path / "imgs.tar.gz", files, top="imgs/")
    cache = tmp_path / "cache"
    dm = ImageFolderDataModule(str(root), image_size=32, cache_dir=str(cache), val_fraction=0.2)
    assert isinstance(dm, InMemoryImageFolderDataModule)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 3, 32)
    assert dm.mean == CIFAR10_MEAN
    dm.setup()
    assert dm.decode_seconds is not None  # decoded, not read from a cache
    assert dm.classes == ["ant", "bee", "cat"]
    xtr, ytr = images(dm.train_dataloader())
    xv, yv = images(dm.val_dataloader())
    xte, yte = images(dm.test_dataloader())
    assert (len(ytr), len(yv), len(yte)) == (20, 5, 6)
    for x, y in ((xtr, ytr), (xv, yv), (xte, yte)):
        _check_labels(x, y)
    assert torch.equal(torch.bincount(ytr) + torch.bincount(yv), torch.tensor([8, 9, 8]))
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1 and not list(cache.glob("*.tmp*"))

    def boom(_: bytes) -> torch.Tensor:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(cache_mod, "decode_image_bytes", boom)
    again = ImageFolderDataModule(str(root), num_classes=3, cache_dir=str(cache), val_fraction=0.2)
    again.setup()
    assert again.decode_seconds is None
    for a, b in zip(images(again.calibration_loader(20, 7)), images(dm.calibration_loader(20, 9)),
                    strict=True):
        assert torch.equal(a, b)
    assert torch.equal(images(again.test_dataloader())[0], xte)


def test_tar_member_order_does_not_matter(tmp_path: Path) -> None:
    files = _tree()
    shuffled = dict(reversed(list(files.items())))
    mods = [
        ImageFolderDataModule(str(_write_tar(tmp_path / f"{i}.tar.gz", f)), cache_dir=None)
        for i, f in enumerate((files, shuffled))
    ]
    folder = ImageFolderDataModule(str(_write_folder(tmp_path / "f", files)), cache_dir=None)
    ref = images(folder.calibration_loader(folder.train_size, 4))
    for dm in mods:
        got = images(dm.calibration_loader(dm.train_size, 4))
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_image_folder_lazy(kind: str, tmp_path: Path) -> None:
    files = _tree()
    if kind == "folder":
        root = _write_folder(tmp_path / "imgs", files)
    else:
        root = _write_tar(tmp_path / "imgs.tar", files, mode="w")
    dm = ImageFolderDataModule(
        str(root), image_size=32, in_memory=False, crop_padding=0, batch_size=4, val_fraction=0.25
    )
    assert isinstance(dm, LazyImageFolderDataModule) and dm.num_classes == 3
    dm.setup()
    assert dm.classes == ["ant", "bee", "cat"]
    xte, yte = images(dm.test_dataloader())
    _check_labels(xte, yte)
    assert dm.test_loader_calls == 1
    xv, yv = images(dm.val_dataloader())
    _check_labels(xv, yv)
    xtr, ytr = images(dm.train_dataloader())
    assert len(yv) + len(ytr) == 13 and len(yv) == 3 and dm.train_size == 10
    assert xtr.shape[1:] == (3, 32, 32) and xtr.dtype == torch.uint8
    xc, yc = images(dm.calibration_loader(5, batch_size=2))
    assert len(yc) == 5 and torch.equal(xc, images(dm.calibration_loader(5, 5))[0])
    _check_labels(xc, yc)


# ---------------------------------------------------------------------------- errors


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        ImageFolderDataModule(str(tmp_path / "missing_dir"))
    root = _write_folder(tmp_path / "imgs", _tree())
    with pytest.raises(ValueError, match="num_classes=10"):
        ImageFolderDataModule(str(root), num_classes=10, cache_dir=None).setup()
    with pytest.raises(ValueError, match="num_classes=4"):
        ImageFolderDataModule(str(root), num_classes=4, in_memory=False).setup()
    targz = _write_tar(tmp_path / "x.tar.gz", _tree())
    with pytest.raises(ValueError, match="uncompressed"):
        ImageFolderDataModule(str(targz), num_classes=3, in_memory=False)
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(ValueError, match="plain.txt.*not a tar"):
        ImageFolderDataModule(str(tmp_path / "plain.txt"))


def _truncate(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.mark.parametrize("keep", [0.002, 0.02, 0.5, 0.9])
def test_truncated_tar_gz_names_the_file(keep: float, tmp_path: Path) -> None:
    """Issue 10: not a bare ``tarfile.ReadError`` but an error that says which file is bad."""
    full = _write_tar(tmp_path / "full.tar.gz", _tree(n_train=30))
    bad = _truncate(full, tmp_path / "cut.tar.gz", keep)
    with pytest.raises(ValueError, match=re.escape(repr(str(bad)))) as err:
        ImageFolderDataModule(str(bad), num_classes=3, cache_dir=None).setup()
    assert "truncated" in str(err.value)


def test_corrupt_tar_gz_is_caught_by_its_crc(tmp_path: Path) -> None:
    """A damaged gzip stream can inflate to wrong bytes; the CRC check must refuse it."""
    data = bytearray(_write_tar(tmp_path / "full.tar.gz", _tree()).read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 in the gzip trailer: every member still decodes
    bad = tmp_path / "corrupt.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(repr(str(bad))) + ".*truncated or corrupt"):
        ImageFolderDataModule(str(bad), num_classes=3, cache_dir=str(tmp_path)).setup()
    assert not list(tmp_path.glob("*.pt"))  # nothing cached from it


@pytest.mark.parametrize("in_memory", [True, False])
def test_damaged_tar_names_the_file(in_memory: bool, tmp_path: Path) -> None:
    full = _write_tar(tmp_path / "full.tar", _tree(n_train=30), mode="w")
    with tarfile.open(full) as tf:
        offset = tf.getmembers()[5].offset
    data = bytearray(full.read_bytes())
    data[offset + 148] ^= 0xFF  # the header checksum of a later member
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    cut = _truncate(full, tmp_path / "cut.tar", 0.6)
    for bad in (damaged, cut):
        with pytest.raises(ValueError, match=re.escape(repr(str(bad))) + ".*truncated or corrupt"):
            ImageFolderDataModule(str(bad), num_classes=3, in_memory=in_memory,
                                  cache_dir=None).setup()


def test_bad_image_in_tar_names_the_member(tmp_path: Path) -> None:
    files = {**_tree(), "train/ant/broken.png": b"not a png"}
    bad = _write_tar(tmp_path / "x.tar.gz", files)
    with pytest.raises(ValueError, match=r"'train/ant/broken\.png' in .*x\.tar\.gz"):
        ImageFolderDataModule(str(bad), num_classes=3, cache_dir=None).setup()


# ---------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="shared CIFAR-10 JPEG tarball missing")
def test_shared_cifar10_tarball(tmp_path: Path, record_property) -> None:
    t0 = time.perf_counter()
    dm = ImageFolderDataModule(str(SHARED_CIFAR), num_classes=10, cache_dir=str(tmp_path))
    dm.setup()
    decode_s = time.perf_counter() - t0
    record_property("decode_seconds", decode_s)
    print(f"decoded 60000 CIFAR-10 JPEGs in {decode_s:.1f} s")
    _, ytr = images(dm.calibration_loader(dm.train_size, 5000))
    xv, yv = images(dm.val_dataloader())
    xte, yte = images(dm.test_dataloader())
    assert xv.shape == (5000, 3, 32, 32) and xte.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(torch.cat([ytr, yv])), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(yte), torch.full((10,), 1000))
    assert dm.classes[0] == "airplane" and dm.classes[-1] == "truck"
    t0 = time.perf_counter()
    again = ImageFolderDataModule(str(SHARED_CIFAR), cache_dir=str(tmp_path))
    again.setup()
    record_property("cache_load_seconds", time.perf_counter() - t0)
    assert again.decode_seconds is None and os.listdir(tmp_path)
    assert torch.equal(images(again.test_dataloader())[0], xte)
