"""Label statistics of a multi-label training set.

Everything the losses, samplers, metrics and reports need to know about a
{0, 1} label matrix lives here: per-class positive and negative counts, the
number of samples, co-occurrence counts, the conditional probabilities
P(j | i), and the head / medium / tail class split.

The head / medium / tail rule of the paper (head: n >= 100 training images,
medium: 20 <= n < 100, tail: n < 20) is defined in exactly one place,
:data:`DEFAULT_HEAD_MIN` and :data:`DEFAULT_TAIL_MAX` below, and every other
module calls :func:`class_split`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dbloss.labels import label_masks

__all__ = [
    "DEFAULT_HEAD_MIN",
    "DEFAULT_TAIL_MAX",
    "GROUPS",
    "LabelStats",
    "class_split",
    "validate_label_matrix",
]

#: A class with at least this many training samples is a *head* class.
DEFAULT_HEAD_MIN: int = 100
#: A class with fewer than this many training samples is a *tail* class.
DEFAULT_TAIL_MAX: int = 20
#: The names of the class groups, in display order.
GROUPS: tuple[str, str, str] = ("head", "medium", "tail")


def class_split(
    class_freq: Sequence[int] | np.ndarray,
    head_min: int = DEFAULT_HEAD_MIN,
    tail_max: int = DEFAULT_TAIL_MAX,
) -> dict[str, list[int]]:
    """Split classes into head / medium / tail groups by training frequency.

    Args:
        class_freq: (C,) number of positive training samples per class.
        head_min: a class with ``n >= head_min`` is head. Default 100.
        tail_max: a class with ``n < tail_max`` is tail. Default 20.
            Classes in between are medium.

    Returns:
        ``{"head": [...], "medium": [...], "tail": [...]}``, sorted class indices.

    >>> class_split([150, 50, 3])
    {'head': [0], 'medium': [1], 'tail': [2]}
    """
    if tail_max > head_min:
        raise ValueError(f"Expected tail_max <= head_min, but got tail_max={tail_max}, head_min={head_min}")
    freq = np.asarray(class_freq)
    if freq.ndim != 1:
        raise ValueError(f"Expected class_freq to be 1-D, but got shape {freq.shape}")
    return {
        "head": [int(k) for k in np.flatnonzero(freq >= head_min)],
        "medium": [int(k) for k in np.flatnonzero((freq >= tail_max) & (freq < head_min))],
        "tail": [int(k) for k in np.flatnonzero(freq < tail_max)],
    }


def validate_label_matrix(labels: Any, ignore_index: int | None = None, name: str = "labels") -> np.ndarray:
    """Check that ``labels`` is an (N, C) matrix of 0/1 (or ``ignore_index``) and return it as int64 numpy.

    The check is :func:`dbloss.labels.label_masks` (N, C >= 1); this wrapper is for callers that
    want the int64 values. Raises ``ValueError`` naming the first offending value and its position.

    >>> validate_label_matrix([[1.0, 0.0], [0.0, -1.0]], ignore_index=-1).tolist()
    [[1, 0], [0, -1]]
    """
    pos, observed = label_masks(labels, ignore_index, name=name, allow_empty=False)
    out = pos.cpu().numpy().astype(np.int64)
    if observed is not None:
        out[~observed.cpu().numpy()] = ignore_index
    return out


@dataclass
class LabelStats:
    """Statistics of an (N, C) {0, 1} training label matrix.

    Attributes:
        class_names: C class names.
        class_freq: (C,) int64, positives per class ``n_k``.
        num_samples: N, the number of samples.
        cooccurrence: (C, C) int64, ``cooccurrence[i, j]`` = samples positive for both i and j
            (the diagonal equals ``class_freq``).
        head_min, tail_max: the thresholds of the head / medium / tail split.

    >>> s = LabelStats.from_labels([[1, 0], [1, 1], [0, 1]], ["a", "b"])
    >>> s.class_freq.tolist(), s.neg_freq.tolist(), s.num_samples
    ([2, 2], [1, 1], 3)
    """

    class_names: list[str]
    class_freq: np.ndarray
    num_samples: int
    cooccurrence: np.ndarray
    head_min: int = DEFAULT_HEAD_MIN
    tail_max: int = DEFAULT_TAIL_MAX
    _split: dict[str, list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.class_freq = np.asarray(self.class_freq, dtype=np.int64)
        self.cooccurrence = np.asarray(self.cooccurrence, dtype=np.int64)
        c = self.class_freq.shape[0]
        if len(self.class_names) != c:
            raise ValueError(f"Expected {c} class names, but got {len(self.class_names)}")
        if self.cooccurrence.shape != (c, c):
            raise ValueError(f"Expected cooccurrence of shape ({c}, {c}), but got {self.cooccurrence.shape}")
        self._split = class_split(self.class_freq, self.head_min, self.tail_max)

    @classmethod
    def from_labels(
        cls,
        labels: Any,
        class_names: Sequence[str] | None = None,
        *,
        head_min: int = DEFAULT_HEAD_MIN,
        tail_max: int = DEFAULT_TAIL_MAX,
        ignore_index: int | None = None,
    ) -> "LabelStats":
        """Compute the statistics of an (N, C) label matrix (array or tensor).

        Entries equal to ``ignore_index`` (if given) count as neither positive nor negative.
        """
        pos = label_masks(labels, ignore_index, allow_empty=False)[0].cpu().numpy()
        n, c = pos.shape
        names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(c)]
        # the co-occurrence counts through BLAS in float64 (exact: every count is at most N < 2^53); numpy's
        # integer matmul has no BLAS and took 80 s for 22,500 x 500 labels
        pos64 = pos.astype(np.float64)
        return cls(
            class_names=names,
            class_freq=pos.sum(0, dtype=np.int64),
            num_samples=n,
            cooccurrence=np.rint(pos64.T @ pos64).astype(np.int64),
            head_min=head_min,
            tail_max=tail_max,
        )

    @property
    def num_classes(self) -> int:
        return int(self.class_freq.shape[0])

    @property
    def neg_freq(self) -> np.ndarray:
        """(C,) negatives per class, ``N - n_k``."""
        return self.num_samples - self.class_freq

    @property
    def conditional_prob(self) -> np.ndarray:
        """(C, C) ``P[i, j] = P(j | i)`` = co-occurrence(i, j) / n_i (0 where n_i = 0)."""
        freq = self.class_freq[:, None].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(freq > 0, self.cooccurrence / np.maximum(freq, 1), 0.0)
        return p

    @property
    def split(self) -> dict[str, list[int]]:
        """``{"head": [...], "medium": [...], "tail": [...]}`` class indices."""
        return {k: list(v) for k, v in self._split.items()}

    def group_of(self, k: int) -> str:
        """The group ("head", "medium" or "tail") of class ``k``."""
        for g in GROUPS:
            if k in self._split[g]:
                return g
        raise IndexError(f"class index {k} out of range for {self.num_classes} classes")

    def empty_classes(self) -> list[str]:
        """Names of classes with no positive sample."""
        return [self.class_names[k] for k in np.flatnonzero(self.class_freq == 0)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "class_freq": self.class_freq.tolist(),
            "num_samples": int(self.num_samples),
            "cooccurrence": self.cooccurrence.tolist(),
            "head_min": self.head_min,
            "tail_max": self.tail_max,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelStats":
        try:
            return cls(
                class_names=list(d["class_names"]),
                class_freq=np.asarray(d["class_freq"]),
                num_samples=int(d["num_samples"]),
                cooccurrence=np.asarray(d["cooccurrence"]),
                head_min=int(d.get("head_min", DEFAULT_HEAD_MIN)),
                tail_max=int(d.get("tail_max", DEFAULT_TAIL_MAX)),
            )
        except KeyError as e:
            raise ValueError(f"Label statistics are missing the field {e.args[0]!r}") from None

    def save(self, path: str | Path) -> None:
        """Write the statistics as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "LabelStats":
        """Read statistics written by :meth:`save`."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
