"""Tests for lowlat.data through its public interface: splits, loaders, transform, guards, configs.

Image folders and tars are tested in ``test_data_folder.py``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2

import lowlat.data as data_mod
from lowlat.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFARDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    InMemoryImageFolderDataModule,
    LazyImageFolderDataModule,
    LowLatDataModule,
    split_indices,
)

REPO = Path(__file__).resolve().parents[1]


def images(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` of a loader, concatenated."""
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


def rows(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    """Each image + label as bytes, sorted: a multiset to compare splits with."""
    flat = x.reshape(len(y), -1)
    return sorted(r.numpy().tobytes() + bytes([int(t)]) for r, t in zip(flat, y, strict=True))


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
    _, yt = images(digits.test_dataloader())
    _, yv = images(digits.val_dataloader())
    _, ytr = images(digits.train_dataloader())
    assert (len(ytr), len(yv), len(yt)) == (1293, 144, 360)  # 1797: 20 % test, 10 % of rest val
    assert digits.train_size == 1293
    for labels in (ytr, yv, yt):
        assert torch.equal(torch.unique(labels), torch.arange(10))


def test_digits_splits_partition_the_data(digits: DigitsDataModule) -> None:
    """train + val + test is exactly the data set (as a multiset), so the splits are disjoint."""
    from sklearn.datasets import load_digits

    d = load_digits()
    full = torch.from_numpy(np.rint(d.images * 255 / 16).astype(np.uint8))
    ref = rows(full, torch.from_numpy(d.target))
    parts = [images(dl()) for dl in (digits.train_dataloader, digits.val_dataloader,
                                     digits.test_dataloader)]
    got = rows(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
    assert got == ref


def test_split_indices_disjoint_and_stratified() -> None:
    y = torch.arange(10).repeat_interleave(50)
    tr, val = split_indices(y, 0.1, seed=3)
    assert len(set(tr.tolist()) & set(val.tolist())) == 0
    assert sorted(tr.tolist() + val.tolist()) == list(range(500))
    assert torch.equal(torch.bincount(y[val]), torch.full((10,), 5))


def test_digits_determinism_with_seed(digits: DigitsDataModule) -> None:
    def splits(dm: DigitsDataModule) -> list[torch.Tensor]:
        n = dm.train_size
        return [*images(dm.calibration_loader(n, 100)), *images(dm.val_dataloader()),
                *images(dm.test_dataloader())]

    ref, same, other = splits(digits), splits(DigitsDataModule(seed=0)), splits(
        DigitsDataModule(seed=1)
    )
    assert all(torch.equal(a, b) for a, b in zip(ref, same, strict=True))
    assert not torch.equal(other[0], ref[0]) and not torch.equal(other[3], ref[3])
    assert torch.equal(other[4], ref[4])  # the test split is seed-independent


def test_train_loader_shuffles_with_the_global_seed(digits: DigitsDataModule) -> None:
    torch.manual_seed(5)
    a = images(digits.train_dataloader())
    torch.manual_seed(5)
    b = images(digits.train_dataloader())
    c = images(digits.train_dataloader())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1]) and sorted(a[1].tolist()) == sorted(c[1].tolist())


def test_limits_keep_all_classes() -> None:
    dm = DigitsDataModule(limit_train=20, limit_val=10, limit_test=30, batch_size=8)
    dm.setup()
    dm.setup()  # idempotent
    _, ytr = images(dm.train_dataloader())
    _, yv = images(dm.val_dataloader())
    _, yt = images(dm.test_dataloader())
    assert (len(ytr), len(yv), len(yt)) == (20, 10, 30) and dm.train_size == 20
    assert torch.equal(torch.bincount(ytr), torch.full((10,), 2))
    assert torch.equal(torch.bincount(yv), torch.full((10,), 1))
    assert torch.equal(torch.unique(yt), torch.arange(10))


def test_calibration_loader(digits: DigitsDataModule) -> None:
    batches = list(digits.calibration_loader(25, batch_size=10))
    assert [len(y) for _, y in batches] == [10, 10, 5]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert x.dtype == torch.uint8
    xall, yall = images(digits.calibration_loader(digits.train_size, batch_size=100))
    assert torch.equal(x, xall[:25]) and torch.equal(y, yall[:25])  # a prefix, fixed order
    assert torch.equal(torch.unique(y[:10]), torch.arange(10))  # any prefix is stratified
    assert rows(xall, yall) == rows(*images(digits.train_dataloader()))  # the training images
    with pytest.raises(ValueError, match="n=0"):
        digits.calibration_loader(0, batch_size=4)
    with pytest.raises(ValueError, match="n=100000"):
        digits.calibration_loader(100_000, batch_size=4)


