"""Tests of dbloss.metrics against scikit-learn (a test-only reference)."""

from __future__ import annotations

import doctest
import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

import dbloss.metrics as metrics_module
from dbloss.metrics import average_precision, f1_scores, mean_average_precision, summarize
from dbloss.stats import LabelStats

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sklearn_ap(scores: np.ndarray, targets: np.ndarray, ignore_index: int | None = -1) -> np.ndarray:
    out = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        keep = np.ones(len(targets), bool) if ignore_index is None else targets[:, k] != ignore_index
        y = targets[keep, k]
        if (y == 1).any():
            out[k] = average_precision_score(y, scores[keep, k])
    return out


def _random_case(seed: int, n: int, c: int, levels: int | None = 5, ignore_frac: float = 0.0):
    rng = np.random.default_rng(seed)
    if levels is None:
        scores = rng.normal(size=(n, c))
    else:  # integer-valued scores: many ties
        scores = rng.integers(0, levels, size=(n, c)).astype(np.float64)
    targets = (rng.random((n, c)) < rng.uniform(0.05, 0.6, size=c)).astype(np.int64)
    targets[rng.random((n, c)) < ignore_frac] = -1
    return scores, targets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [2, 5, None])
def test_ap_matches_sklearn_with_ties(seed: int, levels: int | None) -> None:
    scores, targets = _random_case(seed, n=int(np.random.default_rng(seed).integers(2, 300)), c=7, levels=levels)
    targets[0, :] = 1  # every class has a positive
    ap = average_precision(scores, targets)
    assert ap.dtype == torch.float64 and ap.shape == (7,)
    np.testing.assert_allclose(ap.numpy(), _sklearn_ap(scores, targets), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64])
@pytest.mark.parametrize("device", DEVICES)
def test_ap_dtypes_and_devices(dtype: torch.dtype, device: str) -> None:
    scores, targets = _random_case(1, n=200, c=5, levels=9)
    targets[0, :] = 1
    s = torch.from_numpy(scores).to(device=device, dtype=dtype)
    t = torch.from_numpy(targets).to(device)
    ap = average_precision(s, t)
    assert ap.device.type == device
    ref = _sklearn_ap(s.float().cpu().numpy().astype(np.float64), targets)
    np.testing.assert_allclose(ap.cpu().numpy(), ref, rtol=0, atol=1e-12)


