"""Custom data from a CSV file, and a check that the image files of a dataset exist.

Two CSV layouts are read (one row per sample):

* a label-list column, e.g. ``image,labels`` / ``a.jpg,cat dog``: give ``label_column="labels"``
  (the separator inside the cell is configurable);
* one 0/1 column per class, e.g. ``image,cat,dog`` / ``a.jpg,1,1``: the default; every column
  other than the path and id columns is a class unless ``class_columns`` says otherwise.

The label CSVs in the shared data (``image_id`` plus one column per class, no image path) are
read with ``read_csv(path, path_column=None, id_column="image_id")``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from dbloss.data.table import MultiLabelSet

__all__ = ["check_images", "missing_images", "read_csv"]

log = logging.getLogger(__name__)


def _lines(lines: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (", ..." if len(lines) > limit else "")


def _first_duplicate(values: list[str], lines: list[int]) -> tuple[str, list[int]] | None:
    seen: dict[str, list[int]] = {}
    for v, n in zip(values, lines):
        seen.setdefault(v, []).append(n)
    for v, where in seen.items():
        if len(where) > 1:
            return v, where
    return None


def read_csv(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    path_column: str | None = "image",
    label_column: str | None = None,
    class_columns: Sequence[str] | None = None,
    separator: str = " ",
    id_column: str | None = None,
    allow_empty: bool = False,
    classes: Sequence[str] | None = None,
    delimiter: str = ",",
) -> MultiLabelSet:
    """Read a multi-label CSV file (label-list column or one 0/1 column per class).

    Args:
        path: the CSV file (UTF-8, a header row; blank lines are skipped).
        image_root: the folder relative image paths are resolved against. Default: the folder of
            the CSV file (when there is a path column).
        path_column: the column of image paths; None for label tables without images.
        label_column: label-list mode: the column holding each sample's class names, separated
            by ``separator`` (an empty cell is an empty label set).
        class_columns: 0/1 mode: the class columns, in this order. Default: every column other
            than ``path_column`` and ``id_column``, in file order.
        separator: separator of class names inside a ``label_column`` cell (default " ").
        id_column: the column of sample ids. Default: the image path is the id.
        allow_empty: allow samples without any positive class (default False: an error that
            names the rows).
        classes: label-list mode only: the class names, in column order. Default: the sorted union
            of the names found. With explicit classes an unknown name is an error.
        delimiter: the CSV field delimiter (default ",").

    Returns:
        A :class:`MultiLabelSet` with ``labels`` (N, C), in file order; ``paths`` None when
        ``path_column`` is None.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column (the available ones are listed), a row of the wrong length,
            an empty id, a value other than 0/1 (line and column named), an unknown class with
            explicit ``classes`` (line and class named), duplicate ids or paths, empty label sets
            unless ``allow_empty``. Line numbers are 1-based lines of the file (the header is 1).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "l.csv")
    >>> _ = open(p, "w").write("image,labels\\na.jpg,cat dog\\nb.jpg,dog\\n")
    >>> ds = read_csv(p, label_column="labels")
    >>> ds.class_names, ds.labels.tolist()
    (['cat', 'dog'], [[1, 1], [0, 1]])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected a header row)")
        header = [h.strip() for h in header]
        rows: list[list[str]] = []
        line_nums: list[int] = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, line {reader.line_num}: expected {len(header)} fields, but got {len(row)}")
            rows.append([c.strip() for c in row])
            line_nums.append(reader.line_num)

    dup_cols = _first_duplicate(header, list(range(1, len(header) + 1)))
    if dup_cols:
        raise ValueError(f"{path}: duplicate column name {dup_cols[0]!r} in the header")
    col = {h: k for k, h in enumerate(header)}

    def need(name: str | None, what: str) -> None:
        if name is not None and name not in col:
            raise ValueError(f"{path}: no {what} column {name!r}; the columns are {header}")

    need(path_column, "path")
    need(id_column, "id")
    need(label_column, "label")
    if path_column is None and id_column is None:
        raise ValueError("Expected `path_column` or `id_column` to name a column, but both are None")
    if label_column is not None and class_columns is not None:
        raise ValueError("Expected one of `label_column` (label lists) or `class_columns` (0/1 columns), not both")
    if classes is not None and label_column is None:
        raise ValueError("`classes` applies to the label-list mode (`label_column`); use `class_columns` for 0/1 columns")
    if not rows:
        raise ValueError(f"{path}: no data rows")

    paths = [r[col[path_column]] for r in rows] if path_column is not None else None
    ids = [r[col[id_column]] for r in rows] if id_column is not None else list(paths or [])
    for what, values in (("path", paths), ("id", ids if id_column is not None else None)):
        if values is None:
            continue
        blank = [n for v, n in zip(values, line_nums) if not v]
        if blank:
            raise ValueError(f"{path}: empty {what} on line(s) {_lines(blank)}")
        dup = _first_duplicate(values, line_nums)
        if dup:
            raise ValueError(f"{path}: duplicate {what} {dup[0]!r} on lines {_lines(dup[1])}")

    if label_column is not None:
        cells = [r[col[label_column]] for r in rows]
        sets = [[t.strip() for t in c.split(separator) if t.strip()] if c else [] for c in cells]
        if classes is not None:
            class_names = [str(c) for c in classes]
            dup = _first_duplicate(class_names, list(range(len(class_names))))
            if dup:
                raise ValueError(f"duplicate class name {dup[0]!r} in `classes`")
            known = set(class_names)
            for s, n in zip(sets, line_nums):
                unknown = [t for t in s if t not in known]
                if unknown:
                    raise ValueError(f"{path}, line {n}: unknown class {unknown[0]!r} (not in `classes`)")
        else:
            class_names = sorted({t for s in sets for t in s})
            if not class_names:
                raise ValueError(f"{path}: column {label_column!r} names no class at all")
        index = {c: k for k, c in enumerate(class_names)}
        labels = np.zeros((len(rows), len(class_names)), dtype=np.int64)
        for i, s in enumerate(sets):
            labels[i, [index[t] for t in s]] = 1
    else:
        if class_columns is None:
            skip = {path_column, id_column}
            class_names = [h for h in header if h not in skip]
        else:
            class_names = [str(c) for c in class_columns]
            for c in class_names:
                need(c, "class")
        if not class_names:
            raise ValueError(f"{path}: no class columns (the columns are {header})")
        values = np.array([[r[col[c]] for c in class_names] for r in rows], dtype=object)
        ones, zeros = values == "1", values == "0"
        bad = ~(ones | zeros)
        if bad.any():
            i, k = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(
                f"{path}, line {line_nums[i]}, column {class_names[k]!r}: expected 0 or 1, "
                f"but got {values[i, k]!r} ({int(bad.sum())} such values)"
            )
        labels = ones.astype(np.int64)

    empty = np.flatnonzero(labels.sum(1) == 0)
    if len(empty):
        if not allow_empty:
            raise ValueError(
                f"{path}: {len(empty)} samples have no positive class (lines {_lines([line_nums[i] for i in empty])}); "
                "pass allow_empty=True to keep them"
            )
        log.info("%s: %d of %d samples have no positive class", path.name, len(empty), len(rows))

    root = None
    if paths is not None:
        root = str(image_root) if image_root is not None else str(path.parent)
    return MultiLabelSet(ids=ids, labels=labels, class_names=class_names, paths=paths, root=root)


def missing_images(dataset: MultiLabelSet) -> list[str]:
    """The resolved paths of the image files of ``dataset`` that do not exist (in dataset order)."""
    if dataset.paths is None:
        raise ValueError("this dataset has no image paths to check")
    return [str(p) for p in (dataset.image_path(i) for i in range(len(dataset))) if not p.is_file()]


def check_images(dataset: MultiLabelSet, *, max_names: int = 5) -> None:
    """Raise ``FileNotFoundError`` if image files of ``dataset`` are missing.

    The message gives how many are missing and names the first ``max_names``.

    >>> ds = MultiLabelSet(["a"], [[1]], ["cat"], paths=["no/such.jpg"], root="/")
    >>> check_images(ds)
    Traceback (most recent call last):
    ...
    FileNotFoundError: 1 of 1 image files are missing (root: /): /no/such.jpg
    """
    missing = missing_images(dataset)
    if missing:
        shown = ", ".join(missing[:max_names]) + (", ..." if len(missing) > max_names else "")
        raise FileNotFoundError(f"{len(missing)} of {len(dataset)} image files are missing (root: {dataset.root}): {shown}")
