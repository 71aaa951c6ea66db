"""Decision thresholds chosen on a validation split: one global, or one per class.

A single threshold chosen on micro-F1 serves the head classes, which dominate the micro
average; rare classes, whose scores sit lower, are then almost never predicted. A per-class
threshold chosen for each class's own F1 fixes that where the validation split has enough
positives of the class to choose on; elsewhere the global threshold is kept.

Predictions are ``score > threshold`` (as in :func:`dbloss.metrics.f1_scores`).

>>> s = torch.tensor([[0.9, 0.30], [0.2, 0.25], [0.8, 0.05], [0.1, 0.02]])
>>> y = torch.tensor([[1, 1], [0, 1], [1, 0], [0, 0]])
>>> [round(t, 3) for t in per_class_thresholds(s, y, fallback=0.4, min_positives=2).tolist()]
[0.5, 0.15]
>>> [round(t, 3) for t in per_class_thresholds(s, y, fallback=0.4, min_positives=3).tolist()]  # too few positives
[0.4, 0.4]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dbloss.labels import label_masks

__all__ = ["best_f1_threshold", "per_class_thresholds"]


def best_f1_threshold(scores: torch.Tensor, positive: torch.Tensor) -> tuple[float, float]:
    """The threshold that maximises one class's F1 over its (n,) ``scores``, and that F1.

    Every cut between two distinct scores is tried (ties are kept together); the threshold is
    the midpoint between the lowest predicted and the highest unpredicted score, or just below
    the lowest score when every sample is predicted. With no positive, predicting nothing is
    best (F1 undefined, returned as 0) and the threshold is just above the highest score.
    """
    order = torch.argsort(scores, descending=True)
    s, pos = scores[order], positive[order].double()
    n_pos = float(pos.sum())
    if n_pos == 0 or s.numel() == 0:
        top = s[0] if s.numel() else torch.zeros((), dtype=scores.dtype)
        return float(torch.nextafter(top, torch.tensor(float("inf"), dtype=s.dtype))), 0.0
    tp = torch.cumsum(pos, 0)
    k = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    ends = torch.ones_like(s, dtype=torch.bool)
    ends[:-1] = s[:-1] != s[1:]  # cut only after the last of a group of tied scores
    f1 = torch.where(ends, 2 * tp / (k + n_pos), torch.full_like(tp, -1.0))
    i = int(torch.argmax(f1))  # the first (highest) threshold of the best F1
    # computed in the scores' dtype, so that `scores > threshold` in that dtype predicts exactly the cut
    if i + 1 < s.numel():
        hi, lo = s[i], s[i + 1]
        threshold = lo + (hi - lo) / 2
        if threshold >= hi:  # adjacent floats: the midpoint rounded up
            threshold = lo
    else:
        threshold = torch.nextafter(s[i], torch.tensor(float("-inf"), dtype=s.dtype))
    return float(threshold), float(f1[i])


def per_class_thresholds(
    scores: Any,
    targets: Any,
    *,
    fallback: float,
    min_positives: int = 5,
    ignore_index: int | None = -1,
) -> torch.Tensor:
    """(C,) float64 thresholds: each class's F1-optimal one on (N, C) validation ``scores``/``targets``.

    Args:
        scores: (N, C) validation scores (probabilities or logits, as they will be thresholded).
        targets: (N, C) labels in {0, 1} or ``ignore_index`` (ignored entries are left out).
        fallback: the threshold of classes with fewer than ``min_positives`` validation positives
            (typically the global threshold chosen on micro-F1).
        min_positives: the fewest validation positives a class needs for its own threshold.
            Default 5: with fewer, the F1-optimal cut fits the few positives, not the class.
    """
    s = torch.as_tensor(scores).detach().cpu()
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    if s.ndim != 2 or not s.is_floating_point():
        raise ValueError(f"Expected `scores` to be a floating (N, C) matrix, but got {s.dtype} of shape {tuple(s.shape)}")
    pos, observed = label_masks(targets, ignore_index, name="targets")
    pos = pos.cpu()
    if pos.shape != s.shape:
        raise ValueError(f"Expected `targets` of the shape of `scores` {tuple(s.shape)}, but got {tuple(pos.shape)}")
    if isinstance(min_positives, bool) or not isinstance(min_positives, int) or min_positives < 1:
        raise ValueError(f"Expected `min_positives` to be an int >= 1, but got {min_positives!r}")
    out = torch.full((s.shape[1],), float(fallback), dtype=torch.float64)  # float32 scores: exact float32 values
    for k in range(s.shape[1]):
        keep = slice(None) if observed is None else observed[:, k].cpu()
        pk = pos[keep, k]
        if int(pk.sum()) >= min_positives:
            out[k] = best_f1_threshold(s[keep, k], pk)[0]
    return out
