"""Tests of dbloss.methods.bbn (Zhou et al. 2020: two branches, cumulative learning) and its training in the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dbloss.methods.bbn import (BBNNetwork, PairedDataset, PairedSampler, bbn_loss, bbn_network, cumulative_alpha,
                        split_last_block)
from dbloss.config import load_config
from dbloss.training.engine import build_network, model_from_checkpoint, train
from dbloss.apps.export import export_model
from dbloss.files import load_checkpoint
from dbloss.losses import LOSS_NAMES, build_loss
from dbloss.models.classifier import FeatureClassifier, build_model
from dbloss.apps.predict import Predictor
from dbloss.sampling import ClassAwareSampler, ReversedSampler
from dbloss.stats import LabelStats


def test_cumulative_alpha_moves_from_the_conventional_branch_parabolically():
    alphas = [cumulative_alpha(e, 8) for e in range(8)]
    assert alphas[0] == 1.0 and alphas == sorted(alphas, reverse=True)
    assert alphas == pytest.approx([1 - (e / 8) ** 2 for e in range(8)])
    for bad in ((8, 8), (-1, 8), (0, 0)):
        with pytest.raises(ValueError, match="0 <= epoch < epochs"):
            cumulative_alpha(*bad)


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18", "efficientnet_b0"])
def test_the_split_trunk_and_last_block_compute_the_backbone(backbone):
    """BBN's shared trunk followed by the block each branch copies is the backbone itself."""
    model = build_model(5, backbone=backbone, weights=None).eval()
    trunk, block = split_last_block(model.backbone)
    assert block is not None and not any(p is q for p in block.parameters() for q in trunk.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(block(trunk(x)), model.backbone(x), rtol=0, atol=0)
    expected = {"small_cnn": "Sequential", "resnet18": "BasicBlock",  # layer4's last block, not the whole stage
                "efficientnet_b0": "Conv2dNormActivation"}  # the last stage: its last layer is an activation
    assert type(block).__name__ == expected[backbone] and sum(p.numel() for p in trunk.parameters()) > 0


def test_bbn_at_alpha_one_is_the_conventional_branch_and_its_gradients():
    torch.manual_seed(0)
    net = bbn_network(FeatureClassifier(12, 4, hidden=8)).eval()
    x_c, x_r = torch.randn(6, 12), torch.randn(6, 12)
    y_c, y_r = (torch.rand(6, 4) < 0.4).float(), (torch.rand(6, 4) < 0.4).float()
    assert torch.equal(net(x_c, x_r, alpha=1.0), net.conventional(x_c))
    assert torch.equal(net(x_c, x_r, alpha=0.0), net.rebalancing(x_r))
    torch.testing.assert_close(net(x_c), 0.5 * net.conventional(x_c) + 0.5 * net.rebalancing(x_c))  # test time
    loss_fn = build_loss("bce", [3, 2, 2, 1], 6)
    bbn_loss(loss_fn, net(x_c, x_r, alpha=1.0), y_c, y_r, 1.0).backward()
    assert all(p.grad is None or not p.grad.any() for p in net.rebalancing.parameters())
    assert all(p.grad is not None and p.grad.any() for p in net.conventional.classifier.parameters())
    net.zero_grad()
    z = net(x_c, x_r, alpha=0.25)
    torch.testing.assert_close(bbn_loss(loss_fn, z, y_c, y_r, 0.25), 0.25 * loss_fn(z, y_c) + 0.75 * loss_fn(z, y_r))
    bbn_loss(loss_fn, z, y_c, y_r, 0.25).backward()
    assert all(p.grad is not None and p.grad.any() for p in net.rebalancing.classifier.parameters())


def test_bbn_network_of_an_image_model_copies_the_block_and_draws_new_heads():
    base = build_model(3, backbone="small_cnn", weights=None)
    block = base.backbone.stages[-1]
    net = bbn_network(base)
    assert isinstance(net, BBNNetwork) and net.in_features is None
    assert net.conventional.block is block and net.rebalancing.block is not block
    a, b = net.conventional.state_dict(), net.rebalancing.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("block."))  # the same starting weights
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])  # heads initialised independently
    assert not torch.equal(a["neck.fc.weight"], b["neck.fc.weight"])
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 3)


