"""Seconds per training epoch of the paper's networks on CIFAR-10 (the shared JPEG copy).

Times ``--steps`` SGD steps at batch 128 (augmentation on the device included) after a warm-up,
and extrapolates to one epoch of the training split. Writes JSON and a Markdown table.

    python scripts/bench_train.py --data ../shared/data/cifar10-jpeg.tar.gz --models vgg16 resnet20
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lowlat.data import ImageFolderDataModule
from lowlat.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet20"])
    ap.add_argument("--act", default="relu", help="relu (ANN stage) or qc (phase1 stage)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if args.device == "auto" else args.device))
    dm = ImageFolderDataModule(root=args.data, num_classes=10, batch_size=args.batch)
    dm.setup()
    steps_per_epoch = -(-dm.train_size // args.batch)
    loader = iter(dm.train_dataloader())
    rows = []
    for name in args.models:
        model = create_model(name, 10, 3, args.act).to(dev).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step(model=model, opt=opt) -> None:
            nonlocal loader
            try:
                x, y = next(loader)
            except StopIteration:
                loader = iter(dm.train_dataloader())
                x, y = next(loader)
            x = dm.transform_batch(x.to(dev), train=True)
            loss = F.cross_entropy(model(x), y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(2):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / args.steps
        rows.append({"model": name, "act": args.act, "device": str(dev), "batch": args.batch,
                     "seconds_per_step": per_step, "steps_per_epoch": steps_per_epoch,
                     "seconds_per_epoch": per_step * steps_per_epoch,
                     "params_M": sum(p.numel() for p in model.parameters()) / 1e6})
        print(f"{name}: {per_step:.3f} s/step -> {per_step * steps_per_epoch:.0f} s/epoch on {dev}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "train_images": dm.train_size, "rows": rows}
    tag = f"bench_train_{dev.type}"
    (out / f"{tag}.json").write_text(json.dumps(meta, indent=1))
    md = [f"| model | act | device | s/step (batch {args.batch}) "
          f"| s/epoch ({dm.train_size} imgs) |",
          "|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['act']} | {r['device']} | {r['seconds_per_step']:.3f} | "
           f"{r['seconds_per_epoch']:.0f} |" for r in rows]
    (out / f"{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
