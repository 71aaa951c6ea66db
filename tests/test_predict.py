"""dbloss.apps.predict and ``dbloss predict``: a run's answers for new images and features.

Reference comparisons: the predictor's scores on the demo test images equal those the run wrote
in ``predictions.npz`` when it was tested (same model, same evaluation preprocessing); a feature
model plus its backbone answers for images as it answers for those images' extracted features.
The runs are tiny (one epoch on the demo data at 32 px, a linear head on features) and made once
per module.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dbloss.cli import main
from dbloss.config import load_config
from dbloss.data.coco import read_coco
from dbloss.training.engine import train
from dbloss.errors import UsageError
from dbloss.apps.predict import Predictor, predict_inputs, read_checkpoint
from dbloss.data.synthetic import write_synthetic_features

# ---------------------------------------------------------------------------------------------
# Runs, made once per module
# ---------------------------------------------------------------------------------------------


_make_features = functools.partial(write_synthetic_features, num_classes=6, dim=16)


def _overrides(**cfg: object) -> list[str]:
    base = {"workers": 0, "tensorboard": False, "device": "cpu", "warmup_iters": 5}
    return [f"{k}={json.dumps(v)}" for k, v in {**base, **cfg}.items()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo data and a one-epoch small_cnn run on it (per-class thresholds from 200 validation images)."""
    from dbloss.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp("predict_demo")
    paths = generate_demo_dataset(root / "demo_data", seed=0)
    run = root / "runs" / "erm"
    # class-aware with a large reduction: a short epoch (a few hundred samples); the schedule warns, which is fine here
    train(load_config("demo/erm", _overrides(data_root=str(root / "demo_data"), weights="none", epochs=1,
                                             image_size=32, val_size=200, out_dir=str(run), sampler="class-aware",
                                             sampler_reduce=24)), progress=False)
    return {"root": root, "run": run, "test_json": paths.test_json, "images": paths.image_root}


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict_features")
    train_f, test_f = root / "train.npz", root / "test.npz"
    _make_features(train_f, 500, seed=0)
    _make_features(test_f, 60, seed=1)
    run = root / "run"
    train(load_config(None, _overrides(dataset="features", train_ann=str(train_f), test_ann=str(test_f), neck_dim=0,
                                       epochs=2, batch_size=32, lr=0.05, lr_steps=[0.6], val_size=150,
                                       out_dir=str(run), loss="db-focal", keep_best=True)), progress=False)
    return {"root": root, "run": run, "test": test_f}


def _test_images(demo: dict[str, Path], n: int | None = None) -> list[str]:
    table = read_coco(demo["test_json"], demo["images"])
    return [str(table.image_path(i)) for i in range(len(table) if n is None else n)]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# The Python API
# ---------------------------------------------------------------------------------------------

def test_predictor_scores_equal_the_runs_test_scores(demo):
    """Same model, same evaluation preprocessing: the scores the run was tested with, on its test images."""
    predictor = Predictor.from_checkpoint(demo["run"], device="cpu")
    assert predictor.checkpoint == demo["run"] / "checkpoint.pt" and predictor.input_type == "image"
    tested = np.load(demo["run"] / "predictions.npz")["scores"]
    scores = predictor(_test_images(demo))
    assert scores.shape == tested.shape == (len(tested), predictor.num_classes)
    np.testing.assert_allclose(scores.numpy(), tested, atol=1e-5)


def test_predictor_inputs_paths_pil_tensors_agree(demo):
    from PIL import Image
    from torchvision.io import decode_image

    predictor = Predictor.from_checkpoint(demo["run"], device="cpu")
    paths = _test_images(demo, 3)
    ref = predictor(paths)
    decoded = [decode_image(p) for p in paths]
    pil = [Image.open(p) for p in paths]
    preprocessed = torch.stack([predictor.transform(img) for img in decoded])
    for other in (pil, decoded, torch.stack(decoded), preprocessed, [Path(p) for p in paths]):
        torch.testing.assert_close(predictor(other), ref, atol=1e-6, rtol=0)
    assert predictor(paths[0]).shape == (1, predictor.num_classes)
    with pytest.raises(ValueError, match="preprocessed float images of size 32 x 32"):
        predictor(torch.rand(2, 3, 40, 40))


def test_thresholds_from_the_checkpoint_and_overrides(demo):
    predictor = Predictor.from_checkpoint(demo["run"], device="cpu")
    stored = read_checkpoint(demo["run"])[1]["thresholds"]
    assert predictor.threshold_source == "per-class"
    torch.testing.assert_close(predictor.thresholds, torch.tensor(stored["per_class"], dtype=torch.float32))
    paths = _test_images(demo, 8)
    scores = predictor(paths)
    for pred, row in zip(predictor.predict(paths), scores):
        assert pred.labels == [c for c, s, t in zip(predictor.class_names, row, predictor.thresholds) if s > t]
        assert list(pred.scores) == predictor.class_names and pred.id == pred.path
    assert all(len(p.labels) == predictor.num_classes for p in predictor.predict(paths, threshold=0.0))
    for pred, row in zip(predictor.predict(paths, top_k=2), scores):
        assert set(pred.labels) == {predictor.class_names[k] for k in row.topk(2).indices.tolist()}
    with pytest.raises(ValueError, match="one of `threshold` or `top_k`"):
        predictor.predict(paths, threshold=0.5, top_k=1)
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict(paths, top_k=99)


