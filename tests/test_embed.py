"""dbloss.apps.embed: frozen-backbone features of images to .npz, with a per-image cache.

Random-init small backbones on a handful of generated images (no download); the demo test trains a
head on the built-in data's features as ``dataset=features`` does.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from dbloss.data.features import load_feature_file
from dbloss.apps.embed import (build_extractor, check_feature_dim, collect_inputs, extract_features, extractor_from_meta,
                          read_feature_meta)
from dbloss.errors import UsageError
from dbloss.models.classifier import FeatureClassifier

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def extractor():
    """A random-init timm ResNet-18 at 32 px (seeded: the same features in every build)."""
    return build_extractor("timm:resnet18", weights=None, image_size=32)


def _images(folder, n, start=0):
    g = torch.Generator().manual_seed(start)
    paths = []
    for k in range(start, start + n):
        sub = folder / ("a" if k % 2 else "b")  # nested: folders are searched recursively
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(sub / f"img{k}.png")
        write_png(torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=g), str(paths[-1]))
    return paths


class _Count:
    """A forward hook counting the extractor's calls (and the images), optionally failing on call ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.images, self.fail_at = 0, 0, fail_at

    def __call__(self, module, args, output):
        self.calls += 1
        self.images += args[0].shape[0]
        if self.calls == self.fail_at:
            raise _Interrupted(f"interrupted at call {self.calls}")


class _Interrupted(Exception):
    pass


def test_folder_of_images(tmp_path, extractor):
    paths = _images(tmp_path / "imgs", 5)
    res = extract_features(extractor, [tmp_path / "imgs"], tmp_path / "out" / "f.npz", batch_size=2, progress=False)
    assert (res.num_rows, res.dim, res.computed, res.cached) == (5, 512, 5, 0)
    with np.load(res.path) as z:
        assert z["features"].shape == (5, 512) and z["features"].dtype == np.float32
        assert z["labels"].shape == (5, 0) and list(z["ids"]) == [str(p) for p in sorted(paths)]
    assert read_feature_meta(res.path)["backbone"] == "timm:resnet18"
    assert json.loads(res.json_path.read_text())["num_rows"] == 5
    # the same features as one forward pass over the transformed images
    from dbloss.data.images import load_image

    with torch.no_grad():
        ref = extractor(torch.stack([extractor.transform(load_image(p)) for p in sorted(paths)]))
    np.testing.assert_allclose(np.load(res.path)["features"], ref.numpy(), rtol=1e-4, atol=1e-5)
    again = extractor_from_meta(read_feature_meta(res.path))  # what predict needs to answer for new images
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.stack([again.transform(load_image(p)) for p in sorted(paths)])),
                                   ref.numpy(), rtol=1e-4, atol=1e-5)


