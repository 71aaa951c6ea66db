"""Tests of dbloss.apps.plots: figures are built from plain data without pyplot and saved as PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from dbloss.apps.plots import (
    ap_increment_figure,
    class_distribution_figure,
    frequency_order,
    per_class_ap_figure,
    save_figure,
)
from dbloss.stats import DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX, class_split

FREQ = np.array([5, 300, 40, 12, 150, 2, 90, 25])
NAMES = [f"c{k}" for k in range(len(FREQ))]


def _runs():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.9, len(FREQ)).tolist()
    b = rng.uniform(0.2, 0.9, len(FREQ)).tolist()
    a[5] = None  # a class with no test positive
    return [{"name": "rs", "per_class_ap": a}, {"name": "db-focal", "per_class_ap": b}]


def test_import_has_no_pyplot_or_backend_side_effects():
    # a fresh interpreter: importing dbloss.apps.plots and drawing a figure must not load pyplot
    # nor select a backend.
    code = (
        "import sys, matplotlib; g = getattr(matplotlib.rcParams, '_get_backend_or_none', lambda: None); b = g();"
        "import dbloss.apps.plots as p; p.class_distribution_figure([300, 5], ['a', 'b']);"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported';"
        "assert g() == b, 'backend changed'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_frequency_order_is_decreasing_and_stable():
    order = frequency_order([3, 10, 3, 7])
    assert order.tolist() == [1, 3, 0, 2]


def test_per_class_ap_figure_plots_each_run_sorted_by_frequency(tmp_path):
    runs = _runs()
    fig = per_class_ap_figure(runs, FREQ, NAMES, class_split(FREQ))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label() in ("rs", "db-focal")]
    assert [ln.get_label() for ln in lines] == ["rs", "db-focal"]
    order = frequency_order(FREQ)
    y = lines[1].get_ydata()
    np.testing.assert_allclose(y, np.asarray(runs[1]["per_class_ap"])[order] * 100)
    # the None AP is NaN (not plotted), not 0
    assert np.isnan(lines[0].get_ydata()[list(order).index(5)])
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "c1 (300)" and ticks[-1] == "c5 (2)"
    texts = {t.get_text() for t in ax.texts}
    assert {"head", "medium", "tail"} <= texts
    path = save_figure(fig, tmp_path / "sub" / "ap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_class_ap_figure_rejects_wrong_length():
    with pytest.raises(ValueError, match="8 values"):
        per_class_ap_figure([{"name": "x", "per_class_ap": [0.1, 0.2]}], FREQ, NAMES)
    with pytest.raises(ValueError, match="class names"):
        per_class_ap_figure(_runs(), FREQ, NAMES[:-1])


def test_ap_increment_figure_colours_bars_by_sign(tmp_path):
    base, run = _runs()
    fig = ap_increment_figure(run, base, FREQ, NAMES)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_width() == pytest.approx(0.75)]
    delta = (np.array(run["per_class_ap"], float) - np.array([np.nan if v is None else v for v in base["per_class_ap"]])) * 100
    order = frequency_order(FREQ)
    finite = [d for d in delta[order] if np.isfinite(d)]
    assert len(bars) == len(finite)  # no bar for the class whose baseline AP is undefined
    for bar, d in zip(bars, finite):
        assert bar.get_height() == pytest.approx(d)
        r, g, _, _ = bar.get_facecolor()
        assert (g > r) == (d >= 0)
    assert "db-focal over rs" in ax.get_title()
    save_figure(fig, tmp_path / "inc.png")


def test_class_distribution_figure_draws_thresholds(tmp_path):
    fig = class_distribution_figure(FREQ, NAMES, DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX)
    ax = fig.axes[0]
    hlines = sorted(ln.get_ydata()[0] for ln in ax.get_lines())
    assert hlines == [DEFAULT_TAIL_MAX, DEFAULT_HEAD_MIN]
    heights = [p.get_height() for p in ax.patches if p.get_width() == pytest.approx(0.8)]
    assert heights == sorted(FREQ.tolist(), reverse=True)
    # custom thresholds are honoured (and the split follows them)
    fig2 = class_distribution_figure(FREQ, NAMES, head_min=50, tail_max=10)
    assert sorted(ln.get_ydata()[0] for ln in fig2.axes[0].get_lines()) == [10, 50]
    save_figure(fig, tmp_path / "dist.png")
