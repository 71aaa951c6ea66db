"""Markdown and self-contained HTML reports of training runs.

A run is a folder written by ``dbloss train`` (see ``docs/DESIGN.md``); the report reads its
``metrics.json`` (and ``label_stats.json`` for the head / tail thresholds when present). A row of
the report is one run, or one recipe over several seeds (a list of run folders, or a folder whose
``seed<k>/`` subfolders are the runs, as ``dbloss demo`` / ``reproduce`` lay them out): its
metrics are then the mean ± sample standard deviation over the seeds and its per-class AP the
mean, exactly as in their ``results.md`` (:func:`seed_summary`, :func:`dbloss.tables.seed_table`).
The report writes, into an output folder::

    report.md                 results table + figures (PNG files beside it)
    report.html               the same, one file: figures as base64 data URIs, inline CSS, no JS
    class_distribution.png    training class distribution with the head/tail thresholds
    per_class_ap.png          per-class AP of every run, classes sorted by frequency
    ap_increment.png          per-class AP increment of one run over a baseline (if both exist)

Metric values are fractions in the JSON files and are shown x100. Typical use (what
``dbloss report RUN_DIR... --out DIR`` calls): ``write_report(["runs/rs", "runs/db-focal"], "report")``;
over seeds: ``write_report([["runs/rs/seed0", "runs/rs/seed1"], "runs/demo/db_focal"], "report")``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dbloss.files import write_text
from dbloss.apps.plots import ap_increment_figure, class_distribution_figure, per_class_ap_figure, save_figure
from dbloss.stats import DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX, GROUPS, LabelStats, class_split
from dbloss.tables import COLUMNS, SEED_METRICS, format_mean_sd, results_table, seed_cells, seed_table

__all__ = ["load_rows", "load_runs", "results_table", "format_mean_sd", "seed_summary", "seed_table",
           "select_increment_pair", "write_report"]

_REQUIRED = ("name", "loss", "sampler", "mAP")


def _as_list(items: Any) -> list[Any]:
    """One run folder or several, as a non-empty list."""
    items = [items] if isinstance(items, (str, Path)) else list(items)
    if not items:
        raise ValueError("Expected at least one run folder, but got none")
    return items


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read ``RUN_DIR/metrics.json`` of every run folder, in the order given.

    Each returned dict is the JSON object plus ``"run_dir"`` (the folder, as a string) and, when
    ``RUN_DIR/label_stats.json`` exists, ``"head_min"`` / ``"tail_max"`` from it.

    Raises:
        FileNotFoundError: a folder or its ``metrics.json`` does not exist (the message names it).
        ValueError: ``metrics.json`` is not valid JSON, not an object, lacks a required field
            (``name``, ``loss``, ``sampler``, ``mAP``) or has inconsistent per-class lists.
    """
    run_dirs = _as_list(run_dirs)
    runs = []
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"run folder {d} does not exist")
        path = d / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"run folder {d} has no metrics.json (has the run finished its evaluation?)")
        try:
            run = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"run folder {d}: metrics.json is not valid JSON ({e})") from None
        if not isinstance(run, dict):
            raise ValueError(f"run folder {d}: expected metrics.json to hold a JSON object, but got {type(run).__name__}")
        missing = [k for k in _REQUIRED if k not in run]
        if missing:
            raise ValueError(f"run folder {d}: metrics.json lacks the field(s) {missing}")
        if not isinstance(run["mAP"], dict):
            raise ValueError(f"run folder {d}: expected `mAP` to be an object with total/head/medium/tail, but got {run['mAP']!r}")
        names = run.get("class_names")
        for key in ("per_class_ap", "train_class_freq"):
            if names is not None and run.get(key) is not None and len(run[key]) != len(names):
                raise ValueError(
                    f"run folder {d}: expected `{key}` to have {len(names)} values (one per class), but got {len(run[key])}"
                )
        run["run_dir"] = str(d)
        stats_path = d / "label_stats.json"
        if stats_path.is_file():
            try:
                stats = LabelStats.load(stats_path)
                run.setdefault("head_min", stats.head_min)
                run.setdefault("tail_max", stats.tail_max)
            except ValueError:
                pass  # the thresholds fall back to the defaults; the metrics are what matters
        runs.append(run)
    return runs


def _metric(run: dict[str, Any], key: str) -> float:
    v = run.get("mAP", {}).get(key) if key in ("total", *GROUPS) else run.get(key)
    return float("nan") if v is None else float(v)