def test_paired_loader_yields_both_samplers_batches():
    labels = torch.tensor([[1, 0, 0]] * 12 + [[1, 1, 0]] * 3 + [[0, 0, 1]])
    ds = torch.utils.data.TensorDataset(torch.arange(16.0)[:, None], labels.float(), torch.arange(16))
    conventional = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    rebalancing = ReversedSampler(labels, seed=1)
    pairs = list(PairedSampler(conventional, rebalancing))
    assert len(pairs) == 16 and sorted(i for i, _ in pairs) == list(range(16))
    assert [j for _, j in pairs] == list(ReversedSampler(labels, seed=1))
    x, y, idx = next(iter(DataLoader(PairedDataset(ds), batch_size=5, sampler=PairedSampler(conventional,
                                                                                           rebalancing))))
    assert x.shape == (5, 2, 1) and y.shape == (5, 2, 3) and idx.shape == (5, 2)
    torch.testing.assert_close(y, labels[idx].float())
    with pytest.raises(ValueError, match="same length"):
        PairedSampler(conventional, ClassAwareSampler(labels))


def test_bbn_trains_resumes_and_predicts_on_features(feature_recipe, train_killed_after):
    """A BBN run killed after its first epoch resumes to the uninterrupted run's weights, bit for bit (the paired
    loader is seeded); the checkpoint rebuilds the model, which answers with the run's test scores."""
    cfg = lambda name: load_config(None, feature_recipe(name, method__name="bbn", schedule__epochs=3))  # noqa: E731
    full = train(cfg("full"), progress=False)
    assert full["sampler"] == "random + reversed"
    train_killed_after(1, cfg("killed"))
    resumed = train(cfg("killed"), progress=False, resume=True)
    assert resumed["per_class_ap"] == full["per_class_ap"]
    a = load_checkpoint(f"{cfg('full').run.out_dir}/checkpoint.pt")["model"]
    b = load_checkpoint(f"{cfg('killed').run.out_dir}/checkpoint.pt")["model"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    _, _, model = model_from_checkpoint(load_checkpoint(f"{cfg('full').run.out_dir}/checkpoint.pt"))
    assert isinstance(model, BBNNetwork) and model.in_features == 32
    predictor = Predictor.from_checkpoint(cfg("full").run.out_dir, device="cpu")
    scores = np.load(f"{cfg('full').run.out_dir}/predictions.npz")["scores"]
    test = np.load(cfg("full").data.test_ann)["features"]
    np.testing.assert_allclose(predictor(torch.from_numpy(test)).numpy(), scores, atol=1e-6)


def test_bbn_class_aware_rebalancing_and_a_changed_sampler_refused_on_resume(feature_recipe):
    over = feature_recipe("ca", method__name="bbn", method__sampler="class-aware", schedule__epochs=1)
    res = train(load_config(None, over), progress=False)
    assert res["sampler"] == "random + class-aware" and np.isfinite(res["mAP"]["total"])
    with pytest.raises(ValueError, match="method.sampler='class-aware', but this run has method.sampler='reversed'"):
        train(load_config(None, [*over, "method.sampler=reversed"]), progress=False, resume=True)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_bbn_runs_with_every_loss(feature_recipe, loss, torch_path):
    over = feature_recipe("run", method__name="bbn", schedule__epochs=1, loss__name=loss, **torch_path(loss))
    res = train(load_config(None, over), progress=False)
    assert np.isfinite(res["mAP"]["total"])


def test_bbn_trains_on_the_builtin_images(demo_root, tmp_path):
    """BBN on the demo's small CNN: each branch owns the last conv stage."""
    cfg = load_config("demo/bbn", [f"data.root={demo_root}", f"run.out_dir={tmp_path / 'bbn'}", "model.weights=none",
                                   "schedule.epochs=2", "optim.batch_size=64", "schedule.warmup_iters=1", "run.device=cpu"])
    res = train(cfg, progress=False)
    assert 0 < res["mAP"]["total"] <= 1
    state = load_checkpoint(tmp_path / "bbn" / "checkpoint.pt")["model"]
    assert any(k.startswith("rebalancing.block.") for k in state) and any(k.startswith("backbone.") for k in state)
    exported = export_model(tmp_path / "bbn", "onnx")  # both branches at alpha 0.5, checked against the checkpoint
    assert exported.max_abs_diff is not None and exported.max_abs_diff < 1e-5


def test_bbn_config_errors():
    for overrides, match in ((["method.name=bbn", "method.mode=crt"], "unknown configuration key 'method.mode'"),
                             (["method.name=bbn", "method.sampler=uniform"], "`method.sampler`"),
                             (["head=bbn", "bbn_sampler=uniform"], "`method.sampler`")):  # a flat recipe, converted
        with pytest.raises(ValueError, match=match):
            load_config(None, overrides)
    stats = LabelStats.from_labels([[1, 0], [0, 1], [1, 1]])
    model = build_network(load_config(None, ["method.name=bbn"]), 2, torch.device("cpu"), input_type="features",
                          in_features=4, stats=stats)
    assert isinstance(model, BBNNetwork)
