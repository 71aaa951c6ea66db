"""Precomputed features as a dataset: text TF-IDF rows, frozen foundation-model embeddings.

:func:`load_feature_file` reads

* a dense ``.npz`` (or a ``torch.save`` dict read with ``weights_only=True``) holding
  ``features`` (N, D), ``labels`` (N, C) and optionally ``class_names`` (C,);
* a sparse ``.npz`` written by ``scipy.sparse.save_npz`` (N, D), kept sparse (CSR), whose labels
  are in a file of their own (:func:`load_label_file`): the one named (``train_labels`` /
  ``test_labels`` of a recipe), else ``<stem>_labels.npz``, ``<stem>_labels.npy`` or
  ``<stem>_labels.csv`` beside the feature file (``tfidf.npz`` -> ``tfidf_labels.npz``);

:class:`FeatureDataset` serves its rows as ``dbloss train`` expects, a batch at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch.utils.data import Dataset, default_collate

from dbloss.files import load_checkpoint

__all__ = ["FeatureBatch", "FeatureDataset", "LABEL_SUFFIXES", "collate_features", "labels_beside",
           "load_feature_file", "load_label_file"]

log = logging.getLogger(__name__)

#: The label files looked for beside a feature file ``<stem>.npz`` without labels, in this order.
LABEL_SUFFIXES: tuple[str, ...] = ("_labels.npz", "_labels.npy", "_labels.csv")


class FeatureDataset(Dataset):
    """Precomputed features: ``__getitem__(i) -> (features (D,) float32, target (C,) float32, i)``.

    ``features`` is a dense (N, D) array/tensor or a SciPy sparse matrix, kept sparse (CSR): only
    the rows asked for are densified, so a large TF-IDF matrix never has to fit in memory densely.
    :meth:`__getitems__` serves a whole batch at once (the ``DataLoader`` calls it when present);
    ``__getitem__`` is the one-row reference it equals, value for value.

    >>> ds = FeatureDataset(scipy.sparse.csr_matrix(np.eye(3)), np.eye(3, dtype=np.int64))
    >>> x, y, i = ds[1]; x.tolist(), y.tolist(), i
    ([0.0, 1.0, 0.0], [0.0, 1.0, 0.0], 1)
    >>> [i for _, _, i in ds.__getitems__([2, 0])]
    [2, 0]
    """

    def __init__(self, features: Any, labels: np.ndarray) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"Expected as many feature rows as label rows, but got {features.shape[0]} and "
                             f"{labels.shape[0]}")
        self.features = features
        self.sparse = scipy.sparse.issparse(features)
        if self.sparse:  # a csr_matrix: X[i] is a (1, D) row (a csr_array's is 1-D); no copy of a CSR input
            self.features = scipy.sparse.csr_matrix(features)
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.float32)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row = self.features[i]
        x = torch.from_numpy(np.asarray(row.toarray()[0] if self.sparse else row, dtype=np.float32))
        return x, self.targets[i], i

    def __getitems__(self, indices: Sequence[int]) -> Sequence[tuple[torch.Tensor, torch.Tensor, int]]:
        """The samples at ``indices`` (a batch), equal to ``[self[i] for i in indices]`` but with the
        rows sliced, and sparse rows densified, in one operation (``X[indices].toarray()``).

        The ``DataLoader`` (torch >= 2.2) calls it for a batch and passes the result, a read-only
        sequence of ``(x (D,), y (C,), i)``, to its ``collate_fn``: any collate takes it, and
        :func:`collate_features` returns the batch tensors it holds without stacking rows again.
        """
        idx = [int(i) for i in indices]
        rows = self.features[idx]
        x = torch.from_numpy(np.asarray(rows.toarray() if self.sparse else rows, dtype=np.float32))
        y = self.targets[torch.as_tensor(idx, dtype=torch.long)]
        return FeatureBatch(x, y, idx)


class FeatureBatch(Sequence):
    """A batch of :class:`FeatureDataset` samples: ``batch[k] == (x[k], y[k], indices[k])``, a
    read-only sequence (what a collate function expects) over the stacked ``x`` (B, D) float32 and
    ``y`` (B, C) float32; the rows are cut out (views) the first time a collate asks for one."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices: list[int]) -> None:
        self.x, self.y, self.indices = x, y, indices
        self._rows: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None

    def _samples(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        if self._rows is None:
            self._rows = list(zip(self.x.unbind(0), self.y.unbind(0), self.indices))
        return self._rows

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: Any) -> Any:
        return self._samples()[k]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        return iter(self._samples())