def test_ap_is_invariant_to_monotone_transforms() -> None:
    scores, targets = _random_case(3, n=500, c=10, levels=None)
    targets[0, :] = 1
    s = torch.from_numpy(scores)
    a = average_precision(s, targets)
    torch.testing.assert_close(average_precision(torch.sigmoid(s), targets), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(average_precision(3 * s - 7, targets), a, rtol=0, atol=1e-12)


def test_ap_known_values() -> None:
    s = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    np.testing.assert_allclose(average_precision(s, torch.tensor([[1], [0], [1], [0]])).numpy(), [(1 + 2 / 3) / 2])
    # a tie between a positive and a negative is one threshold: precision 1/2 there
    s = torch.tensor([[0.5], [0.5], [0.1]])
    np.testing.assert_allclose(average_precision(s, torch.tensor([[1], [0], [1]])).numpy(), [(0.5 + 2 / 3) / 2])


def test_classes_without_positives_are_nan_warned_and_left_out() -> None:
    scores, targets = _random_case(4, n=100, c=6, levels=4)
    targets[0, :] = 1
    targets[:, [1, 4]] = 0
    with pytest.warns(UserWarning, match=r"2 class\(es\).*\[1, 4\]"):
        ap = average_precision(scores, targets)
    assert torch.isnan(ap[[1, 4]]).all() and not torch.isnan(ap[[0, 2, 3, 5]]).any()
    with pytest.warns(UserWarning, match="left out of the mAP"):
        m = mean_average_precision(scores, targets, {"head": [0, 1], "medium": [4], "tail": [2, 3, 5]})
    ref = _sklearn_ap(scores, targets)
    assert m["total"] == pytest.approx(np.nanmean(ref), abs=1e-12)
    assert m["head"] == pytest.approx(ref[0], abs=1e-12)
    assert math.isnan(m["medium"])  # its only class has no positive
    assert m["tail"] == pytest.approx(ref[[2, 3, 5]].mean(), abs=1e-12)


def test_no_warning_when_every_class_has_a_positive() -> None:
    scores, targets = _random_case(5, n=50, c=4)
    targets[0, :] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        average_precision(scores, targets)
        mean_average_precision(scores, targets)


@pytest.mark.parametrize("ignore_index", [-1, 255])
def test_ignore_index_excludes_entries(ignore_index: int) -> None:
    scores, targets = _random_case(6, n=300, c=8, levels=6, ignore_frac=0.3)
    targets[0, :] = 1
    targets[targets == -1] = ignore_index
    ap = average_precision(scores, targets, ignore_index=ignore_index)
    np.testing.assert_allclose(ap.numpy(), _sklearn_ap(scores, targets, ignore_index), rtol=0, atol=1e-12)
    # ignored entries behave as if the rows were absent for that class
    k = 3
    keep = targets[:, k] != ignore_index
    single = average_precision(scores[keep][:, [k]], targets[keep][:, [k]], ignore_index=ignore_index)
    assert single.item() == pytest.approx(ap[k].item(), abs=1e-12)


@pytest.mark.parametrize(("ignore_index", "error"), [(0, ValueError), (1, ValueError), (-1.0, TypeError)])
def test_ignore_index_is_checked(ignore_index, error) -> None:
    # as in the losses (dbloss.labels.check_ignore_index): an ignore value of 0 or 1 would hide labels
    for fn in (average_precision, mean_average_precision, f1_scores):
        with pytest.raises(error, match="ignore_index"):
            fn(np.zeros((3, 2)), np.ones((3, 2), int), ignore_index=ignore_index)


def test_nanmean_leaves_out_nan() -> None:
    assert metrics_module.nanmean(torch.tensor([0.25, float("nan"), 0.75])) == 0.5
    assert metrics_module.nanmean(np.array([[1.0, np.nan], [2.0, 3.0]])) == 2.0
    assert metrics_module.nanmean([1, 2]) == 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unlike np.nanmean, no RuntimeWarning when all are NaN
        assert math.isnan(metrics_module.nanmean(torch.full((3,), float("nan"))))
        assert math.isnan(metrics_module.nanmean(torch.empty(0)))


def test_ignore_index_none_rejects_minus_one() -> None:
    with pytest.raises(ValueError, match=r"values in \{0, 1\}.*-1"):
        average_precision(np.zeros((3, 2)), np.array([[1, 0], [0, -1], [1, 1]]), ignore_index=None)


def test_column_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    scores, targets = _random_case(7, n=257, c=13, levels=5, ignore_frac=0.1)
    targets[0, :] = 1
    whole = average_precision(scores, targets)
    monkeypatch.setattr(metrics_module, "_CHUNK_ELEMENTS", 257 * 3)  # blocks of 3 classes
    torch.testing.assert_close(average_precision(scores, targets), whole, rtol=0, atol=0)
    f_whole = f1_scores(scores / 5, targets)
    monkeypatch.setattr(metrics_module, "_CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(f1_scores(scores / 5, targets)["per_class_f1"], f_whole["per_class_f1"])
    # errors name the global position, also in a later block
    bad = scores.copy()
    bad[5, 11] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\(5, 11\)"):
        average_precision(bad, targets)
    bad_targets = targets.copy()
    bad_targets[7, 10] = 3
    with pytest.raises(ValueError, match=r"values in \{0, 1, -1\}.*3 at \(row, class\) = \(7, 10\)"):
        average_precision(scores, bad_targets)


def test_split_dict_and_label_stats_agree() -> None:
    rng = np.random.default_rng(8)
    train = (rng.random((400, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.02, 0.01])).astype(int)
    train[0, :] = 1
    stats = LabelStats.from_labels(train)
    scores, targets = _random_case(8, n=200, c=6, levels=None)
    targets[0, :] = 1
    by_stats = mean_average_precision(scores, targets, stats)
    by_dict = mean_average_precision(scores, targets, stats.split)
    assert by_stats == by_dict
    assert set(by_stats) == {"total", "head", "medium", "tail"}
    ref = _sklearn_ap(scores, targets)
    for group, idx in stats.split.items():
        expected = ref[idx].mean() if idx else float("nan")
        assert by_stats[group] == pytest.approx(expected, abs=1e-12, nan_ok=True)
    assert 0.0 <= by_stats["total"] <= 1.0
    assert set(mean_average_precision(scores, targets)) == {"total"}


def test_split_errors() -> None:
    s, t = np.random.rand(10, 3), np.ones((10, 3), int)
    with pytest.raises(ValueError, match="outside"):
        mean_average_precision(s, t, {"head": [0, 3]})
    with pytest.raises(ValueError, match="keys"):
        mean_average_precision(s, t, {"big": [0]})
    with pytest.raises(ValueError, match="4 classes"):
        mean_average_precision(s, t, LabelStats.from_labels(np.ones((2, 4), int)))
    with pytest.raises(TypeError, match="split"):
        mean_average_precision(s, t, [[0], [1], [2]])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_f1_matches_sklearn(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    n, c = 150, 9
    probs = rng.integers(0, 11, size=(n, c)) / 10  # values equal to the threshold occur
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[:, 2] = 0
    probs[:, 2] = 0.0  # class 2: no positive and no prediction -> undefined, left out
    targets[:, 5] = 0  # class 5: predictions but no positive -> F1 = 0
    out = f1_scores(probs, targets, threshold=threshold)
    pred = (probs > threshold).astype(int)
    assert out["micro_f1"] == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0), abs=1e-12)
    defined = [k for k in range(c) if k != 2]
    ref_macro = f1_score(targets, pred, average="macro", labels=defined, zero_division=0)
    assert out["macro_f1"] == pytest.approx(ref_macro, abs=1e-12)
    ref_per_class = f1_score(targets, pred, average=None, zero_division=0)
    per_class = out["per_class_f1"].numpy()
    assert math.isnan(per_class[2]) and per_class[5] == 0.0
    np.testing.assert_allclose(per_class[defined], ref_per_class[defined], atol=1e-12)


def test_f1_ignore_index_and_edge_cases() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]])
    targets = np.array([[1, -1], [-1, 1], [0, -1]])
    out = f1_scores(probs, targets)
    # class 0: one TP (row 0), row 1 ignored, row 2 TN -> 1; class 1: row 1 TP -> 1
    assert out["micro_f1"] == 1.0 and out["macro_f1"] == 1.0
    nothing = f1_scores(np.zeros((3, 2)), np.zeros((3, 2), int))
    assert nothing["micro_f1"] == 0.0 and math.isnan(nothing["macro_f1"])
    with pytest.raises(ValueError, match="threshold"):
        f1_scores(probs, targets, threshold=float("nan"))


