"""The DB re-balanced weights of a label matrix: r, r_hat per class, and the map r -> r_hat.

Wu et al. (ECCV 2020, arXiv 2007.09654), Sec. 3.2. Under class-aware re-sampling a sample i is
drawn with the instance-level probability ``P^I_i ∝ sum_{j: y_ij = 1} 1 / n_j`` while the class
k expects ``P^C_k ∝ 1 / n_k``; their ratio r and its smoothed weight r_hat are computed by the
loss's own reference, :func:`dbloss.losses.reference.rebalance_ratio` and
:func:`~dbloss.losses.reference.rebalance_map` (this module only converts to and from numpy).

``r_hat`` multiplies both the positive and the negative terms of the loss, so this analysis
summarises both: over the positive entries of each class (the images that contain it) and over
its negative entries (the images that do not). Samples without any positive label have no
finite ``r`` (the loss gives them ``alpha + 1``) and are left out of the summaries; their
number is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from dbloss.losses import reference
from dbloss.apps.analysis.output import write_analysis
from dbloss.apps.plots import GROUP_COLORS, class_axis, frequency_order, shade_groups
from dbloss.stats import GROUPS, LabelStats, validate_label_matrix

__all__ = [
    "WeightAnalysis",
    "rebalance_map",
    "rebalance_ratio",
    "run_weight_analysis",
    "weight_analysis",
    "weight_figure",
]


def rebalance_ratio(labels: Any, class_freq: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The ratio ``r_ik = P^C_k / P^I_i`` (:func:`dbloss.losses.reference.rebalance_ratio`) of a label matrix.

    Args:
        labels: (N, C) {0, 1} matrix.
        class_freq: (C,) class counts ``n_k``; default the column sums of ``labels``.

    Returns:
        (N, C) float64; ``inf`` on rows without a positive label. For a positive entry r <= 1,
        with r = 1 exactly when it is the sample's only positive label.

    >>> rebalance_ratio([[1, 1], [0, 1]], [1, 4]).tolist()
    [[0.8, 0.2], [4.0, 1.0]]
    """
    y = validate_label_matrix(labels)
    freq = y.sum(0) if class_freq is None else np.asarray(class_freq, dtype=np.float64)
    if freq.shape != (y.shape[1],):
        raise ValueError(f"Expected class_freq of shape ({y.shape[1]},), but got {freq.shape}")
    if (freq <= 0).any():
        k = int(np.flatnonzero(freq <= 0)[0])
        raise ValueError(f"Class {k} has no positive sample (class_freq[{k}] = {freq[k]:g}); r is undefined for it")
    return reference.rebalance_ratio(torch.as_tensor(y), torch.as_tensor(freq, dtype=torch.float64)).numpy()


def rebalance_map(r: np.ndarray | Sequence[float], alpha: float = 0.1, beta: float = 10.0, mu: float = 0.3) -> np.ndarray:
    """``r_hat(r) = alpha + sigmoid(beta * (r - mu))`` by :func:`dbloss.losses.reference.rebalance_map`, in float64.

    >>> [round(v, 3) for v in rebalance_map([0.3, 1.0]).tolist()]
    [0.6, 1.099]
    """
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 1 or not (r > 0).all() or not np.isfinite(r).all():
        raise ValueError("Expected `r` to be a 1-D array of finite values > 0")
    return reference.rebalance_map(torch.from_numpy(r), alpha=alpha, beta=beta, mu=mu).numpy()