def collate_features(batch: Sequence[Any]) -> Any:
    """``default_collate`` for :class:`FeatureDataset` batches without its copy: a
    :class:`FeatureBatch` (from :meth:`FeatureDataset.__getitems__`) is returned as its stacked
    tensors ``[x (B, D), y (B, C), indices (B,)]``, where ``default_collate`` would cut it into rows
    and stack them into new tensors (for 256 x 50,000 TF-IDF rows that copy costs more than
    densifying them). Anything else goes to ``default_collate``; the result is the same either way.

    >>> ds = FeatureDataset(np.arange(6.0).reshape(3, 2), np.eye(3, dtype=np.int64))
    >>> x, y, i = collate_features(ds.__getitems__([2, 0]))
    >>> x.tolist(), y.shape, i.tolist()
    ([[4.0, 5.0], [0.0, 1.0]], torch.Size([2, 3]), [2, 0])
    """
    if isinstance(batch, FeatureBatch):
        return [batch.x, batch.y, torch.tensor(batch.indices, dtype=torch.long)]  # a list, as default_collate
    return default_collate(batch)


def labels_beside(path: str | Path) -> list[Path]:
    """The label files looked for beside the feature file ``path``, in order (:data:`LABEL_SUFFIXES`).

    >>> [p.name for p in labels_beside("data/tfidf_train.npz")]
    ['tfidf_train_labels.npz', 'tfidf_train_labels.npy', 'tfidf_train_labels.csv']
    """
    path = Path(path)
    return [path.with_name(path.stem + suffix) for suffix in LABEL_SUFFIXES]


