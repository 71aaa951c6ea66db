"""The main job on built-in data: train several demo recipes and show the paper-style comparison.

``dbloss demo --out runs/demo`` generates the demo dataset (once), trains ERM, RS and DB-Focal
(by default) with the ``configs/demo/*`` recipes, prints the total / head / medium / tail mAP
table and writes ``results.md``, ``results.json``, the per-class AP figure
(``per_class_ap.png``) and a full report (``report/report.html``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from dbloss.config import list_recipes, load_config
from dbloss.engine import jsonable, train

__all__ = ["DEFAULT_DEMO_RECIPES", "run_demo"]

log = logging.getLogger(__name__)

#: The rows the demo trains by default: the paper's baseline, its re-sampling baseline and DB-Focal.
DEFAULT_DEMO_RECIPES: tuple[str, ...] = ("erm", "rs", "db_focal")


def run_demo(
    out: str | Path = "runs/demo",
    recipes: Sequence[str] | None = None,
    epochs: int | None = None,
    progress: bool = True,
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Train the demo recipes (``["all"]`` for every shipped demo recipe) and write the comparison."""
    from dbloss.plots import per_class_ap_figure, save_figure
    from dbloss.report import results_table, write_report

    out = Path(out)
    available = [n.split("/", 1)[1] for n in list_recipes() if n.startswith("demo/")]
    names = list(recipes or DEFAULT_DEMO_RECIPES)
    if names == ["all"]:
        names = [n for n in ("erm", "rw", "focal", "rs", "cb_focal", "ldam", "r_bce_focal", "ntr_focal",
                             "db_focal", "asl") if n in available]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"Unknown demo recipe(s) {unknown}; available: {', '.join(available)} (or 'all')")
    results, run_dirs = [], []
    for name in names:
        extra = [f"data_root={out / 'data'}", f"out_dir={out / name}"] + ([f"epochs={epochs}"] if epochs else [])
        cfg = load_config(f"demo/{name}", extra + list(overrides))
        t0 = time.perf_counter()
        print(f"[demo] training {name} ({cfg.loss}, {cfg.sampler} sampling, {cfg.epochs} epochs)", flush=True)
        res = train(cfg, progress=progress)
        print(f"[demo] {name}: mAP {100 * res['mAP']['total']:.2f} in {time.perf_counter() - t0:.0f} s", flush=True)
        results.append(res)
        run_dirs.append(out / name)
    table = results_table(results) + "\n"
    print("\n" + table, end="")
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=1, allow_nan=False))
    first = results[0]
    fig = per_class_ap_figure(results, first["train_class_freq"], first["class_names"], first["split"])
    save_figure(fig, out / "per_class_ap.png")
    paths = write_report(run_dirs, out / "report")
    print(f"per-class AP figure: {out / 'per_class_ap.png'}\nreport: {paths.get('html')}")
    return results
