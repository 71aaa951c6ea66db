"""What class-aware re-sampling does to a multi-label training set, measured by drawing from the sampler.

Wu et al. (ECCV 2020, arXiv 2007.09654), Sec. 3.2 and Fig. 1/2: class-aware sampling picks a
class uniformly and then an image of that class, so in the single-label case every class gets
``1/C`` of the draws. With multiple labels per image, every draw of an image also draws all the
classes it co-occurs with; head classes that co-occur with many others (e.g. "person") are then
drawn *more* than their ``1/C`` share, and, within a head class, the images that carry a rare
co-label are drawn far more often than the others (*within-class imbalance*).

This module measures both by iterating :class:`dbloss.sampling.ClassAwareSampler` over a number
of epochs and counting; definitions (all per class k, with N images and C classes):

* ``uniform_share[k] = n_k / N``: the fraction of draws that contain class k under uniform
  (random) sampling. It is exact: every epoch of a random sampler is a permutation of the N
  images, so each image is drawn once per epoch.
* ``ca_share[k]``: the measured fraction of class-aware draws whose image contains class k.
* ``oversampling[k] = ca_share[k] / uniform_share[k]``: how many times more often class k's
  instances appear after re-sampling than before, per draw (Fig. 1: tail classes rise a lot,
  but head classes do not fall to ``1/C`` because of co-occurrence).
* ``share_vs_balanced[k] = ca_share[k] * C``: the share relative to the ``1/C`` that a
  single-label class-aware sampler would give (> 1: over-sampled through co-occurrence).
* ``image_rate[i]``: draws of image i per N draws (1 for every image under uniform sampling);
  ``expected_image_rate[i] = N / C * sum_{k: y_ik = 1} 1 / n_k`` is the rate the class-aware
  design implies (the paper's instance-level probability ``P^I_i`` times N).
* ``within_cv[k]``: the coefficient of variation (std / mean) of ``image_rate`` over the images
  of class k (0 under uniform sampling): the within-class imbalance; ``within_spread[k]`` is the
  ratio of the 90th to the 10th percentile of those rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from dbloss.apps.analysis.output import write_analysis
from dbloss.apps.plots import GROUP_COLORS, class_axis, frequency_order, shade_groups
from dbloss.sampling import ClassAwareSampler
from dbloss.stats import GROUPS, LabelStats, validate_label_matrix

__all__ = ["ResamplingAnalysis", "draw_counts", "resampling_analysis", "resampling_figure", "run_resampling_analysis"]


def draw_counts(sampler: Any, num_images: int, epochs: int) -> np.ndarray:
    """Iterate ``sampler`` for ``epochs`` epochs (calling ``set_epoch``) and count the draws of each image.

    Returns (num_images,) int64 counts.
    """
    if epochs < 1:
        raise ValueError(f"Expected `epochs` >= 1, but got {epochs}")
    counts = np.zeros(num_images, dtype=np.int64)
    for epoch in range(epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        idx = np.fromiter((int(i) for i in sampler), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= num_images):
            raise ValueError(f"sampler yielded an index outside [0, {num_images})")
        counts += np.bincount(idx, minlength=num_images)
    return counts


@dataclass
class ResamplingAnalysis:
    """Uniform vs class-aware sampling of one label matrix (definitions in the module docstring).

    Attributes:
        class_names, class_freq, split: the classes, their counts and head/medium/tail indices.
        num_images: N. epochs, seed, num_draws: how the class-aware draws were made.
        uniform_share, ca_share, oversampling, share_vs_balanced: (C,) per-class shares.
        image_rate, expected_image_rate: (N,) per-image draws per N draws, measured and by design.
        within_cv, within_spread: (C,) within-class imbalance of ``image_rate``.
        class_rates: per class, ``image_rate`` of its images.
        sampler: the sampler's settings.
    """

    class_names: list[str]
    class_freq: np.ndarray
    split: dict[str, list[int]]
    num_images: int
    epochs: int
    seed: int
    num_draws: int
    uniform_share: np.ndarray
    ca_share: np.ndarray
    oversampling: np.ndarray
    share_vs_balanced: np.ndarray
    image_rate: np.ndarray
    expected_image_rate: np.ndarray
    within_cv: np.ndarray
    within_spread: np.ndarray
    class_rates: list[np.ndarray]
    sampler: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def rate_correlation(self) -> float:
        """Pearson correlation of measured and design per-image rates (1 for a faithful sampler)."""
        return float(np.corrcoef(self.image_rate, self.expected_image_rate)[0, 1])

    def group_summary(self) -> dict[str, dict[str, float]]:
        """Per group: total uniform / class-aware share of draws containing one of its classes
        (summed over classes), mean over-sampling and mean within-class CV."""
        out = {}
        for g in GROUPS:
            idx = self.split[g]
            if not idx:
                continue
            out[g] = {
                "num_classes": len(idx),
                "uniform_share_sum": float(self.uniform_share[idx].sum()),
                "ca_share_sum": float(self.ca_share[idx].sum()),
                "balanced_share_sum": len(idx) / self.num_classes,
                "mean_oversampling": float(self.oversampling[idx].mean()),
                "mean_within_cv": float(np.nanmean(self.within_cv[idx])),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers."""
        f = lambda a: [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]  # noqa: E731
        return {
            "params": {"epochs": self.epochs, "seed": self.seed, "num_draws": self.num_draws,
                       "num_images": self.num_images, "sampler": self.sampler},
            "class_names": list(self.class_names),
            "class_freq": self.class_freq.tolist(),
            "split": self.split,
            "per_class": {
                "uniform_share": f(self.uniform_share), "ca_share": f(self.ca_share),
                "oversampling": f(self.oversampling), "share_vs_balanced": f(self.share_vs_balanced),
                "within_cv": f(self.within_cv), "within_spread": f(self.within_spread),
            },
            "groups": self.group_summary(),
            "image_rate_correlation_with_design": self.rate_correlation(),
        }


