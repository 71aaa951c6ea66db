"""Tests of dbloss.apps.analysis: gradients (autograd), re-sampling (measured by drawing), DB weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch



def _read_labels(path: Path) -> tuple[np.ndarray, list[str]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[int(v) for v in row[1:]] for row in reader]
    assert header[0] == "image_id"
    return np.asarray(rows, dtype=np.int64), header[1:]


@pytest.fixture
def voc_mlt(voc_coco_mlt_dir):
    y, names = _read_labels(voc_coco_mlt_dir / "voc_mlt_train_labels.csv")
    split = json.loads((voc_coco_mlt_dir / "voc_mlt_class_split.json").read_text())
    assert names == split["classes"] and y.sum(0).tolist() == split["class_freq"]
    return y, names, split


@pytest.fixture
def coco_mlt(voc_coco_mlt_dir):
    y, names = _read_labels(voc_coco_mlt_dir / "coco_mlt_train_labels.csv")
    split = json.loads((voc_coco_mlt_dir / "coco_mlt_class_split.json").read_text())
    assert names == split["classes"] and y.sum(0).tolist() == split["class_freq"]
    return y, names, split


def _png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------
from dbloss.apps.analysis.gradients import (  # noqa: E402
    bce_negative_gradient,
    ce_negative_gradient,
    gradient_curves,
    ntr_negative_gradient,
    run_gradient_analysis,
)

Z = np.linspace(-6, 6, 121)


def test_bce_gradient_of_a_negative_is_sigmoid():
    np.testing.assert_allclose(bce_negative_gradient(Z), torch.sigmoid(torch.as_tensor(Z)).numpy(), rtol=1e-6, atol=1e-9)


def test_ce_gradient_is_softmax_and_depends_on_the_other_logits():
    low = ce_negative_gradient(Z, num_classes=20, pos_logit=2.0, other_logit=-2.0)
    high = ce_negative_gradient(Z, num_classes=20, pos_logit=2.0, other_logit=2.0)
    assert (high < low).all()  # the same negative logit gets less push when the others are larger
    # closed form for reference: softmax probability of the negative class
    full = np.stack([np.full_like(Z, 2.0), Z, *[np.full_like(Z, -2.0)] * 18], axis=1)
    ref = torch.softmax(torch.as_tensor(full), 1)[:, 1].numpy()
    np.testing.assert_allclose(low, ref, rtol=1e-6, atol=1e-12)
    # unlike BCE's: two classes with equal logits give 1/2, and 20 equal logits give 1/20
    assert ce_negative_gradient([0.0], num_classes=2, pos_logit=0.0)[0] == pytest.approx(0.5)
    assert ce_negative_gradient([0.0], num_classes=20, pos_logit=0.0)[0] == pytest.approx(1 / 20)


def test_ntr_gradient_is_tolerant_for_low_negative_logits():
    bce = bce_negative_gradient(Z)
    tail = ntr_negative_gradient(Z, 4, 1142)  # the rarest VOC-MLT class
    head = ntr_negative_gradient(Z, 775, 1142)
    # an already-suppressed negative (z <= 0) gets less push than under BCE; for the head class
    # (prior > 1/2, bias nu > 0) this starts a little lower, below z = -nu
    low = Z <= 0
    assert (tail[low] < bce[low]).all() and (head[Z <= -0.1] < bce[Z <= -0.1]).all()
    # the tolerance grows as the negative logit falls: the NTR/BCE ratio goes to 0
    ratio = tail[low] / bce[low]
    assert ratio[0] < 1e-8 and (np.diff(ratio) > 0).all()
    # for a clearly wrong negative (high logit) NTR pushes at least as hard as BCE
    assert (tail[Z >= 2] >= bce[Z >= 2] - 1e-6).all()
    # the tail class (prior << 1/2, negative bias) is more tolerant than the head class
    assert (tail <= head + 1e-9).all() and tail[np.argmin(abs(Z))] < 0.5 * head[np.argmin(abs(Z))]
    # without bias and with lambda = 1 NTR is BCE: the switches of the module do what they say
    np.testing.assert_allclose(ntr_negative_gradient(Z, 4, 1142, neg_scale=1.0, init_bias=0.0), bce, rtol=1e-6)


def test_run_gradient_analysis_writes_figure_and_json(tmp_path):
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 0]] * 5)
    res = run_gradient_analysis(tmp_path, labels=y, class_names=["a", "b", "c"], logits=np.linspace(-3, 3, 31))
    _png(res["figure"])
    data = json.loads(res["json"].read_text())
    assert set(data["ntr"]) == {"head (a)", "tail (c)"} and data["params"]["ce_num_classes"] == 3
    assert len(data["bce"]) == 31 and len(data["ce"]) == 3
    assert res["summary"]["ntr_bias"]["tail (c)"] < 0 < res["summary"]["ntr_bias"]["head (a)"]
    g = gradient_curves([-1.0, 1.0], class_freq={"x": 3}, num_samples=10, ce_other_logits=[0.0])
    assert g.ce.shape == (1, 2) and g.ntr.shape == (1, 2)


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------
from dbloss.apps.analysis.weights import rebalance_map, rebalance_ratio, run_weight_analysis, weight_analysis  # noqa: E402
from dbloss.losses import reference  # noqa: E402
from dbloss.losses.reference import rebalance_weight  # noqa: E402


def test_rebalance_map_is_the_papers_smoothing_function():
    r = np.linspace(0.01, 2.0, 50)
    for alpha, beta, mu in [(0.1, 10.0, 0.3), (0.5, 2.0, 0.1)]:
        ref = alpha + 1 / (1 + np.exp(-beta * (r - mu)))
        np.testing.assert_allclose(rebalance_map(r, alpha, beta, mu), ref, rtol=1e-12)


def test_weight_analysis_consumes_the_loss_reference():
    y = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0], [1, 1, 1]])
    freq = [3, 2, 5]
    r = rebalance_ratio(y, freq)
    ref = reference.rebalance_ratio(torch.as_tensor(y), torch.tensor(freq, dtype=torch.float64)).numpy()
    np.testing.assert_array_equal(r, ref)
    assert np.isinf(r[2]).all()
    grid = np.array([0.05, 0.3, 1.2])
    np.testing.assert_array_equal(rebalance_map(grid, 0.2, 5.0, 0.4),
                                  reference.rebalance_map(torch.from_numpy(grid), 0.2, 5.0, 0.4).numpy())
    a = weight_analysis(y, ["a", "b", "c"])
    np.testing.assert_allclose(a.pos_mean_rhat[2], rebalance_weight(torch.as_tensor(y), torch.tensor(
        [2, 2, 3], dtype=torch.float64))[[0, 1, 3], 2].mean().item(), rtol=1e-12)


def test_weights_on_voc_mlt(voc_mlt, tmp_path):
    y, names, split = voc_mlt
    r = rebalance_ratio(y)
    single = y.sum(1) == 1
    assert single.any()
    # a sample with a single positive label has r = 1 for that label
    np.testing.assert_allclose(r[single][y[single] == 1], 1.0)
    # positives always have r <= 1, with equality only for single-label samples
    pos = y == 1
    assert (r[pos] <= 1 + 1e-12).all() and (r[pos & ~single[:, None]] < 1).all()
    # r_hat from the loss module equals the map applied to this r, on positives and negatives
    w = rebalance_weight(torch.as_tensor(y), torch.as_tensor(y.sum(0), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(w, 0.1 + 1 / (1 + np.exp(-10 * (r - 0.3))), rtol=1e-10)

    a = weight_analysis(y, names)
    assert a.split == {g: split[g] for g in ("head", "medium", "tail")}
    groups = a.group_summary()
    assert groups["tail"]["pos_mean_r"] > groups["head"]["pos_mean_r"] + 0.3
    assert groups["tail"]["pos_mean_rhat"] > groups["head"]["pos_mean_rhat"]
    # per class: every tail class has a higher mean r than every head class on VOC-MLT
    assert a.pos_mean_r[split["tail"]].min() > a.pos_mean_r[split["head"]].max()
    person = names.index("person")
    assert a.pos_mean_r[person] == a.pos_mean_r[split["head"]].min()  # the most co-occurring head class
    assert a.num_unlabelled == 0

    res = run_weight_analysis(y, names, tmp_path, mu=0.2)
    _png(res["figure"])
    data = json.loads(res["json"].read_text())
    assert data["params"]["mu"] == 0.2 and len(data["per_class"]["pos_mean_r"]) == len(names)
    assert data["groups"]["tail"]["num_classes"] == len(split["tail"])


def test_weight_analysis_small_matrix_and_errors():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]])
    a = weight_analysis(y, ["a", "b", "c"])
    assert a.num_unlabelled == 1
    # class b: its only positive is row 1 with classes a (n=3) and b (n=1): r = 1 / (1/3 + 1) = 0.75
    assert a.pos_mean_r[1] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no positive sample|without a positive"):
        weight_analysis(np.array([[1, 0], [1, 0]]))
    with pytest.raises(ValueError, match="values in"):
        weight_analysis(np.array([[2, 0]]))


# ----------------------------------------------------------------------------------------------
# re-sampling
# ----------------------------------------------------------------------------------------------
from dbloss.apps.analysis.resampling import draw_counts, resampling_analysis, run_resampling_analysis  # noqa: E402
from dbloss.sampling import ClassAwareSampler  # noqa: E402


def _check_resampling(a, split, c, tail_gain):
    # the counts come from real draws: one epoch is int(max n_k * C / 4) indices
    assert a.num_draws == a.epochs * int(a.class_freq.max() * c / 4)
    tail, head = split["tail"], split["head"]
    # tail classes: their share of the draws rises a lot vs uniform sampling ...
    assert a.ca_share[tail].sum() > tail_gain * a.uniform_share[tail].sum()
    assert (a.oversampling[tail] > 1.3).all() and a.oversampling[tail].mean() > tail_gain
    # ... to about the 1/C a class-aware sampler promises (each is picked in 1/C of the draws)
    assert (a.ca_share[tail] > 0.8 / c).all()
    # head classes do not fall to 1/C: co-occurrence keeps them drawn far more often
    assert (a.share_vs_balanced[head] > 1.5).all()
    # within-class imbalance: images of head classes are drawn at very unequal rates, tail ones evenly
    assert np.nanmean(a.within_cv[head]) > 3 * np.nanmean(a.within_cv[tail])
    # the measured per-image rates follow the class-aware design P^I_i ∝ sum_k y_ik / n_k
    assert a.rate_correlation() > 0.99


def test_resampling_on_voc_mlt(voc_mlt, tmp_path):
    y, names, split = voc_mlt
    res = run_resampling_analysis(y, names, tmp_path, epochs=4, seed=1)
    _png(res["figure"])
    data = json.loads(res["json"].read_text())
    assert data["params"]["epochs"] == 4 and len(data["per_class"]["ca_share"]) == 20
    a = resampling_analysis(y, names, epochs=4, seed=1)
    assert a.split == {g: split[g] for g in ("head", "medium", "tail")}
    _check_resampling(a, split, 20, tail_gain=5)  # measured: 6.7x the draws
    person = names.index("person")  # index 14, in 68% of the images, co-occurs with most classes
    assert person == 14
    # drawn far more than the 1/C = 5% of a single-label class-aware sampler: > 10x
    assert a.ca_share[person] > 10 / 20
    # and even more often than under uniform sampling: re-sampling over-samples "person"
    assert a.ca_share[person] > a.uniform_share[person]
    # its images are drawn at very different rates: 90th/10th percentile spread > 10
    assert a.within_spread[person] > 10
    assert data["groups"]["tail"]["ca_share_sum"] == pytest.approx(a.ca_share[split["tail"]].sum())


def test_resampling_on_coco_mlt(coco_mlt):
    y, names, split = coco_mlt
    a = resampling_analysis(y, names, epochs=2, seed=0)
    _check_resampling(a, split, 80, tail_gain=2)  # measured: 2.6x the draws
    person = names.index("person")
    assert a.ca_share[person] > 30 / 80


def test_draw_counts_are_deterministic_per_seed_and_epoch():
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 1], [1, 0, 0]])
    s = ClassAwareSampler(y, reduce=2, seed=3)  # 7 draws an epoch: class a draws 2-3 of its 5 images
    a, b = draw_counts(s, 5, 1), draw_counts(ClassAwareSampler(y, reduce=2, seed=3), 5, 1)
    assert (a == b).all() and a.sum() == len(s) == 7
    others = [draw_counts(ClassAwareSampler(y, reduce=2, seed=k), 5, 1) for k in range(4, 10)]
    assert any((o != a).any() for o in others)
    r = resampling_analysis(y, ["a", "b", "c"], epochs=50)
    # classes b and c have one image each, drawn when b (c) is picked (1/3 of the draws) and when
    # class a is picked and its draw is that image (1/3 * 1/5): 1/3 + 1/15 = 0.4 in expectation
    # (50 epochs of 3 draws: b and c are picked exactly 50 times each, a's 50 draws are random)
    assert r.ca_share[1] == pytest.approx(0.4, abs=0.04) and r.ca_share[2] == pytest.approx(0.4, abs=0.04)
    assert r.ca_share[0] == pytest.approx(1.0)  # every image contains class a
    with pytest.raises(ValueError, match="empty"):
        resampling_analysis(np.array([[1, 0], [1, 0]]))