@dataclass
class WeightAnalysis:
    """Per-class statistics of ``r`` and ``r_hat`` over a label matrix (see the module docstring).

    Arrays are (C,) float64, NaN where a class has no entry of that kind.

    Attributes:
        class_names, class_freq, split: the classes, their counts and head/medium/tail indices.
        pos_mean_r, pos_median_r, pos_mean_rhat, pos_median_rhat: over the class's positive entries.
        neg_mean_r, neg_median_r, neg_mean_rhat, neg_median_rhat: over its negative entries.
        pos_r: per class, the r values of its positive entries (for the figure).
        num_unlabelled: samples without a positive label (left out).
        single_label_fraction: fraction of labelled samples with exactly one positive label.
        alpha, beta, mu: the map's parameters.
        map_r, map_rhat: the curve r -> r_hat (by the loss's reference) on a grid.
    """

    class_names: list[str]
    class_freq: np.ndarray
    split: dict[str, list[int]]
    pos_mean_r: np.ndarray
    pos_median_r: np.ndarray
    pos_mean_rhat: np.ndarray
    pos_median_rhat: np.ndarray
    neg_mean_r: np.ndarray
    neg_median_r: np.ndarray
    neg_mean_rhat: np.ndarray
    neg_median_rhat: np.ndarray
    pos_r: list[np.ndarray]
    num_unlabelled: int
    single_label_fraction: float
    alpha: float
    beta: float
    mu: float
    map_r: np.ndarray
    map_rhat: np.ndarray

    def group_summary(self) -> dict[str, dict[str, float]]:
        """Per group, the mean over its classes of each per-class statistic (NaN-aware)."""
        out: dict[str, dict[str, float]] = {}
        for g in GROUPS:
            idx = self.split[g]
            if not idx:
                continue
            out[g] = {
                key: float(np.nanmean(getattr(self, key)[idx])) if np.isfinite(getattr(self, key)[idx]).any() else float("nan")
                for key in ("pos_mean_r", "pos_median_r", "pos_mean_rhat", "neg_mean_r", "neg_mean_rhat")
            }
            out[g]["num_classes"] = len(idx)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (NaN as None)."""
        clean = lambda a: [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]  # noqa: E731
        per_class = {
            k: clean(getattr(self, k))
            for k in ("pos_mean_r", "pos_median_r", "pos_mean_rhat", "pos_median_rhat",
                      "neg_mean_r", "neg_median_r", "neg_mean_rhat", "neg_median_rhat")
        }
        groups = {g: {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
                  for g, d in self.group_summary().items()}
        return {
            "params": {"alpha": self.alpha, "beta": self.beta, "mu": self.mu},
            "class_names": list(self.class_names),
            "class_freq": self.class_freq.tolist(),
            "split": self.split,
            "num_unlabelled": self.num_unlabelled,
            "single_label_fraction": self.single_label_fraction,
            "per_class": per_class,
            "groups": groups,
            "map": {"r": self.map_r.tolist(), "r_hat": self.map_rhat.tolist()},
        }


def _masked_stats(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and median of ``values`` where ``mask`` holds (NaN for empty columns)."""
    v = np.where(mask, values, np.nan)
    empty = ~mask.any(0)
    v[:, empty] = 0.0  # avoid all-NaN warnings; reset below
    mean, median = np.nanmean(v, 0), np.nanmedian(v, 0)
    mean[empty] = median[empty] = np.nan
    return mean, median


def weight_analysis(
    labels: Any,
    class_names: Sequence[str] | None = None,
    *,
    alpha: float = 0.1,
    beta: float = 10.0,
    mu: float = 0.3,
    stats: LabelStats | None = None,
) -> WeightAnalysis:
    """Distribution of ``r`` and ``r_hat`` per class of an (N, C) {0, 1} label matrix.

    Args:
        labels: (N, C) training label matrix; every class needs a positive sample.
        class_names: C names (default ``class_0``...).
        alpha, beta, mu: the re-balancing map (defaults 0.1, 10, 0.3, the paper's VOC values).
        stats: label statistics with the head/tail thresholds (default from ``labels``).

    >>> a = weight_analysis([[1, 0], [1, 1], [0, 1]], ["a", "b"])
    >>> a.pos_mean_r.tolist()
    [0.75, 0.75]
    """
    y = validate_label_matrix(labels)
    stats = stats if stats is not None else LabelStats.from_labels(y, class_names)
    empty = stats.empty_classes()
    if empty:
        raise ValueError(f"Classes without a positive sample have no re-balancing weight: {empty}")
    r = rebalance_ratio(y, stats.class_freq)
    r_hat = reference.rebalance_map(torch.from_numpy(r), alpha=alpha, beta=beta, mu=mu).numpy()
    labelled = y.sum(1) > 0
    pos = (y == 1) & labelled[:, None]
    neg = (y == 0) & labelled[:, None]
    pos_mean_r, pos_median_r = _masked_stats(r, pos)
    pos_mean_h, pos_median_h = _masked_stats(r_hat, pos)
    neg_mean_r, neg_median_r = _masked_stats(r, neg)
    neg_mean_h, neg_median_h = _masked_stats(r_hat, neg)
    grid = np.linspace(0.005, 1.5, 300)
    return WeightAnalysis(
        class_names=list(stats.class_names),
        class_freq=stats.class_freq.copy(),
        split=stats.split,
        pos_mean_r=pos_mean_r, pos_median_r=pos_median_r, pos_mean_rhat=pos_mean_h, pos_median_rhat=pos_median_h,
        neg_mean_r=neg_mean_r, neg_median_r=neg_median_r, neg_mean_rhat=neg_mean_h, neg_median_rhat=neg_median_h,
        pos_r=[r[pos[:, k], k] for k in range(y.shape[1])],
        num_unlabelled=int((~labelled).sum()),
        single_label_fraction=float((y[labelled].sum(1) == 1).mean()) if labelled.any() else float("nan"),
        alpha=float(alpha), beta=float(beta), mu=float(mu),
        map_r=grid, map_rhat=rebalance_map(grid, alpha, beta, mu),
    )


