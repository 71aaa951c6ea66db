"""Multi-label evaluation metrics: per-class AP, mAP by class group, micro/macro F1.

All functions take an ``(N, C)`` score matrix and an ``(N, C)`` target matrix (torch tensors
or numpy arrays, any device and dtype). Targets hold 0/1, and entries equal to
``ignore_index`` (default -1) are left out for that class. Values are fractions in [0, 1].

The average precision is vectorised over blocks of classes (sort each column once, then read
the precision at the last index of each positive's group of tied scores, with no loop over
samples or classes) and equals scikit-learn's ``average_precision_score`` per class, ties
included. Classes without a positive target have no AP: they are NaN, warned about, and
left out of every mean (torchmetrics 1.9 warns too, but returns 0 and counts it in its macro mean).

It is kept, rather than torchmetrics' ``multilabel_average_precision``, because it is faster at
the same values: ``benchmarks/bench_ap.py`` measures both in one run, and on the CPU (one
thread) torchmetrics 1.9 took 2.4-3.6x our time (1.9-3.0x with its input validation off) at
5,000 x 20, 40,000 x 80 and 10,000 x 1,000, with and without ties and ignored entries (max abs.
difference to scikit-learn: ours 2e-14, torchmetrics' 1e-7, in float32). Ours also depends only on the order of the scores, where torchmetrics applies a
float32 sigmoid to logits, whose saturation creates ties.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from dbloss.labels import check_ignore_index, label_masks
from dbloss.stats import GROUPS, LabelStats

__all__ = ["average_precision", "mean_average_precision", "f1_scores", "nanmean", "summarize"]

# Elements of the (N, chunk) working block sorted at once; bounds peak memory of
# `average_precision` to a few hundred MB whatever N x C is.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- validation


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise TypeError(f"Expected `{name}` to be a tensor or array, but got {type(x).__name__} ({e})") from None


def _check_inputs(scores: Any, targets: Any, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, dtypes and ``ignore_index``; returns (scores as float32/float64, targets) on the scores' device.

    Values are checked block by block in :func:`_column_blocks`, which keeps the passes over a
    large matrix cache-friendly and free of (N, C) temporaries.
    """
    if ignore_index is not None:
        check_ignore_index(ignore_index)
    s = _as_tensor(scores, "scores")
    t = _as_tensor(targets, "targets")
    if s.ndim != 2:
        raise ValueError(f"Expected `scores` to be a 2-D (N, C) matrix, but got shape {tuple(s.shape)}")
    if t.shape != s.shape:
        raise ValueError(f"Expected `targets` of the same shape as `scores` {tuple(s.shape)}, but got {tuple(t.shape)}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"Expected at least one sample and one class, but got shape {tuple(s.shape)}")
    if s.is_complex() or t.is_complex():
        raise TypeError(f"Expected real-valued `scores` and `targets`, but got dtypes {s.dtype} and {t.dtype}")
    if s.dtype == torch.bool:
        s = s.to(torch.float32)
    elif not s.is_floating_point():
        s = s.to(torch.float64)
    elif s.dtype not in (torch.float32, torch.float64):
        s = s.to(torch.float32)  # half / bfloat16 -> float32 is exact, so ties are kept
    if s.device.type == "mps":  # no float64 on MPS
        s = s.cpu()
    return s, t.to(s.device)


def _column_blocks(
    s: torch.Tensor, t: torch.Tensor, ignore_index: int | None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(first_class, scores (k, N), targets (k, N) int8)`` for blocks of k classes.

    Targets are encoded 1 positive, 0 negative, -1 ignored. Raises ``ValueError`` naming the
    first non-finite score or invalid target (:func:`dbloss.labels.label_masks`) and its global
    (row, class) position.
    """
    n, c = s.shape
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, c, chunk):  # blocks of columns, not a loop over classes or samples
        stop = min(c, start + chunk)
        # copy the (N, k) block first (contiguous row pieces), then transpose the small copy:
        # much faster than transposing straight out of the wide (N, C) matrix
        sb = s[:, start:stop].contiguous()
        finite = torch.isfinite(sb)
        if not bool(finite.all()):
            row, k = (int(i) for i in torch.nonzero(~finite)[0])
            raise ValueError(f"`scores` contains a non-finite value {sb[row, k].item()} at (row, class) = {(row, start + k)}")
        pos, observed = label_masks(t[:, start:stop].contiguous(), ignore_index, name="targets", offset=(0, start))
        t8 = pos.to(torch.int8)
        if observed is not None:  # an ignored entry is never positive (ignore_index is not 0 or 1)
            t8 -= (~observed).to(torch.int8)
        sb, t8 = sb.T.contiguous(), t8.T.contiguous()
        yield start, sb, t8


def _name_classes(idx: Sequence[int], limit: int = 10) -> str:
    idx = list(idx)
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"[{shown}{', ...' if len(idx) > limit else ''}]"


def _split_dict(split: Mapping[str, Sequence[int]] | LabelStats | None, num_classes: int) -> dict[str, list[int]]:
    if split is None:
        return {}
    if isinstance(split, LabelStats):
        if split.num_classes != num_classes:
            raise ValueError(f"Expected label statistics of {num_classes} classes, but got {split.num_classes} classes")
        split = split.split
    if not isinstance(split, Mapping):
        raise TypeError(f"Expected `split` to be a dict of class indices or a LabelStats, but got {type(split).__name__}")
    out: dict[str, list[int]] = {}
    for group, idx in split.items():
        if group not in GROUPS:
            raise ValueError(f"Expected `split` keys among {list(GROUPS)}, but got {group!r}")
        idx = [int(k) for k in idx]
        bad = [k for k in idx if not 0 <= k < num_classes]
        if bad:
            raise ValueError(f"`split[{group!r}]` has class indices outside [0, {num_classes}): {_name_classes(bad)}")
        out[group] = idx
    return out


# --------------------------------------------------------------------------- average precision


def _ap_block(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """AP of each row of a (k, N) block of scores ``s`` and int8 targets ``t`` (1, 0, or -1 ignored).

    AP = sum over the distinct thresholds g, in decreasing order, of (R_g - R_{g-1}) * P_g. Each
    positive adds 1 / n_pos times the precision at the last index of its group of tied scores,
    so after one sort only the positives' entries are needed: their group ends are found with
    ``searchsorted`` in the list of group ends, and TP / "seen" counts at those ends with
    ``searchsorted`` in the sorted positions of the positives (and of the ignored entries, which
    count as neither true nor false positives).
    """
    k, n = s.shape
    if s.device.type == "cpu":
        # numpy's (SIMD) quicksort is several times faster than torch.sort on CPU; stability is
        # not needed because tied scores are handled as groups below.
        order = torch.from_numpy(np.argsort(-s.numpy(), axis=1))
        s_sorted = torch.gather(s, 1, order)
    else:
        s_sorted, order = torch.sort(s, dim=1, descending=True)
    t_sorted = torch.gather(t, 1, order).reshape(-1)
    del order
    # flat (row-major) positions of the last index of each tie group; each row's last is one
    is_last = torch.ones_like(s_sorted, dtype=torch.bool)
    is_last[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    del s_sorted
    ends = torch.nonzero(is_last.reshape(-1)).squeeze(1)
    del is_last
    pos = torch.nonzero(t_sorted == 1).squeeze(1)  # sorted flat positions of the positives
    row = torch.div(pos, n, rounding_mode="floor")
    row_start = row * n
    end = ends[torch.searchsorted(ends, pos)]  # never past a row: the row's last entry is an end
    tp = torch.searchsorted(pos, end, right=True) - torch.searchsorted(pos, row_start)
    seen = end - row_start + 1
    ignored = torch.nonzero(t_sorted < 0).squeeze(1)
    if ignored.numel():
        seen -= torch.searchsorted(ignored, end, right=True) - torch.searchsorted(ignored, row_start)
    precision = tp.to(torch.float64) / seen.to(torch.float64)
    total = torch.zeros(k, dtype=torch.float64, device=s.device).index_add_(0, row, precision)
    num_pos = torch.bincount(row, minlength=k).to(torch.float64)
    return torch.where(num_pos > 0, total / num_pos.clamp_min(1), torch.full_like(total, float("nan")))


def _f1_counts_block(s: torch.Tensor, t: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """(k, 3) int64 TP, FP, FN per row of a (k, N) block, predictions ``s > threshold`` (a number,
    or (k, 1) per-row thresholds)."""
    pred = s > threshold
    pos, neg = t == 1, t == 0
    tp = (pred & pos).sum(1, dtype=torch.int64)
    fp = (pred & neg).sum(1, dtype=torch.int64)
    fn = (~pred & pos).sum(1, dtype=torch.int64)
    return torch.stack([tp, fp, fn], dim=1)


def _evaluate(
    s: torch.Tensor, t: torch.Tensor, ignore_index: int | None, ap: bool = True,
    threshold: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One pass over column blocks: per-class AP (C,) and/or F1 counts (C, 3) at ``threshold``
    (one number, or a (C,) tensor of per-class thresholds)."""
    c = s.shape[1]
    aps = torch.empty(c, dtype=torch.float64, device=s.device) if ap else None
    counts = torch.empty(c, 3, dtype=torch.int64, device=s.device) if threshold is not None else None
    for start, sb, tb in _column_blocks(s, t, ignore_index):
        stop = start + sb.shape[0]
        if aps is not None:
            aps[start:stop] = _ap_block(sb, tb)
        if counts is not None:
            thr = threshold[start:stop, None].to(sb) if isinstance(threshold, torch.Tensor) else threshold
            counts[start:stop] = _f1_counts_block(sb, tb, thr)
    return aps, counts


def _warn_empty(ap: torch.Tensor, what: str) -> None:
    empty = torch.nonzero(torch.isnan(ap)).flatten().tolist()
    if empty:
        warnings.warn(
            f"{len(empty)} class(es) have no positive target, {what}: classes {_name_classes(empty)}",
            UserWarning,
            stacklevel=3,
        )


def average_precision(scores: Any, targets: Any, ignore_index: int | None = -1) -> torch.Tensor:
    """Per-class non-interpolated average precision.

    Equal to scikit-learn's ``average_precision_score(targets[:, k], scores[:, k])`` for every
    class k: tied scores form one threshold, and AP = sum_g (R_g - R_{g-1}) P_g over the distinct
    thresholds in decreasing order.

    Args:
        scores: (N, C) scores (logits or probabilities; only their order matters), finite.
        targets: (N, C) 0/1 targets; entries equal to ``ignore_index`` are left out for that class.
        ignore_index: the value of ignored targets (an int other than 0 and 1), or None. Default -1.

    Returns:
        (C,) float64 tensor on the scores' device; NaN (with a ``UserWarning`` naming them) for
        classes without a positive target.

    >>> average_precision(torch.tensor([[0.9], [0.8], [0.7]]), torch.tensor([[1], [0], [1]])).tolist()
    [0.8333333333333333]
    """
    s, t = _check_inputs(scores, targets, ignore_index)
    ap, _ = _evaluate(s, t, ignore_index)
    _warn_empty(ap, "their AP is NaN")
    return ap


def nanmean(values: Any) -> float:
    """Mean of the values that are not NaN; NaN (without a warning) when there is none.

    The mean over classes used for the mAP, the macro F1 and their head / medium / tail groups:
    a class whose metric is undefined (NaN) is left out instead of counted as 0.

    Args:
        values: a tensor, array or sequence of numbers (any shape; flattened).

    Returns:
        a Python float, computed in float64.

    >>> nanmean([0.5, float("nan"), 1.0]), nanmean([float("nan")]), nanmean([])
    (0.75, nan, nan)
    """
    v = torch.as_tensor(values).detach().flatten().to(torch.float64)
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else float("nan")


def _map_from_ap(ap: torch.Tensor, split: dict[str, list[int]]) -> dict[str, float]:
    out = {"total": nanmean(ap)}
    for group in GROUPS:
        if group in split:
            idx = torch.tensor(split[group], dtype=torch.long, device=ap.device)
            out[group] = nanmean(ap[idx])
    return out


def mean_average_precision(
    scores: Any,
    targets: Any,
    split: Mapping[str, Sequence[int]] | LabelStats | None = None,
    ignore_index: int | None = -1,
) -> dict[str, float]:
    """Mean of the per-class AP over all classes and over the head / medium / tail groups.

    Args:
        scores: as in :func:`average_precision`.
        targets: as in :func:`average_precision`.
        ignore_index: as in :func:`average_precision`.
        split: ``{"head": [...], "medium": [...], "tail": [...]}`` class indices, or a
            :class:`~dbloss.stats.LabelStats` of the training set (its ``.split``). Default None.

    Returns:
        ``{"total": float}`` plus one entry per group of ``split``. Classes without a positive
        target are left out of the means (with a ``UserWarning``); a group with no class left is NaN.

    >>> s = torch.tensor([[0.9, 0.1], [0.2, 0.8]]); y = torch.tensor([[1, 0], [0, 1]])
    >>> mean_average_precision(s, y, {"head": [0], "medium": [], "tail": [1]})
    {'total': 1.0, 'head': 1.0, 'medium': nan, 'tail': 1.0}
    """
    s, t = _check_inputs(scores, targets, ignore_index)
    groups = _split_dict(split, s.shape[1])
    ap, _ = _evaluate(s, t, ignore_index)
    _warn_empty(ap, "they are left out of the mAP")
    return _map_from_ap(ap, groups)


# --------------------------------------------------------------------------- F1


def _f1_from_counts(counts: torch.Tensor) -> dict[str, Any]:
    tp, fp, fn = counts.to(torch.float64).unbind(1)
    denom = 2 * tp + fp + fn
    per_class = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(denom, float("nan")))
    micro_denom = float(denom.sum())
    micro = 2 * float(tp.sum()) / micro_denom if micro_denom > 0 else 0.0
    return {"micro_f1": micro, "macro_f1": nanmean(per_class), "per_class_f1": per_class}


def _check_threshold(threshold: Any, num_classes: int | None = None) -> float | torch.Tensor:
    """A finite number, or (with ``num_classes``) a (C,) sequence of finite per-class thresholds (float64)."""
    if num_classes is not None and isinstance(threshold, (torch.Tensor, np.ndarray, list, tuple)):
        thr = torch.as_tensor(np.asarray(threshold, dtype=np.float64))
        if thr.shape != (num_classes,) or not bool(torch.isfinite(thr).all()):
            raise ValueError(f"Expected per-class `threshold` of shape ({num_classes},) with finite values, "
                             f"but got shape {tuple(thr.shape)}")
        return thr
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"Expected `threshold` to be a finite number, but got {threshold!r}")
    return float(threshold)


