"""Finding the images of an image folder or tar: ``[top/]{train,test|val}/<class>/<file>``.

One scan per source kind serves both modes: the in-memory mode asks it for decoded images, the
lazy mode for file paths or tar offsets. Class order is the sorted folder names, as in
``torchvision.datasets.ImageFolder`` (whose ``find_classes`` and ``IMG_EXTENSIONS`` we use).
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

SPLIT_DIRS = ("train", "test", "val")  # "val" is accepted as the test split when "test" is absent
T = TypeVar("T")
# what a damaged archive raises while being read
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
Found = dict[str, list[tuple[str, Any]]]  # split -> [(class name, source)]


def resolve_root(root: str) -> tuple[str, bool]:
    """Absolute ``root`` and whether it is a tar file; refuses a missing or non-tar path."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder root not found: {root!r}")
    is_tar = os.path.isfile(root)
    if is_tar:
        try:
            ok = tarfile.is_tarfile(root)
        except _ARCHIVE_ERRORS:  # e.g. EOFError from a gzip cut inside its first member
            ok = False
        if not ok:
            raise ValueError(
                f"{root!r} is a file but not a tar archive (or it is truncated or corrupt)"
            )
    return root, is_tar


def _magic(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(6)


def _is_gzip(path: str) -> bool:
    return _magic(path)[:2] == b"\x1f\x8b"


def is_compressed(path: str) -> bool:
    """gzip, bzip2 or xz magic bytes: such a tar has no random access."""
    magic = _magic(path)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00"


def check_num_classes(expected: int | None, classes: list[str], root: str) -> None:
    """Refuse a class count that differs from the configured ``num_classes``."""
    if expected is not None and expected != len(classes):
        shown = classes if len(classes) <= 20 else classes[:20] + ["..."]
        raise ValueError(
            f"num_classes={expected} but {root!r} has {len(classes)} class folders: {shown}"
        )


def folder_base(root: str) -> str:
    """Folder holding train/ and test/: root, or its single subfolder that has them."""
    if os.path.isdir(os.path.join(root, "train")):
        return root
    subs = [e.path for e in os.scandir(root) if e.is_dir()]
    if len(subs) == 1 and os.path.isdir(os.path.join(subs[0], "train")):
        return subs[0]
    raise FileNotFoundError(f"no train/ folder in {root!r}")


def folder_classes(root: str) -> list[str]:
    """Class folder names under ``train/`` of an image folder, sorted."""
    return find_classes(os.path.join(folder_base(root), "train"))[0]


def scan_folder(root: str) -> Found:
    """``{split: [(class, path)]}`` ordered by class, then file name."""
    base = folder_base(root)
    found: Found = {}
    for split in SPLIT_DIRS:
        split_dir = os.path.join(base, split)
        if not os.path.isdir(split_dir):
            continue
        try:
            classes = find_classes(split_dir)[0]
        except FileNotFoundError:  # no class folder: the split is empty
            classes = []
        items = []
        for cls in classes:
            cls_dir = os.path.join(split_dir, cls)
            files = sorted(f for f in os.listdir(cls_dir) if f.lower().endswith(IMG_EXTENSIONS))
            items += [(cls, os.path.join(cls_dir, f)) for f in files]
        found[split] = items
    return found


def parse_member(name: str) -> tuple[str, str, str] | None:
    """Tar member path -> (top folder or "", split, class) for ``[top/]split/class/file``."""
    parts = [p for p in name.split("/") if p not in (".", "")]  # str ops: 60k calls are hot
    if not parts or not parts[-1].lower().endswith(IMG_EXTENSIONS):
        return None
    if len(parts) == 4 and parts[0] not in SPLIT_DIRS and parts[1] in SPLIT_DIRS:
        return parts[0], parts[1], parts[2]
    if len(parts) == 3 and parts[0] in SPLIT_DIRS:
        return "", parts[0], parts[1]
    return None


def _members(path: str, stream: bool) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Every member of a tar in one pass, then a check that the archive really ended.

    ``tarfile`` stops silently at a damaged member header and never checks a gzip CRC, so the
    bytes after the last member must be the zero end blocks, read to the end of a gzip stream.
    """
    with ExitStack() as stack:
        if stream and _is_gzip(path):
            gz = stack.enter_context(gzip.open(path, "rb"))
            tf = stack.enter_context(tarfile.open(fileobj=gz, mode="r|"))
        else:
            tf = stack.enter_context(tarfile.open(path, "r|*" if stream else "r:"))
        for m in tf:
            yield tf, m
        # tarfile stopped at tf.offset; a stream has consumed the block there already
        seen = 0
        if stream:
            seen = tf.fileobj.tell() - tf.offset
        else:
            tf.fileobj.seek(tf.offset)
        while chunk := tf.fileobj.read(1 << 20):
            if chunk.count(0) != len(chunk):
                raise tarfile.ReadError("data after the last readable member (a damaged header)")
            seen += len(chunk)
        if seen < tarfile.BLOCKSIZE:
            raise tarfile.ReadError("no end-of-archive block (the file is cut short)")


def scan_tar(
    path: str, load: Callable[[tarfile.TarFile, tarfile.TarInfo], T], stream: bool
) -> dict[str, list[tuple[str, T]]]:
    """One pass over a tar: ``{split: [(class, load(tar, member))]}`` sorted by member name.

    Sorting makes the archive's member order irrelevant. ``stream`` reads sequentially (any
    compression, no seeking); otherwise the tar must be uncompressed. A truncated or corrupt
    archive raises ``ValueError`` naming the file instead of a bare ``tarfile.ReadError``.
    """
    def _load(tf: tarfile.TarFile, m: tarfile.TarInfo) -> T:
        try:
            return load(tf, m)
        except _ARCHIVE_ERRORS:
            raise
        except Exception as e:  # a bad image inside a sound archive: name the member
            raise ValueError(f"cannot read {m.name!r} in {path!r}: {e}") from e

    tops: set[str] = set()
    named: dict[str, list[tuple[str, str, T]]] = {}
    try:
        for tf, m in _members(path, stream):
            parsed = parse_member(m.name) if m.isfile() else None
            if parsed:
                tops.add(parsed[0])
                named.setdefault(parsed[1], []).append((m.name, parsed[2], _load(tf, m)))
    except _ARCHIVE_ERRORS as e:
        raise ValueError(
            f"cannot read the tar archive {path!r}: it is truncated or corrupt "
            f"({type(e).__name__}: {e}); copy or download it again"
        ) from e
    if len(tops) > 1:
        raise ValueError(f"{path!r} holds several top-level folders with train/: {sorted(tops)}")
    return {k: [(c, src) for _, c, src in sorted(v, key=lambda t: t[0])] for k, v in named.items()}


def _test_split_name(present: Sequence[str], where: str) -> str:
    if "test" in present:
        return "test"
    if "val" in present:
        return "val"
    raise FileNotFoundError(f"no test/<class>/ (or val/<class>/) images found in {where}")


@dataclass
class Labeled:
    """Sorted class names and, for ``train`` and ``test``, the sources and int64 labels."""

    classes: list[str]
    sources: dict[str, list[Any]]
    labels: dict[str, np.ndarray]


def label_splits(found: Found, where: str) -> Labeled:
    """``{split: [(class, source)]}`` -> classes of ``train/``, train and test sources + labels.

    ``val/`` serves as the test split when there is no ``test/`` (ImageNet's layout).
    """
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
    return Labeled(classes, sources, labels)
