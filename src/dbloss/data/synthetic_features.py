"""Built-in long-tailed multi-label *features* at scale: hundreds of classes, tens of thousands of items.

:func:`make_longtail_features` draws, with no download, a train and a test split in the form
that ``dataset=features`` reads (:func:`dbloss.data.features.load_feature_file`), and
:func:`write_longtail_features` writes them as ``train.npz`` / ``test.npz``. It is a generic
generator for checking that recipes and the tuner behave on data of another scale than the
14-class demo (:mod:`dbloss.data.synthetic`); nothing in it favours one loss or sampler.

How it is made (class ``k`` is the ``k``-th most frequent by construction; ``u_k = k / (C - 1)``):

- **Class counts.** The share of class ``k`` among all positive labels is a Zipf-like head times
  an exponential body, ``w_k ~ (1 + k / 0.75) ** -0.8 * exp(-1.75 u_k)`` (:func:`class_shares`),
  fitted to the shape of a real 507-class text set (counts 8,103 down to 5; 112 / 227 / 168
  head / medium / tail classes). A split of ``n`` items has exactly
  ``round(w_k * n * labels_per_item)`` positives of class ``k``, at least 1 (test split: at least
  ``min_test_positives``) and at most ``n / 2``. With the defaults (25,000 training items,
  500 classes, 2.5 labels per item) the training counts run from 7,866 down to 8, with
  109 / 217 / 174 head / medium / tail classes (22% / 43% / 35%) under the project's rule
  (:func:`dbloss.stats.class_split`); the test split (6,000 items) has the same natural long
  tail, with at least 3 positives per class. The group sizes depend on ``n / C`` and
  ``labels_per_item`` (5,000 items x 100 classes: 25 / 45 / 30).
- **Labels: parents.** The most frequent 4% of the classes (at least one) are *roots*; every
  other class has a *parent* root, drawn with probability proportional to the roots' counts.
  A non-root class's items are chosen uniformly among the split's items, and each of them also
  gets the parent's label with probability ``q_k = coupling * (0.25 + 0.75 u_k)``: the rarer
  the class, the more often it comes with its parent (the "toothbrush with a person" of COCO;
  with ``coupling`` 0.8, a tail class shows its parent on about 70% of its items). Items left
  with no label then get one root label, and each root is finally topped up to its own count
  with items that lack it (a root whose children already brought more keeps the excess).
- **Features.** Each class has a random unit *prototype* in ``R^dim``; a non-root's is drawn at
  cosine ``parent_similarity`` (0.5) from its parent's, since a rare class often resembles the
  frequent class it appears with. An item's latent vector ``z`` is the sum of its classes'
  prototypes, each scaled by an amplitude drawn uniformly in [0.5, 1.5], plus isotropic Gaussian
  noise of norm about ``noise`` (in units of a prototype); its features are
  ``tanh(W z + b) + e`` for a fixed random projection ``W`` (dim x dim, scaled so that ``W z``
  has a standard deviation of about 1.5 per coordinate whatever the noise, so ``tanh``
  saturates often), a fixed random offset ``b``, and Gaussian noise ``e`` of standard deviation
  ``0.1 * noise`` per feature. The noise, the saturation of ``tanh`` and the overlap of 500
  prototypes in 256 dimensions make the classes partly, not fully, separable by a linear model.

With the defaults a per-class logistic regression (scikit-learn ``LogisticRegression``,
``solver="liblinear"``, C = 1, one class at a time: 22 minutes on two busy CPU cores) reaches a
test mAP of 46.4 (head 77.1 / medium 47.8 / tail 25.5; mAP x 100 by
:func:`dbloss.metrics.mean_average_precision` with the training split's groups; chance is about
0.5). ``noise`` sets the difficulty: noise 2.0 gives about 57 and 2.5 about 39 (measured on every
tenth class). Drawing the defaults takes about a second, writing them two.

Randomness comes only from ``numpy.random.default_rng`` streams derived from ``seed``: the same
parameters give identical arrays. Features are computed in blocks of items, so memory stays near
the size of the outputs (the largest is the (N, C) int64 training label matrix: 100 MB for the
defaults; ``train.npz`` is compressed to 24 MB).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dbloss.files import write_json
from dbloss.stats import GROUPS, class_split

__all__ = ["LongtailFeatures", "class_shares", "make_longtail_features", "summarize_labels",
           "write_longtail_features"]

logger = logging.getLogger(__name__)

#: Bump when the generator's output changes, so that written files are regenerated.
FEATURES_VERSION = 1

# Shape of the class-share curve w_k = (1 + k / _K0) ** -_ZIPF * exp(-_DECAY * k / (C - 1)), k the rank.
_K0, _ZIPF, _DECAY = 0.75, 0.8, 1.75
_MAX_FRACTION = 0.5  # no class is on more than half of the items
_ROOT_FRACTION = 0.04  # the most frequent 4% of the classes are roots (parents)
_AMPLITUDE = (0.5, 1.5)  # per-item scale of each positive class's prototype
_GAIN = 1.5  # gain of the random projection before tanh
_OBS_NOISE = 0.1  # feature-space noise std, as a fraction of `noise`
_BLOCK = 4096  # items per feature block (fixed: the random streams depend on it)
_FILES = ("train.npz", "test.npz")
MANIFEST = "manifest.json"


@dataclass(frozen=True, eq=False)  # arrays: no element-wise __eq__
class LongtailFeatures:
    """The two splits drawn by :func:`make_longtail_features`.

    Attributes:
        train_features: (N_train, D) float32.
        train_labels: (N_train, C) int64 in {0, 1}.
        test_features: (N_test, D) float32.
        test_labels: (N_test, C) int64 in {0, 1}.
        class_names: C names, ``c000`` ... (class k is the k-th most frequent by construction).
        parent: (C,) int64, the parent root of each class, -1 for a root.
        coupling: (C,) float64, the probability that an item of class k also gets its parent (0 for roots).
        params: the generation parameters (what ``write_longtail_features`` records).
    """

    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    parent: np.ndarray
    coupling: np.ndarray
    params: dict[str, Any]


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"Expected `{name}` to be an int >= {low}, but got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float = float("inf"), *, open_low: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (v > low if open_low else v >= low) and v <= high
    if not ok:
        rng = f"{'(' if open_low else '['}{low}, {high}{']' if np.isfinite(high) else ')'}"
        raise ValueError(f"Expected `{name}` to be a number in {rng}, but got {value!r}")
    return float(value)


def class_shares(num_classes: int) -> np.ndarray:
    """(C,) float64 share of each class among all positive labels: ``w_k`` of the module docstring,
    normalised to sum to 1 (non-increasing in k).

    >>> w = class_shares(500)
    >>> np.round(w * 25_000 * 2.5).astype(int)[[0, 1, 2, -1]].tolist()  # the defaults' training counts
    [7866, 3980, 2763, 8]
    """
    k = np.arange(num_classes, dtype=np.float64)
    w = (1.0 + k / _K0) ** -_ZIPF * np.exp(-_DECAY * k / max(num_classes - 1, 1))
    return w / w.sum()


def _counts(shares: np.ndarray, n: int, labels_per_item: float, low: int) -> np.ndarray:
    """(C,) int64 positives per class in a split of ``n`` items: ``round(share * n * labels_per_item)``,
    at least ``low``, at most half of the items (and at least ``low`` even then)."""
    high = max(int(n * _MAX_FRACTION), low, 1)
    return np.clip(np.round(shares * n * labels_per_item), max(low, 1), high).astype(np.int64)


def _draw_labels(rng: np.random.Generator, n: int, counts: np.ndarray, parent: np.ndarray,
                 q: np.ndarray) -> np.ndarray:
    """(n, C) bool labels with exactly ``counts[k]`` items per non-root class (see the module docstring)."""
    c = counts.size
    y = np.zeros((n, c), dtype=bool)
    roots = np.flatnonzero(parent < 0)
    for k in np.flatnonzero(parent >= 0):
        rows = rng.choice(n, size=int(counts[k]), replace=False)
        y[rows, k] = True
        y[rows[rng.random(rows.size) < q[k]], parent[k]] = True
    empty = np.flatnonzero(~y.any(axis=1))
    if empty.size:
        deficit = np.maximum(counts[roots] - y[:, roots].sum(0), 0).astype(np.float64)
        p = deficit if deficit.sum() > 0 else counts[roots].astype(np.float64)
        y[empty, roots[rng.choice(roots.size, size=empty.size, p=p / p.sum())]] = True
    for j in roots:
        need = int(counts[j]) - int(y[:, j].sum())
        if need > 0:
            free = np.flatnonzero(~y[:, j])
            y[rng.choice(free, size=min(need, free.size), replace=False), j] = True
    return y


def _draw_features(seed: int, split_id: int, labels: np.ndarray, protos: np.ndarray, proj: np.ndarray,
                   bias: np.ndarray, noise: float) -> np.ndarray:
    """(n, D) float32 features of the (n, C) labels, block by block (one random stream per block)."""
    n = labels.shape[0]
    latent = protos.shape[1]
    out = np.empty((n, proj.shape[0]), dtype=np.float32)
    for b, start in enumerate(range(0, n, _BLOCK)):
        rng = np.random.default_rng([seed, split_id, b])
        y = labels[start:start + _BLOCK]
        amp = rng.uniform(*_AMPLITUDE, size=y.shape).astype(np.float32)
        z = (y * amp) @ protos
        z += rng.standard_normal(z.shape, dtype=np.float32) * np.float32(noise / np.sqrt(latent))
        x = np.tanh(z @ proj.T + bias)
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(_OBS_NOISE * noise)
        out[start:start + _BLOCK] = x
    return out


def _validate(num_train: Any, num_test: Any, num_classes: Any, dim: Any, seed: Any, noise: Any,
              labels_per_item: Any, coupling: Any, parent_similarity: Any, min_test_positives: Any) -> dict[str, Any]:
    """The checked generation parameters, as recorded in ``manifest.json`` (with the generator's version)."""
    p: dict[str, Any] = {"version": FEATURES_VERSION}
    for name, value, low in (("num_train", num_train, 1), ("num_test", num_test, 1), ("num_classes", num_classes, 1),
                             ("dim", dim, 1), ("seed", seed, 0), ("min_test_positives", min_test_positives, 0)):
        p[name] = _check_int(name, value, low)
    p["noise"] = _check_float("noise", noise, 0.0)
    p["labels_per_item"] = _check_float("labels_per_item", labels_per_item, 0.0, p["num_classes"], open_low=True)
    p["coupling"] = _check_float("coupling", coupling, 0.0, 1.0)
    p["parent_similarity"] = _check_float("parent_similarity", parent_similarity, 0.0, 1.0)
    if p["min_test_positives"] > p["num_test"]:
        raise ValueError(f"Expected `min_test_positives` <= num_test={p['num_test']}, but got {min_test_positives}")
    return p


def make_longtail_features(
    num_train: int = 25_000,
    num_test: int = 6_000,
    num_classes: int = 500,
    dim: int = 256,
    *,
    seed: int = 0,
    noise: float = 2.25,
    labels_per_item: float = 2.5,
    coupling: float = 0.8,
    parent_similarity: float = 0.5,
    min_test_positives: int = 3,
) -> LongtailFeatures:
    """Draw a long-tailed multi-label feature set (train and test splits); see the module docstring.

    Args:
        num_train: N_train, training items. Default 25,000.
        num_test: N_test, test items (same distribution). Default 6,000.
        num_classes: C >= 1. Default 500.
        dim: D, feature dimension. Default 256.
        seed: the random seed; the same parameters give identical arrays. Default 0.
        noise: >= 0, the norm of the latent noise in units of a class prototype (the feature-space
            noise has standard deviation 0.1 x this). Sets the difficulty. Default 2.25.
        labels_per_item: > 0, the mean number of labels per item that the class counts are scaled
            to (the realised mean can differ a little: rounding, the n / 2 cap, roots that their
            children push above their count). Default 2.5.
        coupling: in [0, 1], how often the rarest class comes with its parent (a class at rank
            fraction u: ``coupling * (0.25 + 0.75 u)``). Default 0.8.
        parent_similarity: in [0, 1], cosine between a class's prototype and its parent's. Default 0.5.
        min_test_positives: least number of positives of every class in the test split. Default 3.

    Returns:
        :class:`LongtailFeatures` (features float32, labels int64).

    >>> d = make_longtail_features(300, 100, num_classes=12, dim=8)
    >>> d.train_features.shape, d.train_labels.shape, d.test_labels.dtype, int(d.test_labels.sum(0).min()) >= 3
    ((300, 8), (300, 12), dtype('int64'), True)
    """
    params = _validate(num_train, num_test, num_classes, dim, seed, noise, labels_per_item, coupling,
                       parent_similarity, min_test_positives)
    num_train, num_test, c = params["num_train"], params["num_test"], params["num_classes"]
    dim, seed, noise, coupling = params["dim"], params["seed"], params["noise"], params["coupling"]
    labels_per_item, parent_similarity = params["labels_per_item"], params["parent_similarity"]

    shares = class_shares(c)
    train_counts = _counts(shares, num_train, labels_per_item, 1)
    test_counts = _counts(shares, num_test, labels_per_item, params["min_test_positives"])

    # class structure: parents, coupling, prototypes, projection
    rng = np.random.default_rng([seed, 0])
    num_roots = max(1, int(round(_ROOT_FRACTION * c)))
    parent = np.full(c, -1, dtype=np.int64)
    root_w = train_counts[:num_roots] / train_counts[:num_roots].sum()
    if c > num_roots:
        parent[num_roots:] = rng.choice(num_roots, size=c - num_roots, p=root_w)
    u = np.arange(c, dtype=np.float64) / max(c - 1, 1)
    q = np.where(parent >= 0, coupling * (0.25 + 0.75 * u), 0.0)
    protos = rng.standard_normal((c, dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    child = parent >= 0
    mixed = parent_similarity * protos[parent[child]] + np.sqrt(1 - parent_similarity**2) * protos[child]
    protos[child] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    # scaled so that W z has per-coordinate std about _GAIN whatever the noise: E|z|^2 ~ lpi E[a^2] + noise^2
    amp_sq = (_AMPLITUDE[0] ** 2 + _AMPLITUDE[0] * _AMPLITUDE[1] + _AMPLITUDE[1] ** 2) / 3
    proj = rng.standard_normal((dim, dim)) * (_GAIN / np.sqrt(labels_per_item * amp_sq + noise**2))
    bias = rng.standard_normal(dim) * 0.5
    protos, proj, bias = (a.astype(np.float32) for a in (protos, proj, bias))

    splits = []
    for split_id, n, counts in ((1, num_train, train_counts), (2, num_test, test_counts)):
        y = _draw_labels(np.random.default_rng([seed, split_id]), n, counts, parent, q)
        x = _draw_features(seed, split_id, y, protos, proj, bias, noise)
        splits.append((x, y.astype(np.int64)))
    (xtr, ytr), (xte, yte) = splits
    return LongtailFeatures(train_features=xtr, train_labels=ytr, test_features=xte, test_labels=yte,
                            class_names=[f"c{k:0{len(str(c - 1))}d}" for k in range(c)], parent=parent,
                            coupling=q, params=params)


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------

def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to ``<path>.tmp``, then renamed over ``path`` (atomic on POSIX)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a name
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def summarize_labels(train_labels: np.ndarray) -> dict[str, Any]:
    """Items, classes, head / medium / tail class counts (:func:`dbloss.stats.class_split`), labels per
    item and the largest / smallest class of an (N, C) training label matrix.

    >>> summarize_labels(np.array([[1, 0], [1, 1]]))  # doctest: +NORMALIZE_WHITESPACE
    {'items': 2, 'classes': 2, 'head': 0, 'medium': 0, 'tail': 2, 'labels_per_item': 1.5,
     'max_count': 2, 'min_count': 1}
    """
    freq = np.asarray(train_labels).sum(axis=0)
    split = class_split(freq)
    return {"items": int(train_labels.shape[0]), "classes": int(train_labels.shape[1]),
            **{g: len(split[g]) for g in GROUPS},
            "labels_per_item": round(float(freq.sum() / max(train_labels.shape[0], 1)), 4),
            "max_count": int(freq.max()), "min_count": int(freq.min())}


def _manifest_matches(out: Path, params: dict[str, Any]) -> bool:
    try:
        found = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(found, dict) or found.get("parameters") != params:
        return False
    sizes = found.get("file_sizes", {})
    return all((out / name).is_file() and (out / name).stat().st_size == sizes.get(name) for name in _FILES)


def write_longtail_features(out_dir: str | os.PathLike[str], *, force: bool = False,
                            **kwargs: Any) -> tuple[Path, Path]:
    """Write (or reuse) :func:`make_longtail_features` ``(**kwargs)`` as ``train.npz`` / ``test.npz`` in ``out_dir``.

    Each file holds ``features`` (N, D) float32, ``labels`` (N, C) int64 and ``class_names`` (C,),
    the format of :func:`dbloss.data.features.load_feature_file` (``dataset=features
    train_ann=OUT/train.npz test_ann=OUT/test.npz``). ``manifest.json`` beside them records the
    parameters, the class parents and counts, a summary (:func:`summarize_labels`) and the file sizes;
    it is written last, and when it matches the parameters and the files, they are reused without
    drawing anything. Every file is written to a temporary name and renamed (atomic).

    Args:
        out_dir: output folder (created if needed).
        force: regenerate even if matching files exist. Default False.
        **kwargs: the arguments of :func:`make_longtail_features` (unknown names: ``TypeError``).

    Returns:
        ``(train_path, test_path)``.

    >>> import tempfile
    >>> train, test = write_longtail_features(tempfile.mkdtemp(), num_train=200, num_test=60, num_classes=8, dim=4)
    >>> train.name, test.name
    ('train.npz', 'test.npz')
    """
    try:
        bound = inspect.signature(make_longtail_features).bind(**kwargs)
    except TypeError as e:
        raise TypeError(f"write_longtail_features: {e} (expected the arguments of make_longtail_features)") from None
    bound.apply_defaults()
    params = _validate(**bound.arguments)
    out = Path(out_dir)
    paths = out / _FILES[0], out / _FILES[1]
    if not force and _manifest_matches(out, params):
        logger.info("reusing the synthetic features in %s", out)
        return paths
    start = time.perf_counter()
    data = make_longtail_features(**bound.arguments)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    names = np.array(data.class_names)
    _save_npz(paths[0], features=data.train_features, labels=data.train_labels, class_names=names)
    _save_npz(paths[1], features=data.test_features, labels=data.test_labels, class_names=names)
    summary = summarize_labels(data.train_labels)
    write_json(out / MANIFEST, {
        "parameters": params,
        "summary": summary,
        "generation_seconds": round(seconds, 3),
        "classes": data.class_names,
        "parent": data.parent,
        "class_freq": {"train": data.train_labels.sum(0), "test": data.test_labels.sum(0)},
        "file_sizes": {name: (out / name).stat().st_size for name in _FILES},
    })  # written last: marks completion
    logger.info("synthetic features written to %s in %.1f s: %d train / %d test items, %d classes",
                out, time.perf_counter() - start, params["num_train"], params["num_test"], params["num_classes"])
    return paths