def resampling_analysis(
    labels: Any,
    class_names: Sequence[str] | None = None,
    *,
    epochs: int = 10,
    seed: int = 0,
    num_samples_cls: int = 1,
    reduce: int = 4,
) -> ResamplingAnalysis:
    """Measure uniform vs class-aware sampling on an (N, C) label matrix.

    Args:
        labels: (N, C) {0, 1} training label matrix; every class needs a positive sample.
        class_names: C names (default ``class_0``...).
        epochs: epochs of :class:`~dbloss.sampling.ClassAwareSampler` to draw. Default 10.
        seed: the sampler's seed. Default 0.
        num_samples_cls, reduce: the sampler's settings. Defaults 1 and 4 (as training).

    >>> a = resampling_analysis([[1, 0], [1, 0], [1, 0], [1, 1]], ["a", "b"], epochs=20)
    >>> float(a.ca_share[0]), bool(a.ca_share[1] > 2 * a.uniform_share[1])
    (1.0, True)
    """
    y = validate_label_matrix(labels)
    stats = LabelStats.from_labels(y, class_names)
    empty = stats.empty_classes()
    if empty:
        raise ValueError(f"Class-aware sampling needs a positive sample in every class; empty: {empty}")
    n, c = y.shape
    sampler = ClassAwareSampler(y, num_samples_cls=num_samples_cls, reduce=reduce, seed=seed)
    counts = draw_counts(sampler, n, epochs)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("the sampler drew no sample")
    freq = stats.class_freq.astype(np.float64)
    uniform_share = freq / n
    ca_share = (counts @ y) / total
    image_rate = counts * (n / total)
    expected = (n / c) * (y @ (1.0 / freq))
    cv = np.full(c, np.nan)
    spread = np.full(c, np.nan)
    class_rates = [image_rate[y[:, k] == 1] for k in range(c)]
    for k, rates in enumerate(class_rates):
        if rates.mean() > 0:
            cv[k] = rates.std() / rates.mean()
        lo, hi = np.percentile(rates, [10, 90])
        spread[k] = hi / lo if lo > 0 else np.inf
    return ResamplingAnalysis(
        class_names=list(stats.class_names), class_freq=stats.class_freq.copy(), split=stats.split,
        num_images=n, epochs=int(epochs), seed=int(seed), num_draws=total,
        uniform_share=uniform_share, ca_share=ca_share, oversampling=ca_share / uniform_share,
        share_vs_balanced=ca_share * c, image_rate=image_rate, expected_image_rate=expected,
        within_cv=cv, within_spread=spread, class_rates=class_rates,
        sampler={"num_samples_cls": num_samples_cls, "reduce": reduce, "epoch_length": total // epochs},
    )


def resampling_figure(a: ResamplingAnalysis) -> Figure:
    """Two panels, classes sorted by training frequency:
    (a) instances per N draws before (uniform) and after class-aware re-sampling, with the
    single-label class-aware level N / C, log scale;
    (b) within-class imbalance: the per-image sampling rates of each class's images (box plots;
    1 for every image under uniform sampling), log scale.
    """
    c = a.num_classes
    order = frequency_order(a.class_freq)
    x = np.arange(c)
    fig = Figure(figsize=(max(10.0, 0.18 * c + 4.0), 9.0), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)

    n = a.num_images
    shade_groups(ax1, a.split, order)
    ax1.bar(x - 0.2, (a.uniform_share * n)[order], width=0.4, color="0.55", label="uniform sampling (= n_k)")
    ax1.bar(x + 0.2, (a.ca_share * n)[order], width=0.4, color="#c44e52",
            label=f"class-aware sampling (measured, {a.epochs} epochs)")
    ax1.axhline(n / c, color="k", ls="--", lw=1, label=f"N / C = {n / c:.0f} (single-label class-aware)")
    ax1.set_yscale("log")
    ax1.set_ylim(top=max(a.ca_share.max(), a.uniform_share.max()) * n * 3)  # room for the labels
    ax1.set_ylabel(f"instances per {n} draws (log)")
    ax1.set_title("(a) class instances before and after class-aware re-sampling", fontsize=10, pad=16)
    ax1.legend(fontsize=8, loc="upper right")
    ax1.grid(axis="y", alpha=0.3)
    for pos, k in enumerate(order):
        if a.oversampling[k] >= 1.5 or pos < 3:
            ax1.text(pos + 0.2, a.ca_share[k] * n * 1.08, f"\u00d7{a.oversampling[k]:.1f}", ha="center",
                     va="bottom", fontsize=6 if c > 30 else 7, rotation=90)

    shade_groups(ax2, a.split, order, label=False)
    bp = ax2.boxplot([a.class_rates[k] for k in order], positions=x, widths=0.6, whis=(5, 95), showfliers=False, patch_artist=True)
    group_of = {k: g for g in GROUPS for k in a.split[g]}
    for patch, k in zip(bp["boxes"], order):
        patch.set_facecolor(GROUP_COLORS[group_of[int(k)]])
        patch.set_alpha(0.6)
    ax2.axhline(1.0, color="0.3", ls="--", lw=1, label="uniform sampling: every image at rate 1")
    ax2.set_yscale("log")
    ax2.set_ylabel("draws per image per N draws (log)")
    ax2.set_title("(b) within-class imbalance: sampling rate of each class's images (box 25-75%, whiskers 5-95%)",
                  fontsize=10)
    ax2.legend(fontsize=8, loc="upper left")
    ax2.grid(axis="y", alpha=0.3)
    class_axis(ax2, a.class_names, order, a.class_freq)
    return fig


def run_resampling_analysis(
    labels: Any,
    class_names: Sequence[str] | None,
    out_dir: str | Path,
    *,
    epochs: int = 10,
    seed: int = 0,
    num_samples_cls: int = 1,
    reduce: int = 4,
) -> dict[str, Any]:
    """Run :func:`resampling_analysis`; write ``resampling.png`` and ``resampling.json`` into ``out_dir``.

    Returns ``{"figure": Path, "json": Path, "summary": {group: {...}}}``.
    """
    a = resampling_analysis(labels, class_names, epochs=epochs, seed=seed, num_samples_cls=num_samples_cls,
                            reduce=reduce)
    data = a.to_dict()
    fig_path, json_path = write_analysis(out_dir, "resampling", resampling_figure(a), data)
    return {"figure": fig_path, "json": json_path, "summary": data["groups"]}