def f1_scores(scores: Any, targets: Any, threshold: float | Sequence[float] | torch.Tensor = 0.5,
              ignore_index: int | None = -1) -> dict[str, Any]:
    """Micro and macro F1 of the predictions ``scores > threshold`` (one threshold, or one per class).

    ``scores`` are probabilities: apply ``torch.sigmoid`` to logits first (with the default
    threshold 0.5 this equals the original DB code's ``logits > 0``).

    Per class F1 = 2 TP / (2 TP + FP + FN), counted over the entries that are not ignored.
    Micro F1 pools TP/FP/FN over classes (0 when there is no positive and no prediction at all).
    Macro F1 averages the classes that have at least one positive or one prediction; a class
    with neither has an undefined F1 (NaN in ``per_class_f1``) and is left out. This equals
    scikit-learn's ``f1_score(..., average="macro", labels=<those classes>, zero_division=0)``
    and ``f1_score(..., average="micro", zero_division=0)``.

    Args:
        scores: (N, C) probabilities, finite.
        targets: (N, C) 0/1 targets, ``ignore_index`` entries left out.
        threshold: a score strictly above it is a positive prediction: a number, or (C,) per-class
            thresholds (e.g. :func:`dbloss.thresholds.per_class_thresholds`). Default 0.5.
        ignore_index: value of ignored targets, or None. Default -1.

    Returns:
        ``{"micro_f1": float, "macro_f1": float, "per_class_f1": (C,) float64 tensor}``.

    >>> out = f1_scores(torch.tensor([[0.9, 0.2], [0.7, 0.6]]), torch.tensor([[1, 0], [0, 1]]))
    >>> round(out["micro_f1"], 4), round(out["macro_f1"], 4)
    (0.8, 0.8333)
    """
    s, t = _check_inputs(scores, targets, ignore_index)
    threshold = _check_threshold(threshold, s.shape[1])
    _, counts = _evaluate(s, t, ignore_index, ap=False, threshold=threshold)
    return _f1_from_counts(counts)


