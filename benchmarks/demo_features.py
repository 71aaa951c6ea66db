"""Frozen features of the built-in demo data, then every loss row of the paper's comparison on them.

    python benchmarks/demo_features.py [--backbone small_cnn] [--weights demo-source] [--image-size N]
                                       [--rows erm rs db_focal ...] [--seeds 0 1 2] [--out runs/demo_features]
                                       [--select [LR ...]]

The recipe of ``configs/demo_features/`` end to end, timed: (1) ``dbloss features BACKBONE --dataset
demo`` (the demo data and, for ``demo-source``, the pretrained ``small_cnn`` are made on first use
and cached in ``--data-root``; the features are cached beside the output); (2) ``dbloss train
demo_features/ROW`` for every row and seed on those features; (3) mean ± sample sd over seeds.
It writes ``<out>/features/{train,test}.npz``, ``<out>/runs/<row>/seed<s>/`` (each run's
``metrics.json``), ``<out>/results.md`` and ``<out>/results.json`` (every run's metrics, the
summaries, the timings and the machine).

``--select`` chooses each row's learning rate instead, on validation only (never the test set):
every rate of the grid (default 0.02 0.05 0.1 0.2 0.5), every seed, ``--val-size`` (300) training
images held out (by the seed), the rate with the best mean validation mAP; it prints the grid and
the choices and writes ``<out>/select.json``. The recipes carry the choices of one such call.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch

from dbloss.config import load_config
from dbloss.apps.embed import extract_demo_features
from dbloss.training.engine import train
from dbloss.files import write_json, write_text
from dbloss.apps.report import seed_summary
from dbloss.tables import seed_table

ROWS = ["erm", "rw", "focal", "rs", "cb_focal", "ldam", "r_bce_focal", "ntr_focal", "db_focal", "asl"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--weights", default="demo-source")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--data-root", default="demo_data")
    p.add_argument("--rows", nargs="+", default=ROWS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every row")
    p.add_argument("--out", default="runs/demo_features")
    p.add_argument("--select", nargs="*", type=float, default=None, metavar="LR",
                   help="choose each row's lr on validation from these rates (default 0.02 0.05 0.1 0.2 0.5)")
    p.add_argument("--val-size", type=int, default=300, help="with --select: training images held out")
    return p


def select(args: argparse.Namespace, feats: dict) -> dict:
    """Each row's learning rate by mean validation mAP over the seeds (see the module docstring)."""
    import numpy as np

    lrs = args.select or [0.02, 0.05, 0.1, 0.2, 0.5]
    scores: dict[str, dict[str, list[float]]] = {}
    for row in args.rows:
        for lr in lrs:
            for seed in args.seeds:
                cfg = load_config(f"demo_features/{row}", [
                    f"data.train_ann={feats['train'].path}", f"data.test_ann={feats['test'].path}", f"run.seed={seed}",
                    f"optim.lr={lr}", f"data.val_size={args.val_size}",
                    f"run.out_dir={args.out}/select/{row}/lr{lr}/seed{seed}", *args.set])
                res = train(cfg, progress=False, overwrite=True)
                scores.setdefault(row, {}).setdefault(str(lr), []).append(res["val"]["mAP"])
    chosen = {row: float(max(lrs, key=lambda lr: np.mean(scores[row][str(lr)]))) for row in args.rows}
    lines = ["| row | " + " | ".join(f"lr {lr}" for lr in lrs) + " | chosen |",
             "|---|" + "---:|" * (len(lrs) + 1)]
    lines += [f"| {row} | " + " | ".join(f"{100 * np.mean(scores[row][str(lr)]):.2f}" for lr in lrs)
              + f" | {chosen[row]} |" for row in args.rows]
    print(f"validation mAP (x100, mean over seeds {args.seeds}, {args.val_size} training images held out)\n")
    print("\n".join(lines))
    write_json(Path(args.out) / "select.json", {"lrs": lrs, "seeds": args.seeds, "val_size": args.val_size,
                                                "val_mAP": scores, "chosen": chosen})
    return chosen


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    start = time.perf_counter()
    feats = extract_demo_features(args.backbone, out / "features", data_root=args.data_root,
                                  weights=None if args.weights == "none" else args.weights,
                                  image_size=args.image_size, batch_size=256)
    t_features = time.perf_counter() - start
    if args.select is not None:
        return select(args, feats)
    runs: dict[str, list[dict]] = {}
    t_train = time.perf_counter()
    for row in args.rows:
        for seed in args.seeds:
            cfg = load_config(f"demo_features/{row}", [f"data.train_ann={feats['train'].path}",
                                                       f"data.test_ann={feats['test'].path}", f"run.seed={seed}",
                                                       f"run.out_dir={out / 'runs' / row / f'seed{seed}'}", *args.set])
            runs.setdefault(row, []).append(train(cfg, progress=False, overwrite=True))
    t_train = time.perf_counter() - t_train
    summaries = [seed_summary(r) for r in runs.values()]
    n_runs = sum(len(r) for r in runs.values())
    header = (f"Features: `{args.backbone}` (weights {args.weights}, {feats['train'].dim}-d, "
              f"{feats['train'].num_rows} train / {feats['test'].num_rows} test images) in {t_features:.1f} s "
              f"(including the demo data and pretrained weights when not cached); {n_runs} runs "
              f"({len(runs)} rows x seeds {' '.join(map(str, args.seeds))}) in {t_train:.1f} s, "
              f"{t_train / max(n_runs, 1):.1f} s per run on {platform.machine()}, {torch.get_num_threads()} threads. "
              "Mean ± sample sd over seeds (x100).")
    table = seed_table(summaries)
    write_text(out / "results.md", header + "\n\n" + table + "\n")
    record = {"backbone": args.backbone, "weights": args.weights, "features": {k: v.to_dict() for k, v in feats.items()},
              "seconds_features": t_features, "seconds_training": t_train, "runs": runs, "summaries": summaries,
              "machine": platform.machine(), "threads": torch.get_num_threads()}
    write_json(out / "results.json", record)
    print(header + "\n\n" + table)
    return record


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(get_args_parser().parse_args())
