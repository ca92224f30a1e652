"""``trainer=ddp`` under Hydra with 2 CPU processes (gloo): one artifact, written by rank 0, data
sharded across ranks, and the accuracy of a single-process run within a stated tolerance."""

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

# Same global batch (2 ranks x 32 = 64, the digits default) and steps per epoch as one process;
# what differs is the sample order and per-rank BatchNorm statistics (SyncBatchNorm needs a GPU).
# 15 epochs on 512 digits, 128 test images: runs differ by a few images; 0.1 = 13 images.
TOLERANCE = 0.10
DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
       "trainer.sync_batchnorm=false", "trainer.precision=32-true", "data.batch_size=32")


def _last_step(run: Path) -> int:
    rows = [r for f in run.glob("logs/ann/*/metrics.csv") for r in csv.DictReader(f.open())]
    return max(int(r["step"]) for r in rows)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    single = run_cli("stage=ann", "experiment=tiny", f"paths.root_dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli("stage=ann", "experiment=tiny", f"paths.root_dir={tmp_path / 'ddp'}", *DDP)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = tmp_path / "one/runs/tiny", tmp_path / "ddp/runs/tiny"
    assert "MEMBER: 2/2" in ddp.stderr + ddp.stdout  # really two processes
    # written once: one artifact, one logger version (rank 1 neither saves nor logs)
    assert sorted(p.name for p in two.glob("*.pt")) == ["ann.pt"]
    assert len(list(two.glob("logs/ann/*/metrics.csv"))) == 1
    # sharded: each rank sees half the data, so as many optimizer steps as one process
    assert _last_step(two) == _last_step(one)
    a1 = torch.load(one / "ann.pt", weights_only=True)["metrics"]["test_top1"]
    a2 = torch.load(two / "ann.pt", weights_only=True)["metrics"]["test_top1"]
    assert abs(a1 - a2) <= TOLERANCE, (a1, a2)
