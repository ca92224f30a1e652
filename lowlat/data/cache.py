"""Decoding an image folder or tar once into uint8 tensors, cached as a ``.pt`` file.

The cache key is the root path, ``image_size`` and the size/mtime of the tar (or of every file
in a folder), so a changed source is decoded again instead of served stale.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2

from .index import label_splits, scan_folder, scan_tar

CACHE_VERSION = 1  # bump when the cached tensor layout changes


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


def _decode_file(path: str, size: int) -> Tensor:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return fit_image(decode_image_bytes(data), size)
    except Exception as e:
        raise ValueError(f"cannot decode image {path!r}: {e}") from e


def decode_all(root: str, is_tar: bool, size: int) -> dict[str, Any]:
    """``{"classes", "train_x", "train_y", "test_x", "test_y"}``, images ``[N, 3, size, size]``.

    A tar is streamed once (any compression, no extraction).
    """
    if is_tar:
        found = scan_tar(
            root, lambda tf, m: fit_image(decode_image_bytes(tf.extractfile(m).read()), size),
            stream=True,
        )
    else:
        found = {
            split: [(cls, _decode_file(path, size)) for cls, path in items]
            for split, items in scan_folder(root).items()
        }
    lab = label_splits(found, root)
    out: dict[str, Any] = {"classes": lab.classes}
    for split in ("train", "test"):
        out[f"{split}_x"] = torch.stack(lab.sources[split])  # [N, 3, size, size] uint8
        out[f"{split}_y"] = torch.from_numpy(lab.labels[split])
    return out


def cache_path(cache_dir: str | None, root: str, is_tar: bool, size: int) -> str | None:
    """Where the decoded tensors of ``root`` at ``size`` px live (None: no cache)."""
    if cache_dir is None:
        return None
    h = hashlib.sha256()
    h.update(f"{CACHE_VERSION}|{root}|{size}".encode())
    if is_tar:
        st = os.stat(root)
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    else:  # a folder: every file's name, size and mtime
        for split, items in sorted(scan_folder(root).items()):
            for _, path in items:
                st = os.stat(path)
                h.update(f"|{split}|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    name = Path(root).name.replace(".", "_")
    return os.path.join(cache_dir, f"{name}-{size}px-{h.hexdigest()[:16]}.pt")


def load_decoded(
    root: str, is_tar: bool, size: int, cache_dir: str | None
) -> tuple[dict[str, Any], float | None]:
    """Decoded tensors from the cache, or decoded now and cached; and the decode time in s.

    The time is None on a cache hit. An unreadable cache is rebuilt; the write is atomic, so
    concurrent readers never see a partial file.
    """
    path = cache_path(cache_dir, root, is_tar, size)
    if path is not None and os.path.exists(path):
        try:
            return torch.load(path, weights_only=True), None
        except Exception as e:  # corrupt/incompatible cache: rebuild it
            warnings.warn(f"ignoring unreadable cache {path}: {e}", stacklevel=2)
    t0 = time.perf_counter()
    decoded = decode_all(root, is_tar, size)
    seconds = time.perf_counter() - t0
    if path is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            torch.save(decoded, tmp)
            os.replace(tmp, path)
        except OSError as e:
            warnings.warn(f"could not write cache {path}: {e}", stacklevel=2)
    return decoded, seconds
