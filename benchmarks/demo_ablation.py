"""The paper's ablation on the built-in data, in the paper's regime (pretrained backbone, fine-tuned).

    python benchmarks/demo_ablation.py [--out runs/ablation] [--lrs 0.01 0.02 0.05 0.1]
                                       [--seeds 0 1 2] [--val-size 300] [--readme docs/demo.md]

Rows (all with class-aware re-sampling, as in the paper's ablation), each with and without the
focal term: RS (BCE), RS + re-balanced weighting (RW), RS + negative-tolerant regularisation
(NTR), and DB (RW + NTR). For every row the learning rate is chosen on a validation split carved
from the training set (``val_size`` images held out, seed 0, best validation mAP; ties go to the
smaller rate), never on the test set; then the row is trained on the whole training set at that
rate for every seed and tested. It writes

* ``<out>/select/<row>/lr<lr>/``: the selection runs; ``<out>/final/<row>/seed<s>/``: the final runs;
* ``<out>/ablation.json``: every selection score, the chosen rates, per-row seed summaries;
* ``<out>/ablation.md`` and, with ``--readme``, the ``<!-- ablation-table -->`` block of that file
  (``docs/demo.md``, the documentation site's page of the demo, holds it);
* increment figures ``<out>/increment_<row>_over_<base>.png`` (copied to ``docs/figures/ablation_*.png``
  with ``--readme``): each component's per-class AP increment, mean over seeds.

Finished runs whose saved configuration matches are reused (``dbloss.apps.compare.run_recipe_seeds``),
so the script can be interrupted and rerun.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dbloss.apps.compare import run_recipe_seeds, update_marked_block
from dbloss.files import write_json, write_text
from dbloss.apps.plots import ap_increment_figure, save_figure
from dbloss.apps.report import format_mean_sd, seed_summary
from dbloss.stats import GROUPS

REPO = Path(__file__).resolve().parents[1]

#: row -> (label, recipe overrides); every row re-samples class-aware.
ROWS: dict[str, tuple[str, list[str]]] = {
    "rs": ("RS", ["loss.name=bce"]),
    "rs_focal": ("RS + focal", ["loss.name=focal"]),
    "rw": ("RS + RW", ["loss.name=r-bce"]),
    "rw_focal": ("RS + RW + focal (R-BCE-Focal)", ["loss.name=r-focal"]),
    "ntr": ("RS + NTR", ["loss.name=ntr-focal", "loss.args.gamma=0.0"]),
    "ntr_focal": ("RS + NTR + focal (NTR-Focal)", ["loss.name=ntr-focal"]),
    "db": ("DB (RW + NTR)", ["loss.name=db-focal", "loss.args.gamma=0.0"]),
    "db_focal": ("DB-Focal", ["loss.name=db-focal"]),
}
#: (row, baseline) pairs whose per-class AP increment is drawn: each component, then the whole.
INCREMENTS: tuple[tuple[str, str], ...] = (("rw_focal", "rs_focal"), ("ntr_focal", "rs_focal"),
                                           ("db_focal", "rw_focal"), ("db_focal", "rs"))
RECIPE = "demo/rs"  # the demo recipe the rows start from (pretrained backbone, paper's schedule)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--data-root", default=None, help="demo data folder (default: <out>/data)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--val-size", type=int, default=300, help="training images held out to choose the lr")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--readme", default=None,
                   help="Markdown file whose ablation-table block is rewritten (docs/demo.md)")
    p.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    return p


def _select(row: str, args: argparse.Namespace, base: list[str]) -> tuple[float, dict[str, float]]:
    """The row's lr with the best validation mAP (seed 0), and every rate's score."""
    scores = {}
    for lr in args.lrs:
        res = run_recipe_seeds(RECIPE, [0], Path(args.out) / "select" / row / f"lr{lr:g}",
                               [*base, *ROWS[row][1], f"optim.lr={lr}", f"data.val_size={args.val_size}"], progress=False,
                               label=f"select {row} lr {lr:g}")[0]
        scores[f"{lr:g}"] = res["val"]["mAP"]
    best = max(args.lrs, key=lambda lr: (round(scores[f"{lr:g}"], 6), -lr))
    return best, scores


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [f"data.root={args.data_root or out / 'data'}", "sampler.name=class-aware", *args.set]
    t0 = time.perf_counter()
    rows: dict[str, dict] = {}
    for row in args.rows:
        lr, scores = _select(row, args, base)
        print(f"[ablation] {row}: validation mAP by lr {scores} -> lr {lr:g}", flush=True)
        runs = run_recipe_seeds(RECIPE, args.seeds, out / "final" / row, [*base, *ROWS[row][1], f"optim.lr={lr}"],
                                progress=False, label=row)
        rows[row] = {**seed_summary(runs), "label": ROWS[row][0], "lr": lr, "val_map_by_lr": scores, "runs": runs}
    seconds = time.perf_counter() - t0
    rs = rows.get("rs")
    head = ["row", "lr (val)", "mAP", "head", "medium", "tail", "Δ mAP vs RS", "Δ head", "Δ medium", "Δ tail"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for row, r in rows.items():
        cells = [r["label"], f"{r['lr']:g}"] + [format_mean_sd(r["mean"][k], r["sd"][k]) for k in ("total", *GROUPS)]
        if rs is not None:
            cells += [f"{100 * (r['mean'][k] - rs['mean'][k]):+.2f}" for k in ("total", *GROUPS)]
        else:
            cells += ["–"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))["runs"][0]
    freq, names, split = first["train_class_freq"], first["class_names"], first["split"]
    figures = []
    for a, b in INCREMENTS:
        if a in rows and b in rows:
            fig = ap_increment_figure({**rows[a], "name": rows[a]["label"]}, {**rows[b], "name": rows[b]["label"]},
                                      freq, names, split)
            figures.append(save_figure(fig, out / f"increment_{a}_over_{b}.png"))
    caption = (f"Generated by `python benchmarks/demo_ablation.py` on {time.strftime('%Y-%m-%d')} "
               f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"{seconds / 60:.0f} min). Seeds {', '.join(map(str, args.seeds))}: mean ± sample sd (x100) on the "
               f"{first['num_test']} balanced test images; each row's lr chosen from {{{', '.join(f'{v:g}' for v in args.lrs)}}} "
               f"by validation mAP ({args.val_size} training images held out, seed 0), then trained on all "
               f"{first['num_train']} training images. Δ: difference of the means from RS.")
    table = "\n".join(lines)
    write_text(out / "ablation.md", f"{caption}\n\n{table}\n")
    write_json(out / "ablation.json", {"rows": rows, "lrs": args.lrs, "seeds": args.seeds, "val_size": args.val_size,
                                       "seconds": seconds})
    print(f"\n{caption}\n\n{table}")
    if args.readme:
        fig_dir = Path(args.figures)
        fig_dir.mkdir(parents=True, exist_ok=True)
        links = []
        for f in figures:
            target = fig_dir / f"ablation_{f.name}"
            shutil.copyfile(f, target)
            links.append(f"![{f.stem.replace('_', ' ')}]({target.relative_to(Path(args.readme).resolve().parent).as_posix()})")
        update_marked_block(args.readme, "ablation-table", f"{caption}\n\n{table}\n\n" + "\n".join(links))
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
