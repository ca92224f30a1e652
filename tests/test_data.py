"""Tests for lowlat.data: splits, loaders, batched augmentation, image folders/tars, configs."""

from __future__ import annotations

import inspect
import io
import os
import tarfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import lowlat.data as data_mod
from lowlat.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFARDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    LowLatDataModule,
    split_indices,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]  # one dominant channel per class


def _images(dm: LowLatDataModule, loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


# ---------------------------------------------------------------------------- digits / splits


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, crop_padding=1, flip=False)
    dm.setup()
    return dm


def test_digits_attributes_before_setup() -> None:
    dm = DigitsDataModule()
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 8)
    assert dm.mean == (0.5,) and dm.std == (0.5,)


def test_digits_loaders_shapes_and_dtypes(digits: DigitsDataModule) -> None:
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.uint8
    assert y.shape == (64,) and y.dtype == torch.int64
    assert int(x.max()) == 255  # 0..16 scaled to the full uint8 range
    xt, yt = _images(digits, digits.test_dataloader())
    xv, yv = _images(digits, digits.val_dataloader())
    xtr, ytr = _images(digits, digits.train_dataloader())
    assert (len(ytr), len(yv), len(yt)) == (1293, 144, 360)  # 1797: 20 % test, 10 % of rest val
    for labels in (ytr, yv, yt):
        assert torch.equal(torch.unique(labels), torch.arange(10))


def test_digits_splits_partition_the_data(digits: DigitsDataModule) -> None:
    """train + val + test is exactly the data set (as a multiset), so the splits are disjoint."""
    from sklearn.datasets import load_digits

    d = load_digits()
    full = np.rint(d.images * 255 / 16).astype(np.uint8).reshape(len(d.target), -1)
    ref = sorted(row.tobytes() + bytes([t]) for row, t in zip(full, d.target, strict=True))
    parts = [digits._train, digits._val, digits._test]
    got = sorted(
        row.numpy().tobytes() + bytes([int(t)])
        for x, y in parts
        for row, t in zip(x.reshape(len(y), -1), y, strict=True)
    )
    assert got == ref


def test_split_indices_disjoint_and_stratified() -> None:
    y = torch.arange(10).repeat_interleave(50)
    tr, val = split_indices(y, 0.1, seed=3)
    assert len(set(tr.tolist()) & set(val.tolist())) == 0
    assert sorted(tr.tolist() + val.tolist()) == list(range(500))
    assert torch.equal(torch.bincount(y[val]), torch.full((10,), 5))


def test_digits_determinism_with_seed(digits: DigitsDataModule) -> None:
    same = DigitsDataModule(seed=0)
    same.setup()
    other = DigitsDataModule(seed=1)
    other.setup()
    assert torch.equal(same._train[0], digits._train[0])
    assert torch.equal(same._val[1], digits._val[1])
    assert not torch.equal(other._train[0], digits._train[0])
    assert torch.equal(other._test[0], digits._test[0])  # test split is seed-independent


def test_limits_keep_all_classes_and_no_val_uses_test() -> None:
    dm = DigitsDataModule(val_fraction=0.0, limit_train=20, limit_test=30, batch_size=8)
    dm.setup()
    dm.setup()  # idempotent
    assert dm._val is None
    _, ytr = _images(dm, dm.train_dataloader())
    xv, yv = _images(dm, dm.val_dataloader())
    xt, yt = _images(dm, dm.test_dataloader())
    assert len(ytr) == 20 and len(yt) == 30
    assert torch.equal(torch.bincount(ytr), torch.full((10,), 2))
    assert torch.equal(torch.unique(yt), torch.arange(10))
    assert torch.equal(xv, xt) and torch.equal(yv, yt)


def test_calibration_loader(digits: DigitsDataModule) -> None:
    batches = list(digits.calibration_loader(25, batch_size=10))
    assert [len(y) for _, y in batches] == [10, 10, 5]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert x.dtype == torch.uint8
    assert torch.equal(x, digits._train[0][:25]) and torch.equal(y, digits._train[1][:25])
    x2 = torch.cat([b[0] for b in digits.calibration_loader(25, batch_size=7)])
    assert torch.equal(x, x2)  # fixed order
    with pytest.raises(ValueError, match="n=0"):
        digits.calibration_loader(0, batch_size=4)
    with pytest.raises(ValueError, match="n=100000"):
        digits.calibration_loader(100_000, batch_size=4)


# ---------------------------------------------------------------------------- transform_batch


def _rgb_module(**kw) -> DigitsDataModule:
    """A module with 3-channel CIFAR statistics; transform_batch only uses the stats."""
    dm = DigitsDataModule(**kw)
    dm.in_channels, dm.mean, dm.std = 3, CIFAR10_MEAN, CIFAR10_STD
    return dm


