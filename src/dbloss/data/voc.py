"""Pascal VOC reader: image-level multi-label targets from the VOC detection annotations.

An image is positive for a class when at least one object of that class is annotated in it
(``Annotations/{id}.xml``). The original Distribution-Balanced loss code counts every object,
difficult ones included, and the published VOC-MLT label matrices were made that way, so that is
the default here (``use_difficult=True``).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from dbloss.data.table import MultiLabelSet

__all__ = ["VOC_CLASSES", "read_voc"]

log = logging.getLogger(__name__)

#: The 20 Pascal VOC classes in the standard order (column k of the label matrix is class k).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"VOC image-set file not found: {path}")
    ids = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:  # first column: the image id (class-specific lists add a " 1"/"-1" column)
            ids.append(parts[0])
    return ids


def _image_classes(xml_path: Path, use_difficult: bool, index: dict[str, int]) -> list[int]:
    """Class indices of the (counted) objects annotated in one XML file."""
    if not xml_path.is_file():
        raise FileNotFoundError(f"VOC annotation file not found: {xml_path}")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: not valid XML ({e})") from None
    found = []
    for obj in root.iter("object"):
        name_el = obj.find("name")
        if name_el is None or not (name_el.text or "").strip():
            raise ValueError(f"{xml_path}: an <object> has no <name>")
        name = name_el.text.strip()
        if name not in index:
            raise ValueError(f"{xml_path}: unknown class {name!r}; expected one of {list(index)}")
        difficult_el = obj.find("difficult")
        difficult = difficult_el is not None and (difficult_el.text or "0").strip() == "1"
        if difficult and not use_difficult:
            continue
        found.append(index[name])
    return found


def read_voc(
    root: str | Path,
    year: str = "2012",
    image_set: str = "trainval",
    *,
    use_difficult: bool = True,
    drop_empty: bool = False,
) -> MultiLabelSet:
    """Read a Pascal VOC image set as an (N, 20) multi-label set.

    Args:
        root: the ``VOCdevkit`` folder (it contains ``VOC{year}/``).
        year: "2007", "2012", ...: the ``VOC{year}`` sub-folder.
        image_set: the list ``VOC{year}/ImageSets/Main/{image_set}.txt`` ("train", "val",
            "trainval", "test").
        use_difficult: True (default) counts objects marked ``difficult`` as positives, as the
            original DB-loss code and the published VOC-MLT labels do. False ignores them, as the
            standard VOC evaluation does: a class present in an image only through difficult
            objects is then a *negative* for that image (not an "ignore" entry).
        drop_empty: drop images with no counted object (default False: keep them, all-negative,
            and log how many there are).

    Returns:
        A :class:`MultiLabelSet` with ``ids`` the VOC image ids, ``labels`` (N, 20) in
        :data:`VOC_CLASSES` order, ``paths`` ``JPEGImages/{id}.jpg`` relative to
        ``root = VOCdevkit/VOC{year}``.

    Raises:
        FileNotFoundError: the image-set list or an annotation XML is missing (named).
        ValueError: an XML file is malformed or names an unknown class (file and class named).

    >>> ds = read_voc("data/VOCdevkit", "2012", "trainval")  # doctest: +SKIP
    >>> ds.labels.shape, ds.class_names[0], ds.paths[0]  # doctest: +SKIP
    ((11540, 20), 'aeroplane', 'JPEGImages/2008_000002.jpg')
    """
    voc_dir = Path(root) / f"VOC{year}"
    if not voc_dir.is_dir():
        raise FileNotFoundError(f"VOC folder not found: {voc_dir} (expected `root` to be the VOCdevkit folder)")
    ids = _read_id_list(voc_dir / "ImageSets" / "Main" / f"{image_set}.txt")
    if not ids:
        raise ValueError(f"{voc_dir / 'ImageSets' / 'Main' / f'{image_set}.txt'} lists no images")
    index = {name: k for k, name in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int64)
    for i, img_id in enumerate(ids):
        labels[i, _image_classes(voc_dir / "Annotations" / f"{img_id}.xml", use_difficult, index)] = 1
    empty = labels.sum(1) == 0
    n_empty = int(empty.sum())
    if n_empty:
        what = "object" if use_difficult else "non-difficult object"
        action = "dropped" if drop_empty else "kept as all-negative"
        log.info("VOC%s %s: %d of %d images have no %s (%s)", year, image_set, n_empty, len(ids), what, action)
    if drop_empty and n_empty == len(ids):
        raise ValueError(f"VOC{year} {image_set}: no image has a counted object (use_difficult={use_difficult})")
    paths = [f"JPEGImages/{i}.jpg" for i in ids]
    ds = MultiLabelSet(ids=ids, labels=labels, class_names=list(VOC_CLASSES), paths=paths, root=str(voc_dir))
    if drop_empty and n_empty:
        ds = ds.subset(np.flatnonzero(~empty))
    return ds
