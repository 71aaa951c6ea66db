"""Precomputed features as a dataset: text TF-IDF rows, frozen foundation-model embeddings.

:func:`load_feature_file` reads a ``.npz`` (or a ``torch.save`` dict read with
``weights_only=True``) holding ``features`` (N, D), ``labels`` (N, C) and optionally
``class_names`` (C,); :class:`FeatureDataset` serves its rows as ``dbloss train`` expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dbloss.files import load_checkpoint

__all__ = ["FeatureDataset", "load_feature_file"]


class FeatureDataset(Dataset):
    """Precomputed features: ``__getitem__(i) -> (features (D,) float32, target (C,) float32, i)``.

    ``features`` is a dense (N, D) array/tensor or a SciPy sparse matrix (rows are densified
    one at a time, so a large TF-IDF matrix never has to fit in memory densely).
    """

    def __init__(self, features: Any, labels: np.ndarray) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"Expected as many feature rows as label rows, but got {features.shape[0]} and "
                             f"{labels.shape[0]}")
        self.features = features
        self.sparse = hasattr(features, "tocsr")
        if self.sparse:
            self.features = features.tocsr()
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.float32)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row = self.features[i]
        x = torch.from_numpy(np.asarray(row.toarray()[0] if self.sparse else row, dtype=np.float32))
        return x, self.targets[i], i


def load_feature_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Read precomputed features: a ``.npz`` (or ``.pt`` dict) with ``features`` (N, D),
    ``labels`` (N, C) and optionally ``class_names`` (C,)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    else:
        data = load_checkpoint(path, kind="feature")
    for key in ("features", "labels"):
        if key not in data:
            raise ValueError(f"{path}: missing array {key!r} (found {sorted(data)})")
    feats = np.asarray(data["features"], dtype=np.float32)
    if feats.ndim != 2 or not np.isfinite(feats).all():
        raise ValueError(f"{path}: `features` must be a finite (N, D) matrix, got shape {feats.shape}")
    names = [str(c) for c in data["class_names"]] if "class_names" in data else None
    return feats, np.asarray(data["labels"]), names
