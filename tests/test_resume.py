"""A killed run continues where it stopped and ends bit-identical to an uninterrupted one (CPU)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from lowlat.activations import QCActivation
from lowlat.artifacts import load_artifact
from lowlat.calibrate import CalibConfig, calibrate
from lowlat.convert import to_snn
from lowlat.lit import Classifier
from lowlat.stages import phase2, resume, train
from lowlat.stages.common import Context

CONF = Path(__file__).resolve().parents[1] / "conf"
_SAVE = resume.EpochCheckpoint.on_validation_end
SMALL = "data.limit_train=192"  # three batches an epoch: the test is about the bookkeeping


class Killed(Exception):
    """Stands in for SIGKILL inside the test process (the subprocess test sends the real one)."""


def _ctx(root: Path, *overrides: str) -> Context:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=tiny", f"paths.root_dir={root}",
                                           *overrides])
    return Context.from_cfg(cfg)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kill_at_epoch(monkeypatch, epoch: int) -> list[int]:
    """Kill fitting right after the checkpoint of ``epoch``; returns the epochs started."""
    started: list[int] = []
    def killer(self, trainer, pl_module):
        _SAVE(self, trainer, pl_module)
        if trainer.current_epoch == epoch:
            raise Killed

    def count(self):
        started.append(self.current_epoch)
        Classifier.set_train_mode(self)

    monkeypatch.setattr(resume.EpochCheckpoint, "on_validation_end", killer)
    monkeypatch.setattr(Classifier, "on_train_epoch_start", count)
    return started


def test_training_resumes_from_its_last_epoch(tmp_path, monkeypatch, caplog):
    ref = _ctx(tmp_path / "a", "ann.epochs=3", SMALL)
    train.run_ann(ref)
    ctx = _ctx(tmp_path / "b", "ann.epochs=3", SMALL)
    started = _kill_at_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        train.run_ann(ctx)
    folder = resume.checkpoint_folder(ctx.run_dir, "ann.pt")
    assert (folder / "last.ckpt").is_file() and not (ctx.run_dir / "ann.pt").exists()
    assert not list(folder.glob(".*.tmp"))  # written whole, then renamed
    started.clear()
    monkeypatch.setattr(resume.EpochCheckpoint, "on_validation_end", _SAVE)
    with caplog.at_level(logging.INFO, logger="lowlat"):
        train.run_ann(ctx)
    assert started == [2]  # only the epoch after the checkpoint ran again
    assert "resuming from" in caplog.text and "at epoch 2" in caplog.text
    a, b = load_artifact(ref.run_dir / "ann.pt"), load_artifact(ctx.run_dir / "ann.pt")
    assert _same_state(a["state_dict"], b["state_dict"])
    for k in ("val_top1", "best_val_top1", "best_epoch"):  # the best-epoch record survived
        assert a["metrics"][k] == b["metrics"][k], k
    assert not folder.exists() and not (ctx.run_dir / "ckpt").exists()


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, monkeypatch, caplog):
    ctx = _ctx(tmp_path, "ann.epochs=2", SMALL)
    started = _kill_at_epoch(monkeypatch, 0)
    with pytest.raises(Killed):
        train.run_ann(ctx)
    assert (resume.checkpoint_folder(ctx.run_dir, "ann.pt") / "last.ckpt").is_file()
    monkeypatch.setattr(resume.EpochCheckpoint, "on_validation_end", _SAVE)
    started.clear()
    changed = _ctx(tmp_path, "ann.epochs=2", SMALL, "ann.lr=0.04")
    with caplog.at_level(logging.INFO, logger="lowlat"):
        train.run_ann(changed)
    assert started == [0, 1] and "made under another config" in caplog.text
    assert load_artifact(ctx.run_dir / "ann.pt")["fingerprint"] == train.ann_fingerprint(changed)


def test_unreadable_checkpoint_starts_afresh(tmp_path):
    folder = tmp_path / "ckpt" / "ann"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"torn")
    assert resume.resume_path(folder, "fp", "ann") == (None, 0)
    assert not folder.exists()


# ---- phase2: per-layer partial files --------------------------------------------------------

def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), QCActivation(levels=4, init_lambda=1.5),
        nn.Linear(16, 12), QCActivation(levels=4, init_lambda=1.0),
        nn.Linear(12, 8), QCActivation(levels=4, init_lambda=1.0),
        nn.Linear(8, 3)).eval()


def test_calibrate_skips_done_layers_and_matches_an_uninterrupted_run(tmp_path):
    ann, xs = _net(), torch.rand(96, 6) * 2
    cc = CalibConfig(T=2, iterations=6, batch_size=32, lr=1e-2, eval_batch=48, seed=3)
    whole = to_snn(ann)
    full = calibrate(whole, ann, xs, cc, progress=False)
    assert len(full) == 3
    path, reports = tmp_path / "snn_T2_x.partial.pt", []
    killed = to_snn(ann)

    def save_then_die(rep: dict) -> None:
        reports.append(rep)
        resume.save_partial(path, killed, reports, "fp", 0.0)
        raise Killed

    with pytest.raises(Killed):
        calibrate(killed, ann, xs, cc, progress=False, log=save_then_die)
    part = resume.load_partial(path, "fp")
    assert part is not None and part["done"] == [full[0]["layer"]]
    resumed = to_snn(ann)
    resume.restore_snn(resumed, part["state_dict"])
    rest = calibrate(resumed, ann, xs, cc, progress=False, done=part["done"])
    assert [*part["reports"], *rest] == full
    assert _same_state(whole.state_dict(), resumed.state_dict())


def test_partial_of_another_config_is_ignored(tmp_path, caplog):
    path = tmp_path / "snn_T2_lmpc.partial.pt"
    resume.save_partial(path, to_snn(_net()), [{"layer": "1"}], "old", 1.0)
    assert resume.load_partial(path, "old")["done"] == ["1"]
    with caplog.at_level(logging.WARNING, logger="lowlat"):
        assert resume.load_partial(path, "new") is None
    assert "another config" in caplog.text and not path.exists()
    path.write_bytes(b"torn")
    assert resume.load_partial(path, "new") is None and not path.exists()


def test_phase2_resumes_after_its_last_layer(tiny_run, tmp_path, monkeypatch, caplog):
    """Only lowlat at T=2 is recalibrated (the other artifacts are up to date)."""
    roots = {}
    for name in ("a", "b"):
        roots[name] = tmp_path / name
        shutil.copytree(tiny_run.parent.parent, roots[name])
        (roots[name] / "runs/tiny/snn_T2_lowlat.pt").unlink()
    ref = _ctx(roots["a"], "logger={}")
    phase2.run_phase2(ref)
    ctx = _ctx(roots["b"], "logger={}")
    save = resume.save_partial

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(phase2, "save_partial", save_then_die)
    with pytest.raises(Killed):
        phase2.run_phase2(ctx)
    part = ctx.run_dir / "snn_T2_lowlat.partial.pt"
    assert part.is_file() and not (ctx.run_dir / "snn_T2_lowlat.pt").exists()
    monkeypatch.setattr(phase2, "save_partial", save)
    with caplog.at_level(logging.INFO, logger="lowlat"):
        phase2.run_phase2(ctx)
    assert "resuming after layers" in caplog.text and not part.exists()
    a = load_artifact(ref.run_dir / "snn_T2_lowlat.pt")
    b = load_artifact(ctx.run_dir / "snn_T2_lowlat.pt")
    assert _same_state(a["state_dict"], b["state_dict"])
    assert a["metrics"]["layers"] == b["metrics"]["layers"]
    assert a["metrics"]["val_top1"] == b["metrics"]["val_top1"]


# ---- the real thing: SIGKILL a subprocess, rerun, compare with the uninterrupted fixture ----

def _kill_when_written(args: list[str], run: Path, pattern: str, timeout: float = 600) -> None:
    """Start ``python -m lowlat.run *args`` and SIGKILL it once ``run/pattern`` exists."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    p = subprocess.Popen([sys.executable, "-m", "lowlat.run", *args], cwd=CONF.parent, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not list(run.glob(pattern)) and p.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, f"{args} ended before {pattern} appeared"


