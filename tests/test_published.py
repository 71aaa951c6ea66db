"""Tests of dbloss.data.published (the VOC-MLT / COCO-MLT id lists of the original work)."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import pytest

from dbloss.data.custom import read_csv
from dbloss.data.published import PUBLISHED_SUBSETS, canonical_sha256, fetch_published_subset, load_id_list


def _id_column(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [row["image_id"] for row in csv.DictReader(f)]


def test_registry():
    assert set(PUBLISHED_SUBSETS) == {"voc-mlt", "coco-mlt"}
    for spec in PUBLISHED_SUBSETS.values():
        assert spec.url.startswith("https://raw.githubusercontent.com/wutong16/DistributionBalancedLoss/")
        assert spec.sha256 is None or len(spec.sha256) == 64
    assert (PUBLISHED_SUBSETS["voc-mlt"].count, PUBLISHED_SUBSETS["coco-mlt"].count) == (1142, 1909)


def test_voc_mlt_subset_reproduces_class_counts(voc_coco_mlt_dir, tmp_path):
    ids = _id_column(voc_coco_mlt_dir / "voc_mlt_train_labels.csv")
    src = tmp_path / "img_id.txt"
    src.write_text("\n".join(ids) + "\n")
    path = fetch_published_subset("voc-mlt", tmp_path / "lists", source=src)  # verifies count and checksum
    loaded = load_id_list(path)
    assert loaded == ids and len(loaded) == 1142

    full = read_csv(voc_coco_mlt_dir / "voc2012_trainval_labels.csv", path_column=None, id_column="image_id")
    stats = full.select_ids(loaded).stats()
    ref = json.loads((voc_coco_mlt_dir / "voc_mlt_class_split.json").read_text())
    assert stats.class_names == ref["classes"]
    assert stats.class_freq.tolist() == ref["class_freq"]
    assert stats.split == {g: ref[g] for g in ("head", "medium", "tail")}
    assert [len(stats.split[g]) for g in ("head", "medium", "tail")] == [6, 6, 8]
    assert (stats.class_freq.max(), stats.class_freq.min()) == (775, 4)


def test_coco_mlt_subset(voc_coco_mlt_dir, tmp_path):
    labels_csv = voc_coco_mlt_dir / "coco_mlt_train_labels.csv"
    ids = _id_column(labels_csv)
    src = tmp_path / "img_id.pkl"  # named .pkl upstream, plain text inside; CRLF must pass too
    src.write_bytes(("\r\n".join(ids) + "\r\n").encode())
    loaded = load_id_list(fetch_published_subset("coco-mlt", tmp_path, source=src))
    assert loaded == ids and len(loaded) == 1909 and all(i.isdigit() for i in loaded)

    stats = read_csv(labels_csv, path_column=None, id_column="image_id").select_ids(loaded).stats()
    ref = json.loads((voc_coco_mlt_dir / "coco_mlt_class_split.json").read_text())
    assert stats.class_freq.tolist() == ref["class_freq"]
    assert [len(stats.split[g]) for g in ("head", "medium", "tail")] == [22, 33, 25]
    assert stats.split == {g: ref[g] for g in ("head", "medium", "tail")}


def test_fetch_with_local_source(tmp_path):
    ids = [f"2008_{i:06d}" for i in range(1142)]
    src = tmp_path / "ids.txt"
    src.write_text("\n".join(ids) + "\n")
    spec = PUBLISHED_SUBSETS["voc-mlt"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PUBLISHED_SUBSETS, "voc-mlt", dataclasses.replace(spec, sha256=canonical_sha256(ids)))
        out = fetch_published_subset("voc-mlt", tmp_path / "dest", source=src)
    assert out == tmp_path / "dest" / spec.filename and load_id_list(out) == ids


def test_fetch_wrong_checksum(tmp_path):
    src = tmp_path / "ids.txt"
    ids = [f"2008_{i:06d}" for i in range(1142)]  # right count, wrong ids
    src.write_text("\n".join(ids) + "\n")
    expected = PUBLISHED_SUBSETS["voc-mlt"].sha256
    with pytest.raises(ValueError, match="checksum mismatch") as e:
        fetch_published_subset("voc-mlt", tmp_path / "dest", source=src)
    assert expected in str(e.value) and canonical_sha256(ids) in str(e.value)
    assert not any((tmp_path / "dest").iterdir())  # nothing left behind


def test_fetch_wrong_count_without_checksum(tmp_path):
    src = tmp_path / "ids.txt"
    src.write_text("a\nb\n")
    spec = dataclasses.replace(PUBLISHED_SUBSETS["coco-mlt"], sha256=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PUBLISHED_SUBSETS, "coco-mlt", spec)
        with pytest.raises(ValueError, match="expected 1909 ids.*got 2"):
            fetch_published_subset("coco-mlt", tmp_path, source=src)


def test_fetch_errors(tmp_path):
    with pytest.raises(ValueError, match="voc-mlt"):
        fetch_published_subset("lvis-mlt", tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        fetch_published_subset("voc-mlt", tmp_path, source=tmp_path / "nope.txt")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/img_id.txt", "http://10.255.255.1/img_id.txt"])
def test_fetch_without_network_fails_fast(tmp_path, url):
    """A refused connection and an unreachable host both give a clear error within the timeout."""
    spec = dataclasses.replace(PUBLISHED_SUBSETS["voc-mlt"], url=url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PUBLISHED_SUBSETS, "voc-mlt", spec)
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="--source PATH"):
            fetch_published_subset("voc-mlt", tmp_path, timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert not list(tmp_path.iterdir())


def test_download_with_subset_fetches_each_data_sets_list_after_its_images(tmp_path, monkeypatch):
    """voc-mlt: VOC 2012's images, the VOC-MLT list (from the mirror), then VOC 2007's; the generic
    downloader (dbloss.data.download) is only asked for images."""
    from dbloss.data import published

    calls = []
    monkeypatch.setattr(published, "download_dataset",
                        lambda name, dest, **kw: calls.append(("images", name)) or Path(dest) / "VOCdevkit")
    monkeypatch.setattr(published, "fetch_published_subset",
                        lambda name, folder, url: calls.append(("list", name, Path(folder), url)))
    monkeypatch.setenv("DBLOSS_MIRROR", "http://mirror.example/data/")
    root = published.download_with_subset("voc-mlt", tmp_path, progress=False)
    assert root == tmp_path / "VOCdevkit"
    assert calls == [("images", "voc2012"),
                     ("list", "voc-mlt", tmp_path / "published", "http://mirror.example/data/voc_mlt_img_id.txt"),
                     ("images", "voc2007")]
    calls.clear()
    published.download_with_subset("coco-mlt", tmp_path, subset=False)
    assert calls == [("images", "coco2017")]
    monkeypatch.delenv("DBLOSS_MIRROR")
    published.download_with_subset("coco2017", tmp_path)
    assert calls[-1] == ("list", "coco-mlt", tmp_path / "published", PUBLISHED_SUBSETS["coco-mlt"].url)
