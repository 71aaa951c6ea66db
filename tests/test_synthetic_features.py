"""Tests of dbloss.data.synthetic_features: the long-tailed multi-label feature generator at scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dbloss.cli import main
from dbloss.data.features import load_feature_file
from dbloss.data.synthetic_features import (
    LongtailFeatures,
    class_shares,
    make_longtail_features,
    write_longtail_features,
)
from dbloss.metrics import mean_average_precision
from dbloss.stats import class_split

SMALL = dict(num_train=600, num_test=200, num_classes=24, dim=16)


@pytest.fixture(scope="module")
def mid() -> LongtailFeatures:
    """A mid-size set with the defaults' items-per-class ratio (5,000 items x 100 classes; ~0.3 s)."""
    return make_longtail_features(5000, 1200, num_classes=100, dim=64)


def _fractions(freq: np.ndarray) -> dict[str, float]:
    split = class_split(freq)
    return {g: len(v) / len(freq) for g, v in split.items()}


def test_same_seed_same_arrays_other_seed_differs():
    a, b = make_longtail_features(**SMALL, seed=5), make_longtail_features(**SMALL, seed=5)
    for name in ("train_features", "train_labels", "test_features", "test_labels", "parent"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = make_longtail_features(**SMALL, seed=6)
    assert not np.array_equal(a.train_labels, c.train_labels)
    assert not np.allclose(a.train_features, c.train_features)


def test_shapes_dtypes_and_values(mid):
    d = make_longtail_features(**SMALL)
    assert d.train_features.shape == (600, 16) and d.train_features.dtype == np.float32
    assert d.test_features.shape == (200, 16) and d.test_features.dtype == np.float32
    assert d.train_labels.shape == (600, 24) and d.train_labels.dtype == np.int64
    assert d.test_labels.shape == (200, 24) and d.test_labels.dtype == np.int64
    assert len(d.class_names) == 24 and len(set(d.class_names)) == 24
    for x, y in ((mid.train_features, mid.train_labels), (mid.test_features, mid.test_labels)):
        assert np.isfinite(x).all()
        assert set(np.unique(y).tolist()) == {0, 1}
        assert y.sum(axis=1).min() >= 1  # every item has a label
    assert d.params["num_classes"] == 24 and d.params["seed"] == 0


def test_default_class_counts_follow_the_real_long_tail():
    """The defaults' training counts (25,000 items, 500 classes), without drawing the features."""
    d = make_longtail_features(25_000, 100, num_classes=500, dim=1, noise=0.0)
    freq = d.train_labels.sum(0)
    frac = _fractions(freq)
    assert 3000 <= freq.max() <= 12_500 and 4 <= freq.min() <= 12
    assert 0.15 <= frac["head"] <= 0.3 and 0.35 <= frac["medium"] <= 0.55 and 0.25 <= frac["tail"] <= 0.45
    assert 2.0 <= d.train_labels.sum(1).mean() <= 4.0
    w = class_shares(500)
    assert np.isclose(w.sum(), 1.0) and (np.diff(w) <= 0).all()


def test_mid_size_long_tail(mid):
    freq = mid.train_labels.sum(0)
    frac = _fractions(freq)
    assert freq.max() <= 2500 and freq.max() >= 50 * freq.min() and freq.min() >= 1
    assert 0.15 <= frac["head"] <= 0.35 and 0.35 <= frac["medium"] <= 0.55 and 0.2 <= frac["tail"] <= 0.45
    assert 2.0 <= mid.train_labels.sum(1).mean() <= 4.0
    # the test split has the same long tail (Spearman correlation of the class counts)
    test_freq = mid.test_labels.sum(0)
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(rank(freq), rank(test_freq))[0, 1] > 0.9


@pytest.mark.parametrize("min_test", [3, 5])
def test_every_class_has_test_positives(min_test):
    d = make_longtail_features(2000, 150, num_classes=60, dim=8, min_test_positives=min_test)
    assert d.test_labels.sum(0).min() >= min_test
    assert d.train_labels.sum(0).min() >= 1


def test_rare_classes_come_with_a_frequent_parent(mid):
    y = mid.train_labels.astype(np.float64)
    freq = y.sum(0)
    co = y.T @ y
    np.fill_diagonal(co, -1)
    partner = co.argmax(axis=1)
    split = class_split(freq)
    tail = np.array(split["tail"])
    head = set(split["head"])
    assert len(tail) >= 10
    assert np.mean([p in head for p in partner[tail]]) >= 0.9  # a tail class's top partner is a head class ...
    assert np.mean(partner[tail] == mid.parent[tail]) >= 0.9  # ... its parent
    p_parent = co[tail, mid.parent[tail]] / freq[tail]  # P(parent | tail class)
    assert p_parent.mean() >= 0.5
    # while a head class is not tied to any one class as strongly
    roots = np.flatnonzero(mid.parent < 0)
    assert (co[roots].max(axis=1) / freq[roots]).mean() < p_parent.mean()


def test_logistic_regression_beats_chance_but_is_not_perfect():
    sklearn = pytest.importorskip("sklearn.linear_model")
    d = make_longtail_features(2000, 600, num_classes=40, dim=32, seed=1)  # ~1 s of fitting
    scores = np.stack([
        sklearn.LogisticRegression(solver="liblinear").fit(d.train_features, d.train_labels[:, k])
        .decision_function(d.test_features) for k in range(40)], axis=1)
    split = class_split(d.train_labels.sum(0))
    assert all(split.values())
    res = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(d.test_labels), split)
    chance = d.test_labels.mean(0).mean()  # about the mAP of random scores (0.06 here)
    assert 3 * chance < res["total"] < 0.8  # about 0.27 with seed 1
    assert res["tail"] < res["medium"] < res["head"]


