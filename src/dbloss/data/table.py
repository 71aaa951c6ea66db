"""The in-memory form of a multi-label dataset: ids, a label matrix, class names, inputs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dbloss.stats import LabelStats, validate_label_matrix

__all__ = ["MultiLabelSet"]


@dataclass
class MultiLabelSet:
    """A multi-label dataset held as a label matrix plus one input reference per sample.

    Attributes:
        ids: N sample ids (image ids, document ids), as strings.
        labels: (N, C) int64 matrix with values in {0, 1}.
        class_names: C class names; column k of ``labels`` is ``class_names[k]``.
        paths: N image paths (relative to ``root`` unless absolute), or None for non-image data.
        root: the folder that relative ``paths`` are resolved against.
        texts: N documents for text data (Reuters), or None.
    """

    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    paths: list[str] | None = None
    root: str | None = None
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        self.labels = validate_label_matrix(self.labels)
        n, c = self.labels.shape
        self.ids = [str(i) for i in self.ids]
        if len(self.ids) != n:
            raise ValueError(f"Expected {n} ids (one per label row), but got {len(self.ids)}")
        if len(self.class_names) != c:
            raise ValueError(f"Expected {c} class names (one per label column), but got {len(self.class_names)}")
        for name, seq in (("paths", self.paths), ("texts", self.texts)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"Expected {n} {name} (one per label row), but got {len(seq)}")
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ValueError(f"Duplicate sample id {dup!r}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "MultiLabelSet":
        """The samples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for {len(self)} samples")
        pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
        return replace(self, ids=pick(self.ids), labels=self.labels[idx], paths=pick(self.paths), texts=pick(self.texts))

    def select_ids(self, ids: Sequence[Any]) -> "MultiLabelSet":
        """The samples with the given ids, in the order given. Unknown ids raise ``KeyError``."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [str(i) for i in ids if str(i) not in pos]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the dataset, e.g. {missing[:5]}")
        return self.subset([pos[str(i)] for i in ids])

    def image_path(self, i: int) -> Path:
        """The resolved image path of sample ``i``."""
        if self.paths is None:
            raise ValueError("this dataset has no image paths")
        p = Path(self.paths[i])
        return p if p.is_absolute() or self.root is None else Path(self.root) / p

    def stats(self, **kwargs: Any) -> LabelStats:
        """:class:`LabelStats` of this set (keyword arguments go to ``LabelStats.from_labels``)."""
        return LabelStats.from_labels(self.labels, self.class_names, **kwargs)
