"""Long-tailed subsets of a multi-label dataset, drawn as in Wu et al. (ECCV 2020).

VOC-MLT and COCO-MLT (Distribution-Balanced loss, arXiv 2007.09654, Sec. 4.1 and the
appendix) were drawn from the full VOC2012 trainval / COCO2017 train label matrices by a
greedy procedure:

1. A target count per *rank* is read off a Pareto density (shape ``b``, 6 in the paper)
   sampled at ``C`` evenly spaced points between its 0 and ``tail_quantile`` (0.99)
   quantiles, scaled so that the first rank gets ``max_count`` (800 for VOC, 1,200 for
   COCO) and the curve ends near ``min_count`` (1), and truncated to integers
   (:func:`pareto_target_counts`).
2. Classes are ranked by the *summed co-occurrence probability*
   ``s_j = sum_i P(j | i)`` over the full set, largest first: a class that turns up
   alongside many others (VOC: person) is ranked first, since it will be drawn in anyway
   when the other classes are sampled (:func:`longtail_visit_order`).
3. The classes are visited in that order. The class at rank ``r`` has a current count
   ``c`` in the selection built so far (images added for earlier classes carry their
   other labels with them). If ``c`` is below the target, images of that class that are
   not yet selected are added at random (at most as many as exist); if ``c`` is above the
   target, randomly chosen selected images of that class are removed. Classes visited
   earlier are not revisited, so removals may leave them somewhat under target.

The result therefore has the Pareto shape only approximately: VOC-MLT has 1,142 images,
class counts from 775 down to 4, and 6 / 6 / 8 head / medium / tail classes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from dbloss.stats import LabelStats, validate_label_matrix

__all__ = ["longtail_visit_order", "make_longtail_subset", "pareto_target_counts"]

logger = logging.getLogger(__name__)


def _check_params(max_count: int, min_count: int, pareto_shape: float, tail_quantile: float) -> None:
    for name, value in (("max_count", max_count), ("min_count", min_count)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"Expected `{name}` to be an int, but got {type(value).__name__} {value!r}")
    if min_count < 0:
        raise ValueError(f"Expected `min_count` >= 0, but got {min_count}")
    if max_count < 1 or max_count < min_count:
        raise ValueError(f"Expected `max_count` >= max(1, min_count={min_count}), but got {max_count}")
    if not (np.isfinite(pareto_shape) and pareto_shape > 0):
        raise ValueError(f"Expected `pareto_shape` > 0, but got {pareto_shape!r}")
    if not (0.0 < tail_quantile < 1.0):
        raise ValueError(f"Expected `tail_quantile` in (0, 1), but got {tail_quantile!r}")


def pareto_target_counts(
    num_classes: int,
    *,
    max_count: int,
    min_count: int = 1,
    pareto_shape: float = 6.0,
    tail_quantile: float = 0.99,
) -> np.ndarray:
    """Target image count per class rank, read off a Pareto density.

    With shape ``b``, the Pareto density on ``x >= 1`` is ``b / x**(b + 1)``. It is sampled
    at ``num_classes`` evenly spaced points ``x_r`` from ``ppf(0) = 1`` to
    ``ppf(tail_quantile) = (1 - tail_quantile) ** (-1 / b)``, and

        ``target_r = floor(x_r ** -(b + 1) * (max_count - min_count) + min_count)``

    (``pdf(x) / b``, so that rank 0 gets exactly ``max_count``).

    Args:
        num_classes: C >= 1.
        max_count: target of the first (largest) rank; 800 for VOC-MLT, 1,200 for COCO-MLT.
        min_count: the floor the curve tends to. Default 1.
        pareto_shape: ``b``. Default 6.
        tail_quantile: the quantile of the last sample point. Default 0.99.

    Returns:
        (C,) int64, non-increasing.

    >>> pareto_target_counts(20, max_count=800)[:6].tolist()
    [800, 529, 359, 248, 175, 125]
    """
    _check_params(max_count, min_count, pareto_shape, tail_quantile)
    if num_classes < 1:
        raise ValueError(f"Expected `num_classes` >= 1, but got {num_classes}")
    x_end = (1.0 - tail_quantile) ** (-1.0 / pareto_shape)
    x = np.linspace(1.0, x_end, num_classes)
    dist = x ** (-(pareto_shape + 1.0)) * (max_count - min_count) + min_count
    return np.floor(dist).astype(np.int64)


def longtail_visit_order(labels: Any) -> np.ndarray:
    """Class indices sorted by summed co-occurrence probability ``s_j = sum_i P(j | i)``, largest first.

    ``P(j | i)`` is the fraction of the images of class ``i`` that also show ``j``
    (:attr:`LabelStats.conditional_prob`; rows of empty classes count as 0). Ties keep the
    lower class index first.

    Args:
        labels: (N, C) {0, 1} label matrix.

    Returns:
        (C,) int64 permutation of the class indices.

    >>> longtail_visit_order([[1, 1], [1, 0], [1, 0]]).tolist()
    [0, 1]
    """
    stats = LabelStats.from_labels(labels)
    score = stats.conditional_prob.sum(axis=0)
    return np.argsort(-score, kind="stable").astype(np.int64)


def make_longtail_subset(
    labels: Any,
    *,
    max_count: int,
    min_count: int = 1,
    pareto_shape: float = 6.0,
    tail_quantile: float = 0.99,
    seed: int = 0,
) -> np.ndarray:
    """Select a long-tailed subset of a multi-label dataset (the VOC-MLT / COCO-MLT procedure).

    See the module docstring for the algorithm. Randomness comes only from
    ``numpy.random.default_rng(seed)``; the same inputs and seed give the same subset.

    Args:
        labels: (N, C) {0, 1} label matrix (array or tensor) of the full dataset.
        max_count: target count of the first-visited class (800 for VOC, 1,200 for COCO).
        min_count: floor of the Pareto target curve. Default 1.
        pareto_shape: shape of the Pareto target curve. Default 6.
        tail_quantile: quantile at which the target curve ends. Default 0.99.
        seed: seed of the random choices. Default 0.

    Returns:
        (M,) int64 row indices of the selected images, sorted ascending.

    >>> rng = np.random.default_rng(0)
    >>> labels = (rng.random((2000, 5)) < [0.6, 0.4, 0.3, 0.2, 0.1]).astype(int)
    >>> idx = make_longtail_subset(labels, max_count=300, seed=0)
    >>> labels[idx].sum(0).tolist()  # removals for later classes cut class 0 below its 300
    [121, 27, 9, 4, 2]
    """
    _check_params(max_count, min_count, pareto_shape, tail_quantile)
    arr = validate_label_matrix(labels)
    n, c = arr.shape
    targets = pareto_target_counts(
        c, max_count=max_count, min_count=min_count, pareto_shape=pareto_shape, tail_quantile=tail_quantile
    )
    order = longtail_visit_order(arr)
    rng = np.random.default_rng(seed)

    selected = np.zeros(n, dtype=bool)
    counts = np.zeros(c, dtype=np.int64)
    for rank, k in enumerate(order):
        want = int(targets[rank])
        have = int(counts[k])
        if want > have:
            pool = np.flatnonzero((arr[:, k] == 1) & ~selected)
            take = min(want - have, pool.size)
            if take < want - have:
                logger.warning(
                    "class %d (rank %d): target %d but only %d images of it exist; taking all",
                    k, rank, want, have + pool.size,
                )
            picked = rng.choice(pool, size=take, replace=False)
            selected[picked] = True
            counts += arr[picked].sum(axis=0)
        elif want < have:
            pool = np.flatnonzero((arr[:, k] == 1) & selected)
            picked = rng.choice(pool, size=have - want, replace=False)
            selected[picked] = False
            counts -= arr[picked].sum(axis=0)
        logger.debug("class %d (rank %d): had %d, target %d, now %d images selected", k, rank, have, want, selected.sum())
    return np.flatnonzero(selected).astype(np.int64)
