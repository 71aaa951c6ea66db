"""Tests of dbloss.stats: counts, co-occurrence, the head/medium/tail split, JSON round trip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dbloss.stats import DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX, LabelStats, class_split, validate_label_matrix


def read_label_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return np.array([[int(v) for v in r[1:]] for r in rows[1:]]), rows[0][1:]


def test_counts_cooccurrence_and_conditional_probability():
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1]])
    s = LabelStats.from_labels(y, ["a", "b", "c"])
    assert s.class_freq.tolist() == [3, 3, 2]
    assert s.neg_freq.tolist() == [1, 1, 2]
    assert s.num_samples == 4
    np.testing.assert_array_equal(np.diag(s.cooccurrence), s.class_freq)
    assert s.cooccurrence[0, 1] == 2 and s.cooccurrence[1, 2] == 2 and s.cooccurrence[0, 2] == 1
    p = s.conditional_prob  # P(j | i)
    assert p[0, 1] == pytest.approx(2 / 3) and p[2, 1] == pytest.approx(1.0) and p[2, 0] == pytest.approx(0.5)
    # brute force for a random matrix
    rng = np.random.default_rng(0)
    y = (rng.random((200, 7)) < 0.3).astype(int)
    s = LabelStats.from_labels(torch.from_numpy(y))
    for i in range(7):
        for j in range(7):
            both = int(((y[:, i] == 1) & (y[:, j] == 1)).sum())
            assert s.cooccurrence[i, j] == both
            assert s.conditional_prob[i, j] == pytest.approx(both / y[:, i].sum())


def test_split_thresholds_defined_once_and_boundaries():
    assert (DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX) == (100, 20)
    assert class_split([100, 99, 20, 19, 0]) == {"head": [0], "medium": [1, 2], "tail": [3, 4]}
    assert class_split([40, 8, 9], head_min=35, tail_max=9) == {"head": [0], "medium": [2], "tail": [1]}
    with pytest.raises(ValueError, match="tail_max <= head_min"):
        class_split([1], head_min=10, tail_max=20)


@pytest.mark.parametrize("name, sizes", [("voc", (6, 6, 8)), ("coco", (22, 33, 25))])
def test_reproduces_published_splits(voc_coco_mlt_dir, name, sizes):
    labels, classes = read_label_csv(voc_coco_mlt_dir / f"{name}_mlt_train_labels.csv")
    ref = json.loads((voc_coco_mlt_dir / f"{name}_mlt_class_split.json").read_text())
    s = LabelStats.from_labels(labels, classes)
    assert s.class_names == ref["classes"]
    assert s.class_freq.tolist() == ref["class_freq"]
    assert tuple(len(s.split[g]) for g in ("head", "medium", "tail")) == sizes
    for g in ("head", "medium", "tail"):
        assert s.split[g] == sorted(ref[g])


def test_json_round_trip_and_errors(tmp_path):
    s = LabelStats.from_labels([[1, 0], [1, 1], [0, 1]], ["x", "y"], head_min=2, tail_max=1)
    s.save(tmp_path / "s.json")
    t = LabelStats.load(tmp_path / "s.json")
    assert t.class_names == s.class_names and t.num_samples == 3 and t.split == s.split
    np.testing.assert_array_equal(t.cooccurrence, s.cooccurrence)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        LabelStats.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"class_names": ["a"]}))
    with pytest.raises(ValueError, match="class_freq"):
        LabelStats.load(tmp_path / "partial.json")


def test_validation_names_the_offending_value():
    with pytest.raises(ValueError, match=r"got 2 at \(row, class\) = \(1, 0\)"):
        validate_label_matrix([[0, 1], [2, 0]])
    with pytest.raises(ValueError, match="2-D"):
        validate_label_matrix([0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        validate_label_matrix(np.array([[0.0, np.nan]]))
    assert validate_label_matrix([[0, -1]], ignore_index=-1).tolist() == [[0, -1]]
    with pytest.raises(ValueError, match="Expected 2 class names"):
        LabelStats(["a", "b", "c"], [1, 1], 2, np.zeros((2, 2)))
    s = LabelStats.from_labels([[1, 0], [1, 0]], ["a", "b"])
    assert s.empty_classes() == ["b"]
    assert s.group_of(0) == "tail"
