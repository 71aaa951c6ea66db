"""From a recipe's data fields to datasets: the one place that maps ``cfg.data.dataset`` to readers.

:func:`build_data` returns the train / (optional) validation / test ``Dataset``s, the training
label matrix (for the label statistics, the losses and the class-aware sampler) and, for
feature inputs, the feature dimension. It only reads: :func:`prepare_data` is the explicit
step that generates the built-in demo images first (``dbloss train`` and ``dbloss demo`` call it).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from dbloss.config import TrainConfig
from dbloss.data.features import FeatureDataset, load_feature_file
from dbloss.data.table import MultiLabelSet
from dbloss.errors import UsageError

__all__ = ["FEATURE_DATASETS", "DataBundle", "build_data", "eval_view", "holdout_count", "prepare_data", "read_tables",
           "text_vectorizer"]

log = logging.getLogger(__name__)

#: The datasets whose inputs are feature vectors (precomputed, or TF-IDF of text), not images.
FEATURE_DATASETS: tuple[str, ...] = ("features", "reuters", "text-csv")


@dataclass
class DataBundle:
    """What training needs from the data."""

    train: Dataset
    test: Dataset
    val: Dataset | None
    train_labels: np.ndarray  # (N_train, C) int64
    class_names: list[str]
    in_features: int | None  # feature dimension for input_type "features", else None

    @property
    def input_type(self) -> str:
        return "image" if self.in_features is None else "features"


def demo_root(cfg: TrainConfig) -> Path:
    """Where a ``dataset=demo`` recipe's images are (``data_root``, default ``demo_data``)."""
    return Path(cfg.data.root or "demo_data")


def prepare_data(cfg: TrainConfig) -> None:
    """The one step that writes data: generate what a recipe reads but no one downloads (the
    built-in demo dataset, once: later calls reuse it). Entry points call it before
    :func:`build_data` (on one rank); building datasets only reads."""
    if cfg.data.dataset == "demo":
        from dbloss.data.synthetic import generate_demo_dataset

        generate_demo_dataset(demo_root(cfg), seed=0)


def read_tables(cfg: TrainConfig) -> tuple[MultiLabelSet, MultiLabelSet]:
    """The (train, test) label tables of an image dataset recipe (``subset`` applied to train)."""
    from dbloss.data import coco, custom, published, voc

    kind = cfg.data.dataset
    root = Path(cfg.data.root) if cfg.data.root else None
    if kind in ("voc", "coco") and root is None:
        raise ValueError(f"data.dataset={kind!r} needs `data.root`")
    if kind == "voc":
        train = voc.read_voc(root, "2012", "trainval", use_difficult=cfg.data.use_difficult)
        test = voc.read_voc(root, "2007", "test", use_difficult=cfg.data.use_difficult)
    elif kind == "coco":
        train = coco.read_coco(root / "annotations" / "instances_train2017.json", root / "train2017")
        test = coco.read_coco(root / "annotations" / "instances_val2017.json", root / "val2017")
    elif kind == "demo":
        from dbloss.data.synthetic import find_demo_dataset

        paths = find_demo_dataset(demo_root(cfg))
        train = coco.read_coco(paths.train_json, paths.image_root)
        test = coco.read_coco(paths.test_json, paths.image_root)
    elif kind in ("coco-json", "csv"):
        for f in ("train_ann", "test_ann"):
            if not getattr(cfg.data, f):
                raise ValueError(f"data.dataset={kind!r} needs `data.{f}`")
        if kind == "coco-json":
            train = coco.read_coco(cfg.data.train_ann, cfg.data.train_images or Path(cfg.data.train_ann).parent)
            test = coco.read_coco(cfg.data.test_ann, cfg.data.test_images or Path(cfg.data.test_ann).parent)
        else:
            train = custom.read_csv(cfg.data.train_ann, cfg.data.train_images)
            test = custom.read_csv(cfg.data.test_ann, cfg.data.test_images)
    else:
        raise ValueError(f"data.dataset={kind!r} is not an image dataset")
    if cfg.data.subset:
        ids = published.load_id_list(cfg.data.subset)
        try:
            train = train.select_ids(ids)
        except KeyError as e:  # select_ids' documented error: ids of the list that the data lacks
            raise UsageError(f"subset {cfg.data.subset}: {e.args[0]}") from None
        log.info("training subset %s: %d images", cfg.data.subset, len(train))
    if train.class_names != test.class_names:
        raise ValueError(f"train and test class names differ: {train.class_names} vs {test.class_names}")
    for table, split in ((train, "train"), (test, "test")):
        custom.check_images(table)
        log.info("%s: %d images, %d classes", split, len(table), table.num_classes)
    return train, test