def load_label_file(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """Read a labels file: ``labels`` (N, C) and the class names (C) when the file has them.

    * ``.npy``: the (N, C) 0/1 matrix (no class names);
    * ``.npz``: ``labels`` (N, C) and optionally ``class_names`` (C,);
    * ``.csv``: a header of class names, one 0/1 column per class, optionally an ``id`` column
      (:func:`dbloss.data.text.read_label_csv`); rows in file order.

    Values other than 0/1 are rejected by :class:`~dbloss.data.table.MultiLabelSet` downstream.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "y.npz"); np.savez(p, labels=np.eye(2, dtype=int), class_names=["a", "b"])
    >>> y, names = load_label_file(p); y.tolist(), names
    ([[1, 0], [0, 1]], ['a', 'b'])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        from dbloss.data.text import read_label_csv

        table = read_label_csv(path)
        return table.labels, list(table.class_names)
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a labels file ending in .npy, .npz or .csv")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:  # an object array (pickled): refused
        raise ValueError(f"{path}: not a plain numeric array file ({e})") from None
    if suffix == ".npy":
        labels, names = loaded, None
    else:
        with loaded as z:
            if "labels" not in z.files:
                raise ValueError(f"{path}: missing array 'labels' (found {sorted(z.files)})")
            labels = z["labels"]
            names = [str(c) for c in z["class_names"]] if "class_names" in z.files else None
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{path}: expected an (N, C) label matrix, but got shape {labels.shape}")
    if names is not None and len(names) != labels.shape[1]:
        raise ValueError(f"{path}: {len(names)} class names for {labels.shape[1]} label columns")
    return labels, names


def _is_sparse_npz(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as z:
        return "features" not in z.files and "format" in z.files


def _load_sparse(path: Path) -> scipy.sparse.csr_matrix:
    try:
        x = scipy.sparse.load_npz(path)  # np.load with allow_pickle=False
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ValueError(f"{path}: not a readable scipy.sparse.save_npz file ({e})") from None
    if x.ndim != 2:
        raise ValueError(f"{path}: expected an (N, D) sparse matrix, but got shape {x.shape}")
    x = scipy.sparse.csr_matrix(x, dtype=np.float32)
    bad = ~np.isfinite(x.data)
    if bad.any():
        row = int(np.searchsorted(x.indptr, int(np.flatnonzero(bad)[0]), side="right") - 1)
        raise ValueError(f"{path}: the sparse features hold {int(bad.sum())} non-finite value(s) (NaN or inf), "
                         f"the first in row {row}")
    return x


def load_feature_file(
    path: str | Path,
    labels: str | Path | None = None,
    *,
    labels_field: str = "train_labels / test_labels",
) -> tuple[np.ndarray | scipy.sparse.csr_matrix, np.ndarray, list[str] | None]:
    """Read precomputed features and their labels.

    Args:
        path: the features: a ``.npz`` (or ``.pt`` dict) with ``features`` (N, D), optionally
            ``labels`` (N, C) and ``class_names`` (C,); or a sparse (N, D) ``.npz`` written by
            ``scipy.sparse.save_npz`` (any format; returned as CSR float32, never densified).
        labels: a labels file (:func:`load_label_file`: ``.npy``, ``.npz`` or ``.csv``), used
            instead of any ``labels`` in ``path``. None: the ``labels`` in ``path``, else the first
            of ``<stem>_labels.npz``, ``<stem>_labels.npy``, ``<stem>_labels.csv`` beside it.
        labels_field: the setting that names ``labels``, for the message when none is found.

    Returns:
        ``(features, labels, class_names)``: features (N, D) float32, a numpy array or a
        ``scipy.sparse.csr_matrix``; labels (N, C) as stored; class names (C) from the labels file,
        else from ``path`` (when there are C), else None.

    Raises:
        FileNotFoundError: no feature file, a named labels file missing, or no labels anywhere
            (the paths looked for and ``labels_field`` are named).
        ValueError: features not a finite (N, D) matrix, labels rows != feature rows (both files
            named), a malformed labels file.

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp(); x = scipy.sparse.random_array((4, 6), density=0.5, format="csr", rng=0)
    >>> scipy.sparse.save_npz(os.path.join(d, "x.npz"), x); np.save(os.path.join(d, "x_labels.npy"), np.eye(4, 2))
    >>> feats, y, names = load_feature_file(os.path.join(d, "x.npz"))
    >>> scipy.sparse.issparse(feats), feats.shape, y.shape, names
    (True, (4, 6), (4, 2), None)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    names: list[str] | None = None
    y = None
    if path.suffix == ".npz" and _is_sparse_npz(path):
        feats: Any = _load_sparse(path)
    else:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        else:
            data = load_checkpoint(path, kind="feature")
        if "features" not in data:
            raise ValueError(f"{path}: missing array 'features' (found {sorted(data)}); a sparse matrix is read "
                             f"from a scipy.sparse.save_npz file")
        feats = np.asarray(data["features"], dtype=np.float32)
        if feats.ndim != 2 or not np.isfinite(feats).all():
            raise ValueError(f"{path}: `features` must be a finite (N, D) matrix, got shape {feats.shape}")
        names = [str(c) for c in data["class_names"]] if "class_names" in data else None
        y = np.asarray(data["labels"]) if "labels" in data else None
    if labels is not None:
        labels = Path(labels)
        if y is not None:
            log.info("%s: labels read from %s (not from the feature file)", path.name, labels)
        y, file_names = load_label_file(labels)
        if file_names is not None or (names is not None and len(names) != y.shape[1]):
            names = file_names  # the feature file's names only where they fit the labels read instead
    elif y is None:
        found = [p for p in labels_beside(path) if p.is_file()]
        if not found:
            looked = ", ".join(str(p) for p in labels_beside(path))
            raise FileNotFoundError(f"{path} holds no labels, and no labels file was found beside it (looked for "
                                    f"{looked}); set `{labels_field}` to a .npy, .npz or .csv labels file")
        labels = found[0]
        y, names = load_label_file(labels)
    if y.shape[0] != feats.shape[0]:
        source = f"{labels}" if labels is not None else f"{path} (`labels`)"
        raise ValueError(f"{source} has {y.shape[0]} label rows, but {path} has {feats.shape[0]} feature rows")
    return feats, y, names
