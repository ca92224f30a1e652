"""One training epoch through the pipeline's own Lightning path: seconds/epoch and TFLOP/s.

Composes the real config (default ``experiment=cifar10_vgg16``, i.e. ``trainer=gpu``: bf16-mixed,
channels-last) plus any ``key=value`` overrides, builds the ReLU ANN and the data module exactly as
stage ``ann`` does, and fits one epoch without validation. Times the training batches (from the
first batch's start to the last batch's end, device synchronised), so data decoding and Trainer
setup are reported separately. Achieved FLOP/s counts a training step as 3x the forward FLOPs
(forward + backward for inputs and weights; PyTorch's FLOP counter, one multiply-add = 2 FLOPs).

    python scripts/bench_epoch.py --out results/bench_epoch.json data=cifar10_folder \\
        data.root=../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from lowlat.lit import Classifier
from lowlat.models import create_model

CONF = Path(__file__).resolve().parents[1] / "conf"
# Dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets (without 2:4 sparsity).
BF16_PEAK = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def bf16_peak(name: str) -> float | None:
    for key in sorted(BF16_PEAK, key=len, reverse=True):  # most specific first
        if key in name:
            return BF16_PEAK[key]
    return None


class BatchTimer(L.Callback):
    """Wall time of the training batches, device-synchronised at both ends."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.t1: float | None = None
        self.t_warm: float | None = None
        self.n = 0

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.t0 is None:
            self._sync(pl_module)
            self.t0 = time.perf_counter()
        if batch_idx == 10:  # after warm-up (cuDNN autotuning, compilation)
            self._sync(pl_module)
            self.t_warm = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.n += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.t1 = time.perf_counter()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench_epoch.json"))
    ap.add_argument("--experiment", default="cifar10_vgg16")
    ap.add_argument("--limit-batches", type=int, default=None, help="dry runs: stop early")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args(argv)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={args.experiment}", *args.overrides])
    t = time.perf_counter()
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    data_s = time.perf_counter() - t
    L.seed_everything(int(cfg.seed))
    kw = dict(cfg.model.get("kwargs") or {})
    model = create_model(str(cfg.model.name), dm.num_classes, dm.in_channels, "relu", **kw)
    x = torch.zeros(1, dm.in_channels, dm.image_size, dm.image_size)
    with FlopCounterMode(display=False) as fc:
        model.eval()(x)
    fwd_flops = fc.get_total_flops()  # per image
    lit = Classifier(model.train(), dm.num_classes, lr=float(cfg.ann.lr), epochs=1)
    timer = BatchTimer()
    trainer = hydra.utils.instantiate(
        cfg.trainer, max_epochs=1, logger=False, callbacks=[timer], limit_val_batches=0,
        limit_train_batches=args.limit_batches, enable_progress_bar=False)
    t = time.perf_counter()
    trainer.fit(lit, datamodule=dm)
    fit_s = time.perf_counter() - t
    batch = dm.batch_size
    images = timer.n * batch  # the last batch may be smaller: a slight overestimate
    train_s = timer.t1 - timer.t0
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    peak = bf16_peak(dev)
    tflops = 3 * fwd_flops * images / train_s / 1e12
    steady = None
    if timer.t_warm is not None and timer.n > 11:
        steady = 3 * fwd_flops * (timer.n - 10) * batch / (timer.t1 - timer.t_warm) / 1e12
    res = {
        "device": dev, "torch": torch.__version__, "model": str(cfg.model.name), "model_kwargs": kw,
        "precision": str(cfg.trainer.precision), "trainer": str(cfg.trainer.get("_target_")),
        "channels_last": bool(cfg.trainer.get("channels_last", False)),
        "compile_model": bool(cfg.trainer.get("compile_model", False)),
        "batch": batch, "batches": timer.n, "train_images": dm.train_size,
        "data_setup_s": data_s, "fit_s": fit_s, "train_batches_s": train_s,
        "seconds_per_epoch": train_s * dm.train_size / max(1, images),
        "forward_gflop_per_image": fwd_flops / 1e9, "achieved_tflops": tflops,
        "achieved_tflops_after_10_batches": steady,
        "bf16_dense_peak_tflops": peak,
        "share_of_bf16_peak": None if peak is None else tflops / peak,
        "overrides": args.overrides,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