def holdout_count(n: int, val_size: int | float) -> int:
    """How many of ``n`` training samples ``val_size`` holds out: a count as it is, a fraction
    rounded (at least one sample, at most ``n - 1``).

    >>> holdout_count(1000, 0.1), holdout_count(1000, 300), holdout_count(5, 0.01)
    (100, 300, 1)
    """
    if isinstance(val_size, float):
        return min(max(1, round(val_size * n)), n - 1)
    return int(val_size)


def _holdout(n: int, val_size: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    count = holdout_count(n, val_size)
    if count >= n:
        raise ValueError(f"Expected val_size < number of training samples ({n}), but got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[count:]), np.sort(perm[:count])


def build_data(cfg: TrainConfig) -> DataBundle:
    """Build the datasets of a recipe."""
    if cfg.data.dataset == "reuters":
        return _build_reuters(cfg)
    if cfg.data.dataset == "features":
        return _build_features(cfg)
    if cfg.data.dataset == "text-csv":
        return _build_text_csv(cfg)
    from dbloss.data.images import MultiLabelImageDataset
    from dbloss.data.transforms import eval_transform, train_transform

    train, test = read_tables(cfg)
    val = None
    if cfg.data.val_size:
        tr_idx, va_idx = _holdout(len(train), cfg.data.val_size, cfg.run.seed)
        train, val = train.subset(tr_idx), train.subset(va_idx)
    t_train = (train_transform(cfg.data.image_size, photometric=cfg.data.photometric) if cfg.data.augment
               else eval_transform(cfg.data.image_size))
    t_eval = eval_transform(cfg.data.image_size)
    make = lambda table, t: MultiLabelImageDataset(table, t, skip_corrupt=cfg.data.skip_corrupt)  # noqa: E731
    return DataBundle(
        train=make(train, t_train), test=make(test, t_eval), val=None if val is None else make(val, t_eval),
        train_labels=train.labels, class_names=list(train.class_names), in_features=None,
    )


def eval_view(ds: Dataset, cfg: TrainConfig) -> Dataset:
    """The samples of ``ds`` as evaluation sees them: an image dataset with the evaluation transform
    (no augmentation; a shallow copy, ``ds`` unchanged); feature datasets as they are."""
    if not hasattr(ds, "transform"):
        return ds
    from dbloss.data.transforms import eval_transform

    view = copy.copy(ds)
    view.transform = eval_transform(cfg.data.image_size)
    return view


def _build_features(cfg: TrainConfig) -> DataBundle:
    """``dataset=features``: :func:`~dbloss.data.features.load_feature_file` on ``train_ann`` / ``test_ann``
    (dense, or sparse kept sparse), labels from ``train_labels`` / ``test_labels`` when set."""
    if not cfg.data.train_ann or not cfg.data.test_ann:
        raise ValueError("data.dataset='features' needs `data.train_ann` and `data.test_ann` (.npz feature files)")
    xtr, ytr, names = load_feature_file(cfg.data.train_ann, cfg.data.train_labels, labels_field="train_labels")
    xte, yte, names_te = load_feature_file(cfg.data.test_ann, cfg.data.test_labels, labels_field="test_labels")
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise ValueError(f"train and test feature files disagree: features {xtr.shape} vs {xte.shape}, "
                         f"labels {ytr.shape} vs {yte.shape}")
    if names and names_te and names != names_te:
        raise ValueError(f"train and test class names differ: {names[:5]}... vs {names_te[:5]}...")
    names = names or names_te or [f"class_{k}" for k in range(ytr.shape[1])]
    train = MultiLabelSet([str(i) for i in range(len(ytr))], ytr, names)  # validates the labels
    test = MultiLabelSet([str(i) for i in range(len(yte))], yte, names)
    val = None
    if cfg.data.val_size:
        tr_idx, va_idx = _holdout(len(train), cfg.data.val_size, cfg.run.seed)
        val = FeatureDataset(xtr[va_idx], train.labels[va_idx])  # a CSR matrix's rows stay sparse
        xtr, train = xtr[tr_idx], train.subset(tr_idx)
    return DataBundle(FeatureDataset(xtr, train.labels), FeatureDataset(xte, test.labels), val,
                      train.labels, names, xtr.shape[1])


def _require_positives(table: MultiLabelSet, where: str) -> None:
    """Raise ``UsageError`` naming the classes without a positive in the training split ``table``."""
    empty = table.stats().empty_classes()
    if empty:
        shown = ", ".join(repr(c) for c in empty[:10]) + (", ..." if len(empty) > 10 else "")
        raise UsageError(f"{len(empty)} class(es) have no positive in the training split of {where}: {shown}; "
                         f"a class must have at least one training document (remove its column, or lower `val_size`)")


def _build_text_csv(cfg: TrainConfig) -> DataBundle:
    """``dataset=text-csv``: documents from ``train_ann`` / ``test_ann`` (:func:`~dbloss.data.text.read_text_csv`),
    TF-IDF features as for Reuters, fitted on the training split (after the ``val_size`` hold-out)."""
    from dbloss.data.text import read_text_csv

    for f in ("train_ann", "test_ann"):
        if not getattr(cfg.data, f):
            raise ValueError(f"data.dataset='text-csv' needs `data.{f}` (a CSV file of documents)")
    read = lambda path, classes: read_text_csv(path, text_column=cfg.data.text_column,  # noqa: E731
                                                label_column=cfg.data.label_column, label_sep=cfg.data.label_sep,
                                                classes=classes)
    train = read(cfg.data.train_ann, None)
    test = read(cfg.data.test_ann, train.class_names)
    val = None
    if cfg.data.val_size:
        tr_idx, va_idx = _holdout(len(train), cfg.data.val_size, cfg.run.seed)
        train, val = train.subset(tr_idx), train.subset(va_idx)
    _require_positives(train, str(cfg.data.train_ann))
    vec = text_vectorizer(cfg.data.text_features, cfg.data.tfidf_max_features)
    xtr = vec.fit_transform(train.texts)  # fitted on the training split only
    log.info("text-csv: %d train / %d test documents%s, %d classes, %d TF-IDF terms", len(train), len(test),
             f" / {len(val)} validation" if val is not None else "", train.num_classes, xtr.shape[1])
    make = lambda table: FeatureDataset(vec.transform(table.texts), table.labels)  # noqa: E731
    return DataBundle(FeatureDataset(xtr, train.labels), make(test), None if val is None else make(val),
                      train.labels, list(train.class_names), xtr.shape[1])


def text_vectorizer(kind: str = "huang", max_features: int | None = None) -> Any:
    """The TF-IDF vectorizer of ``TrainConfig.text_features`` (unfitted, scikit-learn).

    * ``"huang"``: ``TfidfVectorizer()`` at scikit-learn's defaults, which is
      ``CountVectorizer()`` + ``TfidfTransformer()`` (raw term counts, smooth idf, l2-normalised
      rows, lower-cased, ``min_df=1``): the features of Huang et al.'s (EMNLP 2021) SVM baseline,
      every term of the training documents kept (24,828 on their 6,769 Reuters documents);
    * ``"sublinear"``: this project's earlier features: sublinear tf (1 + log tf), ``min_df=2``,
      accents stripped (drops the words seen in one document only).

    ``max_features`` keeps the most frequent terms (None: the whole vocabulary). Output is float32.

    >>> vec = text_vectorizer("huang").fit(["a rare word", "a common word", "a common thing"])
    >>> sorted(vec.vocabulary_)  # min_df 1: "rare" and "thing" are kept (one-letter "a" is not a token)
    ['common', 'rare', 'thing', 'word']
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if kind == "huang":
        return TfidfVectorizer(max_features=max_features, dtype=np.float32)
    if kind == "sublinear":
        return TfidfVectorizer(max_features=max_features, sublinear_tf=True, dtype=np.float32,
                               strip_accents="unicode", min_df=2)
    raise ValueError(f"Expected `text_features` to be one of ('huang', 'sublinear'), but got {kind!r}")


def _build_reuters(cfg: TrainConfig) -> DataBundle:
    from dbloss.data.reuters import huang_validation_split, read_reuters

    if not cfg.data.root:
        raise ValueError("data.dataset='reuters' needs `data.root` (the folder of the reut2-*.sgm files)")
    train, test = read_reuters(cfg.data.root)
    val = None
    if cfg.data.val_size:  # Huang et al. (EMNLP 2021): a 1,000-document hold-out (random_state 123)
        if cfg.data.val_size != 1000:
            raise ValueError(f"dataset='reuters' holds out Huang et al.'s 1,000 validation documents: expected "
                             f"val_size 0 or 1000, but got {cfg.data.val_size}")
        tr_idx, va_idx = huang_validation_split(train)
        train, val = train.subset(tr_idx), train.subset(va_idx)
    vec = text_vectorizer(cfg.data.text_features, cfg.data.tfidf_max_features)
    xtr = vec.fit_transform(train.texts)  # fitted on the training split only (Huang et al. fit on their 6,769)
    make = lambda table: FeatureDataset(vec.transform(table.texts), table.labels)  # noqa: E731
    return DataBundle(FeatureDataset(xtr, train.labels), make(test), None if val is None else make(val),
                      train.labels, list(train.class_names), xtr.shape[1])