def test_write_load_reuse_and_regenerate(tmp_path):
    out = tmp_path / "feats"
    train, test = write_longtail_features(out, **SMALL)
    assert (train, test) == (out / "train.npz", out / "test.npz")
    x, y, names = load_feature_file(train)
    ref = make_longtail_features(**SMALL)
    np.testing.assert_array_equal(x, ref.train_features)
    np.testing.assert_array_equal(y, ref.train_labels)
    assert names == ref.class_names and y.dtype == np.int64
    xt, yt, _ = load_feature_file(test)
    assert xt.shape == (200, 16) and yt.shape == (200, 24)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["num_train"] == 600 and manifest["summary"]["classes"] == 24
    assert not list(out.glob("*.tmp"))

    stamp = train.stat().st_mtime_ns
    write_longtail_features(out, **SMALL)  # same parameters: reused
    assert train.stat().st_mtime_ns == stamp
    write_longtail_features(out, **{**SMALL, "noise": 0.5})  # other parameters: regenerated
    assert json.loads((out / "manifest.json").read_text())["parameters"]["noise"] == 0.5
    assert not np.array_equal(load_feature_file(train)[0], x)
    test.write_bytes(b"broken")  # a file that is not ours: regenerated
    write_longtail_features(out, **{**SMALL, "noise": 0.5})
    assert load_feature_file(test)[0].shape == (200, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        make_longtail_features(100, 50, num_classes=0)
    with pytest.raises(ValueError, match="noise"):
        make_longtail_features(100, 50, num_classes=5, noise=-1.0)
    with pytest.raises(ValueError, match="min_test_positives"):
        make_longtail_features(100, 2, num_classes=5)
    with pytest.raises(TypeError, match="classes"):
        write_longtail_features("unused", classes=5)


def test_cli_writes_the_files(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "synth-features", "--out", str(out), "--train", "800", "--test", "200",
                 "--classes", "40", "--dim", "8", "--seed", "2", "--noise", "0.7"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "train.npz") in printed and str(out / "test.npz") in printed
    assert "800 training items, 40 classes, head/medium/tail" in printed and "labels per item" in printed
    x, y, names = load_feature_file(out / "train.npz")
    assert x.shape == (800, 8) and y.shape == (800, 40) and len(names) == 40
    params = json.loads((out / "manifest.json").read_text())["parameters"]
    assert params["seed"] == 2 and params["noise"] == 0.7
