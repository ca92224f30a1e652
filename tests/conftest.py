"""Shared fixtures: config composition and one tiny end-to-end run reused by several tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lowlat.run`` in a subprocess, as a user would."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "lowlat.run", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The ``tiny`` experiment run end to end once (ann, phase1, phase2, eval)."""
    root = tmp_path_factory.mktemp("tiny")
    r = run_cli("stage=all", "experiment=tiny", f"paths.root_dir={root}")
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "runs" / "tiny"
