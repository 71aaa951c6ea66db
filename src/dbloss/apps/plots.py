"""Figures of runs and label statistics, as :class:`matplotlib.figure.Figure` objects.

Every function takes plain data (lists, arrays, the dicts of ``metrics.json``) and returns a new
``Figure`` built directly from :class:`matplotlib.figure.Figure`, so nothing here touches
pyplot's global state or selects a backend: figures are rendered by the Agg canvas when saved
with :func:`save_figure`. AP values are fractions in [0, 1] (``None`` / NaN where a class has no
test positive) and are shown x100, the paper's convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dbloss.stats import DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX, GROUPS, class_split

__all__ = [
    "GROUP_COLORS",
    "ap_increment_figure",
    "class_axis",
    "class_distribution_figure",
    "frequency_order",
    "per_class_ap_figure",
    "save_figure",
    "shade_groups",
]

#: Background colour of the head / medium / tail bands.
GROUP_COLORS: dict[str, str] = {"head": "#4c72b0", "medium": "#dd8452", "tail": "#55a868"}
_MARKERS = "osD^vP*Xh<>p"


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, e.g. ``.png``), creating parent folders.

    >>> from matplotlib.figure import Figure
    >>> import tempfile, os
    >>> p = save_figure(Figure(), os.path.join(tempfile.mkdtemp(), "f.png"))
    >>> p.suffix
    '.png'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def frequency_order(class_freq: Sequence[int] | np.ndarray) -> np.ndarray:
    """Class indices sorted by decreasing training frequency (ties keep class order)."""
    freq = np.asarray(class_freq)
    return np.argsort(-freq, kind="stable")


def _as_ap(values: Sequence[float | None] | np.ndarray, num_classes: int, what: str) -> np.ndarray:
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if arr.shape != (num_classes,):
        raise ValueError(f"Expected {what} to have {num_classes} values (one per class), but got {arr.shape[0]}")
    return arr


def _check_classes(class_freq: Any, class_names: Sequence[str]) -> np.ndarray:
    freq = np.asarray(class_freq, dtype=np.int64)
    if freq.ndim != 1:
        raise ValueError(f"Expected class_freq to be 1-D, but got shape {freq.shape}")
    if len(class_names) != freq.shape[0]:
        raise ValueError(f"Expected {freq.shape[0]} class names, but got {len(class_names)}")
    return freq


def _spans(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers in ``positions`` as (first, last) pairs."""
    out: list[tuple[int, int]] = []
    for p in sorted(int(q) for q in positions):
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def shade_groups(ax: Any, split: Mapping[str, Sequence[int]], order: np.ndarray, *, label: bool = True) -> list[Patch]:
    """Shade the head / medium / tail bands of an axis whose x position ``i`` shows class ``order[i]``.

    Returns legend handles for the groups that have at least one class.
    """
    pos_of = np.empty(len(order), dtype=np.int64)
    pos_of[np.asarray(order)] = np.arange(len(order))
    handles = []
    for g in GROUPS:
        members = [int(k) for k in split.get(g, [])]
        if not members:
            continue
        color = GROUP_COLORS[g]
        for a, b in _spans(pos_of[members]):
            ax.axvspan(a - 0.5, b + 0.5, color=color, alpha=0.10, lw=0, zorder=0)
            if label:
                ax.text(
                    (a + b) / 2, 1.0, g, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=9, color=color, fontweight="bold",
                )
        handles.append(Patch(color=color, alpha=0.25, label=f"{g} ({len(members)})"))
    return handles


def class_axis(ax: Any, names: Sequence[str], order: np.ndarray, freq: np.ndarray, with_counts: bool = True) -> None:
    """Label the x axis with one tick per class in ``order`` ("name (count)"), as every per-class figure does."""
    labels = [f"{names[k]} ({freq[k]})" if with_counts else names[k] for k in order]
    ax.set_xticks(np.arange(len(order)))
    fontsize = 8 if len(order) <= 30 else 6
    ax.set_xticklabels(labels, rotation=90, fontsize=fontsize)
    ax.set_xlim(-0.5, len(order) - 0.5)


def _figsize(num_classes: int) -> tuple[float, float]:
    return (max(8.0, 0.22 * num_classes + 3.0), 5.0)


