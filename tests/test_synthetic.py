"""Tests of dbloss.data.synthetic: the built-in procedurally drawn long-tailed dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import read_image

from dbloss.data.synthetic import DEMO_CLASSES, DEMO_PARTNERS, DemoPaths, generate_demo_dataset
from dbloss.stats import class_split

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# a small variant for the byte-level checks (a second or two)
SMALL = dict(image_size=32, pool_size=1500, max_count=150, min_count=2, test_per_class=6)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoPaths:
    """The default label set (images at 32 px to save time; the labels do not depend on the size)."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), image_size=32)


def _labels(coco_json: Path) -> tuple[np.ndarray, list[dict]]:
    d = json.loads(coco_json.read_text())
    row = {im["id"]: i for i, im in enumerate(d["images"])}
    labels = np.zeros((len(d["images"]), len(d["categories"])), dtype=np.int64)
    for a in d["annotations"]:
        labels[row[a["image_id"]], a["category_id"] - 1] = 1
    return labels, d["images"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    b = generate_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa.keys() == fb.keys() and len(fa) > 20
    assert all(fa[k] == fb[k] for k in fa)
    assert a.train_json == tmp_path / "a" / "train.json" and a.image_root == tmp_path / "a" / "images"
    c = generate_demo_dataset(tmp_path / "c", seed=4, **SMALL)
    assert c.train_json.read_bytes() != b.train_json.read_bytes()


def test_reuse_regenerate_and_refuse(tmp_path):
    out = tmp_path / "d"
    generate_demo_dataset(out, **SMALL)
    manifest = out / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    generate_demo_dataset(out, **SMALL)  # same parameters: reused
    assert manifest.stat().st_mtime_ns == stamp
    n_small = json.loads(manifest.read_text())["num_images"]
    # a missing image invalidates the cache
    gone = next((out / "images" / "test").glob("*.png"))
    gone.unlink()
    generate_demo_dataset(out, **SMALL)
    assert gone.is_file()
    # other parameters: regenerated in place, no stale files left
    generate_demo_dataset(out, **{**SMALL, "test_per_class": 3})
    n_new = json.loads(manifest.read_text())["num_images"]
    assert n_new["test"] < n_small["test"]
    assert len(list((out / "images" / "test").glob("*.png"))) == n_new["test"]
    # a folder of ours holding something foreign is not wiped
    (out / "images" / "test" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_demo_dataset(out, **{**SMALL, "seed": 9})
    with pytest.raises(ValueError, match="image_size"):
        generate_demo_dataset(tmp_path / "e", image_size=8)


def test_train_split_is_long_tailed(demo):
    labels, images = _labels(demo.train_json)
    freq = labels.sum(0)
    split = class_split(freq)
    assert 1000 <= len(images) <= 1600
    assert len(split["head"]) >= 3 and len(split["medium"]) >= 3 and len(split["tail"]) >= 3
    assert freq.min() >= 4  # tail classes are rare, not absent
    assert (labels.sum(1) >= 1).all()


def test_tail_classes_co_occur_with_their_head_partner(demo):
    labels, _ = _labels(demo.train_json)
    split = class_split(labels.sum(0))
    for k in split["tail"]:
        partner = DEMO_CLASSES.index(DEMO_PARTNERS[DEMO_CLASSES[k]])
        assert partner in split["head"]
        together = (labels[:, k] & labels[:, partner]).sum() / labels[:, k].sum()
        assert together >= 0.7, (DEMO_CLASSES[k], together)


def test_test_split_is_balanced(demo):
    labels, images = _labels(demo.test_json)
    freq = labels.sum(0)
    assert 400 <= len(images) <= 700
    assert freq.min() >= 50 and freq.max() <= 60


def test_coco_json_loads_with_pycocotools_and_images_match(demo):
    coco_mod = pytest.importorskip("pycocotools.coco")
    coco = coco_mod.COCO(str(demo.train_json))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DEMO_CLASSES)
    labels, images = _labels(demo.train_json)
    for k in (0, len(DEMO_CLASSES) - 1):
        assert len(coco.getImgIds(catIds=[k + 1])) == labels[:, k].sum()
    for info in images[:25]:
        img = read_image(str(demo.image_root / info["file_name"]))
        assert img.shape == (3, info["height"], info["width"]) == (3, 32, 32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]])):
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["area"] > 0
            assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= 32 and y + h <= 32


def test_read_coco_round_trip_into_image_dataset(demo):
    try:
        from dbloss.data.coco import read_coco
    except ImportError:
        pytest.skip("dbloss.data.coco.read_coco is not available")
    from dbloss.data.images import MultiLabelImageDataset
    from dbloss.data.transforms import eval_transform

    table = read_coco(demo.test_json, demo.image_root)
    labels, images = _labels(demo.test_json)
    assert table.class_names == list(DEMO_CLASSES)
    np.testing.assert_array_equal(table.labels, labels)
    ds = MultiLabelImageDataset(table, eval_transform(32))
    img, target, index = ds[7]
    assert img.shape == (3, 32, 32) and index == 7
    assert torch.equal(target, torch.as_tensor(labels[7], dtype=torch.float32))
