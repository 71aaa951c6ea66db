"""Tests of dbloss.data.voc, dbloss.data.coco and dbloss.data.custom (readers of image label sets)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dbloss.data.coco import read_coco
from dbloss.data.custom import check_images, missing_images, read_csv
from dbloss.data.table import MultiLabelSet
from dbloss.data.voc import VOC_CLASSES, read_voc

# --------------------------------------------------------------------------- VOC


def _voc_xml(objects: list[tuple[str, int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        for n, d in objects
    )
    return f"<annotation><filename>x.jpg</filename><size><width>10</width><height>10</height><depth>3</depth></size>{objs}</annotation>"


def _make_voc(tmp_path: Path, images: dict[str, list[tuple[str, int]]], image_set: str = "trainval") -> Path:
    devkit = tmp_path / "VOCdevkit"
    voc = devkit / "VOC2012"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))
    for img_id, objects in images.items():
        (voc / "Annotations" / f"{img_id}.xml").write_text(_voc_xml(objects))
    return devkit


VOC_IMAGES = {
    "2008_000001": [("dog", 0), ("person", 0), ("dog", 0)],
    "2008_000002": [("cat", 0), ("chair", 1)],  # chair only as a difficult object
    "2008_000003": [("tvmonitor", 1)],  # nothing but a difficult object
}


def _names(ds: MultiLabelSet, i: int) -> set[str]:
    return {ds.class_names[k] for k in np.flatnonzero(ds.labels[i])}


def test_read_voc_counts_difficult_by_default(tmp_path):
    ds = read_voc(_make_voc(tmp_path, VOC_IMAGES))
    assert ds.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert ds.class_names[0] == "aeroplane" and ds.class_names[-1] == "tvmonitor"
    assert ds.ids == list(VOC_IMAGES)
    assert [_names(ds, i) for i in range(3)] == [{"dog", "person"}, {"cat", "chair"}, {"tvmonitor"}]
    assert ds.paths == [f"JPEGImages/{i}.jpg" for i in VOC_IMAGES]
    assert Path(ds.root) == tmp_path / "VOCdevkit" / "VOC2012"
    assert ds.image_path(0) == tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000001.jpg"


def test_read_voc_without_difficult(tmp_path, caplog):
    root = _make_voc(tmp_path, VOC_IMAGES)
    with caplog.at_level(logging.INFO, logger="dbloss.data.voc"):
        ds = read_voc(root, use_difficult=False)
    assert [_names(ds, i) for i in range(3)] == [{"dog", "person"}, {"cat"}, set()]
    assert "1 of 3 images" in caplog.text  # the now-empty image is kept and counted in the log
    dropped = read_voc(root, use_difficult=False, drop_empty=True)
    assert dropped.ids == ["2008_000001", "2008_000002"]


def test_read_voc_errors(tmp_path):
    root = _make_voc(tmp_path, VOC_IMAGES)
    xml = root / "VOC2012" / "Annotations" / "2008_000002.xml"
    xml.unlink()
    with pytest.raises(FileNotFoundError, match="2008_000002.xml"):
        read_voc(root)
    xml.write_text(_voc_xml([("unicorn", 0)]))
    with pytest.raises(ValueError, match=r"2008_000002\.xml.*unicorn"):
        read_voc(root)
    with pytest.raises(FileNotFoundError, match="val.txt"):
        read_voc(root, image_set="val")
    with pytest.raises(FileNotFoundError, match="VOC2007"):
        read_voc(root, year="2007")


# --------------------------------------------------------------------------- COCO


def _coco_dict() -> dict:
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 100, "height": 100},
            {"id": 11, "file_name": "b.jpg", "width": 100, "height": 100},
            {"id": 12, "file_name": "c.jpg", "width": 100, "height": 100},
            {"id": 13, "file_name": "d.jpg", "width": 100, "height": 100},
        ],
        # categories deliberately out of id order
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 18, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 50, 50], "area": 900, "iscrowd": 1},
            {"id": 4, "image_id": 12, "category_id": 1, "bbox": [0, 0, 0.5, 10], "area": 5, "iscrowd": 0},
            {"id": 5, "image_id": 12, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "ignore": True},
        ],
    }


def _write_json(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_read_coco(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dbloss.data.coco"):
        ds = read_coco(_write_json(tmp_path, _coco_dict()), tmp_path / "images")
    assert ds.class_names == ["person", "car", "dog"]  # sorted by category id
    assert ds.ids == ["10", "11"]  # 12 (only a degenerate box and an ignored one) and 13 dropped
    assert ds.labels.tolist() == [[1, 0, 1], [0, 1, 0]]  # the crowd annotation counts
    assert ds.paths == ["a.jpg", "b.jpg"] and ds.root == str(tmp_path / "images")
    assert "2 of 4 images" in caplog.text
    kept = read_coco(_write_json(tmp_path, _coco_dict()), tmp_path, drop_empty=False)
    assert kept.ids == ["10", "11", "12", "13"] and kept.labels[2:].sum() == 0


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["images"].append({"id": 11, "file_name": "e.jpg"}), r"duplicate image ids.*11"),
        (lambda d: d["categories"].append({"id": 3, "name": "bus"}), r"duplicate category ids.*3"),
        (lambda d: d["annotations"].append({"id": 9, "image_id": 99, "category_id": 1}), r"annotation 9 -> image_id 99"),
        (lambda d: d["annotations"].append({"id": 8, "image_id": 10, "category_id": 7}), r"annotation 8 -> category_id 7"),
        (lambda d: d.pop("categories"), r"'categories'"),
    ],
)
def test_read_coco_validation(tmp_path, edit, match):
    data = _coco_dict()
    edit(data)
    with pytest.raises(ValueError, match=match):
        read_coco(_write_json(tmp_path, data), tmp_path)


def test_read_coco_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_coco(path, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_coco(tmp_path / "missing.json", tmp_path)


# --------------------------------------------------------------------------- CSV


def _write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_csv_label_list(tmp_path):
    path = _write(tmp_path, "image,labels\nimg/a.jpg,dog cat\nimg/b.jpg,cat\n\nimg/c.jpg,bird  dog\n")
    ds = read_csv(path, label_column="labels")
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.labels.tolist() == [[0, 1, 1], [0, 1, 0], [1, 0, 1]]
    assert ds.ids == ds.paths == ["img/a.jpg", "img/b.jpg", "img/c.jpg"]
    assert ds.root == str(tmp_path)  # relative paths resolve against the CSV's folder by default
    explicit = read_csv(path, tmp_path / "x", label_column="labels", classes=["dog", "cat", "bird", "fish"])
    assert explicit.class_names == ["dog", "cat", "bird", "fish"] and explicit.root == str(tmp_path / "x")
    assert explicit.labels.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]]
    with pytest.raises(ValueError, match=r"line 5: unknown class 'bird'"):
        read_csv(path, label_column="labels", classes=["dog", "cat"])


def test_read_csv_separator_and_ids(tmp_path):
    path = _write(tmp_path, 'id,file,tags\n1,a.jpg,"x;y"\n2,b.jpg,y\n')
    ds = read_csv(path, path_column="file", id_column="id", label_column="tags", separator=";")
    assert ds.ids == ["1", "2"] and ds.paths == ["a.jpg", "b.jpg"]
    assert ds.labels.tolist() == [[1, 1], [0, 1]]


def test_read_csv_class_columns(tmp_path):
    path = _write(tmp_path, "image,cat,dog,bird\na.jpg,1,0,1\nb.jpg,0,1,0\n")
    ds = read_csv(path)
    assert ds.class_names == ["cat", "dog", "bird"] and ds.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    sub = read_csv(path, class_columns=["bird", "cat"], allow_empty=True)
    assert sub.class_names == ["bird", "cat"] and sub.labels.tolist() == [[1, 1], [0, 0]]


def test_read_csv_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no path column 'image'.*\['file', 'cat'\]"):
        read_csv(_write(tmp_path, "file,cat\na.jpg,1\n"))
    with pytest.raises(ValueError, match=r"line 3, column 'dog': expected 0 or 1, but got '2'"):
        read_csv(_write(tmp_path, "image,cat,dog\na.jpg,1,0\nb.jpg,0,2\n"))
    with pytest.raises(ValueError, match=r"duplicate path 'a.jpg' on lines 2, 3"):
        read_csv(_write(tmp_path, "image,cat\na.jpg,1\na.jpg,1\n"))
    with pytest.raises(ValueError, match=r"duplicate id '7'"):
        read_csv(_write(tmp_path, "id,image,cat\n7,a.jpg,1\n7,b.jpg,1\n"), id_column="id")
    with pytest.raises(ValueError, match=r"2 samples have no positive class \(lines 3, 4\)"):
        read_csv(_write(tmp_path, "image,cat,dog\na.jpg,1,0\nb.jpg,0,0\nc.jpg,0,0\n"))
    with pytest.raises(ValueError, match=r"1 samples have no positive class \(lines 3\)"):
        read_csv(_write(tmp_path, "image,labels\na.jpg,cat\nb.jpg,\n"), label_column="labels")
    with pytest.raises(ValueError, match=r"line 3: expected 2 fields, but got 3"):
        read_csv(_write(tmp_path, "image,cat\na.jpg,1\nb.jpg,1,0\n"))
    with pytest.raises(ValueError, match="both are None"):
        read_csv(_write(tmp_path, "image,cat\na.jpg,1\n"), path_column=None)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_csv(tmp_path / "nope.csv")


def test_check_images(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    ds = MultiLabelSet(ids=list("abcdefgh"), labels=np.ones((8, 1)), class_names=["x"], paths=[f"{c}.jpg" for c in "abcdefgh"], root=str(tmp_path))
    assert missing_images(ds) == [str(tmp_path / f"{c}.jpg") for c in "bcdefgh"]
    with pytest.raises(FileNotFoundError, match=r"7 of 8 image files are missing.*b\.jpg, .*f\.jpg, \.\.\.") as e:
        check_images(ds)
    assert "g.jpg" not in str(e.value)  # only the first few are named
    check_images(ds.subset([0]))  # nothing missing: no error
    with pytest.raises(ValueError, match="no image paths"):
        check_images(MultiLabelSet(ids=["a"], labels=[[1]], class_names=["x"]))


# --------------------------------------------------------------------------- shared data


def test_read_shared_label_csvs(voc_coco_mlt_dir):
    voc = read_csv(voc_coco_mlt_dir / "voc2012_trainval_labels.csv", path_column=None, id_column="image_id")
    assert voc.labels.shape == (11540, 20) and voc.class_names == list(VOC_CLASSES) and voc.paths is None
    assert voc.labels.sum(1).min() >= 1
    coco = read_csv(voc_coco_mlt_dir / "coco_mlt_train_labels.csv", path_column=None, id_column="image_id")
    assert coco.labels.shape == (1909, 80) and coco.class_names[:2] == ["person", "bicycle"]
    split = json.loads((voc_coco_mlt_dir / "coco_mlt_class_split.json").read_text())
    assert coco.stats().class_freq.tolist() == split["class_freq"]