def _batch(b: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def test_transform_eval_is_normalization() -> None:
    dm = _rgb_module(crop_padding=4, flip=True, cutout=8)
    x = _batch()
    out = dm.transform_batch(x, train=False)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, _normalize(x, CIFAR10_MEAN, CIFAR10_STD))
    assert torch.equal(out, dm.transform_batch(x, train=False))
    with pytest.raises(TypeError):
        dm.transform_batch(x.float(), train=False)


def test_transform_random_crop_per_sample() -> None:
    dm = _rgb_module(crop_padding=4, flip=False)
    x = _batch(b=32)
    g = torch.Generator().manual_seed(1)
    out = dm.transform_batch(x, train=True, generator=g)
    assert out.shape == x.shape and out.dtype == torch.float32
    zero = _normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    padded = torch.nn.functional.pad(x, (4,) * 4)  # zero padding in uint8 space
    ref = _normalize(padded, CIFAR10_MEAN, CIFAR10_STD)
    offsets = []
    for i in range(len(x)):  # each output is some shifted window of the zero-padded input
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.allclose(out[i], ref[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert len(hits) == 1, f"sample {i} is not a crop of its input"
        offsets.append(hits[0])
    assert len(set(offsets)) > 5  # offsets are drawn per sample
    assert sum(o != (4, 4) for o in offsets) > len(x) // 2  # most samples actually moved
    # content preserved: pixels that are not padding keep the input's values
    not_pad = ~torch.isclose(out, zero.expand_as(out)).all(1)
    assert not_pad.float().mean() > 0.75


def test_transform_flip_per_sample() -> None:
    dm = _rgb_module(crop_padding=0, flip=True)
    x = _batch(b=64)
    out = dm.transform_batch(x, train=True, generator=torch.Generator().manual_seed(0))
    plain = _normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    flipped = [not torch.allclose(o, p) for o, p in zip(out, plain, strict=True)]
    for o, p, f in zip(out, plain, flipped, strict=True):
        torch.testing.assert_close(o, p.flip(-1) if f else p)
    assert 10 < sum(flipped) < 54


def test_transform_cutout_square() -> None:
    size = 8
    dm = _rgb_module(crop_padding=0, flip=False, cutout=size)
    x = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    out = dm.transform_batch(x, train=True, generator=torch.Generator().manual_seed(0))
    zero = _normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    cut = torch.isclose(out, zero.expand_as(out)).all(1)  # [B, H, W]
    assert torch.isclose(out, zero.expand_as(out)).any(1).eq(cut).all()  # all channels at once
    counts = cut.sum((1, 2))
    assert (counts > 0).all() and (counts <= size * size).all()
    full = torch.nonzero(counts == size * size).flatten()
    assert len(full) > 10
    for i in full:
        rows = torch.nonzero(cut[i].any(1)).flatten()
        cols = torch.nonzero(cut[i].any(0)).flatten()
        assert rows[-1] - rows[0] == size - 1 and cols[-1] - cols[0] == size - 1
    assert (
        len({(int(torch.nonzero(cut[i])[0, 0]), int(torch.nonzero(cut[i])[0, 1])) for i in full})
        > 3
    )


def test_transform_autoaugment_runs() -> None:
    dm = _rgb_module(crop_padding=4, autoaugment=True, cutout=4)
    torch.manual_seed(0)
    x = _batch(b=8)
    out = dm.transform_batch(x, train=True)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_on_after_batch_transfer_without_trainer(digits: DigitsDataModule) -> None:
    x, y = next(iter(digits.train_dataloader()))
    out, y2 = digits.on_after_batch_transfer((x, y), 0)
    torch.testing.assert_close(out, _normalize(x, (0.5,), (0.5,)))
    assert y2 is y


def test_lightning_hook_augments_only_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = DigitsDataModule(batch_size=32, limit_train=64, limit_val=32)
    flags: list[bool] = []
    orig = dm.transform_batch
    monkeypatch.setattr(
        dm, "transform_batch", lambda x, train: flags.append(train) or orig(x, train)
    )

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)

        def training_step(self, batch, _):
            x, y = batch
            assert x.dtype == torch.float32
            return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

        def validation_step(self, batch, _):
            assert batch[0].dtype == torch.float32

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        val_check_interval=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert flags.count(True) == 2 and flags.count(False) == 1


# ---------------------------------------------------------------------------- image folders


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
    files = _tree()
    if kind == "folder":
        root = _write_folder(tmp_path / "imgs", files)
    else:
        root = _write_tar(tmp_path / "imgs.tar.gz", files, top="imgs/")
    cache = tmp_path / "cache"
    dm = ImageFolderDataModule(str(root), image_size=32, cache_dir=str(cache), val_fraction=0.0)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 3, 32)
    assert dm.mean == CIFAR10_MEAN
    dm.setup()
    assert dm.classes == ["ant", "bee", "cat"]
    xtr, ytr = _images(dm, dm.train_dataloader())
    xte, yte = _images(dm, dm.test_dataloader())
    assert (len(ytr), len(yte)) == (13, 6)
    _check_labels(xtr, ytr)
    _check_labels(xte, yte)
    assert torch.equal(torch.bincount(ytr), torch.tensor([4, 5, 4]))
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1 and not list(cache.glob("*.tmp*"))

    def boom(_: bytes) -> torch.Tensor:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data_mod, "decode_image_bytes", boom)
    again = ImageFolderDataModule(str(root), num_classes=3, cache_dir=str(cache), val_fraction=0)
    again.setup()
    assert again.decode_seconds is None
    assert torch.equal(again._train[0], dm._train[0]) and torch.equal(again._test[1], dm._test[1])


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_image_folder_lazy(kind: str, tmp_path: Path) -> None:
    files = _tree()
    if kind == "folder":
        root = _write_folder(tmp_path / "imgs", files)
    else:
        root = _write_tar(tmp_path / "imgs.tar", files, mode="w")
    dm = ImageFolderDataModule(
        str(root),
        num_classes=3,
        image_size=32,
        in_memory=False,
        crop_padding=0,
        batch_size=4,
        val_fraction=0.25,
    )
    dm.setup()
    assert dm.classes == ["ant", "bee", "cat"]
    xte, yte = _images(dm, dm.test_dataloader())
    _check_labels(xte, yte)
    xv, yv = _images(dm, dm.val_dataloader())
    xtr, ytr = _images(dm, dm.train_dataloader())
    assert len(yv) + len(ytr) == 13 and len(yv) == 3
    assert xtr.shape[1:] == (3, 32, 32) and xtr.dtype == torch.uint8
    xc, yc = _images(dm, dm.calibration_loader(5, batch_size=2))
    assert len(yc) == 5 and torch.equal(xc, _images(dm, dm.calibration_loader(5, 5))[0])


