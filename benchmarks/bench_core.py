"""Core benchmark: loss, metric and sampler speed, as ratios measured in the same run.

    python benchmarks/bench_core.py [--repeats 20] [--json out.json]

Prints
1. forward+backward time of ``db-focal`` / that of ``F.binary_cross_entropy_with_logits`` at
   (B, C) = (256, 80) and (1024, 1000) on the CPU (target: within 2x), for the fused kernel
   (``backend="kernel"``, the default on the CPU; skipped where it cannot be built) and the
   torch-ops path (``backend="torch"``), the three timed in turn in every repeat;
2. ``mean_average_precision`` time / scikit-learn's per-class ``average_precision_score`` loop at
   10,000 x 1,000 (and that the values agree);
3. the class-aware sampler's indices per second (N = 100,000 samples, C = 1,000 classes).
Timings are medians over repeats; the machine is noisy, so read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dbloss.files import write_json
from dbloss.losses import build_loss, fused
from dbloss.metrics import average_precision, mean_average_precision
from dbloss.sampling import ClassAwareSampler


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each function, timed in turn within every repeat (so that slow phases of
    a noisy machine hit all of them alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_loss(batch: int, classes: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    freq = torch.randint(1, 1000, (classes,), generator=g)
    num_samples = int(freq.max()) * 4
    logits = torch.randn(batch, classes, generator=g, requires_grad=True)
    targets = (torch.rand(batch, classes, generator=g) < 0.05).float()
    fns = {"bce": lambda: F.binary_cross_entropy_with_logits(logits, targets).backward()}
    for backend in ("kernel", "torch"):
        if backend == "kernel" and not fused.available():
            continue  # no compiler here: the torch row only
        loss_fn = build_loss("db-focal", freq, num_samples, backend=backend)
        fns[f"db_{backend}"] = lambda fn=loss_fn: fn(logits, targets).backward()  # type: ignore[misc]
    med = interleaved_medians(fns, repeats)
    res: dict[str, float] = {"batch": batch, "classes": classes, "bce_ms": 1e3 * med["bce"]}
    for backend in ("kernel", "torch"):
        if f"db_{backend}" in med:
            res[f"db_{backend}_ms"] = 1e3 * med[f"db_{backend}"]
            res[f"ratio_{backend}"] = med[f"db_{backend}"] / med["bce"]
    return res


def bench_map(n: int, classes: int, repeats: int) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    targets = (rng.random((n, classes)) < 0.05).astype(np.int64)
    targets[0] = 1  # every class has a positive
    scores = np.round(rng.random((n, classes)) + 0.3 * targets, 3)  # rounded: many ties
    st, tt = torch.from_numpy(scores), torch.from_numpy(targets)

    def ours() -> None:
        mean_average_precision(st, tt)

    def sklearn_loop() -> list[float]:
        return [average_precision_score(targets[:, k], scores[:, k]) for k in range(classes)]

    t_ours = median_time(ours, repeats, warmup=1)
    t_sk = median_time(sklearn_loop, max(1, repeats // 5), warmup=0)
    diff = float(np.max(np.abs(average_precision(st, tt).numpy() - np.array(sklearn_loop()))))
    return {"n": n, "classes": classes, "ours_s": t_ours, "sklearn_s": t_sk, "ratio": t_ours / t_sk,
            "max_abs_diff": diff}


def bench_sampler(n: int, classes: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    labels = np.zeros((n, classes), dtype=np.int64)
    freq = np.maximum(1, (2000 * 0.995 ** np.arange(classes)).astype(int))  # long-tailed
    for k, c in enumerate(freq):
        labels[rng.choice(n, c, replace=False), k] = 1
    sampler = ClassAwareSampler(labels, seed=0)

    def draw() -> int:
        return sum(1 for _ in sampler)

    t = median_time(draw, max(1, repeats // 5), warmup=1)
    return {"n": n, "classes": classes, "epoch_len": len(sampler), "seconds": t, "indices_per_s": len(sampler) / t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    res = {"torch_threads": torch.get_num_threads(), "loss": [], "map": None, "sampler": None}
    print(f"CPU, {torch.get_num_threads()} torch threads, median of {args.repeats} repeats "
          f"({5 * args.repeats} for the (256, 80) loss)")
    for b, c in ((256, 80), (1024, 1000)):
        r = bench_loss(b, c, args.repeats * (5 if b * c < 100_000 else 1))
        res["loss"].append(r)
        for backend in ("kernel", "torch"):
            if f"ratio_{backend}" in r:
                print(f"loss fwd+bwd (B, C) = ({b}, {c}): db-focal [{backend}] {r[f'db_{backend}_ms']:.3f} ms, "
                      f"BCE {r['bce_ms']:.3f} ms, ratio {r[f'ratio_{backend}']:.2f}x (target <= 2x)")
    r = bench_map(10_000, 1_000, max(3, args.repeats // 4))
    res["map"] = r
    print(f"mAP 10,000 x 1,000: ours {r['ours_s']:.3f} s, scikit-learn per-class loop {r['sklearn_s']:.3f} s, "
          f"ratio {r['ratio']:.3f} ({1 / r['ratio']:.1f}x faster), max |AP diff| {r['max_abs_diff']:.1e}")
    r = bench_sampler(100_000, 1_000, args.repeats)
    res["sampler"] = r
    print(f"class-aware sampler N=100,000 C=1,000: {r['epoch_len']} indices in {r['seconds']:.3f} s, "
          f"{r['indices_per_s']:,.0f} indices/s")
    if args.json:
        write_json(args.json, res)


if __name__ == "__main__":
    main()
