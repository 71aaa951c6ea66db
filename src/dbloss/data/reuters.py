"""Reuters-21578, ApteMod split: a long-tailed multi-label text benchmark.

:func:`read_reuters` builds the ApteMod train / test sets (7,769 / 3,019 documents, 90
categories) from the 22 SGML files of the collection:

1. documents with ``TOPICS="YES"`` and ``LEWISSPLIT`` "TRAIN" or "TEST";
2. the categories that occur in at least one such training and one such test document (90);
3. the documents with at least one of them, labels restricted to them;
4. minus NEWID 1199, a body-less "BRIEF" item that ApteMod (as packaged by NLTK, the category
   file ``cats.txt``) leaves out: see :data:`APTEMOD_EXCLUDED_NEWIDS`.

The result equals the ApteMod category file (:func:`read_aptemod_cats`) document for document.

:func:`huang_validation_split` reproduces the validation split of Huang et al. (EMNLP 2021,
"Balancing Methods for Multi-label Text Classification with Long-Tailed Class Distribution",
github.com/Roche/BalancedLossNLP), whose head / medium / tail rule is
``class_split(freq, head_min=HUANG_HEAD_MIN, tail_max=HUANG_TAIL_MAX)``.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import numpy as np

from dbloss.data.table import MultiLabelSet

__all__ = [
    "APTEMOD_EXCLUDED_NEWIDS",
    "HUANG_HEAD_MIN",
    "HUANG_TAIL_MAX",
    "huang_validation_split",
    "read_aptemod_cats",
    "read_reuters",
]

log = logging.getLogger(__name__)

#: NEWIDs that the selection rule keeps but ApteMod leaves out (1199: a "BRIEF" with no body).
APTEMOD_EXCLUDED_NEWIDS: frozenset[str] = frozenset({"1199"})
#: Huang et al. (2021): a class with at least 35 training documents (of 6,769) is *head*.
HUANG_HEAD_MIN: int = 35
#: Huang et al. (2021): a class with at most 8 (i.e. fewer than 9) training documents is *tail*.
HUANG_TAIL_MAX: int = 9

_DOC = re.compile(r"<REUTERS\b([^>]*)>(.*?)</REUTERS>", re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_TOPICS = re.compile(r"<TOPICS>(.*?)</TOPICS>", re.S)
_D = re.compile(r"<D>(.*?)</D>", re.S)
_TEXT = re.compile(r"<TEXT\b[^>]*>(.*?)</TEXT>", re.S)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.S)
_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)
_TAG = re.compile(r"<[^>]*>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(raw: str) -> str:
    """Unescape SGML entities and drop control characters (``&#2;``, ``&#3;`` ...)."""
    return _CONTROL.sub("", html.unescape(raw)).strip()


def _parse_file(path: Path) -> list[dict]:
    text = path.read_text(encoding="latin-1")
    docs = []
    for m in _DOC.finditer(text):
        attrs = dict(_ATTR.findall(m.group(1)))
        if "NEWID" not in attrs:
            raise ValueError(f"{path}: a <REUTERS> element has no NEWID attribute")
        inner = m.group(2)
        topics_m = _TOPICS.search(inner)
        topics = [html.unescape(t).strip() for t in _D.findall(topics_m.group(1))] if topics_m else []
        text_m = _TEXT.search(inner)
        body_src = text_m.group(1) if text_m else ""
        parts = [p.group(1) for p in (_TITLE.search(body_src), _BODY.search(body_src)) if p]
        doc_text = "\n".join(_clean(p) for p in parts) if parts else _clean(_TAG.sub("", body_src))
        docs.append(dict(attrs=attrs, topics=topics, text=doc_text, file=path.name))
    return docs


def read_reuters(root: str | Path) -> tuple[MultiLabelSet, MultiLabelSet]:
    """Read the ApteMod train and test sets from the Reuters-21578 SGML files.

    Args:
        root: the folder with ``reut2-000.sgm`` ... ``reut2-021.sgm`` (latin-1 SGML).

    Returns:
        ``(train, test)``: :class:`MultiLabelSet` s with ``ids`` the NEWIDs as strings (sorted
        numerically), ``labels`` (N, 90) over the 90 ApteMod categories sorted by name, ``texts``
        the TITLE and BODY joined by a newline (entities unescaped, control characters removed;
        a document without either, such as an "UNPROC" item, gets the raw TEXT content), and
        ``paths`` None. 7,769 and 3,019 documents for the standard collection.

    Raises:
        FileNotFoundError: ``root`` has no ``reut2-*.sgm`` files.

    >>> train, test = read_reuters("data/reuters21578")  # doctest: +SKIP
    >>> len(train), len(test), train.num_classes  # doctest: +SKIP
    (7769, 3019, 90)
    """
    root = Path(root)
    files = sorted(root.glob("reut2-*.sgm"))
    if not files:
        raise FileNotFoundError(f"no Reuters-21578 SGML files (reut2-*.sgm) in {root}")
    if len(files) != 22:
        log.warning("%s: expected 22 reut2-*.sgm files, found %d", root, len(files))
    docs = [d for f in files for d in _parse_file(f)]

    split_of = {"TRAIN": "train", "TEST": "test"}
    chosen = [d for d in docs if d["attrs"].get("TOPICS") == "YES" and d["attrs"].get("LEWISSPLIT") in split_of]
    seen: dict[str, str] = {}
    for d in chosen:
        nid = d["attrs"]["NEWID"]
        if nid in seen:
            raise ValueError(f"NEWID {nid} occurs twice ({seen[nid]} and {d['file']})")
        seen[nid] = d["file"]
    in_split: dict[str, set[str]] = {"train": set(), "test": set()}
    for d in chosen:
        in_split[split_of[d["attrs"]["LEWISSPLIT"]]].update(d["topics"])
    class_names = sorted(in_split["train"] & in_split["test"])
    index = {c: k for k, c in enumerate(class_names)}

    out = {}
    for split in ("train", "test"):
        keep = [
            d for d in chosen
            if split_of[d["attrs"]["LEWISSPLIT"]] == split
            and any(t in index for t in d["topics"])
            and d["attrs"]["NEWID"] not in APTEMOD_EXCLUDED_NEWIDS
        ]  # fmt: skip
        keep.sort(key=lambda d: int(d["attrs"]["NEWID"]))
        labels = np.zeros((len(keep), len(class_names)), dtype=np.int64)
        for i, d in enumerate(keep):
            labels[i, [index[t] for t in d["topics"] if t in index]] = 1
        out[split] = MultiLabelSet(
            ids=[d["attrs"]["NEWID"] for d in keep],
            labels=labels,
            class_names=list(class_names),
            texts=[d["text"] for d in keep],
        )
    log.info("Reuters ApteMod: %d train, %d test documents, %d categories", len(out["train"]), len(out["test"]), len(class_names))
    return out["train"], out["test"]


def read_aptemod_cats(path: str | Path) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """Parse the ApteMod category file (NLTK's ``reuters/cats.txt``).

    Each line is ``training/NEWID cat ...`` or ``test/NEWID cat ...``. A category listed twice on
    one line counts once (the NLTK file has two such lines: ``corn`` for training/5467, ``trade``
    for test/19918).

    Returns:
        ``(train, test)``: dicts NEWID (str) -> frozenset of categories, in file order.

    Raises:
        ValueError: a line of another form, or a document listed twice (line named).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "cats.txt")
    >>> _ = open(p, "w").write("training/5 grain corn corn\\ntest/14826 trade\\n")
    >>> train, test = read_aptemod_cats(p)
    >>> sorted(train["5"]), sorted(test["14826"])
    (['corn', 'grain'], ['trade'])
    """
    path = Path(path)
    out: dict[str, dict[str, frozenset[str]]] = {"training": {}, "test": {}}
    n_dup = 0
    for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        split, _, newid = parts[0].partition("/")
        if split not in out or not newid.isdigit() or len(parts) < 2:
            raise ValueError(f"{path}, line {n}: expected 'training/NEWID cat ...' or 'test/NEWID cat ...', but got {line!r}")
        if newid in out[split]:
            raise ValueError(f"{path}, line {n}: {split}/{newid} is listed twice")
        n_dup += len(parts) - 1 - len(set(parts[1:]))
        out[split][newid] = frozenset(parts[1:])
    if n_dup:
        log.debug("%s: %d repeated categories within a line ignored", path, n_dup)
    return out["training"], out["test"]


def huang_validation_split(
    train: MultiLabelSet,
    *,
    test_size: int = 1000,
    random_state: int = 123,
) -> tuple[np.ndarray, np.ndarray]:
    """The train / validation split of Huang et al. (EMNLP 2021) on the ApteMod training set.

    Their ``dataset_prep.ipynb`` calls
    ``train_test_split(data_train_all, random_state=123, test_size=1000)`` (shuffled, not
    stratified) on the list of training documents, which is in numeric NEWID order. The split
    only depends on the list's length and order, so it is reproduced on the positions of
    ``train`` sorted by numeric id.

    Args:
        train: the ApteMod training set (7,769 documents; ids are NEWIDs).
        test_size: as Huang et al. (1000).
        random_state: as Huang et al. (123).

    Returns:
        ``(train_idx, val_idx)``: int64 indices into ``train`` (6,769 and 1,000 for ApteMod), in
        the order ``train_test_split`` returns them (the order of Huang et al.'s lists).

    >>> from dbloss.stats import class_split
    >>> tr, va = huang_validation_split(train)  # doctest: +SKIP
    >>> freq = train.labels[tr].sum(0)  # doctest: +SKIP
    >>> class_split(freq, head_min=HUANG_HEAD_MIN, tail_max=HUANG_TAIL_MAX)  # doctest: +SKIP
    """
    from sklearn.model_selection import train_test_split

    try:
        keys = [int(i) for i in train.ids]
    except ValueError:
        raise ValueError("Expected numeric NEWIDs as ids, e.g. '1', but got non-numeric ids") from None
    order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    tr, va = train_test_split(order, test_size=test_size, random_state=random_state)
    return np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64)
