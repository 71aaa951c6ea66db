"""Plumbing shared by every loss: argument checks, class-count validation, prepare and reduce.

Nothing here is an equation of a paper. Every loss takes ``logits`` (B, C), a floating tensor,
and ``targets`` (B, C) with values in {0, 1} or ``ignore_index``, and honours ``reduction``:

* ``"none"``: the (B, C) element-wise loss, 0 at ignored entries;
* ``"mean"``: the sum over unmasked elements divided by their number (0 when all are masked);
* ``"sum"``: the sum over unmasked elements.

Half-precision logits are upcast and the loss is computed and returned in float32 (float64
stays float64), with autocast switched off inside (:func:`autocast_off`). Inputs are never modified.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, ContextManager, Literal, Sequence

import numpy as np
import torch
from torch import nn

from dbloss.labels import check_ignore_index, label_masks

__all__ = [
    "REDUCTIONS",
    "ArrayLike",
    "MultiLabelLoss",
    "Reduction",
    "autocast_off",
    "check_hparams",
    "check_pair",
    "check_reduction",
    "compute_dtype",
    "prepare",
    "reduce",
    "validate_class_freq",
]

Reduction = Literal["none", "mean", "sum"]
#: The valid values of every ``reduction`` argument.
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")

ArrayLike = Any  # a sequence, numpy array or tensor of class counts


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"Expected argument `reduction` to be one of {REDUCTIONS}, but got {reduction!r}")
    return reduction


def check_hparams(*, positive: Sequence[str] = (), **values: float) -> None:
    """Raise ``ValueError`` unless every value is a finite number >= 0 (> 0 for names in ``positive``)."""
    for name, value in values.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Expected `{name}` to be a number, but got {value!r}") from None
        if not math.isfinite(v) or v < 0 or (name in positive and v == 0):
            expected = "a finite number > 0" if name in positive else "a finite number >= 0"
            raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}")


def validate_class_freq(
    class_freq: ArrayLike,
    num_samples: int | float | None = None,
    *,
    require_positive: bool = False,
    require_below_total: bool = False,
) -> torch.Tensor:
    """Check per-class positive counts and return them as a float64 (C,) tensor (on their device).

    Args:
        class_freq: (C,) number of positive training samples ``n_k`` per class.
        num_samples: N, the number of training samples; must be >= max(n_k).
        require_positive: every class must have ``n_k > 0`` (weights use ``1 / n_k``).
        require_below_total: every class must have ``n_k < N`` (the NTR bias uses ``log(N - n_k)``).

    Raises ``ValueError`` naming the offending class index and value.

    >>> validate_class_freq([3, 1], 4, require_positive=True).tolist()
    [3.0, 1.0]
    """
    if isinstance(class_freq, torch.Tensor):
        freq = class_freq.detach().to(torch.float64)
    else:
        freq = torch.as_tensor(np.asarray(class_freq, dtype=np.float64))
    if freq.ndim != 1 or freq.numel() == 0:
        raise ValueError(f"Expected `class_freq` to be a non-empty 1-D (C,) sequence, but got shape {tuple(freq.shape)}")
    bad = ~torch.isfinite(freq) | (freq < 0)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"Expected `class_freq` to hold finite counts >= 0, but got {freq[k].item()} for class {k}")
    if require_positive and bool((freq == 0).any()):
        k = int(torch.nonzero(freq == 0)[0, 0])
        raise ValueError(
            f"Class {k} has no positive training sample (class_freq[{k}] = 0): its re-balancing weight and "
            "bias would be infinite; drop the class or use a loss that does not depend on class counts"
        )
    if num_samples is not None:
        check_hparams(num_samples=num_samples, positive=("num_samples",))
        n = float(num_samples)
        if n < float(freq.max()):
            k = int(torch.argmax(freq))
            raise ValueError(
                f"Expected `num_samples` >= max(class_freq), but got num_samples={num_samples} "
                f"and class_freq[{k}] = {freq[k].item():g}"
            )
        if require_below_total and bool((freq == n).any()):
            k = int(torch.nonzero(freq == n)[0, 0])
            raise ValueError(
                f"Class {k} is positive in every training sample (class_freq[{k}] = num_samples = {num_samples:g}): "
                "its negative-tolerant bias -log(N / n_k - 1) would be infinite"
            )
    elif require_below_total:
        raise ValueError("`num_samples` is required to check class_freq < num_samples")
    return freq


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half-precision logits, else the logits' own floating dtype."""
    return torch.promote_types(logits.dtype, torch.float32)


def autocast_off(device: torch.device) -> ContextManager[Any]:
    """A context that disables autocast on ``device`` if it is on (losses are computed in float32)."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except (TypeError, RuntimeError):  # device types autocast does not know
        return nullcontext()
    return torch.autocast(device_type=device.type, enabled=False) if enabled else nullcontext()


def check_pair(logits: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` unless (logits, targets) are (B, C) tensors of one shape and device."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"Expected `logits` to be a torch.Tensor, but got {type(logits).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"Expected `targets` to be a torch.Tensor, but got {type(targets).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"Expected `logits` to be a floating-point tensor, but got dtype {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"Expected `logits` to be 2-D (B, C), but got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"Expected `targets` to have the shape of `logits` {tuple(logits.shape)}, but got {tuple(targets.shape)}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"Expected {num_classes} classes (len(class_freq)), but `logits` has {logits.shape[1]} columns"
        )
    if targets.device != logits.device:
        raise ValueError(f"Expected `targets` on the device of `logits` ({logits.device}), but got {targets.device}")


def prepare(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a (logits, targets) pair; return upcast logits ``z``, float 0/1 labels ``y`` and the mask.

    ``y`` is 1 where ``targets == 1`` and 0 elsewhere (including ignored entries); ``mask`` is
    ``targets != ignore_index``, or None when nothing is ignored. The labels are checked by
    :func:`dbloss.labels.label_masks`. ``logits`` and ``targets`` are not modified.
    """
    check_pair(logits, targets, num_classes)
    is_pos, mask = label_masks(targets, ignore_index, name="targets")
    dtype = compute_dtype(logits)
    # a {0, 1} target tensor of the compute dtype is used as is (no copy; nothing writes to it)
    y = targets.detach() if mask is None and targets.dtype == dtype else is_pos.to(dtype)
    return logits.to(dtype), y, mask


def reduce(loss: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Zero the masked entries of a (B, C) loss (``mask`` None: nothing is masked) and reduce it
    ("mean" divides by the unmasked count)."""
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return reduce_masked(loss, mask, reduction)


def reduce_masked(loss: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce a (B, C) loss whose masked entries are already zero."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = loss.numel() if mask is None else mask.sum().clamp(min=1).to(loss.dtype)
    return loss.sum() / count if loss.numel() else loss.sum()


class MultiLabelLoss(nn.Module):
    """Base of the loss modules: ``reduction``, ``ignore_index`` and the expected number of classes."""

    def __init__(self, num_classes: int | None, reduction: Reduction, ignore_index: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reduction = check_reduction(reduction)
        self.ignore_index = check_ignore_index(ignore_index)

    def _prepare(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor | None]:
        return prepare(logits, targets, self.ignore_index, self.num_classes)

    def _hparams(self) -> dict[str, Any]:
        return {}

    def extra_repr(self) -> str:
        items = {"num_classes": self.num_classes, **self._hparams(), "reduction": self.reduction,
                 "ignore_index": self.ignore_index}
        return ", ".join(f"{k}={v!r}" for k, v in items.items())