def per_class_ap_figure(
    runs: Sequence[Mapping[str, Any]],
    class_freq: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    split: Mapping[str, Sequence[int]] | None = None,
) -> Figure:
    """Per-class AP (x100) of several runs, classes sorted by decreasing training frequency.

    Args:
        runs: dicts with ``"name"`` and ``"per_class_ap"`` (C values in [0, 1], ``None`` for a
            class without test positives, which is left out of the plot), e.g. ``metrics.json``.
        class_freq: (C,) training positives per class; drawn as grey log-scale bars on a
            secondary axis.
        class_names: C names; tick labels read ``name (count)``.
        split: ``{"head": [...], "medium": [...], "tail": [...]}`` class indices; default
            :func:`dbloss.stats.class_split` of ``class_freq``.

    >>> fig = per_class_ap_figure([{"name": "a", "per_class_ap": [0.9, 0.5]}], [120, 3], ["x", "y"])
    >>> len(fig.axes)
    2
    """
    freq = _check_classes(class_freq, class_names)
    if not runs:
        raise ValueError("Expected at least one run, but got none")
    split = class_split(freq) if split is None else split
    order = frequency_order(freq)
    x = np.arange(len(order))
    fig = Figure(figsize=_figsize(len(order)), layout="constrained")
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    ax2.bar(x, np.maximum(freq[order], 1), color="0.6", alpha=0.35, width=0.8, zorder=0, label="train images")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images per class (log)", color="0.4")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    group_handles = shade_groups(ax, split, order)
    for i, run in enumerate(runs):
        ap = _as_ap(run["per_class_ap"], len(freq), f"per_class_ap of run {run.get('name', i)!r}") * 100
        m = _MARKERS[i % len(_MARKERS)]
        ax.plot(x, ap[order], marker=m, ls="-", lw=0.8, ms=5, alpha=0.9, label=str(run.get("name", f"run {i}")))
    ax.set_ylim(0, 102)
    ax.set_ylabel("AP (%)")
    ax.set_title("Per-class AP, classes sorted by training frequency", pad=16)
    class_axis(ax, class_names, order, freq)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + group_handles, fontsize=8, loc="lower left", ncol=2, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def ap_increment_figure(
    run: Mapping[str, Any],
    baseline: Mapping[str, Any],
    class_freq: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    split: Mapping[str, Sequence[int]] | None = None,
) -> Figure:
    """Per-class AP increment (x100) of ``run`` over ``baseline`` (the paper's Fig. 5 style).

    Bars are green where ``run`` is better and red where it is worse; classes are sorted by
    decreasing training frequency and the head / medium / tail bands are shaded. Classes where
    either AP is undefined get no bar. The mean increment per group is given in the legend.

    >>> a = {"name": "db", "per_class_ap": [0.9, 0.6]}; b = {"name": "rs", "per_class_ap": [0.8, 0.7]}
    >>> fig = ap_increment_figure(a, b, [150, 5], ["x", "y"])
    >>> fig.axes[0].get_ylabel()
    'AP increment (%)'
    """
    freq = _check_classes(class_freq, class_names)
    split = class_split(freq) if split is None else split
    c = len(freq)
    name, base_name = str(run.get("name", "run")), str(baseline.get("name", "baseline"))
    delta = (_as_ap(run["per_class_ap"], c, f"per_class_ap of {name!r}")
             - _as_ap(baseline["per_class_ap"], c, f"per_class_ap of {base_name!r}")) * 100
    order = frequency_order(freq)
    x = np.arange(c)
    d = delta[order]
    colors = np.where(d >= 0, "#2ca02c", "#d62728")
    fig = Figure(figsize=_figsize(c), layout="constrained")
    ax = fig.add_subplot()
    group_handles = shade_groups(ax, split, order)
    ok = np.isfinite(d)
    ax.bar(x[ok], d[ok], color=colors[ok], width=0.75, zorder=2)
    ax.axhline(0, color="k", lw=0.8)
    for g, h in zip([g for g in GROUPS if split.get(g)], group_handles):
        vals = delta[list(split[g])]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            h.set_label(f"{h.get_label()}: mean {vals.mean():+.2f}")
    ax.set_ylabel("AP increment (%)")
    ax.set_title(f"Per-class AP increment of {name} over {base_name}", pad=16)
    class_axis(ax, class_names, order, freq)
    ax.legend(handles=group_handles, fontsize=8, loc="best", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def class_distribution_figure(
    class_freq: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    head_min: int = DEFAULT_HEAD_MIN,
    tail_max: int = DEFAULT_TAIL_MAX,
    *,
    log: bool = True,
) -> Figure:
    """Training-set class distribution, sorted, with the head / tail thresholds as lines.

    Args:
        class_freq: (C,) training positives per class.
        class_names: C names.
        head_min, tail_max: the split thresholds (pass ``LabelStats.head_min`` / ``.tail_max``);
            defaults from :mod:`dbloss.stats`.
        log: log-scale count axis (default True).

    >>> fig = class_distribution_figure([500, 60, 4], ["a", "b", "c"])
    >>> fig.axes[0].get_yscale()
    'log'
    """
    freq = _check_classes(class_freq, class_names)
    split = class_split(freq, head_min, tail_max)
    order = frequency_order(freq)
    x = np.arange(len(order))
    group_of = np.empty(len(freq), dtype=object)
    for g in GROUPS:
        group_of[split[g]] = g
    fig = Figure(figsize=_figsize(len(order)), layout="constrained")
    ax = fig.add_subplot()
    handles = shade_groups(ax, split, order)
    ax.bar(x, np.maximum(freq[order], 0.8 if log else 0), color=[GROUP_COLORS[g] for g in group_of[order]], width=0.8, zorder=2)
    if log:
        ax.set_yscale("log")
    for thr, txt in ((head_min, f"head: n \u2265 {head_min}"), (tail_max, f"tail: n < {tail_max}")):
        ax.axhline(thr, color="k", ls="--", lw=1, zorder=3)
        ax.text(len(order) - 0.5, thr, f" {txt}", va="bottom", ha="right", fontsize=8, zorder=4)
    ax.set_ylabel("training images per class" + (" (log)" if log else ""))
    ax.set_title(f"Training class distribution ({len(freq)} classes)", pad=16)
    class_axis(ax, class_names, order, freq, with_counts=False)
    ax.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9, bbox_to_anchor=(1.0, 0.9))
    ax.grid(axis="y", alpha=0.3)
    return fig