# ---------------------------------------------------------------------------- errors


def test_bad_cifar_name() -> None:
    with pytest.raises(ValueError, match="cifar10.*cifar100"):
        CIFARDataModule(name="cifar1000", root="/nonexistent")


def test_cifar_missing_files(tmp_path: Path) -> None:
    dm = CIFARDataModule(name="cifar100", root=str(tmp_path / "nope"))
    assert (dm.num_classes, dm.mean[0]) == (100, 0.5071)
    with pytest.raises(FileNotFoundError, match="data.download=true") as err:
        dm.setup()
    assert str(tmp_path / "nope") in str(err.value) and "cifar10_folder" in str(err.value)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        ImageFolderDataModule(str(tmp_path / "missing_dir"))
    root = _write_folder(tmp_path / "imgs", _tree())
    with pytest.raises(ValueError, match="num_classes=10"):
        ImageFolderDataModule(str(root), num_classes=10, cache_dir=None).setup()
    targz = _write_tar(tmp_path / "x.tar.gz", _tree())
    with pytest.raises(ValueError, match="uncompressed"):
        ImageFolderDataModule(str(targz), num_classes=3, in_memory=False)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="one per channel"):
        DigitsDataModule(mean=(0.1, 0.2, 0.3))
    with pytest.raises(TypeError):
        DigitsDataModule(batchsize=3)  # typos in configs fail loudly


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "cifar10_folder", "imagenet"])
def test_data_configs(name: str, tmp_path: Path) -> None:
    cfg = OmegaConf.merge(
        {"seed": 7, "paths": {"data_dir": str(tmp_path)}},
        {"data": OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")},
    )
    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    module, cls_name = kwargs.pop("_target_").rsplit(".", 1)
    assert module == "lowlat.data"
    cls = getattr(data_mod, cls_name)
    allowed = set(inspect.signature(cls.__init__).parameters)
    allowed |= set(inspect.signature(LowLatDataModule.__init__).parameters)
    assert set(kwargs) <= allowed, set(kwargs) - allowed
    assert kwargs["seed"] == 7
    if name == "digits":
        from hydra.utils import instantiate

        dm = instantiate(cfg.data)
        assert dm.flip is False and dm.crop_padding == 1 and dm.batch_size == 64


# ---------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="shared CIFAR-10 JPEG tarball missing")
def test_shared_cifar10_tarball(tmp_path: Path, record_property) -> None:
    t0 = time.perf_counter()
    dm = ImageFolderDataModule(
        str(SHARED_CIFAR), num_classes=10, val_fraction=0.0, cache_dir=str(tmp_path)
    )
    dm.setup()
    decode_s = time.perf_counter() - t0
    record_property("decode_seconds", decode_s)
    print(f"decoded 60000 CIFAR-10 JPEGs in {decode_s:.1f} s")
    assert dm._train[0].shape == (50000, 3, 32, 32) and dm._test[0].shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(dm._train[1]), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(dm._test[1]), torch.full((10,), 1000))
    assert dm.classes[0] == "airplane" and dm.classes[-1] == "truck"
    t0 = time.perf_counter()
    again = ImageFolderDataModule(str(SHARED_CIFAR), val_fraction=0.0, cache_dir=str(tmp_path))
    again.setup()
    record_property("cache_load_seconds", time.perf_counter() - t0)
    assert torch.equal(again._test[0], dm._test[0]) and os.listdir(tmp_path)