def test_global_threshold_when_no_per_class_ones_were_stored(demo, tmp_path):
    _, ckpt = read_checkpoint(demo["run"])
    torch.save({**ckpt, "thresholds": {"global": 0.3, "per_class": None}}, tmp_path / "global.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "thresholds"}, tmp_path / "older.pt")
    p = Predictor.from_checkpoint(tmp_path / "global.pt", device="cpu")
    assert p.threshold_source == "global" and torch.all(p.thresholds == 0.3)
    p = Predictor.from_checkpoint(tmp_path / "older.pt", device="cpu")
    assert p.threshold_source == "config" and torch.all(p.thresholds == p.config.eval.threshold)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def test_cli_predict_folder_to_csv_and_jsonl(demo, tmp_path, capsys):
    folder = demo["images"] / "test"
    out = tmp_path / "preds.csv"
    images = sorted(str(p) for p in folder.rglob("*.png"))
    assert main(["predict", str(demo["run"]), str(folder), "--out", str(out), "--no-progress", "--device", "cpu",
                 "--batch-size", "100"]) == 0
    assert f"{len(images)} of {len(images)} inputs predicted" in capsys.readouterr().out
    rows = _read_csv(out)
    predictor = Predictor.from_checkpoint(demo["run"], device="cpu")
    assert [r["path"] for r in rows] == images
    assert list(rows[0]) == ["id", "path", "labels", *predictor.class_names]
    scores = np.array([[float(r[c]) for c in predictor.class_names] for r in rows])
    np.testing.assert_allclose(scores, predictor(images[:len(rows)]).numpy(), atol=1e-6)
    for r, s in zip(rows, scores):
        assert (r["labels"].split(";") if r["labels"] else []) == [
            c for c, v, t in zip(predictor.class_names, s, predictor.thresholds.tolist()) if v > t]
    out_j = tmp_path / "preds.jsonl"
    assert main(["predict", str(demo["run"]), *images[:5], "--out", str(out_j), "--top-k", "2", "--no-progress"]) == 0
    lines = [json.loads(line) for line in out_j.read_text().splitlines()]
    assert [d["path"] for d in lines] == images[:5] and all(len(d["labels"]) == 2 for d in lines)
    assert set(lines[0]["scores"]) == set(predictor.class_names)


def test_cli_predict_csv_and_coco_inputs(demo, tmp_path):
    images = _test_images(demo, 4)
    paths_csv = tmp_path / "images.csv"
    paths_csv.write_text("name,image\n" + "".join(f"img{i},{p}\n" for i, p in enumerate(images)))
    out = tmp_path / "p.csv"
    assert main(["predict", str(demo["run"]), str(paths_csv), "--out", str(out), "--id-column", "name",
                 "--no-progress"]) == 0
    assert [(r["id"], r["path"]) for r in _read_csv(out)] == [(f"img{i}", p) for i, p in enumerate(images)]
    labelled = tmp_path / "labelled.csv"  # the training layout (0/1 columns, a row without labels): read as training does
    labelled.write_text("image,disk,star\n" + "".join(f"{Path(p).name},{i % 2},0\n" for i, p in enumerate(images)))
    assert main(["predict", str(demo["run"]), str(labelled), "--images", str(Path(images[0]).parent), "--out",
                 str(out), "--no-progress"]) == 0
    assert [r["path"] for r in _read_csv(out)] == images
    assert main(["predict", str(demo["run"]), str(demo["test_json"]), "--images", str(demo["images"]),
                 "--out", str(out), "--format", "csv", "--threshold", "0.5", "--no-progress"]) == 0
    table = read_coco(demo["test_json"], demo["images"])
    assert [r["id"] for r in _read_csv(out)] == [str(i) for i in table.ids]


def test_cli_unreadable_inputs_error_or_skipped_and_counted(demo, tmp_path, capsys):
    images = _test_images(demo, 3)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "p.csv"
    run = str(demo["run"])
    assert main(["predict", run, images[0], str(corrupt), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and str(corrupt) in err and "--skip-bad" in err and not out.exists()
    assert main(["predict", run, str(missing), "--out", str(out), "--no-progress"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["predict", run, str(tmp_path / "nowhere"), "--out", str(out), "--no-progress"]) == 2
    assert "input not found" in capsys.readouterr().err

    assert main(["predict", run, images[0], str(corrupt), images[1], str(missing), images[2], "--out", str(out),
                 "--skip-bad", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 of 5 inputs predicted" in printed and "2 unreadable inputs left out" in printed
    assert str(corrupt) in printed and str(missing) in printed
    assert [r["path"] for r in _read_csv(out)] == images
    listed = (tmp_path / "p.csv.skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [str(corrupt), str(missing)]
    assert main(["predict", run, str(corrupt), "--out", str(out), "--skip-bad", "--no-progress"]) == 2
    assert "none of the 1 inputs could be read" in capsys.readouterr().err


def test_cli_refuses_checkpoints_of_another_kind(demo, tmp_path, capsys):
    from dbloss.models.classifier import build_backbone

    image = _test_images(demo, 1)[0]
    weights = tmp_path / "small_cnn.pth"  # what `dbloss pretrain` writes: a bare state dict
    torch.save(build_backbone("small_cnn")[0].state_dict(), weights)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, other)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    expected = {weights: "a weights file", other: "not a dbloss checkpoint (no model, config, label_stats",
                text: "not a readable checkpoint file", tmp_path: "no best.pt or checkpoint.pt",
                tmp_path / "absent": "no checkpoint file or run folder"}
    for ckpt, message in expected.items():
        assert main(["predict", str(ckpt), image, "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and str(ckpt) in err, (ckpt, err)


# ---------------------------------------------------------------------------------------------
# Feature models
# ---------------------------------------------------------------------------------------------

def test_feature_model_predicts_npz_and_checks_dimensions(feature_run, demo, tmp_path, capsys):
    run, test_f = feature_run["run"], feature_run["test"]
    predictor = Predictor.from_checkpoint(run, device="cpu")
    assert predictor.checkpoint == run / "best.pt"  # keep_best: the epoch the run was tested with
    assert predictor.input_type == "features" and predictor.in_features == 16 and not predictor.accepts_images
    feats = np.load(test_f)["features"]
    tested = np.load(run / "predictions.npz")["scores"]
    np.testing.assert_allclose(predictor(feats).numpy(), tested, atol=1e-5)
    out = tmp_path / "f.jsonl"
    assert main(["predict", str(run), str(test_f), "--out", str(out), "--no-progress", "--batch-size", "7"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["id"] for d in lines] == [str(i) for i in range(len(feats))]
    np.testing.assert_allclose([list(d["scores"].values()) for d in lines], tested, atol=1e-6)

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=np.zeros((3, 24), np.float32), labels=np.zeros((3, 0), np.int64))
    assert main(["predict", str(run), str(wrong), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(wrong) in err and "dimension 24" in err and "takes 16-dimensional" in err
    with pytest.raises(UsageError, match="16-dimensional"):
        predictor(np.zeros((2, 24), np.float32))
    image = _test_images(demo, 1)[0]
    assert main(["predict", str(run), image, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a feature model" in err and "--backbone" in err
    assert main(["predict", str(demo["run"]), str(test_f), "--out", str(out), "--no-progress"]) == 2
    assert "is an image model" in capsys.readouterr().err


def test_feature_model_with_its_backbone_answers_for_images(demo, tmp_path, capsys):
    """Extract features with a (random-init, seeded) small_cnn, train a head, then predict images
    through the backbone: the same scores as for the images' extracted features."""
    from dbloss.apps.embed import extract_features

    table = read_coco(demo["test_json"], demo["images"])
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    common = dict(weights=None, image_size=32, progress=False, use_cache=False, device="cpu")
    extract_features("small_cnn", [table.subset(np.arange(0, 300))], train_f, **common)
    extract_features("small_cnn", [table.subset(np.arange(300, 340))], test_f, **common)
    run = tmp_path / "head"
    train(load_config(None, _overrides(dataset="features", train_ann=str(train_f), test_ann=str(test_f), neck_dim=0,
                                       epochs=1, batch_size=32, lr=0.1, out_dir=str(run), loss="bce",
                                       sampler="random")), progress=False)
    images = [str(table.image_path(i)) for i in range(300, 340)]
    out_img, out_npz = tmp_path / "img.csv", tmp_path / "npz.csv"
    assert main(["predict", str(run), *images, "--out", str(out_img), "--backbone", "small_cnn",
                 "--backbone-weights", "none", "--no-progress"]) == 0
    assert main(["predict", str(run), str(test_f), "--out", str(out_npz), "--no-progress"]) == 0
    rows_img, rows_npz = _read_csv(out_img), _read_csv(out_npz)
    assert [r["path"] for r in rows_img] == [r["path"] for r in rows_npz] == images
    names = Predictor.from_checkpoint(run, device="cpu").class_names
    np.testing.assert_allclose([[float(r[c]) for c in names] for r in rows_img],
                               [[float(r[c]) for c in names] for r in rows_npz], atol=1e-5)
    capsys.readouterr()
    assert main(["predict", str(run), images[0], "--out", str(out_img), "--backbone", "resnet18",
                 "--backbone-weights", "none", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "512-dimensional" in err and "takes 256-dimensional" in err
    assert main(["predict", str(demo["run"]), images[0], "--out", str(out_img), "--backbone", "small_cnn",
                 "--no-progress"]) == 2
    assert "image model" in capsys.readouterr().err


def test_predict_inputs_validates_before_reading(demo, feature_run):
    predictor = Predictor.from_checkpoint(demo["run"], device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        predict_inputs(predictor, _test_images(demo, 1), batch_size=0)
    with pytest.raises(UsageError, match="mix images and .npz"):
        predict_inputs(predictor, [_test_images(demo, 1)[0], str(feature_run["test"])])
