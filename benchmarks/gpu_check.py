"""The GPU path, checked in one run: CUDA losses, bf16 + channels-last (+ compile) training, throughput.

    python benchmarks/gpu_check.py                      # on a CUDA machine: the full check (< 8 min on one GPU)
    python benchmarks/gpu_check.py --device cpu --quick # a smoke run of the same code on a CPU

Each section runs on its own (a failure is reported and the others still run) and prints what it
measured; the summary at the end lists every section as ok / FAILED with its figures, and the
exit status is 1 if any section failed. Sections:

1. ``losses``: every loss of ``build_loss`` forward + backward on the device against the CPU
   (float64 on both: max abs difference of value and gradient), and DB-Focal fwd+bwd time over
   BCE's (``F.binary_cross_entropy_with_logits``) at VOC, COCO and 1,000-class sizes.
2. ``train``: ResNet-50 at 224 (``--backbone``, ``--size``) on synthetic tensors already on the
   device, ``--steps`` SGD steps of DB-Focal under bf16 autocast and channels-last, eager and then
   ``torch.compile``d: images/s of each, compile time, the loss finite throughout.
3. ``pipeline``: ``benchmarks/bench_throughput.py`` (PNG decode + augmentation in DataLoader
   workers + step, against the step alone) under bf16.
4. ``engine``: ``dbloss train`` of the demo RS recipe on the device for two short epochs with bf16,
   workers and pinned memory: the real training path end to end, mAP printed.

The CUDA unit tests are run by ``benchmarks/gpu_check.sh`` before this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Seconds per call of ``fn`` (after two warm-up calls), synchronised on the device."""
    for _ in range(2):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / reps


def check_losses(device: torch.device, quick: bool) -> dict[str, Any]:
    from dbloss.losses import LOSS_NAMES, build_loss

    g = torch.Generator().manual_seed(0)
    b, c = 64, 20
    freq = torch.randint(1, 200, (c,), generator=g).double()
    logits = torch.randn(b, c, generator=g, dtype=torch.float64)
    targets = (torch.rand(b, c, generator=g) < 0.2).long()
    targets[0] = 0  # a row without positives
    targets[1, :3] = -1  # ignored entries
    diffs = {}
    for name in LOSS_NAMES:
        out = {}
        for dev in (torch.device("cpu"), device):
            z = logits.to(dev).requires_grad_()
            loss = build_loss(name, freq, 400).to(dev)(z, targets.to(dev))
            loss.backward()
            out[dev.type] = (loss.detach().cpu(), z.grad.cpu())
        (v0, g0), (v1, g1) = out["cpu"], out[device.type]
        diffs[name] = max(float((v0 - v1).abs()), float((g0 - g1).abs().max()))
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > 1e-9:
        raise AssertionError(f"{worst}: device and CPU differ by {diffs[worst]:.3g} (float64)")
    print(f"  every loss on {device} equals the CPU in float64 (largest difference {diffs[worst]:.2e}, {worst})")
    ratios = {}
    sizes = [(32, 20), (64, 80), (256, 1000)] if not quick else [(32, 20)]
    for b, c in sizes:
        freq = torch.randint(1, 500, (c,), generator=g).float().to(device)
        z = torch.randn(b, c, generator=g).to(device).requires_grad_()
        y = (torch.rand(b, c, generator=g) < 0.1).float().to(device)
        db = build_loss("db-focal", freq, 2000).to(device)

        def db_step() -> None:
            db(z, y).backward()

        def bce_step() -> None:
            F.binary_cross_entropy_with_logits(z, y).backward()

        reps = 20 if quick else 200
        ratio = _time(db_step, device, reps) / _time(bce_step, device, reps)
        ratios[f"{b}x{c}"] = round(ratio, 2)
        print(f"  DB-Focal fwd+bwd / BCE at {b} x {c}: {ratio:.2f}x")
    return {"max_abs_diff_vs_cpu": diffs[worst], "db_focal_over_bce": ratios}


