"""Tests of dbloss.data.longtail: the VOC-MLT / COCO-MLT subset procedure."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch

from dbloss.data.longtail import longtail_visit_order, make_longtail_subset, pareto_target_counts
from dbloss.stats import LabelStats


def _read_label_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0][1:], np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)


def _synthetic(n=3000, c=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < np.linspace(0.5, 0.05, c)).astype(np.int64)
    # class 0 co-occurs with everything else half the time (a "person")
    labels[:, 0] |= (labels[:, 1:].any(1) & (rng.random(n) < 0.5)).astype(np.int64)
    labels[labels.sum(1) == 0, 0] = 1
    return labels


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voc_subset_has_the_published_shape(voc_coco_mlt_dir, seed):
    names, labels = _read_label_csv(voc_coco_mlt_dir / "voc2012_trainval_labels.csv")
    assert labels.shape == (11540, 20)
    idx = make_longtail_subset(labels, max_count=800, seed=seed)
    stats = LabelStats.from_labels(labels[idx], names)
    # VOC-MLT: 1,142 images, largest class 775, smallest 4, 6 / 6 / 8 head / medium / tail
    assert 1080 <= stats.num_samples <= 1200
    assert 740 <= stats.class_freq.max() <= 800
    assert stats.class_freq.min() < 10
    for group, published in zip(("head", "medium", "tail"), (6, 6, 8)):
        assert abs(len(stats.split[group]) - published) <= 1, stats.split
    assert stats.class_freq[names.index("person")] == stats.class_freq.max()


def test_voc_visit_order_starts_with_person(voc_coco_mlt_dir):
    names, labels = _read_label_csv(voc_coco_mlt_dir / "voc2012_trainval_labels.csv")
    order = longtail_visit_order(labels)
    assert names[order[0]] == "person"
    assert sorted(order.tolist()) == list(range(20))


# ---------------------------------------------------------------- target curve


def test_pareto_targets_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for c, max_count, min_count, b in [(20, 800, 1, 6.0), (80, 1200, 1, 6.0), (14, 500, 5, 4.0)]:
        x = np.linspace(stats.pareto.ppf(0.0, b), stats.pareto.ppf(0.99, b), c)
        ref = (stats.pareto(b).pdf(x) * (max_count - min_count) / b + min_count).astype(int)
        got = pareto_target_counts(c, max_count=max_count, min_count=min_count, pareto_shape=b)
        # floor of mathematically equal expressions: allow a one-off rounding difference
        assert np.abs(got - ref).max() <= 1
        assert got[0] == max_count and (np.diff(got) <= 0).all()


def test_pareto_targets_voc_values():
    got = pareto_target_counts(20, max_count=800).tolist()
    assert got == [800, 529, 359, 248, 175, 125, 91, 67, 50, 38, 29, 23, 18, 14, 11, 9, 7, 6, 5, 4]


# ---------------------------------------------------------------- procedure on synthetic data


def test_subset_is_deterministic_sorted_and_unique():
    labels = _synthetic()
    a = make_longtail_subset(labels, max_count=600, seed=3)
    b = make_longtail_subset(labels, max_count=600, seed=3)
    c = make_longtail_subset(labels, max_count=600, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64 and (np.diff(a) > 0).all()
    assert a.min() >= 0 and a.max() < len(labels)


def test_subset_does_not_touch_global_random_state():
    labels = _synthetic()
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    make_longtail_subset(labels, max_count=600, seed=0)
    assert np.random.random() == before


def test_last_visited_class_meets_its_target_and_shape_is_long_tailed():
    labels = _synthetic()
    idx = make_longtail_subset(labels, max_count=600, min_count=2, seed=0)
    order = longtail_visit_order(labels)
    targets = pareto_target_counts(labels.shape[1], max_count=600, min_count=2)
    counts = labels[idx].sum(0)
    last = order[-1]
    assert counts[last] == min(targets[-1], labels[:, last].sum())
    assert counts[order[0]] > counts[order[-1]]
    assert counts.max() > 10 * counts.min()


def test_visit_order_ranks_the_companion_class_first():
    labels = _synthetic()
    assert longtail_visit_order(labels)[0] == 0
    # ties keep index order
    assert longtail_visit_order(np.eye(3, dtype=int)).tolist() == [0, 1, 2]


def test_tensor_input_and_empty_class():
    labels = _synthetic()
    labels[:, 5] = 0  # a class with no positives at all
    idx_np = make_longtail_subset(labels, max_count=400, seed=1)
    idx_t = make_longtail_subset(torch.from_numpy(labels), max_count=400, seed=1)
    np.testing.assert_array_equal(idx_np, idx_t)
    assert labels[idx_np, 5].sum() == 0


def test_too_few_images_warns_and_takes_all(caplog):
    labels = np.zeros((50, 2), dtype=np.int64)
    labels[:, 0] = 1
    labels[:3, 1] = 1
    with caplog.at_level(logging.WARNING, logger="dbloss.data.longtail"):
        idx = make_longtail_subset(labels, max_count=100, seed=0)
    assert "only 50 images" in caplog.text
    # all 50 images of class 0 were taken; class 1 (target 1) then removed 2 of its 3
    assert len(idx) == 48 and labels[idx, 1].sum() == 1


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(max_count=0), ValueError),
        (dict(max_count=10, min_count=20), ValueError),
        (dict(max_count=10, min_count=-1), ValueError),
        (dict(max_count=10, pareto_shape=0.0), ValueError),
        (dict(max_count=10, tail_quantile=1.0), ValueError),
        (dict(max_count=10, tail_quantile=0.0), ValueError),
        (dict(max_count=10.5), TypeError),
        (dict(max_count=True), TypeError),
    ],
)
def test_invalid_parameters(kwargs, error):
    with pytest.raises(error):
        make_longtail_subset(_synthetic(100, 3), **kwargs)


def test_invalid_labels():
    with pytest.raises(ValueError, match="values in"):
        make_longtail_subset(np.array([[0, 2], [1, 0]]), max_count=5)
    with pytest.raises(ValueError, match="2-D"):
        make_longtail_subset(np.array([0, 1, 1]), max_count=5)
    with pytest.raises(ValueError, match="num_classes"):
        pareto_target_counts(0, max_count=5)
