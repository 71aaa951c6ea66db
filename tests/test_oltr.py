"""Tests of dbloss.methods.oltr (Liu et al. 2019: modulated attention, dynamic meta-embedding, centroid loss) and its
two stages in the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dbloss.config import load_config
from dbloss.training.engine import model_from_checkpoint, train
from dbloss.apps.export import export_model
from dbloss.files import load_checkpoint
from dbloss.losses import LOSS_NAMES
from dbloss.models.classifier import FeatureClassifier, build_model
from dbloss.methods.oltr import (CosineClassifier, ModulatedAttention, OLTRNetwork, class_centroids,
                         discriminative_centroid_loss, enter_memory_stage, meta_embedding, oltr_network)
from dbloss.apps.predict import Predictor
from dbloss.methods import create_method
import dbloss.methods.oltr as oltr_module


def test_meta_embedding_against_the_equations_sample_by_sample():
    g = torch.Generator().manual_seed(0)
    v, m = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    hal, sel = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    got = meta_embedding(v, m, hal, sel, reach_scale=10.0)
    for i in range(5):
        o = torch.exp(hal[i]) / torch.exp(hal[i]).sum()  # the memory coefficients
        memory = sum(o[k] * m[k] for k in range(4))
        reach = 10.0 / min(float(torch.linalg.vector_norm(v[i] - m[k])) for k in range(4))
        torch.testing.assert_close(got[i], reach * (v[i] + torch.tanh(sel[i]) * memory))


def test_cosine_classifier_is_a_squashed_scaled_cosine():
    clf = CosineClassifier(6, 3)
    x = torch.randn(4, 6) * 5
    cos = torch.nn.functional.cosine_similarity(x[:, None, :], clf.weight[None], dim=2)
    norm = x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(clf(x), 16.0 * norm / (1 + norm) * cos)
    assert clf(torch.zeros(2, 6)).abs().max() == 0 and clf(x * 1e6).abs().max() <= 16.0


def test_modulated_attention_starts_as_the_identity_and_learns():
    att = ModulatedAttention(8, 3, 3)
    f = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = att(f)
    assert torch.equal(out, f)  # the zero-initialised output convolution: stage 2 starts from stage 1's features
    out.square().sum().backward()
    assert att.conv_mask.weight.grad.abs().sum() > 0
    with torch.no_grad():
        att.conv_mask.weight.normal_()
    assert not torch.allclose(att(f), f)
    with pytest.raises(ValueError, match="built for 3 x 3 feature maps.*got 4 x 4"):
        att(torch.randn(1, 8, 4, 4))


def test_centroids_and_centroid_loss_in_the_multi_label_form():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    targets = torch.tensor([[1, 1], [1, 0], [0, -1]])  # -1: ignored (neither positive nor negative)
    sums, counts = class_centroids(feats, targets)
    assert counts.tolist() == [2.0, 1.0] and (sums / counts[:, None]).tolist() == [[2.0, 1.0], [1.0, 0.0]]
    c = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    d2 = torch.tensor([[((f - ck) ** 2).sum() for ck in c] for f in feats])
    attract = (d2[0, 0] + d2[0, 1] + d2[1, 0]) / (2 * 3)
    repel = max(0.0, 10.0 - float(d2[1, 1] + d2[2, 0]) / (3 * 2))
    torch.testing.assert_close(discriminative_centroid_loss(feats, targets, c), attract + 0.01 * repel)
    far = discriminative_centroid_loss(feats, torch.zeros(3, 2, dtype=torch.long), c + 100)  # repelled past margin
    assert far == 0


def test_stage1_is_the_plain_model_and_stage2_uses_the_memory():
    torch.manual_seed(0)
    base = FeatureClassifier(10, 4, hidden=8).eval()
    x = torch.randn(6, 10)
    plain = base(x)
    net = oltr_network(base).eval()
    assert torch.equal(net(x), plain)
    stage2 = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert stage2 == {n for n, _ in net.named_parameters() if n.startswith("meta.") or n == "centroids"}
    logits, aux = net(x, targets=torch.ones(6, 4))
    assert torch.equal(logits, plain) and aux == 0
    centroids = torch.randn(4, 8)
    enter_memory_stage(net, centroids)
    assert torch.equal(net.centroids, centroids) and bool(net.memory_ready)
    assert torch.equal(net.meta.hallucinator.weight, net.classifier.weight)  # the release's initialisation
    assert {n for n, p in net.named_parameters() if not p.requires_grad} == {"classifier.weight", "classifier.bias"}
    logits, aux = net(x, targets=(torch.rand(6, 4) < 0.5).long())
    assert logits.abs().max() < 16 and aux > 0
    (logits.sum() + aux).backward()
    assert net.centroids.grad is not None and net.centroids.grad.abs().sum() > 0  # trained by the centroid loss only
    fresh = oltr_network(FeatureClassifier(10, 4, hidden=8)).eval()
    fresh.load_state_dict(net.state_dict())  # a stage-2 state dict puts a stage-1 model into stage 2
    assert torch.equal(fresh(x), net(x))


def test_image_model_gets_modulated_attention_sized_for_its_feature_map():
    net = oltr_network(build_model(3, backbone="small_cnn", weights=None), image_size=48)
    assert isinstance(net.attention, ModulatedAttention) and net.attention.size == (3, 3)
    enter_memory_stage(net, torch.zeros(3, 256))
    assert net.eval()(torch.randn(2, 3, 48, 48)).shape == (2, 3)
    assert oltr_network(build_model(3, backbone="small_cnn", weights=None), attention=False).attention is None


def test_oltr_two_stages_resume_in_stage2_and_predict(feature_recipe, monkeypatch, train_killed_after):
    """Stage 1 trains the plain model, the boundary forms the centroids from its features, stage 2 trains with the
    memory; a run killed in stage 2 resumes there and ends bit-identical; the checkpoint answers as the run."""
    over = lambda name: feature_recipe(name, method__name="oltr", schedule__epochs=2, method__stage2_epochs=2, sampler__num_samples_cls=4)  # noqa: E731
    cfg = load_config(None, over("full"))
    assert [(s.number, s.cfg.sampler.name) for s in create_method(cfg.method).stages(cfg)] == \
        [(1, "random"), (2, "class-aware")]
    seen: list[torch.Tensor] = []
    real_centroids = oltr_module.memory_centroids

    def spy(model, context, num_classes):
        out = real_centroids(model, context, num_classes)
        batches = list(context.train_batches())  # the whole training split (one process), evaluation transform
        assert sum(len(y) for _, y in batches) == 300
        with torch.no_grad():  # the mean stage-1 feature of each class's training samples, in one pass
            feats = model.direct_features(torch.cat([x for x, _ in batches]))
        sums, counts = class_centroids(feats, torch.cat([y for _, y in batches]))
        torch.testing.assert_close(out, sums / counts[:, None])
        seen.append(out)
        return out

    monkeypatch.setattr(oltr_module, "memory_centroids", spy)
    full = train(cfg, progress=False)
    assert len(seen) == 1 and full["sampler"] == "random, then class-aware"
    log = [json.loads(x) for x in open(f"{cfg.run.out_dir}/log.jsonl")]
    assert [(r.get("stage"), r["epoch"]) for r in log if r["type"] == "epoch"] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    train_killed_after(3, load_config(None, over("killed")))  # stage 1's two epochs and stage 2's first are done
    runs = Path(cfg.run.out_dir).parent
    ckpt = load_checkpoint(runs / "killed" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["stage"]) == (3, 2) and bool(ckpt["model"]["memory_ready"])
    resumed = train(load_config(None, over("killed")), progress=False, resume=True)
    assert resumed["per_class_ap"] == full["per_class_ap"] and len(seen) == 2  # not recomputed on resume
    a, b = (load_checkpoint(runs / n / "checkpoint.pt")["model"] for n in ("full", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, _, model = model_from_checkpoint(load_checkpoint(f"{cfg.run.out_dir}/checkpoint.pt"))
    assert isinstance(model, OLTRNetwork) and model._stage2
    scores = np.load(f"{cfg.run.out_dir}/predictions.npz")["scores"]
    features = torch.from_numpy(np.load(cfg.data.test_ann)["features"])
    np.testing.assert_allclose(Predictor.from_checkpoint(cfg.run.out_dir, device="cpu")(features).numpy(), scores,
                               atol=1e-6)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_oltr_runs_with_every_loss(feature_recipe, loss, torch_path):
    over = feature_recipe("run", method__name="oltr", schedule__epochs=1, method__stage2_epochs=1, loss__name=loss, **torch_path(loss))
    res = train(load_config(None, over), progress=False)
    assert np.isfinite(res["mAP"]["total"])


def test_oltr_trains_on_the_builtin_images(demo_root, tmp_path):
    cfg = load_config("demo/oltr", [f"data.root={demo_root}", f"run.out_dir={tmp_path / 'oltr'}", "model.weights=none",
                                    "schedule.epochs=1", "method.stage2_epochs=1", "optim.batch_size=64", "schedule.warmup_iters=1", "run.device=cpu"])
    res = train(cfg, progress=False)
    assert 0 < res["mAP"]["total"] <= 1
    state = load_checkpoint(tmp_path / "oltr" / "checkpoint.pt")["model"]
    assert "attention.fc_spatial.weight" in state and state["attention.conv_mask.weight"].abs().sum() > 0
    exported = export_model(tmp_path / "oltr", "onnx")  # the stage-2 model, checked against the checkpoint
    assert exported.max_abs_diff is not None and exported.max_abs_diff < 1e-5


def test_oltr_config_errors():
    oltr = "method.name=oltr"
    for overrides, match in (([oltr, "method.stage2_epochs=0"], "stage2_epochs` >= 1 with method 'oltr'"),
                             (["head=oltr"], "stage2_epochs` >= 1 with method 'oltr'"),  # a flat recipe's default: 0
                             ([oltr, "method.mode=crt"], "unknown configuration key 'method.mode'"),
                             ([oltr, "eval.keep_best=true", "data.val_size=10"], "keep_best=false with method 'oltr'"),
                             ([oltr, "method.centroid_weight=-1"], "method.centroid_weight")):
        with pytest.raises(ValueError, match=match):
            load_config(None, overrides)