# --------------------------------------------------------------------------- summary


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def summarize(
    scores: Any,
    targets: Any,
    split: Mapping[str, Sequence[int]] | LabelStats | None,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = -1,
) -> dict[str, Any]:
    """The metrics part of ``metrics.json`` (see docs/DESIGN.md), JSON-ready.

    Args:
        scores: (N, C) probabilities (sigmoid of the logits), finite.
        targets: (N, C) 0/1 test targets.
        split: head / medium / tail class indices (dict or training-set ``LabelStats``), or None
            for the total mAP only.
        threshold: F1 decision threshold on the probabilities. Default 0.5.
        class_names: C names, stored under ``"class_names"`` when given.
        ignore_index: value of ignored targets, or None. Default -1.

    Returns:
        ``{"mAP": {"total", "head", "medium", "tail"}, "micro_f1", "macro_f1", "threshold",
        "per_class_ap": [C floats, None where a class has no test positive]}`` (+ ``"class_names"``).
        Undefined values (NaN) are written as None so that the result is valid JSON.

    >>> out = summarize(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1, 0], [0, 1]]),
    ...                 {"head": [0], "medium": [], "tail": [1]})
    >>> out["mAP"], out["per_class_ap"]
    ({'total': 1.0, 'head': 1.0, 'medium': None, 'tail': 1.0}, [1.0, 1.0])
    """
    threshold = _check_threshold(threshold)
    s, t = _check_inputs(scores, targets, ignore_index)
    c = s.shape[1]
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"Expected {c} class names, but got {len(class_names)}")
    groups = _split_dict(split, c)
    ap, counts = _evaluate(s, t, ignore_index, threshold=threshold)
    _warn_empty(ap, "they are left out of the mAP")
    f1 = _f1_from_counts(counts)
    out: dict[str, Any] = {
        "mAP": {k: _none_if_nan(v) for k, v in _map_from_ap(ap, groups).items()},
        "micro_f1": _none_if_nan(f1["micro_f1"]),
        "macro_f1": _none_if_nan(f1["macro_f1"]),
        "threshold": float(threshold),
        "per_class_ap": [_none_if_nan(v) for v in ap.cpu().tolist()],
    }
    if class_names is not None:
        out["class_names"] = [str(n) for n in class_names]
    return out
