"""dbloss.thresholds: per-class F1-optimal thresholds against an exhaustive search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from dbloss.thresholds import best_f1_threshold, per_class_thresholds


def _brute_force_best_f1(s: np.ndarray, y: np.ndarray) -> float:
    candidates = np.concatenate([np.unique(s), [s.min() - 1, s.max() + 1]])
    return max(f1_score(y, s > t, zero_division=0) for t in candidates)


@pytest.mark.parametrize("seed", range(6))
def test_best_f1_threshold_reaches_the_exhaustive_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    y[0] = 1
    s = np.round(rng.random(n) + 0.3 * y, 1 if seed % 2 else 6)  # odd seeds: many ties
    t, f1 = best_f1_threshold(torch.from_numpy(s), torch.from_numpy(y).bool())
    best = _brute_force_best_f1(s, y)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert f1_score(y, s > t) == pytest.approx(best, abs=1e-12)  # the returned threshold achieves it


def test_edges_all_predicted_and_no_positive() -> None:
    s = torch.tensor([0.3, 0.2, 0.1])
    t, f1 = best_f1_threshold(s, torch.tensor([True, True, True]))
    assert bool((s > t).all()) and f1 == 1.0
    t, f1 = best_f1_threshold(s, torch.tensor([False, False, False]))
    assert not bool((s > t).any()) and f1 == 0.0


def test_per_class_uses_fallback_for_rare_classes_and_ignores_masked_entries() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = np.zeros((n, 3), dtype=int)
    y[:60, 0] = 1
    y[:4, 1] = 1  # 4 validation positives: below min_positives=5
    y[:10, 2] = 1
    s = rng.random((n, 3)) * 0.5 + 0.4 * y
    t = per_class_thresholds(s, y, fallback=0.77, min_positives=5)
    assert t[1].item() == 0.77
    for k in (0, 2):
        assert f1_score(y[:, k], s[:, k] > t[k].item()) == pytest.approx(_brute_force_best_f1(s[:, k], y[:, k]))
    # an ignored entry neither counts as a positive nor as a negative
    y_ign = y.copy()
    s_ign = s.copy()
    y_ign[150, 2], s_ign[150, 2] = -1, 0.99  # a very high score on an ignored entry changes nothing
    torch.testing.assert_close(per_class_thresholds(s_ign, y_ign, fallback=0.77, min_positives=5), t)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="min_positives"):
        per_class_thresholds(np.zeros((2, 2)), np.zeros((2, 2)), fallback=0.5, min_positives=0)
    with pytest.raises(ValueError, match="shape of `scores`"):
        per_class_thresholds(np.zeros((2, 2)), np.zeros((2, 3)), fallback=0.5)
    with pytest.raises(ValueError, match=r"values in \{0, 1, -1\}.*2"):
        per_class_thresholds(np.zeros((2, 2)), np.array([[0, 2], [1, 0]]), fallback=0.5)
