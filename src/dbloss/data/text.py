"""Documents and their labels from a CSV file (``dataset=text-csv``), and 0/1 label tables.

:func:`read_text_csv` reads one document per row: a text column and the labels, either

* a label-list column, e.g. ``id,text,labels`` / ``7,grain prices rise,grain;trade``: give
  ``label_column="labels"`` (names joined by ``label_sep``; an empty cell is a document with no
  label, all negatives), or
* one 0/1 column per class, e.g. ``text,grain,trade`` / ``grain prices rise,1,1``: the default
  (``label_column=None``); every column but the text column and the optional ``id`` column is a class.

:func:`read_label_csv` reads a table of 0/1 columns alone (a header of class names, an optional
``id`` column): the labels of a sparse feature file (:func:`dbloss.data.features.load_feature_file`).

Both use the ``csv`` module (UTF-8, a header row, blank lines skipped, fields of any length).
Line numbers in messages are 1-based lines of the file (the header is line 1).

:mod:`dbloss.data.custom`'s ``read_csv`` reads image CSVs with the same two label layouts; it
needs an image-path or id column, which a text CSV need not have, hence this reader.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dbloss.data.table import MultiLabelSet

__all__ = ["read_label_csv", "read_text_csv"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _any_field_size() -> Iterator[None]:
    """Lift ``csv``'s field size limit (131,072 characters: a long document exceeds it) for the
    duration of a read; the previous limit is restored after."""
    limit = sys.maxsize
    while True:  # sys.maxsize overflows the C long of some platforms (Windows)
        try:
            old = csv.field_size_limit(limit)
            break
        except OverflowError:
            limit //= 2
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _lines(lines: Sequence[int], limit: int = 5) -> str:
    return ", ".join(str(n) for n in lines[:limit]) + (", ..." if len(lines) > limit else "")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, 1-based line number of each row); fields stripped of surrounding blanks."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with _any_field_size(), path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected a header row)")
        header = [h.strip() for h in header]
        rows, line_nums = [], []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, line {reader.line_num}: expected {len(header)} fields (the header's), "
                                 f"but got {len(row)}")
            rows.append([c.strip() for c in row])
            line_nums.append(reader.line_num)
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise ValueError(f"{path}: duplicate column name {h!r} in the header")
        seen.add(h)
    if not rows:
        raise ValueError(f"{path}: no data rows (only a header)")
    return header, rows, line_nums


def _column(path: Path, header: list[str], name: str, what: str) -> int:
    if name not in header:
        raise ValueError(f"{path}: no {what} column {name!r}; the columns are {header}")
    return header.index(name)


def _ids(path: Path, header: list[str], rows: list[list[str]], line_nums: list[int],
         id_column: str | None) -> list[str]:
    """The ``id_column`` values (checked: not empty, unique), or the row numbers 0..N-1 without one."""
    if id_column is None or id_column not in header:
        return [str(i) for i in range(len(rows))]
    k = header.index(id_column)
    ids = [r[k] for r in rows]
    blank = [n for v, n in zip(ids, line_nums) if not v]
    if blank:
        raise ValueError(f"{path}: empty {id_column!r} on line(s) {_lines(blank)}")
    first: dict[str, int] = {}
    for v, n in zip(ids, line_nums):
        if v in first:
            raise ValueError(f"{path}: duplicate {id_column!r} {v!r} on lines {first[v]} and {n}")
        first[v] = n
    return ids


def _label_lists(path: Path, cells: list[str], line_nums: list[int], sep: str, column: str,
                 classes: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """(N, C) labels of label-list cells; classes: the sorted union, or ``classes`` (others: an error)."""
    sets = [[t.strip() for t in c.split(sep) if t.strip()] for c in cells]
    if classes is None:
        names = sorted({t for s in sets for t in s})
        if not names:
            raise ValueError(f"{path}: column {column!r} names no class at all (labels joined by {sep!r})")
    else:
        names = list(classes)
        known = set(names)
        for s, n in zip(sets, line_nums):
            unknown = [t for t in s if t not in known]
            if unknown:
                raise ValueError(f"{path}, line {n}: label {unknown[0]!r} is not one of the {len(names)} classes of "
                                 f"the training file")
    index = {c: k for k, c in enumerate(names)}
    labels = np.zeros((len(sets), len(names)), dtype=np.int64)
    for i, s in enumerate(sets):
        labels[i, [index[t] for t in s]] = 1
    return labels, names


def _class_columns(path: Path, header: list[str], rows: list[list[str]], line_nums: list[int],
                   skip: set[str], classes: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """(N, C) labels of one 0/1 column per class (every column not in ``skip``), in ``classes``' order
    when given (the columns must be those classes)."""
    columns = [h for h in header if h not in skip]
    if not columns:
        raise ValueError(f"{path}: no class columns (expected one 0/1 column per class besides {sorted(skip)}; "
                         f"the columns are {header})")
    names = columns if classes is None else list(classes)
    if classes is not None and set(columns) != set(names):
        missing, extra = [c for c in names if c not in columns], [c for c in columns if c not in names]
        raise ValueError(f"{path}: the class columns differ from the training file's: missing {missing}, "
                         f"extra {extra}")
    cols = [header.index(c) for c in names]
    values = np.array([[r[k] for k in cols] for r in rows], dtype=object).reshape(len(rows), len(cols))
    ones, zeros = values == "1", values == "0"
    bad = ~(ones | zeros)
    if bad.any():
        i, k = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"{path}, line {line_nums[i]}, column {names[k]!r}: expected 0 or 1, but got "
                         f"{values[i, k]!r} ({int(bad.sum())} such values)")
    return ones.astype(np.int64), names


def read_text_csv(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    label_sep: str = ";",
    id_column: str | None = "id",
    classes: Sequence[str] | None = None,
) -> MultiLabelSet:
    """Read a CSV of documents and their labels (one document a row).

    Args:
        path: the CSV file (UTF-8, a header row).
        text_column: the column of document texts (default "text"); an empty text is an error.
        label_column: label-list mode: the column of each document's class names joined by
            ``label_sep`` (an empty cell: no label). None (default): every column other than
            ``text_column`` and ``id_column`` is a 0/1 class column.
        label_sep: separator of the names in a ``label_column`` cell (default ";").
        id_column: the column of document ids, used when present (default "id"); without it the
            ids are the row numbers "0", "1", ...
        classes: the class names, in column order: give the training file's when reading a test
            file (a label, or a class column, outside them is an error). None: the sorted union of
            the label lists, or the class columns in file order.

    Returns:
        A :class:`MultiLabelSet` with ``texts`` (N) and ``labels`` (N, C) int64, in file order.
        A row without labels is kept (all negatives).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column (the columns are listed), a row of the wrong length, an empty
            text or id, duplicate ids, a value other than 0/1, a label outside ``classes`` (its line
            named), class columns other than ``classes``.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "docs.csv")
    >>> _ = open(p, "w").write('text,labels\\n"wheat, corn",grain;trade\\nrates up,money\\nno label,\\n')
    >>> ds = read_text_csv(p, label_column="labels")
    >>> ds.class_names, ds.labels.tolist(), ds.texts[0]
    (['grain', 'money', 'trade'], [[1, 0, 1], [0, 1, 0], [0, 0, 0]], 'wheat, corn')
    """
    path = Path(path)
    header, rows, line_nums = _read_rows(path)
    k_text = _column(path, header, text_column, "text (`text_column`)")
    texts = [r[k_text] for r in rows]
    empty = [n for t, n in zip(texts, line_nums) if not t]
    if empty:
        raise ValueError(f"{path}: {len(empty)} empty text(s) in column {text_column!r}, line(s) {_lines(empty)}")
    ids = _ids(path, header, rows, line_nums, id_column)
    if label_column is not None:
        k_lab = _column(path, header, label_column, "label (`label_column`)")
        labels, names = _label_lists(path, [r[k_lab] for r in rows], line_nums, label_sep, label_column, classes)
    else:
        skip = {text_column} | ({id_column} if id_column else set())
        labels, names = _class_columns(path, header, rows, line_nums, skip, classes)
    none = int((labels.sum(1) == 0).sum())
    if none:
        log.info("%s: %d of %d documents have no label (all negatives)", path.name, none, len(rows))
    return MultiLabelSet(ids=ids, labels=labels, class_names=names, texts=texts)


def read_label_csv(path: str | Path, *, id_column: str | None = "id",
                   classes: Sequence[str] | None = None) -> MultiLabelSet:
    """Read a label table: a header of class names, one 0/1 column per class and optionally an
    ``id_column`` (default "id"); the rows in file order. ``classes``: as in :func:`read_text_csv`.

    Returns:
        A :class:`MultiLabelSet` with ``labels`` (N, C) int64 and the class names of the header.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "y.csv")
    >>> _ = open(p, "w").write("id,cat,dog\\na,1,0\\nb,1,1\\n")
    >>> ds = read_label_csv(p)
    >>> ds.ids, ds.class_names, ds.labels.tolist()
    (['a', 'b'], ['cat', 'dog'], [[1, 0], [1, 1]])
    """
    path = Path(path)
    header, rows, line_nums = _read_rows(path)
    ids = _ids(path, header, rows, line_nums, id_column)
    labels, names = _class_columns(path, header, rows, line_nums, {id_column} if id_column else set(), classes)
    return MultiLabelSet(ids=ids, labels=labels, class_names=names)