# ---------------------------------------------------------------------------- test split guard


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0, 1.5])
def test_val_fraction_outside_0_1_is_refused(bad: float, tmp_path: Path) -> None:
    """No validation split would make model selection look at the test split (issue 8)."""
    (tmp_path / "train" / "a").mkdir(parents=True)
    builders = [
        lambda: DigitsDataModule(val_fraction=bad),
        lambda: CIFARDataModule(root=str(tmp_path), val_fraction=bad),
        lambda: ImageFolderDataModule(str(tmp_path), num_classes=1, val_fraction=bad),
        lambda: ImageFolderDataModule(
            str(tmp_path), num_classes=1, in_memory=False, val_fraction=bad
        ),
    ]
    for build in builders:
        with pytest.raises(ValueError, match=r"data\.val_fraction=.*must be in \(0, 1\)"):
            build()
    with pytest.raises(ValueError, match=r"data\.val_fraction"):
        split_indices(torch.arange(10), bad, seed=0)


def test_empty_validation_split_is_refused() -> None:
    with pytest.raises(ValueError, match=r"data\.val_fraction=0\.001.*no validation image"):
        DigitsDataModule(val_fraction=0.001, limit_val=0).setup()


def test_test_loader_calls_count_only_the_test_loader(digits: DigitsDataModule) -> None:
    dm = DigitsDataModule()
    assert dm.test_loader_calls == 0
    dm.setup()
    dm.train_dataloader(), dm.val_dataloader(), dm.calibration_loader(5, 5)
    assert dm.train_size and dm.test_loader_calls == 0
    dm.test_dataloader()
    dm.test_dataloader()
    assert dm.test_loader_calls == 2


# ---------------------------------------------------------------------------- transform_batch


def _rgb_module(**kw) -> InMemoryImageFolderDataModule:
    """A 3-channel module with CIFAR statistics; its root is never read (no ``setup``)."""
    return InMemoryImageFolderDataModule(str(REPO), num_classes=10, cache_dir=None, **kw)


def _batch(b: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def test_transform_eval_is_normalization() -> None:
    dm = _rgb_module(crop_padding=4, flip=True, cutout=8, autoaugment=True)
    x = _batch()
    out = dm.transform_batch(x, train=False)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, normalize(x, CIFAR10_MEAN, CIFAR10_STD))
    assert torch.equal(out, dm.transform_batch(x, train=False))
    with pytest.raises(TypeError):
        dm.transform_batch(x.float(), train=False)


def test_transform_random_crop_per_sample() -> None:
    dm = _rgb_module(crop_padding=4, flip=False)
    x = _batch(b=32)
    g = torch.Generator().manual_seed(1)
    out = dm.transform_batch(x, train=True, generator=g)
    assert out.shape == x.shape and out.dtype == torch.float32
    zero = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    padded = torch.nn.functional.pad(x, (4,) * 4)  # zero padding in uint8 space
    ref = normalize(padded, CIFAR10_MEAN, CIFAR10_STD)
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
    plain = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    flipped = [not torch.allclose(o, p) for o, p in zip(out, plain, strict=True)]
    for o, p, f in zip(out, plain, flipped, strict=True):
        torch.testing.assert_close(o, p.flip(-1) if f else p)
    assert 10 < sum(flipped) < 54


def test_transform_cutout_square() -> None:
    size = 8
    dm = _rgb_module(crop_padding=0, flip=False, cutout=size)
    x = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    out = dm.transform_batch(x, train=True, generator=torch.Generator().manual_seed(0))
    zero = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    cut = torch.isclose(out, zero.expand_as(out)).all(1)  # [B, H, W]
    assert torch.isclose(out, zero.expand_as(out)).any(1).eq(cut).all()  # all channels at once
    counts = cut.sum((1, 2))
    assert (counts > 0).all() and (counts <= size * size).all()
    full = torch.nonzero(counts == size * size).flatten()
    assert len(full) > 10
    for i in full:
        r = torch.nonzero(cut[i].any(1)).flatten()
        c = torch.nonzero(cut[i].any(0)).flatten()
        assert r[-1] - r[0] == size - 1 and c[-1] - c[0] == size - 1
    corners = {tuple(torch.nonzero(cut[i])[0].tolist()) for i in full}
    assert len(corners) > 3


