"""Tests of dbloss.models.pretrain and the built-in balanced source set (the stand-in for ImageNet)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from dbloss.config import load_config
from dbloss.data.synthetic import DEMO_CLASSES, generate_source_dataset
from dbloss.models.classifier import build_model
from dbloss.models.pretrain import PretrainConfig, builtin_weights, pretrain, resolve_weights


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return generate_source_dataset(tmp_path_factory.mktemp("source"), per_class=6, image_size=32)


def test_source_set_is_a_balanced_image_folder_and_is_reused(source):
    ds = torchvision.datasets.ImageFolder(str(source))
    assert sorted(ds.classes) == sorted(DEMO_CLASSES)
    counts = torch.bincount(torch.tensor(ds.targets))
    assert counts.tolist() == [6] * len(DEMO_CLASSES)
    first = source / DEMO_CLASSES[0] / "000001.png"
    stamp = first.stat().st_mtime_ns
    assert generate_source_dataset(source, per_class=6, image_size=32) == source
    assert first.stat().st_mtime_ns == stamp  # reused, not redrawn
    (source / DEMO_CLASSES[0] / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="mine.txt"):
        generate_source_dataset(source, per_class=7, image_size=32)
    (source / DEMO_CLASSES[0] / "mine.txt").unlink()


def test_source_images_are_not_the_demo_images(source, tmp_path):
    """The source set's scenes come from random streams of their own (no test image leaks into pretraining)."""
    from dbloss.data.synthetic import generate_demo_dataset

    demo = generate_demo_dataset(tmp_path / "demo", image_size=32, pool_size=300, max_count=40, test_per_class=2)
    demo_bytes = {p.read_bytes() for p in demo.image_root.rglob("*.png")}
    assert not demo_bytes & {p.read_bytes() for p in source.rglob("*.png")}


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_pretrained_weights_load_into_the_fine_tuning_model(source, tmp_path, backbone):
    out = tmp_path / f"{backbone}.pth"
    record = pretrain(source, out, PretrainConfig(backbone=backbone, epochs=1, batch_size=16), progress=False)
    assert record["classes"] == sorted(DEMO_CLASSES) and 0.0 <= record["val_accuracy"] <= 1.0
    assert json.loads(out.with_suffix(".json").read_text())["class_counts"] == [6] * len(DEMO_CLASSES)
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith(("fc.", "classifier.")) for k in state)  # the source classifier is left out
    model = build_model(5, backbone=backbone, weights=str(out))
    first_conv = model.backbone.stages[0][0].weight if backbone == "small_cnn" else model.backbone[0][0].weight
    torch.testing.assert_close(first_conv, state["stages.0.0.weight" if backbone == "small_cnn" else "conv1.weight"])
    assert not first_conv.requires_grad  # pretrained: the paper's first stage is frozen by default
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_pretraining_learns_the_source_task(tmp_path):
    src = generate_source_dataset(tmp_path / "src", per_class=50, image_size=32)
    record = pretrain(src, tmp_path / "w.pth", PretrainConfig(epochs=8, val_fraction=0.2, batch_size=16),
                      progress=False)
    assert record["val_accuracy"] > 3 / len(DEMO_CLASSES)  # far above chance (1/14) after a few epochs


def test_builtin_weights_are_cached_and_resolved(tmp_path, monkeypatch):
    import dbloss.models.pretrain as pt

    calls = []
    real = pt.pretrain
    monkeypatch.setattr(pt, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = builtin_weights(tmp_path, per_class=3, epochs=1, progress=False)
    again = builtin_weights(tmp_path, per_class=3, epochs=1, progress=False)
    assert first == again and first.is_file() and len(calls) == 1
    builtin_weights(tmp_path, per_class=3, epochs=2, progress=False)  # other settings: pretrained again
    assert len(calls) == 2
    assert resolve_weights("x.pth", "small_cnn", 32, str(tmp_path)) == "x.pth"
    assert resolve_weights(None, "small_cnn", 32, str(tmp_path)) is None


def test_pretrain_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pretrain(tmp_path / "nowhere", tmp_path / "w.pth")
    (tmp_path / "one" / "a").mkdir(parents=True)
    torchvision.io.write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / "one" / "a" / "x.png"))
    with pytest.raises(ValueError, match="at least 2 class folders"):
        pretrain(tmp_path / "one", tmp_path / "w.pth")
    with pytest.raises(ValueError, match="end in .pth"):
        pretrain(tmp_path / "one", tmp_path / "w.bin")
    with pytest.raises(ValueError, match="epochs"):
        PretrainConfig(epochs=0).validate()


def test_demo_recipes_fine_tune_pretrained_and_scratch_recipes_freeze_nothing():
    for name in ("erm", "rs", "db_focal"):
        pre, scratch = load_config(f"demo/{name}"), load_config(f"demo_scratch/{name}")
        assert pre.model.weights == "demo-source" and pre.model.frozen_stages is None  # first stage frozen (pretrained)
        assert scratch.model.weights is None
        model = build_model(14, backbone=scratch.model.backbone, weights=scratch.model.weights,
                            frozen_stages=scratch.model.frozen_stages)
        assert all(p.requires_grad for p in model.parameters())
        # the regimes differ in weights only (and DB-Focal's lr, chosen on validation in the pretrained regime)
        differ = {f"{s}.{k}" for s, keys in pre.to_dict().items() for k, v in keys.items()
                  if v != scratch.to_dict()[s][k]}
        assert differ <= {"model.weights", "optim.lr"}
        assert scratch.optim.lr == 0.02 and pre.optim.lr == (0.2 if name == "db_focal" else 0.02)


@pytest.mark.slow
def test_demo_end_to_end_pretrains_once_and_reports_seed_statistics(tmp_path, capsys):
    """`dbloss demo` at one epoch: source set + pretraining (once), two rows x two seeds, mean ± sd table,
    the increment figure, the README block; a second call reuses every run."""
    from dbloss.cli import main

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- demo-table -->\nold\n<!-- /demo-table -->\nrest\n")
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--recipes", "rs", "db_focal", "--seeds", "0", "1", "--epochs", "1",
            "--no-progress", "--readme", str(readme), "--figures", str(tmp_path / "figs")]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert set(rows) == {"rs", "db_focal"} and rows["rs"]["seeds"] == [0, 1]
    maps = [r["mAP"]["total"] for r in rows["rs"]["runs"]]
    assert rows["rs"]["mean"]["total"] == pytest.approx(sum(maps) / 2)
    assert rows["rs"]["sd"]["total"] == pytest.approx(abs(maps[0] - maps[1]) / 2 ** 0.5)
    assert maps[0] != maps[1]  # the seeds are different runs
    assert (out / "ap_increment.png").is_file() and (out / "per_class_ap.png").is_file()
    assert (out / "data" / "pretrained" / "small_cnn_32.pth").is_file()
    log = (out / "rs" / "seed0" / "log.jsonl").read_text()
    assert '"type": "epoch"' in log
    text = readme.read_text()
    assert "old" not in text and "±" in text and "figs/demo_ap_increment.png" in text and text.endswith("rest\n")
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("reused") == 4
    # the first run pretrained in its own process; retrained with the cached weights, it is the same run
    (out / "rs" / "seed0" / "metrics.json").unlink()
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())["rows"][0]["runs"][0]
    assert again["mAP"]["total"] == pytest.approx(maps[0], abs=1e-12)
