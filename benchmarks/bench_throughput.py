"""Training throughput: the full pipeline against the model step alone, measured in the same run.

    python benchmarks/bench_throughput.py                    # auto: GPU -> ResNet-50 at 224, CPU -> small setting
    python benchmarks/bench_throughput.py --backbone resnet50 --size 224 --batch 32 --workers 8

Prints images per second of
1. the full pipeline: PNG decode + the paper's augmentation (DataLoader workers) + forward +
   backward + SGD step, exactly as ``dbloss train`` runs it (class-aware sampler, DB-Focal);
2. the model step alone (forward + backward + step) on a batch already in memory (on the device);
and their ratio. A ratio well below 1 means data loading is the bottleneck.
The images are the built-in demo data (generated once into ``--data``), resized on the fly.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dbloss.data import MultiLabelImageDataset, generate_demo_dataset, read_coco, train_transform
from dbloss.losses import build_loss
from dbloss.models.classifier import build_model
from dbloss.sampling import ClassAwareSampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=None, help="default: resnet50 on GPU, resnet18 on CPU")
    p.add_argument("--size", type=int, default=None, help="default: 224 on GPU, 112 on CPU")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 50 on GPU, 6 on CPU)")
    p.add_argument("--workers", type=int, default=None, help="default: min(8, cpus - 1) on GPU, cpus - 1 on CPU")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--data", default="demo_data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    backbone = args.backbone or ("resnet50" if gpu else "resnet18")
    size = args.size or (224 if gpu else 112)
    iters = args.iters or (50 if gpu else 6)
    cpus = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else (min(8, cpus - 1) if gpu else max(1, cpus - 1))

    paths = generate_demo_dataset(args.data)
    table = read_coco(paths.train_json, paths.image_root)
    ds = MultiLabelImageDataset(table, train_transform(size))
    freq = torch.as_tensor(table.labels.sum(0))
    model = build_model(table.num_classes, backbone=backbone, weights=None).to(device)
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss("db-focal", freq, len(table)).to(device)
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01, momentum=0.9)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
           if args.amp != "none" else None)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        if amp is not None:
            with amp:
                logits = model(x)
        else:
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    model.train()
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, sampler=ClassAwareSampler(table.labels),
                                         num_workers=workers, pin_memory=gpu, drop_last=True,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    for _ in range(2):  # warm-up: worker start, cudnn autotune
        x, y, _ = next(it)
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        x, y, _ = next(it)
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    sync()
    full = iters * args.batch / (time.perf_counter() - t0)

    x, y = x.to(device), y.to(device)
    step(x, y)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step(x, y)
    sync()
    model_only = iters * args.batch / (time.perf_counter() - t0)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({cpus} cores, {torch.get_num_threads()} threads)"
    print(f"{name}: {backbone} at {size}x{size}, batch {args.batch}, {workers} workers, amp={args.amp}, "
          f"{iters} timed iterations")
    print(f"full pipeline (decode + augment + step): {full:,.1f} images/s")
    print(f"model step alone (tensors in memory):     {model_only:,.1f} images/s")
    print(f"ratio full / model-only: {full / model_only:.2f} "
          f"({'data loading is the bottleneck' if full / model_only < 0.9 else 'the model step dominates'})")


if __name__ == "__main__":
    main()
