"""Recipes x seeds, compared: the demo (the main job on built-in data) and ``dbloss reproduce``.

:func:`run_comparison` trains rows (recipes of one folder) for each seed, reusing every finished
run whose saved configuration equals the resolved one (so an interrupted call continues), and
:func:`write_comparison` writes into ``OUT``:

* ``<row>/seed<s>/``: each run's directory (``metrics.json``, ``log.jsonl``, ...);
* ``results.md`` / ``results.json``: total / head / medium / tail mAP and F1 per row as mean ±
  sample standard deviation over seeds (x100), the published value beside ours where one is
  known, and the training time per row (summed over seeds from the runs' logs);
* ``per_class_ap.png``: per-class AP (mean over seeds) of every row against training frequency;
* ``ap_increment.png``: per-class AP increment of DB-Focal over RS, and
  ``ap_increment_<b>_over_<a>.png``: the paper's increment figures, each step over the previous
  (RS -> R-BCE-Focal -> DB-Focal); each for the rows that were run;
* ``report/report.html`` (and ``report.md``): the full report, each row's mean ± sd over the seeds
  as in ``results.md`` (the same :func:`dbloss.tables.seed_table` cells) and its per-class AP mean
  over the seeds in the figures.

``dbloss demo`` (:func:`run_demo`) runs the ``configs/demo`` rows (``--setting scratch``:
``configs/demo_scratch``) and can write its table into the README; ``dbloss reproduce voc-mlt``
(:func:`reproduce`) runs every row of the paper's comparison that has a recipe, on VOC-MLT or
COCO-MLT (or ``demo`` with the built-in data); ``dbloss reproduce reuters`` / ``features`` run
the rows of :data:`BENCHMARK_ROWS` on Reuters-21578 or on the user's feature files. Under
``torchrun`` every rank trains (each run uses all GPUs) and rank 0 writes.

In a folder whose recipes read features (its ``_base`` recipe's dataset is one of
:data:`dbloss.apps.linear_baseline.FEATURE_DATASETS`) one more row is available, :data:`LOGREG_ROW`:
one scikit-learn logistic regression per class on the same features, its ``C`` and class weight
chosen on validation (:func:`dbloss.apps.linear_baseline.train_logistic_regression`), configured by
the ``_base`` recipe with the seed. A folder may be a shipped one (``reuters``) or a directory
of recipe files (``my_recipes/``, with a ``_base.yaml`` for the ``logreg`` row).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence


from dbloss.config import TrainConfig, list_recipes, load_config, recipe_dir, saved_config_matches
from dbloss.training.engine import train
from dbloss.files import write_json, write_text
from dbloss.tables import format_mean_sd, seed_table

__all__ = ["ALL_DEMO_RECIPES", "BENCHMARKS", "BENCHMARK_ROWS", "DEFAULT_DEMO_RECIPES", "EXTRA_ROWS", "INCREMENT_STEPS",
           "LOGREG_ROW", "PAPER_ROWS", "PUBLISHED", "PUBLISHED_SOURCES", "SETTINGS", "reproduce", "run_comparison",
           "run_demo", "run_logreg_seeds", "run_recipe_seeds", "update_marked_block", "write_comparison"]

log = logging.getLogger(__name__)

#: The rows the demo trains by default: the paper's baseline, its re-sampling baseline and DB-Focal.
DEFAULT_DEMO_RECIPES: tuple[str, ...] = ("erm", "rs", "db_focal")
#: Every row of the paper's comparison that has a demo recipe, in the paper's order.
ALL_DEMO_RECIPES: tuple[str, ...] = ("erm", "rw", "focal", "rs", "ml_gcn", "oltr", "cb_focal", "ldam", "r_bce_focal",
                                     "ntr_focal", "db_focal", "crt", "bbn", "asl")
#: Demo setting -> recipe folder.
SETTINGS: dict[str, str] = {"pretrained": "demo", "scratch": "demo_scratch"}
#: The rows of the paper's comparison (Table 1), in its order. cRT and BBN (decoupling and the two-branch
#: network, which the paper builds on) and ASL (2021, after the paper) are shipped too but are not rows
#: of the paper's table.
PAPER_ROWS: tuple[str, ...] = ("erm", "rw", "focal", "rs", "ml_gcn", "oltr", "cb_focal", "ldam", "r_bce_focal",
                               "ntr_focal", "db_focal")
#: The rows that ``rows=["all"]`` adds to the paper's: the methods it builds on and ASL.
EXTRA_ROWS: tuple[str, ...] = ("crt", "bbn", "asl")
#: ``dbloss reproduce`` benchmark -> recipe folder.
BENCHMARKS: dict[str, str] = {"voc-mlt": "voc_mlt", "coco-mlt": "coco_mlt", "demo": "demo", "reuters": "reuters",
                              "features": "features"}
#: The row of the per-class logistic-regression baseline, available in every folder whose recipes read features.
LOGREG_ROW = "logreg"
#: The default rows of the benchmarks that are not the paper's (those run :data:`PAPER_ROWS`).
BENCHMARK_ROWS: dict[str, tuple[str, ...]] = {
    "reuters": ("bce", "focal", "cb_focal", "r_focal", "ntr_focal", "db_focal", LOGREG_ROW),
    "features": ("erm", "rs", "db_focal", LOGREG_ROW),
}
#: Published mAP (x100: total, head, medium, tail) per benchmark and row, and the source key of
#: :data:`PUBLISHED_SOURCES`. "a" is the original release (the DB-Focal rows of the paper's
#: Table 1); "b" re-prints Wu et al.'s baselines beside its own runs and says its numbers average
#: three runs, so some may be its re-runs. ERM, ML-GCN, OLTR, R-BCE-Focal and NTR-Focal need the paper's
#: Table 1 itself, which this project could not retrieve offline; no number is written from memory ("–").
#: cRT and BBN are not rows of the paper; no source held here reports them on VOC-MLT / COCO-MLT.
PUBLISHED: dict[str, dict[str, tuple[float, float, float, float, str]]] = {
    "voc-mlt": {
        "rw": (74.70, 67.58, 82.81, 73.96, "b"), "focal": (73.88, 69.41, 81.43, 71.56, "b"),
        "rs": (75.38, 70.95, 82.94, 73.05, "b"), "cb_focal": (75.24, 70.30, 83.53, 72.74, "b"),
        "ldam": (70.33, 68.73, 80.38, 69.09, "b"), "db_focal": (78.94, 73.22, 84.18, 79.30, "a"),
    },
    "coco-mlt": {
        "rw": (42.27, 48.62, 45.80, 32.02, "b"), "focal": (49.46, 49.80, 54.77, 42.14, "b"),
        "rs": (46.97, 47.58, 50.55, 41.70, "b"), "cb_focal": (49.06, 47.91, 53.01, 44.85, "b"),
        "ldam": (40.53, 48.77, 48.38, 22.92, "b"), "db_focal": (53.55, 51.13, 57.05, 51.06, "a"),
    },
}
PUBLISHED_SOURCES: dict[str, str] = {
    "a": "the original release's README (github.com/wutong16/DistributionBalancedLoss): the paper's DB-Focal rows",
    "b": "Table 1 of 'Long-Tailed Multi-Label Image Classification Through the Lens of Neural Collapse', "
         "which re-prints Wu et al.'s baselines (unchecked against the paper)",
}
#: The paper's per-class AP increment figures: each step over the previous one.
INCREMENT_STEPS: tuple[tuple[str, str], ...] = (("rs", "r_bce_focal"), ("r_bce_focal", "db_focal"))


def _own_folder(folder: str) -> bool:
    """Whether ``folder`` is a directory of the user's recipe files rather than a shipped folder name."""
    shipped = not Path(folder).is_absolute() and (recipe_dir() / folder).is_dir()
    return not shipped and Path(folder).is_dir()