def test_transform_autoaugment_is_applied_per_sample() -> None:
    """With only AutoAugment on, the output is torchvision's CIFAR-10 policy applied image by
    image under the same seed, and it changes most images: a no-op would fail both checks."""
    x = _batch(b=16)
    plain = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    off = _rgb_module(crop_padding=0, flip=False, autoaugment=False)
    torch.testing.assert_close(off.transform_batch(x, train=True), plain)  # nothing else acts
    dm = _rgb_module(crop_padding=0, flip=False, autoaugment=True)
    torch.manual_seed(0)
    out = dm.transform_batch(x, train=True)
    torch.manual_seed(0)
    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    ref = normalize(torch.stack([policy(img) for img in x]), CIFAR10_MEAN, CIFAR10_STD)
    assert torch.equal(out, ref)
    changed = [not torch.allclose(o, p) for o, p in zip(out, plain, strict=True)]
    assert sum(changed) >= len(x) // 2, changed
    torch.manual_seed(0)
    batch_policy = normalize(policy(x), CIFAR10_MEAN, CIFAR10_STD)  # one policy for the batch
    assert not torch.equal(out, batch_policy)


def test_transform_autoaugment_with_crop_and_cutout() -> None:
    dm = _rgb_module(crop_padding=4, autoaugment=True, cutout=4)
    torch.manual_seed(0)
    out = dm.transform_batch(_batch(b=8), train=True)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32 and out.isfinite().all()


def test_on_after_batch_transfer_without_trainer(digits: DigitsDataModule) -> None:
    x, y = next(iter(digits.train_dataloader()))
    out, y2 = digits.on_after_batch_transfer((x, y), 0)
    torch.testing.assert_close(out, normalize(x, (0.5,), (0.5,)))
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
    assert dm.test_loader_calls == 0  # fitting with validation never reads the test split


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


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one per channel"):
        DigitsDataModule(mean=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="crop_padding"):
        DigitsDataModule(crop_padding=-1)
    with pytest.raises(TypeError):
        DigitsDataModule(batchsize=3)  # typos in configs fail loudly


# ---------------------------------------------------------------------------- configs


def _data_cfg(name: str, tmp_path: Path, **over):
    return OmegaConf.merge(
        {"seed": 7, "paths": {"data_dir": str(tmp_path)}},
        {"data": OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")},
        {"data": over},
    )


@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "cifar10_folder", "imagenet"])
def test_data_configs(name: str, tmp_path: Path) -> None:
    cfg = _data_cfg(name, tmp_path)
    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    module, target_name = kwargs.pop("_target_").rsplit(".", 1)
    assert module == "lowlat.data"
    target = getattr(data_mod, target_name)
    allowed = set(inspect.signature(LowLatDataModule.__init__).parameters)
    if isinstance(target, type):
        allowed |= set(inspect.signature(target.__init__).parameters)
    else:  # the image-folder factory: its own arguments, the rest go to the class it returns
        cls = InMemoryImageFolderDataModule if kwargs["in_memory"] else LazyImageFolderDataModule
        allowed |= set(inspect.signature(target).parameters)
        allowed |= set(inspect.signature(cls.__init__).parameters)
    assert set(kwargs) <= allowed, set(kwargs) - allowed
    assert kwargs["seed"] == 7


def test_data_config_instantiates_digits(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    dm = instantiate(_data_cfg("digits", tmp_path).data)
    assert dm.flip is False and dm.crop_padding == 1 and dm.batch_size == 64


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_folder_config_selects_the_mode(in_memory: bool, tmp_path: Path) -> None:
    """``data.in_memory`` picks the class behind the single ``ImageFolderDataModule`` target."""
    from hydra.utils import instantiate

    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    dm = instantiate(_data_cfg("imagenet", tmp_path, in_memory=in_memory).data)
    cls = InMemoryImageFolderDataModule if in_memory else LazyImageFolderDataModule
    assert type(dm) is cls and dm.in_memory is in_memory
    assert (dm.num_classes, dm.image_size, dm.val_fraction) == (1000, 224, 0.01)
