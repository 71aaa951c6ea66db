"""Markdown results tables: one row per run (:func:`results_table`) or per seed summary (:func:`seed_table`).

Pure formatting of ``metrics.json`` dicts, shared by the engine (``metrics.md`` beside every
run), the reports and the demo; metric values are fractions, shown x100 with 2 decimals.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from dbloss.stats import GROUPS

__all__ = ["COLUMNS", "SEED_METRICS", "format_mean_sd", "results_table", "run_cells", "seed_cells", "seed_table"]

#: The columns of both tables.
COLUMNS: tuple[str, ...] = ("Run", "Loss", "Sampler", "mAP", "Head", "Medium", "Tail", "Micro-F1", "Macro-F1")
#: The metric keys of a seed summary, in column order (``total`` and the groups are mAP).
SEED_METRICS: tuple[str, ...] = ("total", *GROUPS, "micro_f1", "macro_f1")


def _pct(v: Any) -> str:
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(f) else f"{100 * f:.2f}"


def run_cells(run: dict[str, Any]) -> list[str]:
    """The cells of one run's row (name, loss, sampler, then the metrics x100; "–" where missing)."""
    m = run.get("mAP") or {}
    return [
        str(run.get("name", "")), str(run.get("loss", "")), str(run.get("sampler", "")),
        _pct(m.get("total")), *(_pct(m.get(g)) for g in GROUPS),
        _pct(run.get("micro_f1")), _pct(run.get("macro_f1")),
    ]


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join(["---"] * 3 + ["---:"] * 6) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def results_table(runs: Sequence[dict[str, Any]]) -> str:
    """A Markdown table with one row per run: name, loss, sampler, mAP total/head/medium/tail,
    micro/macro F1, all x100 with 2 decimals ("–" where a value is missing).

    >>> print(results_table([{"name": "rs", "loss": "bce", "sampler": "class-aware",
    ...     "mAP": {"total": 0.5, "head": 0.7, "medium": 0.5, "tail": 0.25}, "micro_f1": 0.6, "macro_f1": 0.4}]))
    | Run | Loss | Sampler | mAP | Head | Medium | Tail | Micro-F1 | Macro-F1 |
    | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
    | rs | bce | class-aware | 50.00 | 70.00 | 50.00 | 25.00 | 60.00 | 40.00 |
    """
    return _markdown([run_cells(r) for r in runs])


def format_mean_sd(mean: float, sd: float) -> str:
    """``"81.50 ± 1.05"`` from fractions (x100, 2 decimals); the mean alone when sd is NaN, "–" without a mean.

    >>> format_mean_sd(0.815, 0.0105), format_mean_sd(0.5, float("nan")), format_mean_sd(float("nan"), 0.1)
    ('81.50 ± 1.05', '50.00', '–')
    """
    if not np.isfinite(mean):
        return "–"
    return f"{100 * mean:.2f}" + ("" if not np.isfinite(sd) else f" ± {100 * sd:.2f}")


def seed_cells(row: dict[str, Any]) -> list[str]:
    """The cells of one seed summary's row (name, loss, sampler, then :func:`format_mean_sd` of each metric)."""
    return [str(row["name"]), str(row["loss"]), str(row["sampler"]),
            *(format_mean_sd(row["mean"][k], row["sd"][k]) for k in SEED_METRICS)]


def seed_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of seed summaries (``{"name", "loss", "sampler", "mean": {...}, "sd": {...}}``
    with the keys of :data:`SEED_METRICS`, as :func:`dbloss.apps.report.seed_summary` makes): mean ± sample sd, x100."""
    return _markdown([seed_cells(r) for r in rows])