def seed_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over the seeds of one row (``runs``: its ``metrics.json``
    dicts, the same recipe with different seeds): ``{"name", "loss", "sampler", "seeds", "mean": {...},
    "sd": {...}, "per_class_ap": mean per-class AP}`` with the keys of the table (``total``, the groups,
    ``micro_f1``, ``macro_f1``); sd is NaN for a single seed.

    >>> runs = [{"name": "rs", "loss": "bce", "sampler": "class-aware", "seed": s, "per_class_ap": [a, None],
    ...          "mAP": {"total": a, "head": a, "medium": a, "tail": a}, "micro_f1": a, "macro_f1": a}
    ...         for s, a in ((0, 0.5), (1, 0.7))]
    >>> row = seed_summary(runs); round(row["mean"]["total"], 3), round(row["sd"]["total"], 4), row["per_class_ap"]
    (0.6, 0.1414, [0.6, None])
    """
    if not runs:
        raise ValueError("Expected at least one run for a seed summary, but got none")
    first = runs[0]
    mean, sd = {}, {}
    for key in SEED_METRICS:
        vals = np.array([_metric(r, key) for r in runs], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        mean[key] = float(vals.mean()) if vals.size else float("nan")
        sd[key] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
    ap = np.array([[np.nan if v is None else v for v in r.get("per_class_ap", [])] for r in runs], dtype=np.float64)
    finite = np.isfinite(ap)
    count = finite.sum(axis=0)
    ap_mean = np.where(count > 0, np.where(finite, ap, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    per_class = [None if not np.isfinite(v) else float(v) for v in ap_mean]
    return {"name": first.get("name"), "loss": first.get("loss"), "sampler": first.get("sampler"),
            "seeds": [r.get("seed") for r in runs], "mean": mean, "sd": sd, "per_class_ap": per_class}


def _seed_dirs(folder: Path) -> list[Path]:
    """The ``seed<k>/`` subfolders of ``folder`` that hold a ``metrics.json``, by seed."""
    found = [(int(m.group(1)), p) for p in folder.glob("seed*")
             if (m := re.fullmatch(r"seed(\d+)", p.name)) and (p / "metrics.json").is_file()]
    return [p for _, p in sorted(found)]


def load_rows(items: Sequence[str | Path | Sequence[str | Path]]) -> list[dict[str, Any]]:
    """The rows of a report: one :func:`seed_summary` per item, with the fields the report needs.

    An item is a run folder (a row of one run), a list of run folders (one recipe's seeds), or a
    folder without ``metrics.json`` whose ``seed<k>/`` subfolders hold the runs (``OUT/<row>`` of
    ``dbloss demo`` / ``reproduce``). Each row is the summary (``"mean"``, ``"sd"``, ``"per_class_ap"``:
    the mean over seeds, None if a run has none) plus ``"runs"`` (:func:`load_runs` of its folders),
    ``"run_dirs"``, ``"run_dir"`` (the item's folder; a list's first run) and, from its first run,
    ``"class_names"``, ``"train_class_freq"``, ``"split"``, ``"dataset"``, ``"head_min"``, ``"tail_max"``.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_runs`; also a row whose runs have different
            names or classes (seeds of one recipe share both).
    """
    items = _as_list(items)
    rows = []
    for item in items:
        if isinstance(item, (str, Path)):
            folder = Path(item)
            seeds = [] if (folder / "metrics.json").is_file() else _seed_dirs(folder)
            dirs, row_dir = (seeds or [folder]), str(folder)
        else:
            dirs = [Path(d) for d in item]
            if not dirs:
                raise ValueError("Expected each row to have at least one run folder, but got an empty list")
            row_dir = str(dirs[0])
        runs = load_runs(dirs)
        first = runs[0]
        for key in ("name", "class_names"):
            if any(r.get(key) != first.get(key) for r in runs):
                raise ValueError(f"Expected the runs of one row to share `{key}`, but {row_dir} has "
                                 f"{[r.get(key) for r in runs]} ({', '.join(r['run_dir'] for r in runs)})")
        with_ap = all(r.get("per_class_ap") is not None for r in runs)
        summary = seed_summary(runs if with_ap else [{k: v for k, v in r.items() if k != "per_class_ap"}
                                                      for r in runs])
        row = {key: first[key] for key in ("class_names", "train_class_freq", "split", "dataset", "head_min",
                                           "tail_max") if key in first}
        row.update(summary, per_class_ap=summary["per_class_ap"] if with_ap else None, runs=runs,
                   run_dirs=[r["run_dir"] for r in runs], run_dir=row_dir)
        rows.append(row)
    return rows


def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for r in rows:
        cells = seed_cells(r)  # the cells of seed_table: the report's two tables cannot disagree
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells[:3]) + "".join(f'<td class="num">{c}</td>' for c in cells[3:])
        body.append(f"<tr>{tds}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _is_rs(run: dict[str, Any]) -> int:
    """2 if the run's name says RS, 1 if it is BCE with class-aware sampling, else 0."""
    name = str(run.get("name", "")).lower()
    if re.search(r"(^|[^a-z0-9])rs($|[^a-z0-9])", name):
        return 2
    if str(run.get("sampler", "")).lower() == "class-aware" and str(run.get("loss", "")).lower() == "bce":
        return 1
    return 0


def _find(runs: Sequence[dict[str, Any]], key: str, what: str) -> dict[str, Any]:
    for r in runs:
        if key in (r.get("name"), r.get("run_dir"), *r.get("run_dirs", ())) or (
                r.get("run_dir") and Path(r["run_dir"]).name == key):
            return r
    raise ValueError(f"Expected `{what}` to be the name or folder of one of the runs {[r.get('name') for r in runs]}, but got {key!r}")


def select_increment_pair(
    runs: Sequence[dict[str, Any]], baseline: str | None = None, compare: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """Pick ``(compare, baseline)`` for the AP-increment figure, or return why there is none.

    ``baseline`` / ``compare`` are run names or run folders. Defaults: ``compare`` is the first
    run whose loss is ``db-focal``; ``baseline`` is a run named RS (e.g. ``"rs"``, ``"rs-bce"``)
    or else a BCE run with class-aware sampling.
    """
    cmp_run = _find(runs, compare, "compare") if compare is not None else next(
        (r for r in runs if str(r.get("loss", "")).lower() == "db-focal"), None)
    if baseline is not None:
        base_run = _find(runs, baseline, "baseline")
    else:
        cands = sorted((r for r in runs if r is not cmp_run and _is_rs(r)), key=lambda r: -_is_rs(r))
        base_run = cands[0] if cands else None
    if cmp_run is None:
        return "no run with loss db-focal to compare (pass `compare`)"
    if base_run is None:
        return "no RS baseline run (a run named 'rs' or BCE with class-aware sampling; pass `baseline`)"
    if base_run is cmp_run:
        return f"baseline and compare are the same run ({cmp_run.get('name')!r})"
    return cmp_run, base_run


def _seeds_text(row: dict[str, Any]) -> str:
    """``"seeds 0, 1, 2: "`` before the folders of a row of several runs, else nothing."""
    if len(row["runs"]) < 2:
        return ""
    return "seeds " + ", ".join("?" if s is None else str(s) for s in row["seeds"]) + ": "


def _class_info(run: dict[str, Any]) -> tuple[list[str], np.ndarray, dict[str, list[int]], int, int] | None:
    names, freq = run.get("class_names"), run.get("train_class_freq")
    if names is None or freq is None:
        return None
    head_min = int(run.get("head_min", DEFAULT_HEAD_MIN))
    tail_max = int(run.get("tail_max", DEFAULT_TAIL_MAX))
    freq = np.asarray(freq, dtype=np.int64)
    split = run.get("split") or class_split(freq, head_min, tail_max)
    return list(names), freq, {g: list(split.get(g, [])) for g in GROUPS}, head_min, tail_max


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}
h2{font-size:1.25em;margin-top:1.6em}
table{border-collapse:collapse;margin:1em 0;font-size:.95em}
th,td{border:1px solid #ccc;padding:.35em .7em}
th{background:#f0f3f7;text-align:center}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
figure{margin:1.2em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}
.note{color:#8a5a00;background:#fff8e6;border-left:4px solid #f0b400;padding:.4em .8em}
code{background:#f4f4f4;padding:0 .25em}
""".strip()


def write_report(
    run_dirs: Sequence[str | Path | Sequence[str | Path]],
    out_dir: str | Path,
    *,
    baseline: str | None = None,
    compare: str | None = None,
    title: str = "dbloss results",
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the figure PNGs of the runs into ``out_dir``.

    Args:
        run_dirs: the rows: run folders (each with ``metrics.json``), lists of run folders (one
            recipe's seeds) or folders of ``seed<k>/`` runs, as :func:`load_rows` reads them. A row of
            several seeds shows mean ± sample sd over them, as ``results.md`` of ``dbloss demo`` does,
            and its mean per-class AP in the figures.
        out_dir: output folder (created).
        baseline, compare: row names or folders for the AP-increment figure (``compare`` over
            ``baseline``); defaults as in :func:`select_increment_pair`. If no pair is found the
            figure is skipped and the report says why.
        title: the report heading.

    Returns:
        ``{"markdown": ..., "html": ..., "class_distribution": ..., "per_class_ap": ...,
        "ap_increment": ...}``, the paths written (figure keys only for figures made).
    """
    rows = load_rows(run_dirs)  # one per row; a row of one run keeps that run's values (sd: none)
    seeded = any(len(r["runs"]) > 1 for r in rows)
    over = " (mean over its seeds)" if seeded else ""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    figures: list[tuple[str, str, Path]] = []  # (key, caption, path)

    ref = next((r for r in rows if _class_info(r) is not None), None)
    if ref is None:
        notes.append("No run has class_names and train_class_freq in metrics.json; figures skipped.")
    else:
        names, freq, split, head_min, tail_max = _class_info(ref)  # type: ignore[misc]
        same = [r for r in rows if r.get("class_names") == names and r.get("per_class_ap") is not None]
        other = [str(r.get("name")) for r in rows if not any(r is s for s in same)]
        if other:
            notes.append(f"Runs left out of the per-class figures (other classes or no per-class AP): {', '.join(other)}.")
        fig = class_distribution_figure(freq, names, head_min, tail_max)
        figures.append(("class_distribution", f"Training class distribution of {ref.get('dataset', 'the dataset')} "
                        f"(head: n \u2265 {head_min}, tail: n < {tail_max}).", save_figure(fig, out / "class_distribution.png")))
        if same:
            fig = per_class_ap_figure(same, freq, names, split)
            figures.append(("per_class_ap", f"Per-class AP (x100) of every run{over}, classes sorted by training frequency; "
                            "grey bars: training images per class (log scale).", save_figure(fig, out / "per_class_ap.png")))
            pair = select_increment_pair(same, baseline, compare) if len(same) > 1 or baseline or compare else \
                "only one run; the AP-increment figure needs two"
            if isinstance(pair, str):
                notes.append(f"AP-increment figure skipped: {pair}.")
            else:
                cmp_run, base_run = pair
                fig = ap_increment_figure(cmp_run, base_run, freq, names, split)
                figures.append(("ap_increment", f"Per-class AP increment of {cmp_run['name']} over {base_run['name']}"
                                f"{' (means over seeds)' if seeded else ''}.",
                                save_figure(fig, out / "ap_increment.png")))

    table = seed_table(rows)  # one run: its values, as results_table shows them
    values = "All values are percentages (x100)" + (
        "; a row of several seeds: mean ± sample standard deviation over the seeds." if seeded else ".")
    md = [f"# {title}", "", values, "", table, ""]
    md += [f"- `{r['name']}`: {_seeds_text(r)}" + ", ".join(f"`{d}`" for d in r["run_dirs"]) for r in rows] + [""]
    for _, caption, path in figures:
        md += [f"![{caption}]({path.name})", "", f"*{caption}*", ""]
    md += [f"> Note: {n}" for n in notes]
    md_path = out / "report.md"
    write_text(md_path, "\n".join(md).rstrip() + "\n")

    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(values)}</p>", _html_table(rows),
        "<ul>" + "".join(f"<li><code>{html.escape(str(r['name']))}</code>: {html.escape(_seeds_text(r))}"
                         + ", ".join(f"<code>{html.escape(d)}</code>" for d in r["run_dirs"]) + "</li>"
                         for r in rows) + "</ul>",
    ]
    for n in notes:
        parts.append(f'<p class="note">Note: {html.escape(n)}</p>')
    for key, caption, path in figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure id="{key}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    html_path = out / "report.html"
    write_text(html_path, "\n".join(parts) + "\n")

    result = {"markdown": md_path, "html": html_path}
    result.update({key: path for key, _, path in figures})
    return result
