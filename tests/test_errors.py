"""Every user error ends the same way: one line on stderr, printed once, exit status 2, and the
run folder exactly as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run folder but Hydra's own job folders (it writes one per call)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.relative_to(run).parts[0] != "hydra"}


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    shutil.copytree(tiny_run.parent.parent, root, dirs_exist_ok=True)
    return root


@pytest.mark.parametrize("args,needles", [
    # unknown keys, even added with `+`, with the nearest valid key
    (["stage=phase2", "+phase2.lmpc.formla=abs"], ["phase2.lmpc.formla", "phase2.lowlat.formula"]),
    (["stage=phase1", "+phase1.levls=3"], ["phase1.levls", "phase1.levels"]),
    (["stage=eval", "+model.kwargs.widht=3"], ["model.kwargs", "widht"]),
    (["stage=ann", "+data.limit_tran=3"], ["data.limit_tran", "data.limit_train"]),
    # Hydra cannot build the target: refused up front, or when instantiated, still one line
    (["stage=eval", "data._target_=lowlat.data.Nope"], ["data._target_", "lowlat.data.Nope"]),
    (["stage=ann", "+data.num_classes=3"], ["data", "num_classes"]),
    # OmegaConf: a mandatory value left open, an interpolation to nowhere
    (["stage=ann", "ann.momentum=???"], ["ann.momentum"]),
    (["stage=phase2", "phase2.lwc.lr=${nope}"], ["phase2.lwc.lr", "nope"]),
])
def test_user_errors_one_line_exit_2_nothing_written(run_copy, args, needles):
    run = run_copy / "runs/tiny"
    before = _snapshot(run)
    r = run_cli(*args, "experiment=tiny", f"paths.root_dir={run_copy}")
    assert r.returncode == 2, (args, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr[-2000:])
    assert all(n in lines[0] for n in needles), (args, lines[0])
    assert lines[0][len("error: "):] not in r.stdout  # printed once, not logged to the console too
    assert _snapshot(run) == before, args


def test_hydra_refusals_exit_2(tmp_path):
    """An unknown group option is Hydra's to report (its message lists the options)."""
    r = run_cli("stage=ann", "data=nope", "experiment=tiny", f"paths.root_dir={tmp_path}")
    assert r.returncode == 2 and "data/nope" in r.stderr and "digits" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_diverged_training_exits_2_without_an_artifact(tmp_path):
    r = run_cli("stage=ann", "ann.lr=1e4", "ann.epochs=2", "data.limit_train=128",
                "experiment=tiny", f"paths.root_dir={tmp_path}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "NaN" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "runs/tiny/ann.pt").exists()
