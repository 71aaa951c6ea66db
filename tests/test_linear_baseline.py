"""Tests of dbloss.apps.linear_baseline: the per-class logistic-regression row on features."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml

from dbloss.config import load_config
from dbloss.data.synthetic import write_synthetic_features
from dbloss.errors import UsageError
from dbloss.apps.linear_baseline import logistic_regression_scores, train_logistic_regression

SMALL_GRID = dict(c_grid=(0.1, 10.0), class_weights=(None, "balanced"))


def _feature_files(tmp_path, n_train=240, n_test=120, classes=5, dim=12):
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    write_synthetic_features(train, n_train, seed=0, num_classes=classes, dim=dim)
    write_synthetic_features(test, n_test, seed=1, num_classes=classes, dim=dim)
    return train, test


def _cfg(tmp_path, train, test, *extra):
    return load_config(None, ["data.dataset=features", f"data.train_ann={train}", f"data.test_ann={test}", "data.val_size=60",
                              "schedule.epochs=1", "optim.batch_size=32", "schedule.warmup_iters=0", "run.tensorboard=false", "data.workers=0",
                              "run.device=cpu", "sampler.name=random", f"run.out_dir={tmp_path / 'run'}", *extra])


def _arrays(seed=0, n=300, dim=10, classes=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x[:, :classes] + 0.5 * rng.normal(size=(n, classes)) > 0.8).astype(np.int64)
    return x, y


def test_the_row_writes_a_run_folder_in_the_engines_format(tmp_path):
    from dbloss.training.engine import train

    train_f, test_f = _feature_files(tmp_path)
    res = train_logistic_regression(_cfg(tmp_path, train_f, test_f, "run.name=logreg"), progress=False, n_jobs=1)
    out = tmp_path / "run"
    for name in ("config.yaml", "label_stats.json", "metrics.json", "metrics.md", "predictions.npz", "logreg.json"):
        assert (out / name).is_file(), name
    ours = json.loads((out / "metrics.json").read_text())
    assert ours == json.loads(json.dumps(res))
    assert (ours["name"], ours["loss"], ours["sampler"], ours["num_train"]) == ("logreg", "logistic", "–", 240)
    assert 0.5 < ours["mAP"]["total"] <= 1.0  # the synthetic classes are linearly separable-ish
    assert "| logreg | logistic | – |" in (out / "metrics.md").read_text()
    fit = json.loads((out / "logreg.json").read_text())
    assert fit["C"] in fit["c_grid"] and fit["class_weight"] in fit["class_weights"]
    assert len(fit["grid"]) == len(fit["c_grid"]) * len(fit["class_weights"])
    assert fit["num_fit"] == 180 and fit["num_val"] == 60 and fit["num_refit"] == 240
    assert fit["seconds"]["total"] > 0
    with np.load(out / "predictions.npz") as z:
        assert z["scores"].shape == z["targets"].shape == (120, 5)

    train(_cfg(tmp_path, train_f, test_f, f"run.out_dir={tmp_path / 'net'}"), progress=False)
    engine = json.loads((tmp_path / "net" / "metrics.json").read_text())
    assert set(ours) == set(engine)
    assert set(ours["val"]) == set(engine["val"])
    assert set(ours["per_class_thresholds"]) == set(engine["per_class_thresholds"])


def test_the_choice_is_made_on_validation_only(tmp_path, monkeypatch):
    """The test split is scored once, after the choice, and changing it changes nothing chosen."""
    import dbloss.apps.linear_baseline as lb

    x, y = _arrays()
    x_test, y_test = _arrays(seed=5, n=80)
    calls = []
    real = lb._fit_all
    monkeypatch.setattr(lb, "_fit_all", lambda xf, yf, xe, settings, **kw: calls.append((xe, len(settings)))
                        or real(xf, yf, xe, settings, **kw))
    a = logistic_regression_scores(x, y, x_test, n_jobs=1, **SMALL_GRID)
    assert [n for _, n in calls] == [4, 1] and calls[-1][0] is not None and calls[-1][0].shape[0] == 80
    assert calls[0][0].shape[0] == 30  # the 10% hold-out, not the test rows
    b = logistic_regression_scores(x, y, -x_test[::-1] * 3, n_jobs=1, **SMALL_GRID)
    assert (a.C, a.class_weight, a.grid) == (b.C, b.class_weight, b.grid)
    np.testing.assert_array_equal(a.val_scores, b.val_scores)

    # through a recipe: other test labels and features, the same choice and validation record
    train_f, test_f = _feature_files(tmp_path)
    first = train_logistic_regression(_cfg(tmp_path, train_f, test_f), progress=False, n_jobs=1)
    z = dict(np.load(test_f))
    rng = np.random.default_rng(9)
    np.savez(test_f, features=rng.normal(size=z["features"].shape).astype(np.float32),
             labels=rng.permutation(z["labels"]), class_names=z["class_names"])
    second = train_logistic_regression(_cfg(tmp_path, train_f, test_f), overwrite=True, progress=False, n_jobs=1)
    assert first["val"] == second["val"]
    assert first["mAP"] != second["mAP"]


def test_image_datasets_are_refused_with_their_name(tmp_path):
    for recipe, kind in (("demo/rs", "demo"), ("voc_mlt/rs", "voc")):
        with pytest.raises(UsageError, match=f"data.dataset='{kind}' is an image dataset.*dbloss features"):
            train_logistic_regression(load_config(recipe, [f"run.out_dir={tmp_path / kind}"]), progress=False)
        assert not (tmp_path / kind).exists()


def test_a_folder_holding_a_run_is_refused_without_overwrite(tmp_path):
    train_f, test_f = _feature_files(tmp_path, n_train=120, n_test=60, classes=3)
    cfg = _cfg(tmp_path, train_f, test_f, "data.val_size=30")
    train_logistic_regression(cfg, progress=False, n_jobs=1)
    with pytest.raises(UsageError, match="already holds a run.*--overwrite"):
        train_logistic_regression(cfg, progress=False, n_jobs=1)


def test_sparse_features_give_the_dense_result(tmp_path, monkeypatch):
    import scipy.sparse as sp
    import torch

    from dbloss.data.features import FeatureDataset
    from dbloss.data.pipeline import DataBundle

    x, y = _arrays(n=260, dim=30)
    x[np.abs(x) < 1.0] = 0.0  # a sparse-looking matrix
    x_test, y_test = x[200:], y[200:]
    dense = logistic_regression_scores(x[:200], y[:200], x_test, n_jobs=2, **SMALL_GRID)
    sparse = logistic_regression_scores(sp.csr_matrix(x[:200]), y[:200], sp.csr_matrix(x_test), n_jobs=2,
                                        **SMALL_GRID)
    assert (sparse.C, sparse.class_weight) == (dense.C, dense.class_weight)
    np.testing.assert_allclose(sparse.test_scores, dense.test_scores, atol=2e-3)

    # a recipe whose features are a SciPy sparse matrix, with a validation split and a test class without
    # positives (its AP is NaN: left out of the mAP, written as null)
    y_test = y_test.copy()
    y_test[:, 3] = 0
    bundle = DataBundle(FeatureDataset(sp.csr_matrix(x[:160]), y[:160]), FeatureDataset(sp.csr_matrix(x_test), y_test),
                        FeatureDataset(sp.csr_matrix(x[160:200]), y[160:200]), y[:160], ["a", "b", "c", "d"], 30)
    monkeypatch.setattr("dbloss.data.pipeline.build_data", lambda cfg: bundle)
    cfg = load_config(None, ["data.dataset=text-csv", "data.train_ann=unused.csv", "data.test_ann=unused.csv",
                             f"run.out_dir={tmp_path / 'sparse'}"])
    with pytest.warns(UserWarning, match="no positive"):
        res = train_logistic_regression(cfg, progress=False, n_jobs=1)
    assert res["per_class_ap"][3] is None and res["mAP"]["total"] is not None
    assert res["num_train"] == 200
    assert torch.from_numpy(np.load(tmp_path / "sparse" / "predictions.npz")["scores"]).shape == (60, 4)


def test_a_class_without_training_positives_is_scored_with_a_constant(caplog):
    x, y = _arrays(n=200)
    y_train, y_val = y[:150].copy(), y[150:].copy()
    y_train[:, 2] = 0  # every positive of class 2 is in the validation split
    y_val[:3, 2] = 1
    with caplog.at_level(logging.WARNING, logger="dbloss.apps.linear_baseline"):
        fit = logistic_regression_scores(x[:150], y_train, x[:20], x_val=x[150:], y_val=y_val, n_jobs=1,
                                         **SMALL_GRID)
    assert fit.constant_classes == {"select": [2], "refit": []}  # the refit sees the validation positives
    assert np.all(fit.val_scores[:, 2] == 0.0)
    assert "scored with that constant" in caplog.text
    assert np.all(np.isfinite(fit.test_scores))


def test_logreg_is_a_row_of_a_comparison(tmp_path, capsys):
    from dbloss.apps.compare import _available, run_comparison, write_comparison

    train_f, test_f = _feature_files(tmp_path)
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "_base.yaml").write_text(yaml.safe_dump({
        "dataset": "features", "train_ann": str(train_f), "test_ann": str(test_f), "val_size": 60, "epochs": 1,
        "batch_size": 32, "warmup_iters": 0, "tensorboard": False, "workers": 0, "device": "cpu"}))
    (folder / "erm.yaml").write_text("base: _base.yaml\nname: erm\nloss: bce\nsampler: random\n")
    assert _available(str(folder)) == ["erm", "logreg"]
    out = tmp_path / "cmp"
    rows = run_comparison(str(folder), ["erm", "logreg"], [0], out, progress=False)
    assert [r["row"] for r in rows] == ["erm", "logreg"]
    assert (rows[1]["name"], rows[1]["loss"], rows[1]["sampler"]) == ("logreg", "logistic", "–")
    assert rows[1]["train_seconds"] > 0 and 0 < rows[1]["mean"]["total"] <= 1
    written = write_comparison(rows, out, [0], title="features")
    assert "| logreg | logistic | – |" in (out / "results.md").read_text()
    assert [r["row"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["erm", "logreg"]
    assert written["figures"]["per_class_ap.png"].is_file()
    saved = yaml.safe_load((out / "logreg" / "seed0" / "config.yaml").read_text())
    assert (saved["run"]["name"], saved["run"]["seed"], saved["data"]["dataset"]) == ("logreg", 0, "features")

    reused: list[str] = []
    run_comparison(str(folder), ["logreg"], [0], out, progress=False, reused=reused)
    assert reused == [str(out / "logreg" / "seed0")]


def test_logreg_is_not_a_row_of_image_comparisons():
    from dbloss.apps.compare import BENCHMARK_ROWS, BENCHMARKS, PAPER_ROWS, _available, reproduce

    assert "logreg" not in _available("demo") and "logreg" not in _available("voc_mlt")
    assert "logreg" in _available("reuters")
    assert BENCHMARKS["reuters"] == "reuters" and BENCHMARKS["features"] == "features"
    assert BENCHMARK_ROWS["reuters"][-1] == BENCHMARK_ROWS["features"][-1] == "logreg"
    assert "logreg" not in PAPER_ROWS
    with pytest.raises(ValueError, match=r"Unknown demo row\(s\) \['logreg'\]"):
        reproduce("demo", rows=["logreg"], seeds=[0])


def test_the_baseline_command(tmp_path, capsys):
    from dbloss.cli import main

    train_f, test_f = _feature_files(tmp_path, n_train=150, n_test=60, classes=4)
    recipe = tmp_path / "feats.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "features", "train_ann": str(train_f), "test_ann": str(test_f)}}))
    out = tmp_path / "b"
    assert main(["baseline", str(recipe), "run.seed=3", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| logreg | logistic | – |" in printed and str(out / "metrics.json") in printed
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["run"]["seed"], cfg["run"]["name"]) == (3, "logreg")
    assert json.loads((out / "logreg.json").read_text())["num_val"] == 15  # 10% of 150, no val_size in the recipe
    assert main(["baseline", "demo/rs", "--out", str(tmp_path / "img"), "--no-progress"]) == 2
    assert "data.dataset='demo' is an image dataset" in capsys.readouterr().err
