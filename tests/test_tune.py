"""dbloss.training.tune: settings chosen on a validation split with Optuna, the final run, resume, shared storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from dbloss.cli import main
from dbloss.config import load_config
from dbloss.data.synthetic import write_synthetic_features
from dbloss.training.engine import train
from dbloss.training.tune import final_config, search_space, tune


@pytest.fixture
def features(tmp_path: Path) -> list[str]:
    """Overrides of the shipped features/ recipes for small synthetic long-tailed features (CPU, fast)."""
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    write_synthetic_features(train_f, 400, seed=0)
    write_synthetic_features(test_f, 150, seed=1)
    return [f"data.train_ann={train_f}", f"data.test_ann={test_f}", "run.device=cpu", "optim.batch_size=32", "schedule.epochs=12",
            "eval.patience=3"]


def _trials(out: Path) -> list[dict]:
    return json.loads((out / "tune.json").read_text())["trials"]


def test_tune_chooses_on_validation_writes_the_run_and_the_recipe_retrains_to_the_same_result(features, tmp_path):
    out = tmp_path / "tuned"
    res = tune("features/db_focal", features, trials=3, out=out, progress=False)
    for name in ("metrics.json", "predictions.npz", "config.yaml", "tuned.yaml", "tune.json", "trials.csv",
                 "study.db"):
        assert (out / name).is_file(), name
    rows = _trials(out)
    assert len(rows) == 3 and all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    recipe = load_config("features/db_focal", features)
    assert (rows[0]["optim.lr"], rows[0]["optim.weight_decay"], rows[0]["model.neck_dim"]) == (recipe.optim.lr, recipe.optim.weight_decay, 0)
    assert all(r["seconds"] > 0 and r["val_mAP"] > 0 for r in rows)
    for r in rows:  # trials never test: no metrics, no predictions, no weights kept
        trial_dir = out / "trials" / f"{r['number']:04d}"
        assert (trial_dir / "log.jsonl").is_file() and not (trial_dir / "metrics.json").exists()
        assert not list(trial_dir.glob("*.pt"))
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["val_mAP"])
    assert res["best_trial"]["number"] == best["number"]
    tuned = load_config(out / "tuned.yaml")
    assert tuned.optim.lr == pytest.approx(best["optim.lr"]) and tuned.data.val_size == 0 and not tuned.eval.keep_best
    assert tuned.schedule.epochs == best["best_epoch"]  # the epochs the best trial kept, on all training samples
    again = train(load_config(out / "tuned.yaml", [f"run.out_dir={tmp_path / 'again'}"]), progress=False)
    assert again["mAP"] == res["metrics"]["mAP"] == json.loads((out / "metrics.json").read_text())["mAP"]


def test_the_test_split_plays_no_part_in_the_choice(features, tmp_path):
    import numpy as np

    shuffled = tmp_path / "shuffled_test.npz"
    with np.load(tmp_path / "test.npz") as z:
        np.savez(shuffled, features=z["features"], labels=z["labels"][::-1], class_names=z["class_names"])
    a = tune("features/erm", features, trials=2, out=tmp_path / "a", progress=False)
    b = tune("features/erm", [*features, f"data.test_ann={shuffled}"], trials=2, out=tmp_path / "b", progress=False)
    keys = ("optim.lr", "optim.weight_decay", "model.neck_dim", "val_mAP", "best_epoch")
    assert [{k: r[k] for k in keys} for r in a["trials"]] == [{k: r[k] for k in keys} for r in b["trials"]]
    assert a["metrics"]["mAP"]["total"] != b["metrics"]["mAP"]["total"]  # the test itself did change


def test_a_killed_study_resumes_and_runs_only_the_missing_trials(features, tmp_path, monkeypatch):
    import dbloss.training.tune as tune_module

    out = tmp_path / "resumed"
    real, calls = tune_module.trial_config, []

    def killed_in_the_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or a killed process: the trial never finishes
        return real(*args, **kwargs)

    monkeypatch.setattr(tune_module, "trial_config", killed_in_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        tune("features/erm", features, trials=3, out=out, progress=False)
    monkeypatch.setattr(tune_module, "trial_config", real)
    first = _trials(out)[0]
    res = tune("features/erm", features, trials=3, out=out, progress=False)
    finished = [r for r in res["trials"] if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and res["trials"][0] == first  # the finished trial is kept as it was
    assert (out / "metrics.json").is_file()
    res = tune("features/erm", features, trials=3, out=out, progress=False)  # nothing is missing: no new trial
    assert len([r for r in res["trials"] if r["state"] in ("COMPLETE", "PRUNED")]) == 3


def test_a_trial_below_the_median_is_pruned(features, tmp_path):
    out = tmp_path / "pruned"
    tune("features/erm", [*features, "eval.patience=0", "schedule.epochs=6"], trials=2, out=out, progress=False,
         startup_trials=2)
    study = optuna.load_study(study_name="erm", storage=f"sqlite:///{(out / 'study.db').resolve()}")
    study.enqueue_trial({"optim.lr": 0.01 / 30, "optim.weight_decay": 1e-4, "model.neck_dim": 0})  # a rate far too small
    tune("features/erm", [*features, "eval.patience=0", "schedule.epochs=6"], trials=3, out=out, progress=False,
         startup_trials=2, prune_warmup=1)
    rows = _trials(out)
    assert rows[2]["state"] == "PRUNED" and rows[2]["epochs_run"] is None and rows[2]["best_epoch"] < 6


def test_two_processes_share_one_study_through_its_storage(features, tmp_path):
    db = tmp_path / "shared.db"
    cmd = [sys.executable, "-m", "dbloss", "tune", "features/erm", *features, "--trials", "4", "--out",
           str(tmp_path / "workers"), "--storage", f"sqlite:///{db}", "--search-only", "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = optuna.load_study(study_name="erm", storage=f"sqlite:///{db}").get_trials()
    finished = [t for t in trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5  # each worker stops once 4 are finished; one may be mid-trial then
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes ran trials
    assert len({t.number for t in trials}) == len(trials)


def test_search_space_widens_to_hold_the_recipe_and_names_the_db_terms():
    cfg = load_config(None, ["loss.name=ntr-focal", "optim.lr=0.5", "optim.weight_decay=0.0", "loss.args={neg_scale: 10.0}"])
    space = {p.key: p for p in search_space(cfg, "image")}
    assert set(space) == {"optim.lr", "optim.weight_decay", "loss.args.neg_scale", "loss.args.init_bias"}
    assert space["optim.lr"].low == pytest.approx(0.5 / 30) and space["optim.lr"].high == pytest.approx(15.0)
    assert space["loss.args.neg_scale"].high == 10.0 and space["loss.args.neg_scale"].initial == 10.0
    assert space["loss.args.init_bias"].initial == 0.05  # the loss's default


def test_the_final_run_follows_the_best_trials_schedule(tmp_path):
    cfg = load_config(None, ["schedule.epochs=8", "schedule.lr_steps=[0.625, 0.875]", "data.val_size=100",
                             "eval.keep_best=true", "eval.threshold_search=[0.3, 0.7, 0.1]"])
    final = final_config(cfg, {"optim.lr": 0.05}, {"epoch": 6, "threshold": 0.4}, tmp_path)
    from dbloss.training.schedule import get_lr

    assert (final.schedule.epochs, final.data.val_size, final.eval.keep_best, final.eval.threshold, final.optim.lr) == (6, 0, False, 0.4, 0.05)
    trial = load_config(None, ["optim.lr=0.05"], base=cfg.to_dict())
    assert [get_lr(final, 10_000, e) for e in range(6)] == [get_lr(trial, 10_000, e) for e in range(6)]


def test_tune_command(features, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["tune", "features/rs", *features, "--trials", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "best trial" in printed and "tuned.yaml" in printed and (out / "metrics.json").is_file()
    assert main(["tune", "features/rs", *features, "--trials", "0", "--out", str(out)]) == 2


@pytest.mark.slow
def test_tune_an_image_recipe(demo_root, tmp_path):
    """An image recipe (the built-in images, small_cnn from scratch): trials keep their best epoch on a
    validation split of a tenth, and the final run follows the kept epochs' schedule."""
    out = tmp_path / "images"
    res = tune("demo/rs", [f"data.root={demo_root}", "model.weights=none", "schedule.epochs=3", "run.device=cpu"], trials=2, out=out,
               progress=False)
    rows = _trials(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"] and rows[0]["optim.lr"] == pytest.approx(0.02)
    assert "model.neck_dim" not in rows[0]  # the head is searched on features only
    tuned = load_config(out / "tuned.yaml")
    assert tuned.schedule.epochs == res["best_trial"]["best_epoch"] and tuned.data.val_size == 0
    assert 0 < res["metrics"]["mAP"]["total"] <= 1
