"""Finding finished runs and reading what eval wrote: ``results.json`` and the job's overrides.

``results.json`` is the report's only source of numbers and of the run's data set and network
(eval records both), so a report never needs the artifacts' configs or the run folder's name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowlat.methods import METHODS

METHOD_ORDER = tuple(METHODS)


class ReportError(Exception):
    """Unusable input (a folder without results, an unknown paper column)."""


@dataclass
class Run:
    """One run folder: its results, the overrides of the job that wrote it."""

    path: Path
    results: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    name: str = ""  # how sweep tables name the run: as given, or relative to its multirun folder

    def row(self, method: str, T: int) -> dict[str, Any] | None:
        return next((r for r in self.results.get("rows", [])
                     if r["method"] == method and int(r["T"]) == T), None)

    def top1(self, method: str, T: int, split: str = "test") -> float | None:
        """Our top-1 in percent on the test split (``top1``) or validation (``val_top1``)."""
        r = self.row(method, T)
        key = "top1" if split == "test" else "val_top1"
        return None if r is None or r.get(key) is None else 100.0 * float(r[key])

    def ann_top1(self, method: str) -> float | None:
        """The ANN accuracy a method starts from (RateNorm has its own ANN), test, in percent."""
        v = self.results.get("ratenorm_ann_top1" if method == "ratenorm" else "ann_top1")
        return None if v is None else 100.0 * float(v)

    def test_subset(self) -> str:
        """How much of the test split the figures stand on, for every table heading."""
        n, total = self.results.get("test_images"), self.results.get("test_images_total")
        if n is None:
            return "test split"
        if total and n < total:
            return f"test split, first {n} of {total} images (a stratified prefix)"
        return f"full test split, {n} images"

    def dataset(self) -> str | None:
        """``cifar10``/``cifar100`` as eval recorded the data set: its ``name`` (torchvision's
        CIFAR), or a folder of CIFAR images with 10 or 100 classes; None for anything else."""
        d = self.results.get("dataset") or {}
        if d.get("name"):
            return str(d["name"])
        n = int(d.get("num_classes") or 0)
        return f"cifar{n}" if n in (10, 100) and "cifar" in Path(str(d.get("root", ""))).name \
            else None

    def network(self) -> str:
        """The registered model name eval recorded (a user factory's path for user models)."""
        m = self.results.get("model") or {}
        return str(m.get("name") or m.get("factory") or "?")

    def methods(self) -> list[str]:
        found = {r["method"] for r in self.results.get("rows", [])}
        return [m for m in METHOD_ORDER if m in found] + sorted(found - set(METHOD_ORDER))

    def timesteps(self, method: str | None = None) -> list[int]:
        return sorted({int(r["T"]) for r in self.results.get("rows", [])
                       if method is None or r["method"] == method})


def _read_overrides(run_dir: Path, stop: Path | None = None) -> list[str]:
    """Overrides of the job that wrote ``run_dir``: its multirun job folder's (a parent up to
    ``stop``) ``.hydra/overrides.yaml``, else the latest single run's ``hydra/<stage>-<time>/``."""
    import yaml

    found = []
    for d in (run_dir, *run_dir.parents):
        found.append(d / ".hydra" / "overrides.yaml")
        if stop is None or d == stop:
            break
    found += sorted(run_dir.glob("hydra/*/.hydra/overrides.yaml"), key=lambda f: f.stat().st_mtime,
                    reverse=True)
    for f in found:
        if f.is_file():
            return [str(o) for o in (yaml.safe_load(f.read_text()) or [])]
    return []


def load_run(path: str | Path, stop: Path | None = None) -> Run:
    """The run in ``path``; ``stop`` is the multirun folder it was found in, if any."""
    path = Path(path)
    f = path / "results.json"
    if not f.is_file():
        raise ReportError(f"{path}: no results.json here (run `python -m lowlat.run stage=all` "
                          "first, or give a run folder / Hydra multirun folder)")
    try:
        results = json.loads(f.read_text())
    except ValueError as e:
        raise ReportError(f"{f}: not valid JSON ({e})") from e
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ReportError(f"{f}: expected an object with a 'rows' list")
    name = str(path.relative_to(stop)) if stop is not None else str(path)
    return Run(path, results, _read_overrides(path, stop), name)


def find_runs(paths: Iterable[str | Path], max_depth: int = 4) -> tuple[list[Run], list[Run]]:
    """Expand arguments into ``(explicit run folders, runs found inside multirun folders)``."""
    explicit, nested = [], []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            explicit.append(load_run(p))
            continue
        if not p.is_dir():
            raise ReportError(f"{p}: no such folder")
        found = sorted((f.parent for f in p.rglob("results.json")
                        if len(f.relative_to(p).parts) <= max_depth + 1),
                       key=lambda d: [int(s) if s.isdigit() else s for s in d.relative_to(p).parts])
        if not found:
            raise ReportError(f"{p}: no results.json here or in its subfolders (is it a run "
                              "folder or a Hydra multirun folder?)")
        nested += [load_run(d, stop=p) for d in found]
    return explicit, nested
