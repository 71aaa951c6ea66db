"""The main job on built-in data: train demo recipes over several seeds and show the paper-style comparison.

``dbloss demo --out runs/demo`` generates the demo dataset (once), and, in the default
``pretrained`` setting (the paper's regime), pretrains the backbone on the built-in balanced
source set (once, cached; see :mod:`dbloss.pretrain`); then it fine-tunes ERM, RS and DB-Focal
(by default) with the ``configs/demo/*`` recipes for each seed, prints the total / head / medium
/ tail mAP table (mean ± sample standard deviation over seeds) and writes, into ``OUT``:

* ``<recipe>/seed<s>/``: each run's directory (``metrics.json``, ...); a finished run whose saved
  configuration equals the resolved one is reused, so an interrupted demo continues;
* ``results.md`` / ``results.json``: the table and, per row, every seed's metrics and the summary;
* ``per_class_ap.png``: per-class AP (mean over seeds) of every row against training frequency;
* ``ap_increment.png``: per-class AP increment of DB-Focal over RS (mean over seeds), the paper's figure;
* ``report/report.html``: the full report of the first seed's runs.

``--setting scratch`` runs the ``configs/demo_scratch/*`` recipes instead: the same network,
randomly initialised, nothing frozen.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Sequence


from dbloss.config import TrainConfig, list_recipes, load_config, saved_config_matches
from dbloss.engine import train
from dbloss.files import write_json, write_text

__all__ = ["DEFAULT_DEMO_RECIPES", "ALL_DEMO_RECIPES", "SETTINGS", "run_demo", "run_recipe_seeds", "update_marked_block"]

log = logging.getLogger(__name__)

#: The rows the demo trains by default: the paper's baseline, its re-sampling baseline and DB-Focal.
DEFAULT_DEMO_RECIPES: tuple[str, ...] = ("erm", "rs", "db_focal")
#: Every row of the paper's comparison that has a demo recipe, in the paper's order.
ALL_DEMO_RECIPES: tuple[str, ...] = ("erm", "rw", "focal", "rs", "cb_focal", "ldam", "r_bce_focal", "ntr_focal",
                                     "db_focal", "asl")
#: Demo setting -> recipe folder.
SETTINGS: dict[str, str] = {"pretrained": "demo", "scratch": "demo_scratch"}


def _reusable(cfg: TrainConfig) -> dict[str, Any] | None:
    """The finished run in ``cfg.out_dir`` if its saved configuration is ``cfg``'s, else None."""
    metrics = Path(cfg.out_dir) / "metrics.json"
    if not (metrics.is_file() and saved_config_matches(cfg, Path(cfg.out_dir) / "config.yaml")):
        return None
    try:
        return json.loads(metrics.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def run_recipe_seeds(recipe: str, seeds: Sequence[int], out: Path, overrides: Sequence[str] = (), *,
                     progress: bool = True, reuse: bool = True, label: str | None = None,
                     reused: list[str] | None = None) -> list[dict[str, Any]]:
    """Train ``recipe`` once per seed into ``out/seed<s>`` (finished runs with the same configuration
    are reused, and their folders appended to ``reused``); returns each run's metrics."""
    results = []
    for seed in seeds:
        cfg = load_config(recipe, [*overrides, f"seed={seed}", f"out_dir={out / f'seed{seed}'}"])
        tag = f"[demo] {label or recipe} seed {seed}"
        res = _reusable(cfg) if reuse else None
        if res is not None:
            print(f"{tag}: reused {cfg.out_dir} (mAP {100 * res['mAP']['total']:.2f})", flush=True)
            if reused is not None:
                reused.append(cfg.out_dir)
        else:
            t0 = time.perf_counter()
            print(f"{tag}: training ({cfg.loss}, {cfg.sampler} sampling, {cfg.epochs} epochs, lr {cfg.lr:g})",
                  flush=True)
            train(cfg, progress=progress, overwrite=True)  # not reusable: a stale or unfinished run is replaced
            res = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
            print(f"{tag}: mAP {100 * res['mAP']['total']:.2f} in {time.perf_counter() - t0:.0f} s", flush=True)
        results.append(res)
    return results


def update_marked_block(path: str | Path, marker: str, text: str) -> None:
    """Replace what stands between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``path`` by ``text``."""
    path = Path(path)
    doc = path.read_text()
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise ValueError(f"{path}: no block {begin} ... {end} to update")
    write_text(path, pattern.sub(lambda _: f"{begin}\n{text.strip()}\n{end}", doc, count=1))


def run_demo(
    out: str | Path = "runs/demo",
    recipes: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    setting: Literal["pretrained", "scratch"] = "pretrained",
    epochs: int | None = None,
    progress: bool = True,
    overrides: Sequence[str] = (),
    readme: str | Path | None = None,
    figures: str | Path | None = None,
    reuse: bool = True,
) -> list[dict[str, Any]]:
    """Train the demo recipes (``["all"]`` for every row) over ``seeds`` and write the comparison.

    Args:
        readme: a Markdown file whose ``<!-- demo-table -->`` block (``demo-scratch-table`` for the
            scratch setting) gets the generated table; ``figures`` then receives the two figures.

    Returns:
        One :func:`dbloss.report.seed_summary` per row (with ``"runs"``: every seed's metrics).
    """
    from dbloss.plots import ap_increment_figure, per_class_ap_figure, save_figure
    from dbloss.report import seed_summary, seed_table, write_report

    if setting not in SETTINGS:
        raise ValueError(f"Expected `setting` to be one of {tuple(SETTINGS)}, but got {setting!r}")
    if not seeds:
        raise ValueError("Expected at least one seed")
    folder = SETTINGS[setting]
    out = Path(out)
    available = [n.split("/", 1)[1] for n in list_recipes() if n.startswith(f"{folder}/")]
    names = list(recipes or DEFAULT_DEMO_RECIPES)
    if names == ["all"]:
        names = [n for n in ALL_DEMO_RECIPES if n in available]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"Unknown {setting} demo recipe(s) {unknown}; available: {', '.join(available)} (or 'all')")
    t_start = time.perf_counter()
    extra = [f"data_root={out / 'data'}", *([f"epochs={epochs}"] if epochs else []), *overrides]
    rows, reused = [], []
    for name in names:
        runs = run_recipe_seeds(f"{folder}/{name}", seeds, out / name, extra, progress=progress, reuse=reuse,
                                label=name, reused=reused)
        rows.append({**seed_summary(runs), "runs": runs})
    seconds = time.perf_counter() - t_start
    table = seed_table(rows)
    caption = (f"{setting.capitalize()} setting, seeds {', '.join(map(str, seeds))}: mean ± sample standard deviation over seeds "
               f"(x100; {rows[0]['runs'][0]['num_train']} training / {rows[0]['runs'][0]['num_test']} test images)")
    print(f"\n{caption}\n{table}")
    write_text(out / "results.md", f"{caption}\n\n{table}\n")
    write_json(out / "results.json", {"setting": setting, "seeds": list(seeds), "rows": rows, "seconds": seconds})
    first = rows[0]["runs"][0]
    freq, class_names, split = first["train_class_freq"], first["class_names"], first["split"]
    figs = {"per_class_ap.png": per_class_ap_figure(rows, freq, class_names, split)}
    by_loss = {(r["loss"], r["sampler"]): r for r in rows}
    db, rs = by_loss.get(("db-focal", "class-aware")), by_loss.get(("bce", "class-aware"))
    if db is not None and rs is not None:
        figs["ap_increment.png"] = ap_increment_figure(db, rs, freq, class_names, split)
    for fname, fig in figs.items():
        save_figure(fig, out / fname)
    paths = write_report([out / n / f"seed{seeds[0]}" for n in names], out / "report")
    print(f"figures: {', '.join(str(out / f) for f in figs)}\nreport: {paths.get('html')}")
    if readme is not None:
        stem = "demo" if setting == "pretrained" else "demo_scratch"
        fig_dir = Path(figures) if figures else Path(readme).parent / "docs" / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        links = []
        for fname in figs:
            target = fig_dir / f"{stem}_{fname}"
            shutil.copyfile(out / fname, target)
            links.append(f"![{fname[:-4].replace('_', ' ')}]({target.relative_to(Path(readme).parent).as_posix()})")
        cmd = f"dbloss demo --setting {setting} --seeds {' '.join(map(str, seeds))}" + (
            f" --recipes {' '.join(names)}" if list(names) != list(DEFAULT_DEMO_RECIPES) else "")
        took = f"{seconds / 60:.1f} min on this machine" + (
            f", {len(reused)} of {len(names) * len(seeds)} runs reused from an earlier call" if reused else "")
        text = f"Generated by `{cmd}` ({took}). {caption}.\n\n{table}\n\n" + \
            "\n".join(links)
        update_marked_block(readme, "demo-table" if setting == "pretrained" else "demo-scratch-table", text)
        print(f"updated {readme}")
    return rows
