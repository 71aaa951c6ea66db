"""dbloss.apps.export and ``dbloss export``: the exported model answers as the checkpoint does.

Each exported file (TorchScript through ``torch.jit.load``, ONNX through onnxruntime) is run on
batches of sizes other than the one it was exported with and compared with the checkpoint's
:class:`~dbloss.apps.predict.Predictor` on the same inputs. Runs are tiny: a small_cnn image model
trained one epoch on 32-px images made here (a CSV dataset), and a head with a neck on features.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dbloss.cli import main
from dbloss.config import load_config
from dbloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dbloss.training.engine import train
from dbloss.apps.export import export_model
from dbloss.apps.predict import Predictor

CLASSES = ("red", "green", "blue")


def _overrides(**cfg: object) -> list[str]:
    base = {"workers": 0, "tensorboard": False, "device": "cpu", "warmup_iters": 5, "epochs": 1, "batch_size": 8}
    return [f"{k}={json.dumps(v)}" for k, v in {**base, **cfg}.items()]


def _image_csv(folder: Path, name: str, n: int, seed: int) -> Path:
    """``n`` 40 x 36 PNGs whose dominant colour channels are their labels, and their 0/1 label CSV."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image," + ",".join(CLASSES)]
    for i in range(n):
        labels = (torch.rand(3, generator=g) < 0.5).long()
        labels[i % 3] = 1
        img = (torch.rand(3, 40, 36, generator=g) * 80 + labels[:, None, None] * 150).to(torch.uint8)
        write_png(img, str(folder / f"{name}{i:03d}.png"))
        lines.append(f"{name}{i:03d}.png," + ",".join(map(str, labels.tolist())))
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.csv"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    train_csv, test_csv = _image_csv(root / "images", "train", 48, 0), _image_csv(root / "images", "test", 12, 1)
    image_run = root / "image_run"
    train(load_config(None, _overrides(dataset="csv", train_ann=str(train_csv), test_ann=str(test_csv),
                                       backbone="small_cnn", weights="none", image_size=32, augment=False,
                                       val_size=12, out_dir=str(image_run), loss="bce", sampler="random")),
          progress=False)
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 30)):
        labels = (rng.random((n, 4)) < 0.4).astype(np.int64)
        labels[np.arange(n), np.arange(n) % 4] = 1
        np.savez(root / f"{split}.npz", features=(rng.normal(size=(n, 10)) + labels @ rng.normal(size=(4, 10)))
                 .astype(np.float32), labels=labels, class_names=np.array(list("abcd")))
    feature_run = root / "feature_run"
    train(load_config(None, _overrides(dataset="features", train_ann=str(root / "train.npz"),
                                       test_ann=str(root / "test.npz"), neck_dim=8, out_dir=str(feature_run),
                                       loss="db-focal", sampler="random")), progress=False)
    return {"image": image_run, "features": feature_run, "images": root / "images"}


def _inputs(predictor: Predictor, batch: int, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if predictor.input_type == "features":
        return torch.randn(batch, predictor.in_features, generator=g)
    return torch.randn(batch, 3, predictor.image_size, predictor.image_size, generator=g)


def _sidecar_matches(sidecar: Path, predictor: Predictor, fmt: str) -> dict:
    meta = json.loads(sidecar.read_text())
    assert meta["format"] == fmt and meta["class_names"] == predictor.class_names
    assert meta["thresholds"]["values"] == pytest.approx(predictor.thresholds.tolist())
    assert meta["check"]["max_abs_diff"] <= 1e-5 and meta["check"]["batch_size"] != meta["check"][
        "exported_with_batch_size"]
    if predictor.input_type == "image":
        assert meta["input_shape"] == ["batch", 3, 32, 32] and meta["image_size"] == 32
        assert meta["mean"] == pytest.approx(IMAGENET_MEAN) and meta["std"] == pytest.approx(IMAGENET_STD)
    else:
        assert meta["input_shape"] == ["batch", predictor.in_features] and "mean" not in meta
    return meta


@pytest.mark.parametrize("kind", ["image", "features"])
def test_onnx_export_gives_the_checkpoints_scores(runs, kind, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / f"{kind}.onnx"
    assert main(["export", str(runs[kind]), "--format", "onnx", "--out", str(out)]) == 0
    assert "checked against the checkpoint" in capsys.readouterr().out
    predictor = Predictor.from_checkpoint(runs[kind], device="cpu")
    meta = _sidecar_matches(out.with_name(out.name + ".json"), predictor, "onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [meta["input_name"]]
    for batch in (5, 1):
        x = _inputs(predictor, batch)
        got = torch.from_numpy(session.run(None, {meta["input_name"]: x.numpy()})[0])
        torch.testing.assert_close(got, predictor.scores(x), atol=1e-5, rtol=0)
    if kind == "image":  # an image preprocessed as the run evaluates gives what `dbloss predict` gives
        paths = sorted(str(p) for p in runs["images"].glob("test*.png"))[:4]
        x = torch.stack([predictor.preprocess(p) for p in paths])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        torch.testing.assert_close(got, predictor(paths), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["image", "features"])
def test_torchscript_export_gives_the_checkpoints_scores(runs, kind):
    res = export_model(runs[kind], "torchscript")  # default: in the run folder
    assert res.path == runs[kind] / "model.torchscript.pt" and res.sidecar.name == "model.torchscript.pt.json"
    predictor = Predictor.from_checkpoint(runs[kind], device="cpu")
    _sidecar_matches(res.sidecar, predictor, "torchscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        loaded = torch.jit.load(str(res.path))
    for batch in (5, 1):
        x = _inputs(predictor, batch)
        torch.testing.assert_close(loaded(x), predictor.scores(x), atol=1e-5, rtol=0)


def test_export_refuses_other_checkpoints_and_bad_outputs(runs, tmp_path, capsys):
    from dbloss.models.classifier import build_backbone

    weights = tmp_path / "small_cnn.pth"
    torch.save(build_backbone("small_cnn")[0].state_dict(), weights)
    assert main(["export", str(weights), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert "a weights file" in err and str(weights) in err
    assert main(["export", str(tmp_path / "absent"), "--format", "torchscript"]) == 2
    assert "no checkpoint file or run folder" in capsys.readouterr().err
    assert main(["export", str(runs["features"]), "--format", "torchscript", "--out", str(tmp_path / "m.json")]) == 2
    assert "cannot be a .json" in capsys.readouterr().err


def test_onnx_without_its_extra_names_the_extra(runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    assert main(["export", str(runs["features"]), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "pip install 'dbloss[export]'" in err