def weight_figure(a: WeightAnalysis) -> Figure:
    """Three panels: (a) the map r -> r_hat with each group's mean positive r marked;
    (b) the distribution of r over positive entries, head / medium / tail;
    (c, full width below) per-class mean r_hat on positive and negative entries, classes sorted
    by frequency.
    """
    c = len(a.class_names)
    fig = Figure(figsize=(max(11.0, 0.16 * c + 4.0), 9.5), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.1])
    ax1, ax2, ax3 = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])

    ax1.plot(a.map_r, a.map_rhat, color="k", lw=1.8, label=r"$\hat r=\alpha+\sigma(\beta(r-\mu))$")
    ax1.axvline(a.mu, color="0.5", ls=":", lw=1)
    groups = a.group_summary()
    for g, d in groups.items():
        rm = d["pos_mean_r"]
        if np.isfinite(rm):
            ax1.plot([rm], rebalance_map([rm], a.alpha, a.beta, a.mu), "o", ms=8,
                     color=GROUP_COLORS[g], label=f"{g}: mean r = {rm:.2f}")
    ax1.set_xlabel("r  (class / instance sampling probability)")
    ax1.set_ylabel(r"$\hat r$")
    ax1.set_title(rf"(a) map r $\to$ $\hat r$ ($\alpha$={a.alpha:g}, $\beta$={a.beta:g}, $\mu$={a.mu:g})", fontsize=10)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.grid(alpha=0.3)

    bins = np.linspace(0, 1, 21)
    for g in GROUPS:
        vals = np.concatenate([a.pos_r[k] for k in a.split[g]]) if a.split[g] else np.empty(0)
        if vals.size:
            ax2.hist(vals, bins=bins, density=True, histtype="step", lw=2, color=GROUP_COLORS[g],
                     label=f"{g} ({vals.size} positives)")
    ax2.set_xlabel("r of positive entries")
    ax2.set_ylabel("density")
    ax2.set_title("(b) r over positive labels, by group", fontsize=10)
    ax2.legend(fontsize=8, loc="upper left")
    ax2.grid(alpha=0.3)

    order = frequency_order(a.class_freq)
    x = np.arange(c)
    shade_groups(ax3, a.split, order)
    ax3.bar(x - 0.2, a.pos_mean_rhat[order], width=0.4, color="#4c72b0", label=r"positives: mean $\hat r$")
    ax3.bar(x + 0.2, a.neg_mean_rhat[order], width=0.4, color="#c44e52", label=r"negatives: mean $\hat r$")
    class_axis(ax3, a.class_names, order, a.class_freq)
    ax3.set_ylim(0, a.alpha + 1.15)
    ax3.set_ylabel(r"mean $\hat r$")
    ax3.set_title(r"(c) per-class mean $\hat r$, classes sorted by frequency", fontsize=10, pad=16)
    ax3.legend(fontsize=8, loc="upper right", ncol=2)
    ax3.grid(axis="y", alpha=0.3)
    return fig


def run_weight_analysis(
    labels: Any,
    class_names: Sequence[str] | None,
    out_dir: str | Path,
    *,
    alpha: float = 0.1,
    beta: float = 10.0,
    mu: float = 0.3,
) -> dict[str, Any]:
    """Run :func:`weight_analysis`; write ``weights.png`` and ``weights.json`` into ``out_dir``.

    Returns ``{"figure": Path, "json": Path, "summary": {group: {...}}}``.
    """
    a = weight_analysis(labels, class_names, alpha=alpha, beta=beta, mu=mu)
    data = a.to_dict()
    fig_path, json_path = write_analysis(out_dir, "weights", weight_figure(a), data)
    return {"figure": fig_path, "json": json_path, "summary": data["groups"]}
