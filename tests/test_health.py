"""dbloss.training.health and the engine's use of it: runs that cannot fail silently."""

from __future__ import annotations

import json

import pytest
import torch

from dbloss.cli import main
from dbloss.config import load_config
from dbloss.training.engine import train
from dbloss.errors import NonFiniteLossError, TrainingCollapsedError
from dbloss.training.health import chance_map, chance_message, collapse_message, stalled_loss_message


def test_collapse_is_one_constant_per_class_over_samples():
    scores = torch.rand(16, 5)
    assert collapse_message(scores, lr=0.1, optimizer="sgd", epoch=1) is None
    flat = torch.full((16, 5), 0.5) + 1e-6 * torch.randn(16, 5)  # the outputs: 0.50, sd 2e-5 at most
    msg = collapse_message(flat, lr=0.5, optimizer="sgd", epoch=2)
    assert "collapsed after epoch 2" in msg and "optim.lr=0.05" in msg
    one_class_varies = torch.full((16, 5), 0.5)
    one_class_varies[:, 3] = torch.rand(16)
    assert collapse_message(one_class_varies, lr=0.1, optimizer="sgd", epoch=1) is None
    assert collapse_message(torch.full((1, 5), 0.5), lr=0.1, optimizer="sgd", epoch=1) is None  # one sample: no sd
    assert "nan" in collapse_message(torch.full((4, 2), float("nan")), lr=0.1, optimizer="sgd", epoch=1)


def test_stalled_loss_names_a_rise_as_a_step_too_large():
    assert stalled_loss_message([0.5, 0.5], lr=0.1, optimizer="sgd") is None  # too early to tell
    rose = stalled_loss_message([0.17, 0.4, 0.62], lr=50.0, optimizer="sgd")
    assert "it rose" in rose and "try optim.lr=5" in rose
    flat = stalled_loss_message([0.0018, 0.0018, 0.0018, 0.0018], lr=0.5, optimizer="adamw")
    assert "try optim.lr=0.05 and optim.lr=5 (adamw)" in flat
    assert stalled_loss_message([1.0, 0.9, 1.1], lr=0.1, optimizer="sgd") is None  # it fell once


def test_chance_level_is_the_mean_prevalence():
    targets = torch.zeros(100, 4)
    targets[:50, 0] = 1
    targets[:10, 1] = 1
    targets[:2, 2] = 1  # class 3 has no positive: left out
    assert chance_map(targets) == pytest.approx((0.5 + 0.1 + 0.02) / 3)
    assert chance_message(0.25, 0.2067, epoch=2, lr=0.1, optimizer="sgd") is not None
    assert chance_message(0.40, 0.2067, epoch=2, lr=0.1, optimizer="sgd") is None


@pytest.fixture
def run(feature_recipe):
    """``run(name, **settings) -> metrics``: a small head on the synthetic features (see conftest)."""
    def go(name: str, **settings: object) -> dict:
        return train(load_config(None, feature_recipe(name, **settings)), progress=False)
    return go


def test_a_run_made_to_diverge_stops_naming_the_learning_rate_and_the_value_to_try(run, feature_recipe, capsys):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* lr=1e\+12 \(sgd\) is the likely cause: "
                                                 r"try optim.lr=1e\+11"):
        run("diverge", optim__lr=1e12, optim__grad_clip=None, model__neck_dim=0)
    assert main(["train", "features/erm", *feature_recipe("diverge_cli", optim__lr=1e12, optim__grad_clip=None, model__neck_dim=0)]) == 2
    assert "try optim.lr=1e+11" in capsys.readouterr().err


def test_a_collapsed_model_stops_the_run_or_with_health_warn_is_reported_in_metrics(run, feature_recipe, tmp_path):
    # a rate far too large, unclipped: every ReLU of the hidden layer dies and the head answers its bias
    collapse = dict(optim__lr=50.0, optim__grad_clip=None, model__neck_dim=16, schedule__epochs=4)
    with pytest.raises(TrainingCollapsedError, match=r"collapsed after epoch \d.*lr=50 \(sgd\) is the likely cause: "
                                                     r"try optim.lr=5,"):
        run("stop", **collapse)
    log = [json.loads(line) for line in (tmp_path / "stop" / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log if r.get("type") == "health"] == ["collapse"]
    res = run("warn", run__health="warn", **collapse)
    assert len(res["health"]) == 1 and "collapsed after epoch" in res["health"][0]
    assert json.loads((tmp_path / "warn" / "metrics.json").read_text())["health"] == res["health"]


def test_a_loss_that_rises_and_a_validation_map_at_chance_are_reported(run):
    res = run("chance", optim__lr=100.0, optim__grad_clip=None, model__neck_dim=16, schedule__epochs=4, data__val_size=60)
    assert [m.split(" ")[:2] for m in res["health"]] == [["the", "training"], ["validation", "mAP"]]
    assert "it rose; the learning rate lr=100 (sgd) is the likely cause: try optim.lr=10" in res["health"][0]
    assert "at chance level" in res["health"][1]


def test_the_checks_do_not_change_training(run, tmp_path):
    """The collapse probe reads no random state and leaves the model as it was: the same run bit for bit."""
    checked, unchecked = run("checked", run__health="stop"), run("unchecked", run__health="off")
    assert checked["mAP"] == unchecked["mAP"] and checked["health"] == []
    a = torch.load(tmp_path / "checked" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "unchecked" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_healthy_run_reports_nothing(run):
    assert run("healthy", data__val_size=60, schedule__epochs=3)["health"] == []


def test_health_is_validated():
    with pytest.raises(ValueError, match="`run.health` to be one of"):
        load_config(None, ["run.health=loud"])
