"""Tests of dbloss.methods.ml_gcn (ML-GCN, Chen et al. 2019) and its use as a recipe's head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dbloss.config import load_config
from dbloss.training.engine import build_network, model_from_checkpoint, train
from dbloss.files import load_checkpoint
from dbloss.losses import LOSS_NAMES, build_loss
from dbloss.methods.ml_gcn import GCNClassifier, correlation_matrix, gcn_head, load_label_embeddings
from dbloss.stats import LabelStats

#: 3 classes: class 0 (4 images) meets 1 and 2 once each; 1 and 2 (2 images each) never meet.
LABELS = [[1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_correlation_matrix_by_hand():
    """P(j|i) rows: [1, .25, .25], [.5, 1, 0], [.5, 0, 1]. At tau .4: 1 -> 0 and 2 -> 0 are edges, class 0
    has none. Re-weighted (p .2): A' = [[.8, 0, 0], [.2, .8, 0], [.2, 0, .8]], row sums (.8, 1, 1), so
    D^-1/2 A' D^-1/2 = [[1, 0, 0], [.2/sqrt(.8), .8, 0], [.2/sqrt(.8), 0, .8]]."""
    cond = LabelStats.from_labels(LABELS).conditional_prob
    np.testing.assert_allclose(cond, [[1, .25, .25], [.5, 1, 0], [.5, 0, 1]])
    e = 0.2 / math.sqrt(0.8)
    expected = [[1, 0, 0], [e, 0.8, 0], [e, 0, 0.8]]
    torch.testing.assert_close(correlation_matrix(cond, tau=0.4, p=0.2), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(correlation_matrix(cond, tau=0.5, p=0.2), torch.tensor(expected, dtype=torch.float64))
    # no edge at all above tau, or p = 0: every class sees only itself
    torch.testing.assert_close(correlation_matrix(cond, tau=0.51), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(correlation_matrix(cond, p=0.0), torch.eye(3, dtype=torch.float64))
    # two neighbours share p: rows of a class with neighbours sum to 1 before normalisation
    a = correlation_matrix(np.array([[1, .5, .6], [.9, 1, .9], [.4, .4, 1]]), tau=0.4, p=0.2)
    torch.testing.assert_close(a, torch.tensor([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8]], dtype=torch.float64))
    with pytest.raises(ValueError, match="`p` in"):
        correlation_matrix(cond, p=1.0)
    with pytest.raises(ValueError, match=r"shape \(C, C\)"):
        correlation_matrix(np.ones((2, 3)))


def test_identity_graph_and_one_hot_embeddings_reduce_to_a_linear_classifier():
    """With Â = I, E = I and W1 = I (hidden = C; LeakyReLU(I) = I), W = W2: the head is the bias-free
    linear classifier x W2ᵀ. With Â = I each class's classifier depends on its own embedding only."""
    c, d = 4, 6
    head = GCNClassifier(d, np.eye(c), np.eye(c), hidden=c)
    with torch.no_grad():
        head.gc1.copy_(torch.eye(c))
    x = torch.randn(5, d)
    torch.testing.assert_close(head(x), torch.nn.functional.linear(x, head.gc2), rtol=0, atol=1e-6)
    # a general W1: still linear in x, with the factorised weight LeakyReLU(W1) W2
    head.reset_parameters()
    torch.testing.assert_close(head(x), x @ (torch.nn.functional.leaky_relu(head.gc1, 0.2) @ head.gc2).t())
    before = head(x).detach()
    with torch.no_grad():
        head.embeddings[1] += 1.0  # class 1's embedding moves: only its logits change
    changed = (head(x).detach() - before).abs().amax(0)
    assert changed[1] > 0 and torch.all(changed[[0, 2, 3]] == 0)
    # with an edge 0 -> 1 in the graph, class 0's classifier aggregates class 1's embedding
    graph = correlation_matrix(np.array([[1, .9, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    mixed = GCNClassifier(d, np.eye(c), graph, hidden=8)
    before = mixed(x).detach()
    with torch.no_grad():
        mixed.embeddings[1] += 1.0
    changed = (mixed(x).detach() - before).abs().amax(0)
    assert changed[0] > 0 and changed[1] > 0 and torch.all(changed[[2, 3]] == 0)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_trains_the_gcn(loss):
    """Shapes, and gradients that reach both graph convolutions and the layer below, under every loss."""
    stats = LabelStats.from_labels(LABELS)
    cfg = load_config(None, ["method.name=ml-gcn", "model.neck_dim=8", "method.hidden=16", "run.device=cpu"])
    model = build_network(cfg, 3, torch.device("cpu"), input_type="features", in_features=5, stats=stats)
    assert isinstance(model.classifier, GCNClassifier)
    try:  # the DB family on its torch path: the fused kernel is tested in test_fused (and its build is slow)
        loss_fn = build_loss(loss, torch.as_tensor(stats.class_freq), stats.num_samples, backend="torch")
    except TypeError:
        loss_fn = build_loss(loss, torch.as_tensor(stats.class_freq), stats.num_samples)
    logits = model(torch.randn(6, 5))
    assert logits.shape == (6, 3)
    loss_fn(logits, torch.as_tensor(LABELS)).backward()
    for name in ("classifier.gc1", "classifier.gc2", "neck.fc.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, (loss, name)


def test_image_model_gradients_reach_the_backbone():
    stats = LabelStats.from_labels(LABELS)
    cfg = load_config(None, ["method.name=ml-gcn", "model.backbone=small_cnn", "model.weights=none", "method.hidden=32"])
    model = build_network(cfg, 3, torch.device("cpu"), stats=stats)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 3)
    out.sum().backward()
    assert model.backbone.stages[0][0].weight.grad.abs().sum() > 0
    assert model.classifier.gc1.grad.abs().sum() > 0
    assert set(model.classifier.state_dict()) == {"gc1", "gc2", "embeddings", "adjacency"}


def test_label_embeddings_from_a_file(tmp_path):
    emb = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    head = gcn_head(4, LabelStats.from_labels(LABELS).conditional_prob, embeddings=str(tmp_path / "emb.npy"),
                    hidden=5)
    np.testing.assert_array_equal(head.embeddings.numpy(), emb)
    assert head.gc1.shape == (7, 5) and head(torch.randn(2, 4)).shape == (2, 3)
    np.save(tmp_path / "wrong.npy", emb[:2])
    with pytest.raises(ValueError, match=r"shape \(3, E\).*\(2, 7\)"):
        load_label_embeddings(tmp_path / "wrong.npy", 3)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain .npy"):
        load_label_embeddings(tmp_path / "objects.npy", 3)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_label_embeddings(tmp_path / "missing.npy", 3)
    for bad, match in (("method.tau=1.5", "method.tau"), ("method.p=1", "method.p"), ("method.name=gcn", "`method.name`")):
        with pytest.raises(ValueError, match=match):
            load_config(None, ["method.name=ml-gcn", bad])


def test_short_run_on_the_builtin_data(demo_root, tmp_path):
    out = tmp_path / "ml_gcn"
    cfg = load_config("demo/ml_gcn", [f"data.root={demo_root}", f"run.out_dir={out}", "model.weights=none", "schedule.epochs=1",
                                      "optim.batch_size=64", "schedule.warmup_iters=1", "method.hidden=64", "run.device=cpu"])
    res = train(cfg, progress=False)
    assert res["mAP"]["total"] > 0.1 and len(res["per_class_ap"]) == 14
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["model"]["classifier.adjacency"].shape == (14, 14)
    _, _, model = model_from_checkpoint(ckpt)  # predict / export rebuild the head from the checkpoint
    assert isinstance(model.classifier, GCNClassifier)
    torch.testing.assert_close(model.classifier.adjacency, ckpt["model"]["classifier.adjacency"])