def test_summarize_is_json_ready() -> None:
    rng = np.random.default_rng(9)
    train = np.zeros((300, 5), int)
    train[:150, 0] = 1
    train[:50, 1] = 1
    train[:30, 2] = 1
    train[:5, 3] = 1
    train[:2, 4] = 1
    stats = LabelStats.from_labels(train, ["a", "b", "c", "d", "e"])
    probs = rng.random((80, 5))
    targets = (rng.random((80, 5)) < 0.3).astype(int)
    targets[:, 4] = 0  # no test positive
    with pytest.warns(UserWarning):
        out = summarize(probs, targets, stats, class_names=stats.class_names)
    assert set(out) == {"mAP", "micro_f1", "macro_f1", "threshold", "per_class_ap", "class_names"}
    assert set(out["mAP"]) == {"total", "head", "medium", "tail"}
    assert out["per_class_ap"][4] is None and len(out["per_class_ap"]) == 5
    assert out["threshold"] == 0.5
    ref = _sklearn_ap(probs, targets)
    assert out["mAP"]["total"] == pytest.approx(np.nanmean(ref), abs=1e-12)
    assert out["mAP"]["tail"] == pytest.approx(ref[3], abs=1e-12)  # class 4 left out of the tail
    f1 = f1_scores(probs, targets)
    assert out["micro_f1"] == f1["micro_f1"] and out["macro_f1"] == f1["macro_f1"]
    json.dumps(out, allow_nan=False)
    with pytest.raises(ValueError, match="class names"):
        summarize(probs, targets, stats, class_names=["a"])


@pytest.mark.parametrize(
    ("scores", "targets", "match"),
    [
        (np.zeros(4), np.zeros(4), "2-D"),
        (np.zeros((4, 2)), np.zeros((4, 3)), "same shape"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "at least one"),
        (np.array([[0.1, np.inf]]), np.array([[1, 0]]), r"non-finite.*\(0, 1\)"),
        (np.array([[0.1, 0.2], [0.3, np.nan]]), np.array([[1, 0], [0, 1]]), r"non-finite.*\(1, 1\)"),
        (np.zeros((2, 2)), np.array([[1, 2], [0, 1]]), r"values in \{0, 1, -1\}.*2.*\(0, 1\)"),
        (np.zeros((2, 2)), np.array([[1, 0.5], [0, 1]]), r"0\.5"),
    ],
)
def test_invalid_inputs(scores, targets, match: str) -> None:
    for fn in (average_precision, mean_average_precision, f1_scores):
        with pytest.raises(ValueError, match=match):
            fn(scores, targets)


def test_large_case_matches_sklearn() -> None:
    # 20,000 x 500 with ties and ignored entries; compare a random subset of classes to sklearn
    rng = np.random.default_rng(10)
    n, c = 20_000, 500
    scores = torch.from_numpy(rng.integers(0, 1000, size=(n, c)).astype(np.float32) / 1000)
    targets = torch.from_numpy((rng.random((n, c)) < 0.02).astype(np.int8))
    targets[rng.random((n, c)) < 0.01] = -1
    ap = average_precision(scores, targets)
    assert ap.shape == (c,) and not torch.isnan(ap).any()
    cols = rng.choice(c, size=40, replace=False)
    ref = _sklearn_ap(scores.numpy()[:, cols].astype(np.float64), targets.numpy()[:, cols].astype(np.int64))
    np.testing.assert_allclose(ap.numpy()[cols], ref, rtol=0, atol=1e-12)


def test_docstring_examples() -> None:
    result = doctest.testmod(metrics_module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_f1_with_per_class_thresholds_equals_each_class_at_its_own() -> None:
    rng = np.random.default_rng(3)
    scores, targets = rng.random((200, 7)), (rng.random((200, 7)) < 0.3).astype(int)
    thr = rng.uniform(0.2, 0.8, 7)
    out = f1_scores(scores, targets, threshold=thr)
    for k in range(7):
        alone = f1_scores(scores[:, [k]], targets[:, [k]], threshold=float(thr[k]))["per_class_f1"][0]
        assert out["per_class_f1"][k].item() == pytest.approx(alone.item())
    pred = scores > thr
    assert out["micro_f1"] == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0))
    with pytest.raises(ValueError, match=r"per-class `threshold` of shape \(7,\)"):
        f1_scores(scores, targets, threshold=thr[:3])