def _recipe(folder: str, name: str) -> str:
    """The recipe of row ``name`` of ``folder``: a shipped recipe name (``reuters/bce``), or a file of
    a directory of recipes that is not a shipped folder (``my_recipes/bce.yaml``)."""
    return str(Path(folder) / f"{name}.yaml") if _own_folder(folder) else f"{folder}/{name}"


def _reads_features(folder: str, overrides: Sequence[str] = ()) -> bool:
    """Whether ``folder``'s ``_base`` recipe (with ``overrides``) reads precomputed features."""
    from dbloss.apps.linear_baseline import FEATURE_DATASETS

    base = _recipe(folder, "_base")
    try:
        return load_config(base, list(overrides)).data.dataset in FEATURE_DATASETS
    except (FileNotFoundError, ValueError):  # no _base recipe: no logreg row
        return False


def _reusable(cfg: TrainConfig) -> dict[str, Any] | None:
    """The finished run in ``cfg.run.out_dir`` if its saved configuration is ``cfg``'s, else None."""
    metrics = Path(cfg.run.out_dir) / "metrics.json"
    if not (metrics.is_file() and saved_config_matches(cfg, Path(cfg.run.out_dir) / "config.yaml")):
        return None
    try:
        return json.loads(metrics.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def _seed_runs(configs: Sequence[TrainConfig], label: str, fit: Callable[[TrainConfig], dict[str, Any]],
               doing: str, *, reuse: bool, reused: list[str] | None,
               reusable: Callable[[TrainConfig], dict[str, Any] | None] = _reusable) -> list[dict[str, Any]]:
    """Each configuration's metrics: its finished run when ``reusable`` finds one (folder appended to
    ``reused``), else ``fit(cfg)``; one line per run says which, ``doing`` what a fit does."""
    results = []
    for cfg in configs:
        tag = f"[demo] {label} seed {cfg.run.seed}"
        res = reusable(cfg) if reuse else None
        if res is not None:
            print(f"{tag}: reused {cfg.run.out_dir} (mAP {100 * res['mAP']['total']:.2f})", flush=True)
            if reused is not None:
                reused.append(cfg.run.out_dir)
        else:
            t0 = time.perf_counter()
            print(f"{tag}: {doing.format(cfg=cfg)}", flush=True)
            res = fit(cfg)  # not reusable: a stale or unfinished run is replaced
            print(f"{tag}: mAP {100 * res['mAP']['total']:.2f} in {time.perf_counter() - t0:.0f} s", flush=True)
        results.append(res)
    return results


def run_recipe_seeds(recipe: str, seeds: Sequence[int], out: Path, overrides: Sequence[str] = (), *,
                     progress: bool = True, reuse: bool = True, label: str | None = None,
                     reused: list[str] | None = None) -> list[dict[str, Any]]:
    """Train ``recipe`` once per seed into ``out/seed<s>`` (finished runs with the same configuration
    are reused, and their folders appended to ``reused``); returns each run's metrics."""
    def fit(cfg: TrainConfig) -> dict[str, Any]:
        train(cfg, progress=progress, overwrite=True)
        return json.loads((Path(cfg.run.out_dir) / "metrics.json").read_text())

    configs = [load_config(recipe, [*overrides, f"run.seed={seed}", f"run.out_dir={out / f'seed{seed}'}"]) for seed in seeds]
    return _seed_runs(configs, label or recipe, fit,
                      "training ({cfg.loss.name}, {cfg.sampler.name} sampling, {cfg.schedule.epochs} epochs, lr {cfg.optim.lr:g})",
                      reuse=reuse, reused=reused)


def update_marked_block(path: str | Path, marker: str, text: str) -> None:
    """Replace what stands between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``path`` by ``text``."""
    path = Path(path)
    doc = path.read_text()
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise ValueError(f"{path}: no block {begin} ... {end} to update")
    write_text(path, pattern.sub(lambda _: f"{begin}\n{text.strip()}\n{end}", doc, count=1))


def _train_seconds(run_dir: Path) -> float | None:
    """The training time of a run: the sum of its epochs' ``seconds`` in ``log.jsonl`` (None if absent);
    a logistic-regression run's: its fit seconds (grid and refit) in ``logreg.json``."""
    if (run_dir / "logreg.json").is_file():
        try:
            return float(json.loads((run_dir / "logreg.json").read_text())["seconds"]["total"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
    except OSError:
        return None
    total = 0.0
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "epoch" in record and "seconds" in record and "loss" in record:
            total += float(record["seconds"])
    return total


def _available(folder: str) -> list[str]:
    if _own_folder(folder):
        names = sorted(p.stem for p in Path(folder).glob("*.yaml") if not p.name.startswith("_"))
    else:
        names = [n.split("/", 1)[1] for n in list_recipes() if n.startswith(f"{folder}/")]
    return names + ([LOGREG_ROW] if LOGREG_ROW not in names and _reads_features(folder) else [])


def run_logreg_seeds(folder: str, seeds: Sequence[int], out: Path, overrides: Sequence[str] = (), *,
                     progress: bool = True, reuse: bool = True,
                     reused: list[str] | None = None) -> list[dict[str, Any]]:
    """The :data:`LOGREG_ROW` of ``folder`` once per seed into ``out/seed<s>``: the folder's ``_base``
    recipe with ``overrides``, the seed and ``name=logreg``, fitted by
    :func:`dbloss.apps.linear_baseline.train_logistic_regression` (finished runs with the same
    configuration and grid are reused, and their folders appended to ``reused``); each run's metrics."""
    from dbloss.apps.linear_baseline import C_GRID, CLASS_WEIGHTS, FEATURE_DATASETS, train_logistic_regression

    configs = [load_config(_recipe(folder, "_base"),
                           [*overrides, f"run.name={LOGREG_ROW}", f"run.seed={seed}", f"run.out_dir={out / f'seed{seed}'}"])
               for seed in seeds]
    for cfg in configs[:1]:
        if cfg.data.dataset not in FEATURE_DATASETS:
            raise ValueError(f"row {LOGREG_ROW!r} fits precomputed features, but {folder}/_base has "
                             f"dataset={cfg.data.dataset!r} (expected one of {', '.join(FEATURE_DATASETS)})")

    def reusable(cfg: TrainConfig) -> dict[str, Any] | None:  # a finished run, fitted over today's grid
        res = _reusable(cfg)
        try:
            fit = json.loads((Path(cfg.run.out_dir) / "logreg.json").read_text())
        except (OSError, ValueError):
            fit = {}
        same_grid = fit.get("c_grid") == list(C_GRID) and fit.get("class_weights") == list(CLASS_WEIGHTS)
        return res if same_grid else None

    return _seed_runs(configs, LOGREG_ROW, lambda cfg: train_logistic_regression(cfg, progress=progress,
                                                                                   overwrite=True),
                      f"fitting one logistic regression per class (C in {list(C_GRID)}, class_weight in "
                      f"{list(CLASS_WEIGHTS)}, chosen on validation mAP)", reuse=reuse, reused=reused,
                      reusable=reusable)


def _resolve_rows(folder: str, names: Sequence[str], what: str) -> list[str]:
    available = _available(folder)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"Unknown {what} row(s) {unknown}; available: {', '.join(available)} (or 'all')")
    return list(names)


def run_comparison(folder: str, names: Sequence[str], seeds: Sequence[int], out: str | Path,
                   overrides: Sequence[str] = (), *, progress: bool = True, reuse: bool = True,
                   reused: list[str] | None = None) -> list[dict[str, Any]]:
    """Train ``folder/<name>`` for every name and seed into ``out/<name>/seed<s>``; return one
    :func:`dbloss.apps.report.seed_summary` per row, with ``"runs"`` (every seed's metrics) and
    ``"train_seconds"`` (summed over its seeds). ``folder``: a shipped recipe folder or a directory of
    recipe files; the name :data:`LOGREG_ROW` is the logistic-regression baseline (:func:`run_logreg_seeds`)
    in a folder whose recipes read features."""
    from dbloss.apps.report import seed_summary

    if not seeds:
        raise ValueError("Expected at least one seed")
    out = Path(out)
    rows = []
    for name in names:
        if name == LOGREG_ROW:
            runs = run_logreg_seeds(folder, seeds, out / name, overrides, progress=progress, reuse=reuse,
                                    reused=reused)
        else:
            runs = run_recipe_seeds(_recipe(folder, name), seeds, out / name, overrides, progress=progress,
                                    reuse=reuse, label=name, reused=reused)
        times = [_train_seconds(out / name / f"seed{seed}") for seed in seeds]
        rows.append({**seed_summary(runs), "row": name, "runs": runs,
                     "train_seconds": None if None in times else round(sum(times), 1)})
    return rows


def _published_table(rows: Sequence[dict[str, Any]], published: dict[str, tuple]) -> str:
    """Ours (mean ± sd) beside the published mAP, total / head / medium / tail, and the training time."""
    lines = ["| Row | Published: total / head / medium / tail | Ours: total | head | medium | tail | "
             "Ours − published (total) | Training time |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        pub = published.get(r["row"])
        ours = [format_mean_sd(r["mean"][k], r["sd"][k]) for k in ("total", "head", "medium", "tail")]
        diff = "–" if pub is None else f"{100 * r['mean']['total'] - pub[0]:+.2f}"
        cited = "–" if pub is None else " / ".join(f"{v:.2f}" for v in pub[:4]) + f" [{pub[4]}]"
        t = r.get("train_seconds")
        lines.append(f"| {r['name']} | {cited} | {' | '.join(ours)} | {diff} | {'–' if t is None else _duration(t)} |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def write_comparison(rows: Sequence[dict[str, Any]], out: str | Path, seeds: Sequence[int], *, title: str,
                     published: dict[str, float] | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Write ``results.md`` / ``results.json``, the figures and the report of ``rows`` into ``out``.

    Returns ``{"table", "caption", "figures": {file name: path}, "report": path}``.
    """
    from dbloss.apps.plots import ap_increment_figure, per_class_ap_figure, save_figure
    from dbloss.apps.report import write_report

    out = Path(out)
    first = rows[0]["runs"][0]
    table = seed_table(rows)
    caption = (f"{title}, seeds {', '.join(map(str, seeds))}: mean ± sample standard deviation over seeds "
               f"(x100; {first['num_train']} training / {first['num_test']} test images)")
    text = f"{caption}\n\n{table}\n"
    if published is not None:
        sources = "; ".join(f"[{k}] {v}" for k, v in PUBLISHED_SOURCES.items())
        text += (f"\nPublished numbers beside ours (ResNet-50; {sources}); training time summed over seeds; "
                 f"– where no published value is known here.\n\n{_published_table(rows, published)}\n")
    write_text(out / "results.md", text)
    write_json(out / "results.json", {"title": title, "seeds": list(seeds), "rows": list(rows), "seconds": seconds,
                                      "published": published})
    freq, class_names, split = first["train_class_freq"], first["class_names"], first["split"]
    figs = {"per_class_ap.png": per_class_ap_figure(rows, freq, class_names, split)}
    by_row = {r["row"]: r for r in rows}
    for a, b in (("rs", "db_focal"), *INCREMENT_STEPS):  # the whole gain, then each step of it
        if a in by_row and b in by_row:
            fname = "ap_increment.png" if (a, b) == ("rs", "db_focal") else f"ap_increment_{b}_over_{a}.png"
            figs[fname] = ap_increment_figure(by_row[b], by_row[a], freq, class_names, split)
    for fname, fig in figs.items():
        save_figure(fig, out / fname)
    # every seed of every row (the runs of this call, not older seed folders beside them): the report's
    # rows are the same seed summaries as results.md's
    report = write_report([[out / r["row"] / f"seed{seed}" for seed in seeds] for r in rows], out / "report",
                          title=title)
    return {"table": table, "caption": caption, "text": text, "figures": {f: out / f for f in figs},
            "report": report.get("html")}


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
            scratch setting) gets the generated table; ``figures`` then receives the figures.

    Returns:
        One :func:`dbloss.apps.report.seed_summary` per row (with ``"runs"``: every seed's metrics).
    """
    if setting not in SETTINGS:
        raise ValueError(f"Expected `setting` to be one of {tuple(SETTINGS)}, but got {setting!r}")
    folder = SETTINGS[setting]
    names = list(recipes or DEFAULT_DEMO_RECIPES)
    if names == ["all"]:
        names = [n for n in ALL_DEMO_RECIPES if n in _available(folder)]
    names = _resolve_rows(folder, names, f"{setting} demo")
    out = Path(out)
    t_start = time.perf_counter()
    extra = [f"data.root={out / 'data'}", *([f"schedule.epochs={epochs}"] if epochs else []), *overrides]
    reused: list[str] = []
    rows = run_comparison(folder, names, seeds, out, extra, progress=progress, reuse=reuse, reused=reused)
    seconds = time.perf_counter() - t_start
    written = write_comparison(rows, out, seeds, title=f"{setting.capitalize()} setting", seconds=seconds)
    print(f"\n{written['caption']}\n{written['table']}")
    print(f"figures: {', '.join(str(p) for p in written['figures'].values())}\nreport: {written['report']}")
    if readme is not None:
        _update_readme(readme, figures, setting, names, seeds, seconds, reused, written)
    return rows


def _update_readme(readme: str | Path, figures: str | Path | None, setting: str, names: Sequence[str],
                   seeds: Sequence[int], seconds: float, reused: list[str], written: dict[str, Any]) -> None:
    """Write the demo table into the README's block and copy its figures next to it."""
    stem = "demo" if setting == "pretrained" else "demo_scratch"
    # README.md at the root (the pretrained table) or a page in docs/ (docs/demo.md: the scratch table): docs/figures
    here = Path(readme).parent
    fig_dir = Path(figures) if figures else here / "figures" if here.name == "docs" else here / "docs" / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    links = []
    for fname, path in written["figures"].items():
        if fname.startswith("ap_increment_"):
            continue  # the README shows the per-class AP and the DB-Focal-over-RS increment (ap_increment.png)
        target = fig_dir / f"{stem}_{fname}"
        shutil.copyfile(path, target)
        links.append(f"![{fname[:-4].replace('_', ' ')}]({target.relative_to(Path(readme).parent).as_posix()})")
    cmd = f"dbloss demo --setting {setting} --seeds {' '.join(map(str, seeds))}" + (
        f" --recipes {' '.join(names)}" if list(names) != list(DEFAULT_DEMO_RECIPES) else "")
    took = f"{seconds / 60:.1f} min on this machine" + (
        f", {len(reused)} of {len(names) * len(seeds)} runs reused from an earlier call" if reused else "")
    text = f"Generated by `{cmd}` ({took}). {written['caption']}.\n\n{written['table']}\n\n" + "\n".join(links)
    update_marked_block(readme, "demo-table" if setting == "pretrained" else "demo-scratch-table", text)
    print(f"updated {readme}")


def reproduce(
    benchmark: str,
    rows: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    progress: bool = True,
    reuse: bool = True,
) -> list[dict[str, Any]]:
    """Run every row of the paper's comparison on ``benchmark`` over ``seeds`` and write the report.

    Args:
        benchmark: "voc-mlt", "coco-mlt" (their recipes read ``data/``, see ``dbloss data download``),
            "demo" (the built-in data, as ``dbloss demo``), "reuters" (Reuters-21578 TF-IDF, its
            ``data_root``) or "features" (the user's feature files: ``--set train_ann=... test_ann=...``).
        rows: recipe names of the benchmark's folder, or :data:`LOGREG_ROW` on reuters / features
            (default: :data:`PAPER_ROWS`, on reuters / features :data:`BENCHMARK_ROWS`; ``["all"]``:
            adds :data:`EXTRA_ROWS`, cRT, BBN and ASL; on reuters / features every recipe of the folder).
        out: default ``runs/<benchmark>``.
        overrides: ``key=value`` settings for every run (e.g. ``epochs=2`` for a smoke test).

    Finished runs with the same resolved configuration are reused. Under ``torchrun`` every rank
    trains and rank 0 writes the report.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Expected a benchmark among {sorted(BENCHMARKS)}, but got {benchmark!r}")
    folder = BENCHMARKS[benchmark]
    defaults = BENCHMARK_ROWS.get(benchmark, PAPER_ROWS)
    names = list(rows or defaults)
    if names == ["all"] and benchmark in BENCHMARK_ROWS:
        available = _available(folder)
        rest = sorted(set(available) - set(defaults))
        names = [n for n in defaults if n in available and n != LOGREG_ROW] + rest + (
            [LOGREG_ROW] if LOGREG_ROW in available else [])
    elif names == ["all"]:
        names = [n for n in (*PAPER_ROWS, *EXTRA_ROWS) if n in _available(folder)]
    names = _resolve_rows(folder, names, benchmark)
    out = Path(out or f"runs/{benchmark}")
    extra = [*([f"data.root={out / 'data'}"] if benchmark == "demo" else []), *overrides]
    t_start = time.perf_counter()
    results = run_comparison(folder, names, seeds, out, extra, progress=progress, reuse=reuse)
    if int(os.environ.get("RANK", "0")) != 0:
        return results
    written = write_comparison(results, out, seeds, title=f"{benchmark.upper()} ({', '.join(names)})",
                               published=PUBLISHED.get(benchmark, {}), seconds=time.perf_counter() - t_start)
    print(f"\n{written['text']}")
    print(f"results: {out / 'results.md'}\nfigures: {', '.join(str(p) for p in written['figures'].values())}\n"
          f"report: {written['report']}")
    return results