def check_train(device: torch.device, backbone: str, size: int, batch: int, steps: int,
                compile_too: bool) -> dict[str, Any]:
    from dbloss.losses import build_loss
    from dbloss.models.classifier import build_model

    c = 80
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = (torch.rand(batch, c, generator=g) < 0.05).float().to(device)
    freq = torch.randint(1, 500, (c,), generator=g).float()
    results: dict[str, Any] = {}
    cuda = device.type == "cuda"
    for mode in ("eager", "compiled") if compile_too else ("eager",):
        model = build_model(c, backbone=backbone, weights=None, frozen_stages=0).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        loss_fn = build_loss("db-focal", freq, 2000).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        run = torch.compile(model) if mode == "compiled" else model
        losses: list[torch.Tensor] = []

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = run(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())  # no host sync inside the loop

        t0 = time.perf_counter()
        step()
        _sync(device)
        first = time.perf_counter() - t0
        per_step = _time(step, device, steps)
        values = torch.stack(losses).float().cpu()
        if not bool(torch.isfinite(values).all()):
            raise AssertionError(f"{mode}: non-finite loss at step {int((~torch.isfinite(values)).nonzero()[0])}")
        results[mode] = {"images_per_s": round(batch / per_step, 1), "first_step_s": round(first, 1),
                         "loss_first_last": [round(float(values[0]), 4), round(float(values[-1]), 4)]}
        print(f"  {mode}: {batch / per_step:,.1f} images/s ({backbone} at {size}, batch {batch}, "
              f"{'bf16 + channels-last' if cuda else 'float32'}); first step {first:.1f} s; "
              f"loss {float(values[0]):.4f} -> {float(values[-1]):.4f}")
    if "compiled" in results:
        speedup = results["compiled"]["images_per_s"] / results["eager"]["images_per_s"]
        results["compiled_over_eager"] = round(speedup, 2)
        print(f"  compiled / eager: {speedup:.2f}x")
    return results


def _run(cmd: list[str], timeout: float) -> str:
    print("  $ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def check_pipeline(device: torch.device, quick: bool, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, "benchmarks/bench_throughput.py", "--device", str(device), "--data", str(data),
           "--amp", "bf16" if device.type == "cuda" else "none"]
    if quick:
        cmd += ["--iters", "2", "--size", "64", "--batch", "8"]
    out = _run(cmd, timeout=300)
    print("  " + out.strip().replace("\n", "\n  "))
    ratio = [line for line in out.splitlines() if line.startswith("ratio")]
    return {"output": out.strip().splitlines(), "ratio_line": ratio[0] if ratio else None}


def check_engine(device: torch.device, quick: bool, out: Path) -> dict[str, Any]:
    sets = [f"run.device={device}", "schedule.epochs=2"]
    if device.type == "cuda":
        sets += ["run.amp=bf16", "data.workers=4", "data.pin_memory=true"]
    if quick:
        sets += ["data.image_size=32", "model.weights=null", "optim.batch_size=64", "data.workers=0", "sampler.reduce=32"]
    cmd = [sys.executable, "-m", "dbloss", "train", "configs/demo/rs.yaml", *sets, "--out", str(out),
           "--overwrite", "--no-progress"]
    _run(cmd, timeout=420)
    metrics = json.loads((out / "metrics.json").read_text())
    total = 100 * metrics["mAP"]["total"]
    print(f"  dbloss train on {device}: mAP {total:.2f} after 2 epochs")
    return {"mAP": round(total, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the same code")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="timed training steps per mode")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--sections", nargs="+", default=["losses", "train", "pipeline", "engine"])
    p.add_argument("--work", default="runs/gpu_check", help="scratch folder (demo data, the engine's run)")
    p.add_argument("--json", default=None, help="also write the summary here")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu --quick for a smoke run")
        return 2
    if args.quick:
        args.backbone, args.size, args.batch, args.steps = "resnet18", 64, 4, 2
    work = ROOT / args.work
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    sections = {
        "losses": lambda: check_losses(device, args.quick),
        "train": lambda: check_train(device, args.backbone, args.size, args.batch, args.steps,
                                     not args.no_compile and not args.quick),
        "pipeline": lambda: check_pipeline(device, args.quick, work / "demo_data"),
        "engine": lambda: check_engine(device, args.quick, work / "engine"),
    }
    summary: dict[str, Any] = {"device": name, "torch": torch.__version__}
    failed = []
    for key in args.sections:
        print(f"== {key}")
        t0 = time.perf_counter()
        try:
            summary[key] = {"ok": True, **sections[key]()}
        except Exception as e:  # noqa: BLE001 - report and go on to the next section
            traceback.print_exc()
            summary[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
            failed.append(key)
        summary[key]["seconds"] = round(time.perf_counter() - t0, 1)
    print("== summary")
    for key in args.sections:
        print(f"  {key:9s} {'ok' if summary[key]['ok'] else 'FAILED'} ({summary[key]['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