def test_csv_and_coco_inputs_carry_their_labels(tmp_path, extractor):
    paths = _images(tmp_path, 4)
    rows = ["image,cat,dog"] + [f"{p.relative_to(tmp_path)},{k % 2},{1 - k % 2}" for k, p in enumerate(paths)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    res = extract_features(extractor, [tmp_path / "labels.csv"], tmp_path / "csv.npz", progress=False)
    feats, labels, names = load_feature_file(res.path)  # what dataset=features reads
    assert feats.shape == (4, 512) and names == ["cat", "dog"]
    assert labels.tolist() == [[0, 1], [1, 0], [0, 1], [1, 0]]
    coco = {"images": [{"id": 10 + k, "file_name": str(p.relative_to(tmp_path))} for k, p in enumerate(paths)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [{"id": k, "image_id": 10 + k, "category_id": 1 + k % 2} for k in range(4)]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    res = extract_features(extractor, [tmp_path / "ann.json"], tmp_path / "coco.npz", progress=False)
    assert res.cached == 4 and res.computed == 0  # the same images, already embedded for the CSV
    with np.load(res.path) as z:
        assert list(z["ids"]) == ["10", "11", "12", "13"] and z["labels"].tolist() == [[1, 0], [0, 1], [1, 0], [0, 1]]
        np.testing.assert_array_equal(z["features"], feats)


def test_resume_after_interruption_computes_only_what_is_missing(tmp_path, extractor):
    _images(tmp_path / "imgs", 6)
    out = tmp_path / "f.npz"
    hook = _Count(fail_at=3)
    handle = extractor.register_forward_hook(hook)
    with pytest.raises(_Interrupted):
        extract_features(extractor, [tmp_path / "imgs"], out, batch_size=2, progress=False)
    handle.remove()
    assert not out.exists()  # no half-written output
    count = _Count()
    handle = extractor.register_forward_hook(count)
    try:
        res = extract_features(extractor, [tmp_path / "imgs"], out, batch_size=2, progress=False)
        assert (count.calls, count.images, res.computed, res.cached) == (1, 2, 2, 4)  # the two finished batches kept
        again = extract_features(extractor, [tmp_path / "imgs"], tmp_path / "again.npz", batch_size=2, progress=False)
        assert (count.calls, again.computed, again.cached) == (1, 0, 6)
        _images(tmp_path / "imgs", 2, start=6)  # overlapping inputs: 6 known, 2 new
        more = extract_features(extractor, [tmp_path / "imgs"], tmp_path / "more.npz", batch_size=4, progress=False)
        assert (count.images, more.computed, more.cached, more.num_rows) == (4, 2, 6, 8)
    finally:
        handle.remove()
    fresh = extract_features(extractor, [tmp_path / "imgs"], tmp_path / "fresh.npz", use_cache=False, progress=False)
    np.testing.assert_allclose(np.load(more.path)["features"], np.load(fresh.path)["features"], rtol=1e-4, atol=1e-5)


def test_unreadable_images_are_named_and_counted(tmp_path, extractor):
    _images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match=r"cannot read image .*broken\.png.*--skip-bad"):
        extract_features(extractor, [tmp_path / "imgs"], tmp_path / "f.npz", progress=False)
    res = extract_features(extractor, [tmp_path / "imgs"], tmp_path / "f.npz", skip_bad=True, progress=False)
    assert res.num_inputs == 4 and res.num_rows == 3 and [s["path"] for s in res.skipped] == \
        [str(tmp_path / "imgs" / "broken.png")]
    saved = json.loads(res.json_path.read_text())
    assert saved["num_skipped"] == 1 and saved["skipped"][0]["path"].endswith("broken.png")
    assert "broken.png" not in " ".join(np.load(res.path)["ids"])


def test_feature_dimension_must_match_the_feature_model(tmp_path, extractor):
    _images(tmp_path / "imgs", 2)
    res = extract_features(extractor, [tmp_path / "imgs"], tmp_path / "f.npz", progress=False)
    assert check_feature_dim(res.path, FeatureClassifier(512, 3)) == 512
    with pytest.raises(UsageError, match=r"f\.npz: features of dimension 512 \(from backbone timm:resnet18\), "
                                         r"but the feature model takes 192-dimensional"):
        check_feature_dim(res.path, FeatureClassifier(192, 3, hidden=16))


def test_bad_inputs_are_refused(tmp_path, extractor):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match=r"notes\.txt: expected an image file"):
        collect_inputs([tmp_path / "notes.txt"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        collect_inputs([tmp_path / "missing.png"])
    paths = _images(tmp_path / "imgs", 2)
    (tmp_path / "l.csv").write_text(f"image,cat\n{paths[0]},1\n")
    with pytest.raises(UsageError, match="mix labelled"):
        collect_inputs([tmp_path / "l.csv", paths[1]])
    with pytest.raises(UsageError, match="duplicate sample id"):
        collect_inputs([paths[0], paths[0]])
    with pytest.raises(UsageError, match=r"a \.npz file"):
        extract_features(extractor, [paths[0]], tmp_path / "f.csv")
    with pytest.raises(UsageError, match="small_cnn' has no published weights: use weights demo-source"):
        build_extractor("small_cnn")  # weights DEFAULT


def test_torchvision_and_clip_backbones(tmp_path):
    paths = _images(tmp_path / "imgs", 2)
    tv = build_extractor("resnet18", weights=None, image_size=32)  # 4-D feature maps, average-pooled
    assert tv(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    pytest.importorskip("open_clip")
    clip = build_extractor("clip:RN50", weights=None, image_size=64)  # random init, 64 px (force_image_size)
    assert clip.meta["preprocess"] == "open_clip" and clip.meta["mean"][0] == pytest.approx(0.4815, abs=1e-4)
    res = extract_features(clip, paths, tmp_path / "clip.npz", progress=False)
    assert (res.num_rows, res.dim) == (2, 1024)
    torch.save({k: v + 1 for k, v in clip.model.state_dict().items()}, tmp_path / "tower.pt")  # an image tower's file
    loaded = build_extractor("clip:RN50", weights=str(tmp_path / "tower.pt"), image_size=64)
    assert torch.equal(loaded.model.conv1.weight, clip.model.conv1.weight + 1)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: weights do not match backbone 'clip:RN50'"):
        build_extractor("clip:RN50", weights=str(tmp_path / "other.pt"), image_size=64)


def test_missing_open_clip_names_the_extra(monkeypatch):
    from dbloss.models.backbones import MissingDependencyError

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'dbloss\[clip\]'"):
        build_extractor("clip:RN50", weights=None)


def test_demo_features_train_a_head(tmp_path):
    """The recipe end to end: demo data -> features -> `dataset=features` training of a row."""
    from dbloss.config import load_config
    from dbloss.apps.embed import extract_demo_features
    from dbloss.training.engine import train

    res = extract_demo_features("small_cnn", tmp_path / "feats", data_root=tmp_path / "demo_data", weights=None,
                                image_size=32, batch_size=256, progress=False)
    assert res["train"].num_rows > 1000 and res["test"].num_rows > 400 and res["train"].dim == 256
    cfg = load_config("demo_features/db_focal", [f"data.train_ann={res['train'].path}", f"data.test_ann={res['test'].path}",
                                                 "schedule.epochs=1", f"run.out_dir={tmp_path / 'run'}"])
    out = train(cfg, progress=False)
    assert 0 < out["mAP"]["total"] <= 1 and (tmp_path / "run" / "metrics.json").is_file()


def _features_cli(argv):
    """``dbloss features ARGV`` through its own parser (as dbloss.cli registers it)."""
    import argparse

    from dbloss.cli.features import add_features_command

    parser = argparse.ArgumentParser(prog="dbloss")
    add_features_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["features", *argv])
    return args.func(args)


def test_features_command(tmp_path, capsys):
    _images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    argv = ["timm:resnet18", str(tmp_path / "imgs"), "--out", str(tmp_path / "f.npz"), "--weights", "none",
            "--image-size", "32", "--batch-size", "2", "--no-progress"]
    with pytest.raises(UsageError, match=r"broken\.jpg"):
        _features_cli(argv)
    assert _features_cli([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "f.npz: 3 x 512 features" in out and "1 unreadable images left out" in out and "broken.jpg" in out
    with pytest.raises(UsageError, match="needs INPUTS"):
        _features_cli(["timm:resnet18", "--out", str(tmp_path / "g.npz")])
