"""COCO-format reader: image-level multi-label targets from instance annotations.

Works for MS-COCO itself and for any COCO-format JSON (exports of annotation tools): the classes
are the file's categories sorted by category id (for MS-COCO: the 80 classes in the standard
order), an image is positive for every category it has a counted annotation of.

Which annotations count follows the original Distribution-Balanced loss code
(``mllt/datasets/coco.py``, ``CocoDataset._parse_ann_info``): crowd annotations
(``iscrowd=1``) **are** counted; an annotation is skipped when it has ``"ignore": true``, a
non-positive ``area``, or a box narrower or lower than 1 pixel. Annotations without ``bbox`` or
``area`` (classification-only exports) are counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dbloss.data.table import MultiLabelSet

__all__ = ["read_coco"]

log = logging.getLogger(__name__)


def _duplicates(values: list[Any]) -> list[Any]:
    return [v for v, n in Counter(values).items() if n > 1]


def _validate(data: Any, path: Path) -> None:
    """Check the parts of a COCO-format dict that the reader relies on."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with `images` and `categories`, but got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: expected a list under {key!r}; the file has keys {sorted(data)}")
    if not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected a list under 'annotations', but got {type(data.get('annotations')).__name__}")
    if not data["categories"]:
        raise ValueError(f"{path}: no categories")
    for what, items in (("image", data["images"]), ("category", data["categories"]), ("annotation", data["annotations"])):
        bad = [k for k, it in enumerate(items) if not isinstance(it, dict) or "id" not in it]
        if bad:
            raise ValueError(f"{path}: {len(bad)} {what} entries have no `id`, e.g. entry #{bad[0]}")
    img_ids = [im["id"] for im in data["images"]]
    cat_ids = [c["id"] for c in data["categories"]]
    for what, ids in (("image", img_ids), ("category", cat_ids)):
        dup = _duplicates(ids)
        if dup:
            raise ValueError(f"{path}: {len(dup)} duplicate {what} ids, e.g. {dup[:5]}")
    no_name = [c["id"] for c in data["categories"] if not isinstance(c.get("name"), str)]
    if no_name:
        raise ValueError(f"{path}: categories without a `name`: ids {no_name[:5]}")
    no_file = [im["id"] for im in data["images"] if not isinstance(im.get("file_name"), str)]
    if no_file:
        raise ValueError(f"{path}: {len(no_file)} images without a `file_name`, e.g. ids {no_file[:5]}")
    known_img, known_cat = set(img_ids), set(cat_ids)
    for field, known, what in (("image_id", known_img, "image"), ("category_id", known_cat, "category")):
        bad = [(a["id"], a.get(field)) for a in data["annotations"] if a.get(field) not in known]
        if bad:
            shown = ", ".join(f"annotation {a} -> {field} {v!r}" for a, v in bad[:5])
            raise ValueError(f"{path}: {len(bad)} annotations refer to unknown {what} ids: {shown}")


def _counted(ann: dict[str, Any]) -> bool:
    """Whether an annotation makes its image positive (the rule of the original DB-loss code)."""
    if ann.get("ignore", False):
        return False
    if "area" in ann and ann["area"] <= 0:
        return False
    bbox = ann.get("bbox")
    if bbox is not None and len(bbox) == 4 and (bbox[2] < 1 or bbox[3] < 1):
        return False
    return True


def read_coco(
    annotation_file: str | Path,
    image_root: str | Path,
    *,
    drop_empty: bool = True,
) -> MultiLabelSet:
    """Read a COCO-format instance annotation file as an (N, C) multi-label set.

    Args:
        annotation_file: a COCO-format JSON file (``images``, ``categories``, ``annotations``),
            e.g. ``instances_train2017.json`` or an annotation tool's export.
        image_root: the folder that the images' ``file_name`` are relative to.
        drop_empty: drop images without any counted annotation (default True; the number
            dropped is logged). False keeps them as all-negative rows.

    Returns:
        A :class:`MultiLabelSet`: ``ids`` the image ids as strings (in file order), ``labels``
        (N, C) with C the number of categories, columns sorted by category id,
        ``class_names`` the category names, ``paths`` the ``file_name`` s, ``root`` = image_root.

    Raises:
        FileNotFoundError: no such annotation file.
        ValueError: not JSON; missing ``images``/``categories``; duplicate image or category ids;
            annotations that refer to unknown image or category ids (named, up to 5).

    >>> ds = read_coco("annotations/instances_train2017.json", "train2017")  # doctest: +SKIP
    >>> ds.labels.shape, ds.class_names[:2]  # doctest: +SKIP
    ((117266, 80), ['person', 'bicycle'])
    """
    from pycocotools.coco import COCO  # imported here: only this reader needs it

    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        data.setdefault("annotations", [])  # image-info files (test sets) have no annotations
    _validate(data, path)

    coco = COCO()  # the file is read once above; pycocotools only builds its index here
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index... index created!"
        coco.createIndex()

    cat_ids = sorted(coco.getCatIds())
    col = {c: k for k, c in enumerate(cat_ids)}
    class_names = [coco.cats[c]["name"] for c in cat_ids]
    img_ids = [im["id"] for im in data["images"]]  # file order (as coco.getImgIds())
    labels = np.zeros((len(img_ids), len(cat_ids)), dtype=np.int64)
    n_skipped = 0
    for i, img_id in enumerate(img_ids):
        for ann in coco.imgToAnns.get(img_id, []):
            if _counted(ann):
                labels[i, col[ann["category_id"]]] = 1
            else:
                n_skipped += 1
    if n_skipped:
        log.info("%s: %d annotations skipped (ignore flag, area <= 0 or box side < 1 px)", path.name, n_skipped)
    empty = labels.sum(1) == 0
    n_empty = int(empty.sum())
    if n_empty:
        log.info(
            "%s: %d of %d images have no counted annotation (%s)",
            path.name, n_empty, len(img_ids), "dropped" if drop_empty else "kept as all-negative",
        )  # fmt: skip
    if drop_empty and n_empty == len(img_ids):
        raise ValueError(f"{path}: no image has a counted annotation")
    ds = MultiLabelSet(
        ids=[str(i) for i in img_ids],
        labels=labels,
        class_names=class_names,
        paths=[coco.imgs[i]["file_name"] for i in img_ids],
        root=str(image_root),
    )
    if drop_empty and n_empty:
        ds = ds.subset(np.flatnonzero(~empty))
    return ds