@pytest.mark.slow
def test_sigkill_then_rerun_matches_the_uninterrupted_run(tiny_run, tmp_path):
    from tests.conftest import run_cli

    args = ["experiment=tiny", f"paths.root_dir={tmp_path}"]
    run = tmp_path / "runs/tiny"
    _kill_when_written(["stage=ann", *args], run, "ckpt/ann/last.ckpt")
    assert not (run / "ann.pt").exists()
    r = run_cli("stage=ann", *args)
    assert r.returncode == 0 and "resuming from" in r.stdout + r.stderr, r.stderr[-2000:]
    r = run_cli("stage=phase1", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("ann.pt", "qcann.pt"):
        a, b = load_artifact(tiny_run / name), load_artifact(run / name)
        assert _same_state(a["state_dict"], b["state_dict"]) and a["metrics"]["best_epoch"] == \
            b["metrics"]["best_epoch"], name
    _kill_when_written(["stage=phase2", *args], run, "*.partial.pt")
    r = run_cli("stage=phase2", *args)
    assert r.returncode == 0 and "resuming after layers" in r.stdout + r.stderr, r.stderr[-2000:]
    for m in ("lmpc", "lwc", "lmpc+lwc", "lowlat"):
        a = load_artifact(tiny_run / f"snn_T2_{m}.pt")
        b = load_artifact(run / f"snn_T2_{m}.pt")
        assert _same_state(a["state_dict"], b["state_dict"]), m
        assert a["metrics"]["layers"] == b["metrics"]["layers"], m
        assert a["metrics"]["val_top1"] == b["metrics"]["val_top1"], m
    assert not list(run.glob("*.partial.pt")) and not (run / "ckpt").exists()
