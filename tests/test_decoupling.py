"""Tests of dbloss.methods.decoupling (Kang et al. 2020: cRT, tau-norm, LWS) and the engine's two stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dbloss.config import load_config
from dbloss.methods import create_method
from dbloss.methods.base import trainable_parameters
from dbloss.methods.decoupling import ScaledLinear, enter_stage2, tau_normalize
from dbloss.training.engine import build_network, evaluate_checkpoint, model_from_checkpoint, train
from dbloss.files import load_checkpoint
from dbloss.losses import LOSS_NAMES
from dbloss.stats import LabelStats
from dbloss.data.synthetic import write_synthetic_features as make_features



def feature_overrides(train_f: Path, test_f: Path, out: Path, **extra: object) -> list[str]:
    """``section.key=value`` overrides of a small head on feature files; ``extra``: ``section__key=value``."""
    base = {"data.dataset": "features", "data.train_ann": str(train_f), "data.test_ann": str(test_f),
            "run.out_dir": str(out), "model.neck_dim": 0, "schedule.epochs": 3, "optim.batch_size": 32,
            "optim.lr": 0.05, "schedule.warmup_iters": 10, "schedule.lr_steps": [0.6], "data.workers": 0,
            "run.tensorboard": False, "run.device": "cpu", "loss.name": "bce", "sampler.name": "class-aware",
            "sampler.epoch": "paper"}  # the class-aware epoch these tests were written for
    return [f"{k}={json.dumps(v)}" for k, v in {**base, **{k.replace("__", "."): v for k, v in extra.items()}}.items()]


def test_tau_norm_at_zero_is_the_identity_and_at_one_unit_rows():
    w = torch.randn(5, 7, dtype=torch.float64)
    w[2] = 0.0
    assert torch.equal(tau_normalize(w, 0.0), w)
    norms = tau_normalize(w, 1.0).norm(dim=1)
    torch.testing.assert_close(norms[[0, 1, 3, 4]], torch.ones(4, dtype=torch.float64))
    assert norms[2] == 0  # a zero row stays zero (no NaN)
    half = tau_normalize(w, 0.5)
    torch.testing.assert_close(half[0], w[0] / w[0].norm() ** 0.5)
    with pytest.raises(ValueError, match=r"shape \(C, D\)"):
        tau_normalize(torch.ones(3), 1.0)


def test_lws_with_scales_one_is_the_linear_classifier():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    lws = ScaledLinear(6, 4)
    lws.load_state_dict({**lin.state_dict(), "scales": torch.ones(4)})
    x = torch.randn(3, 6)
    assert torch.equal(lws(x), lin(x))
    lws(x).sum().backward()
    lin(x).sum().backward()
    assert torch.equal(lws.weight.grad, lin.weight.grad) and lws.scales.grad is None  # frozen in stage 1
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([1.0, 2.0, 0.5, 0.0]))
    scales = torch.tensor([1.0, 2.0, 0.5, 0.0])
    torch.testing.assert_close(lws(x), (lin(x) - lin.bias) * scales + lin.bias)  # the weights scaled, not the bias
    # the recipe's builder: the linear layer's initial weights, and the random stream after it untouched
    stats = LabelStats.from_labels([[1, 0, 1, 0], [0, 1, 0, 1]])
    built = {}
    for mode in ("none", "lws"):
        torch.manual_seed(0)
        over = ["method.name=decoupling", "method.mode=lws", "method.stage2_epochs=1"] if mode == "lws" else []
        model = build_network(load_config(None, over), 4, torch.device("cpu"), input_type="features", in_features=6,
                              stats=stats)
        built[mode] = (model.state_dict(), torch.rand(3))
    plain, (scaled, after) = built["none"], built["lws"]
    assert all(torch.equal(plain[0][k], scaled[k]) for k in plain[0]) and torch.equal(plain[1], after)
    assert isinstance(model.classifier, ScaledLinear) and torch.equal(scaled["classifier.scales"], torch.ones(4))


@pytest.mark.parametrize("mode, trained", [("crt", {"classifier.weight", "classifier.bias"}),
                                           ("lws", {"classifier.scales"}), ("tau-norm", set())])
def test_stage2_trains_only_its_classifier_parameters(mode, trained):
    extra = {"crt": ["method.stage2_epochs=1"], "lws": ["method.stage2_epochs=1"], "tau-norm": ["method.stage2_epochs=0"]}[mode]
    cfg = load_config(None, ["method.name=decoupling", f"method.mode={mode}", "model.neck_dim=8", *extra])
    model = build_network(cfg, 3, torch.device("cpu"), input_type="features", in_features=5,
                          stats=LabelStats.from_labels([[1, 0, 1], [0, 1, 0]]))
    stage2 = create_method(cfg.method).stages(cfg)[1]
    assert (stage2.cfg.sampler.name, stage2.cfg.schedule.warmup_iters, stage2.first_epoch) == ("class-aware", 0, cfg.schedule.epochs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enter_stage2(model, mode)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == trained and len(trainable_parameters(model)) == len(trained)
    model.train()
    assert not model.neck.training and model.classifier.training  # the representation runs as at test time
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed == {"crt": {"classifier.weight", "classifier.bias"}, "lws": set(),
                       "tau-norm": {"classifier.weight"}}[mode]  # cRT re-initialises, tau-norm rescales


def test_config_checks_the_stage_fields():
    dec = "method.name=decoupling"
    for overrides, match in (([dec, "method.stage2_epochs=0"], "stage2_epochs` >= 1"),
                             (["decoupling=crt"], "stage2_epochs` >= 1"),  # a flat recipe's default: 0 epochs
                             ([dec, "method.mode=tau-norm", "method.stage2_epochs=2"], "stage2_epochs` = 0"),
                             (["method.stage2_epochs=2"], "unknown configuration key 'method.stage2_epochs' in section "
                                                          "`method`"),  # the plain method has no stage 2
                             ([dec, "method.mode=lws", "method.classifier=ml-gcn"], "method.classifier='plain'"),
                             ([dec, "eval.keep_best=true", "data.val_size=10"], "keep_best"),
                             ([dec, "method.mode=rt"], "`method.mode`")):
        with pytest.raises(ValueError, match=match):
            load_config(None, overrides)
    assert len(create_method(load_config("demo/rs").method).stages(load_config("demo/rs"))) == 1


def _stage_state(path: Path) -> tuple[int, int, dict[str, torch.Tensor]]:
    ckpt = load_checkpoint(path)
    return ckpt["epoch"], ckpt.get("stage", 1), ckpt["model"]


def test_stage2_changes_only_the_classifier_on_the_builtin_data(demo_root, tmp_path):
    """Stage 1 of an image model (batch norms, dropout), then cRT's stage 2 resumed from its checkpoint:
    every tensor of the state dict but the classifier's is bit-identical, the classifier's changed."""
    common = [f"data.root={demo_root}", "model.weights=none", "schedule.epochs=1", "optim.batch_size=64", "schedule.warmup_iters=1",
              "sampler.reduce=16", "run.device=cpu"]
    stage1 = train(load_config("demo/erm", [*common, f"run.out_dir={tmp_path / 's1'}"]), progress=False)
    crt_cfg = load_config("demo/crt", [*common, f"run.out_dir={tmp_path / 'crt'}", "method.stage2_epochs=1"])
    res = train(crt_cfg, progress=False, resume=str(tmp_path / "s1" / "checkpoint.pt"))
    e1, s1, a = _stage_state(tmp_path / "s1" / "checkpoint.pt")
    e2, s2, b = _stage_state(tmp_path / "crt" / "checkpoint.pt")
    assert (e1, s1, e2, s2) == (1, 1, 2, 2)
    assert set(a) == set(b)
    for k in a:
        if k.startswith("classifier."):
            assert not torch.equal(a[k], b[k]), k
        else:
            assert torch.equal(a[k], b[k]), k  # incl. every batch norm's running statistics
    records = [json.loads(x) for x in (tmp_path / "crt" / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records if r["type"] == "epoch"] == [(2, 1)]
    assert 0 < res["mAP"]["total"] <= 1 and res["mAP"]["total"] != stage1["mAP"]["total"]
    ev = evaluate_checkpoint(tmp_path / "crt" / "checkpoint.pt", tmp_path / "eval", progress=False)
    assert ev["per_class_ap"] == pytest.approx(res["per_class_ap"], abs=1e-12)


@pytest.mark.parametrize("mode", ["crt", "lws"])
def test_a_run_killed_in_stage2_resumes_in_stage2(tmp_path, train_killed_after, mode):
    """A run stopped after epoch 1 of 3 of stage 2 (checkpoint: stage 2, epoch 3) resumes in stage 2 and
    ends where the uninterrupted run ends, bit for bit."""
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    make_features(train_f, 300, seed=0)
    make_features(test_f, 101, seed=1)

    def cfg(name: str):
        return load_config(None, feature_overrides(train_f, test_f, tmp_path / name, schedule__epochs=2,
                                                   sampler__name="random", method__name="decoupling", method__mode=mode,
                                                   method__stage2_epochs=3, model__neck_dim=16))

    full = train(cfg("full"), progress=False)
    train_killed_after(3, cfg("killed"))  # stage 1's two epochs and stage 2's first are done and saved
    epoch, stage, _ = _stage_state(tmp_path / "killed" / "checkpoint.pt")
    assert (epoch, stage) == (3, 2)
    resumed = train(cfg("killed"), progress=False, resume=True)
    assert resumed["per_class_ap"] == full["per_class_ap"]
    a, b = _stage_state(tmp_path / "full" / "checkpoint.pt")[2], _stage_state(tmp_path / "killed" / "checkpoint.pt")[2]
    assert all(torch.equal(a[k], b[k]) for k in a)
    if mode == "lws":
        assert not torch.equal(b["classifier.scales"], torch.ones(8))
    _, _, model = model_from_checkpoint(load_checkpoint(tmp_path / "killed" / "checkpoint.pt"))
    assert isinstance(model.classifier, ScaledLinear) == (mode == "lws")


def test_tau_norm_is_applied_once_even_when_resumed(tmp_path):
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    make_features(train_f, 300, seed=0)
    make_features(test_f, 101, seed=1)
    over = feature_overrides(train_f, test_f, tmp_path / "tau", schedule__epochs=2, sampler__name="random",
                             method__name="decoupling", method__mode="tau-norm", method__stage2_epochs=0, method__tau=1.0)
    res = train(load_config(None, over), progress=False)
    w = load_checkpoint(tmp_path / "tau" / "checkpoint.pt")["model"]["classifier.weight"]
    torch.testing.assert_close(w.norm(dim=1), torch.ones(8))
    again = train(load_config(None, over), progress=False, resume=True)  # a finished tau-norm run, resumed
    assert again["per_class_ap"] == res["per_class_ap"]
    # a positive rescaling of each class's logit keeps every class's ranking: the per-class AP of stage 1
    plain = train(load_config(None, [*over, "method.name=plain", f"run.out_dir={tmp_path / 'plain'}"]), progress=False)
    assert res["per_class_ap"] == pytest.approx(plain["per_class_ap"], abs=1e-6)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_crt_runs_with_every_loss(tmp_path, loss, torch_path):
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    make_features(train_f, 200, seed=0)
    make_features(test_f, 60, seed=1)
    over = feature_overrides(train_f, test_f, tmp_path / "run", schedule__epochs=1, sampler__name="random",
                             method__name="decoupling", method__mode="crt", method__stage2_epochs=1, loss__name=loss,
                             **torch_path(loss))
    res = train(load_config(None, over), progress=False)
    assert np.isfinite(res["mAP"]["total"]) and _stage_state(tmp_path / "run" / "checkpoint.pt")[:2] == (2, 2)


def test_resume_refuses_another_stage2_or_head(tmp_path):
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    make_features(train_f, 200, seed=0)
    make_features(test_f, 60, seed=1)
    crt = feature_overrides(train_f, test_f, tmp_path / "run", schedule__epochs=1, sampler__name="random",
                            method__name="decoupling", method__mode="crt", method__stage2_epochs=1)
    train(load_config(None, crt), progress=False)
    with pytest.raises(ValueError, match=r"\(stage 2\) was trained with method.mode='crt', but this run has "
                                         r"method.mode=None"):
        train(load_config(None, [*crt, "method.name=plain"]), progress=False, resume=True)
    with pytest.raises(ValueError, match=r"\(stage 2\) was trained with method.mode='crt', but this run has "
                                         r"method.mode='lws'"):
        train(load_config(None, [*crt, "method.mode=lws"]), progress=False, resume=True)
    with pytest.raises(ValueError, match="network='plain', but this run has network='ml-gcn'"):
        train(load_config(None, [*crt, "method.classifier=ml-gcn"]), progress=False, resume=True)


def test_crt_retrains_an_ml_gcn_head(tmp_path):
    """cRT works with any head: with ML-GCN's, stage 2 re-trains the graph convolutions and nothing else."""
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    make_features(train_f, 200, seed=0)
    make_features(test_f, 60, seed=1)
    common = dict(schedule__epochs=1, sampler__name="random", model__neck_dim=8)
    gcn = {"name": "ml-gcn", "hidden": 16}
    train(load_config(None, feature_overrides(train_f, test_f, tmp_path / "s1", method=gcn, **common)), progress=False)
    crt = feature_overrides(train_f, test_f, tmp_path / "crt", method__name="decoupling", method__mode="crt",
                            method__stage2_epochs=1, method__classifier=gcn, **common)
    train(load_config(None, crt), progress=False, resume=str(tmp_path / "s1" / "checkpoint.pt"))
    a, b = _stage_state(tmp_path / "s1" / "checkpoint.pt")[2], _stage_state(tmp_path / "crt" / "checkpoint.pt")[2]
    assert {k for k in a if not torch.equal(a[k], b[k])} == {"classifier.gc1", "classifier.gc2"}
