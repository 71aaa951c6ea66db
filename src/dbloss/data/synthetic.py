"""Built-in demo data: a small long-tailed multi-label image dataset drawn procedurally.

:func:`generate_demo_dataset` writes, with no download, a dataset of 64 x 64 scenes of
geometric objects (14 classes, :data:`DEMO_CLASSES`) in COCO format, so that it goes through
the same reader as a user's own data (``dbloss.data.coco.read_coco``):

```
OUT_DIR/
  images/train/000001.png ...   training images
  images/test/000001.png ...    test images
  train.json, test.json         COCO-format annotations (images, annotations, categories)
  manifest.json                 the generation parameters (a matching one means "reuse")
```

How it is made:

- **Labels, train split.** A large *pool* of label vectors is drawn first: each image has a
  main class, drawn with probability decaying geometrically along :data:`DEMO_CLASSES`
  (``pool_decay``, 0.75); each non-head class has a *partner* head class of similar look
  (:data:`DEMO_PARTNERS`, e.g. hexagon -> disk, frame -> square) which is drawn with it with
  probability 0.85 (the six rarest classes) or 0.5 (the others): the "toothbrush with a
  person" effect of COCO, which couples re-sampling of a tail class with its head partner.
  A quarter of the images also get a random head class. The training split is then drawn
  from the pool with the paper's own procedure, :func:`dbloss.data.longtail.make_longtail_subset`
  (Pareto targets, shape 6, ``max_count`` 800, ``min_count`` 4), which gives about 1,400
  images (class counts 803 down to 7 for seed 0) with 4 head (>= 100 images), 5 medium and
  5 tail (< 20) classes; 86-100% of a tail class's images also show its partner.
- **Labels, test split.** Balanced: images are added, each with a main class among the classes
  with the fewest positives so far (partner drawn with probability 0.25, a random extra class
  with probability 0.15), until every class has ``test_per_class`` (50) positives: about 510
  images with 50-52 positives per class.
- **Images.** A smooth two-colour background with pixel noise; each positive class drawn as
  one object (sometimes two) of random radius (14-24% of the side), position, rotation, colour
  and shading, anti-aliased by 2 x 2 supersampling, placed so that objects overlap (occlude)
  by at most 30% box IoU; 1-4 distractors (lines, dot clusters, polylines), some drawn over
  the objects. Each class has a base hue (jittered): the four head partners are far apart on
  the colour circle and every other class sits close to its partner's hue, so a class is
  recognised by colour and geometry (and, for stripes / checker, texture), and tail classes
  look like their head partners in both.

Every image has its own random stream ``(seed, split, index)``; the same parameters give
byte-identical files. Generation takes about 5 s on one CPU core (23 MB of PNGs).
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torchvision.io import write_png

from dbloss.data.longtail import make_longtail_subset
from dbloss.errors import UsageError
from dbloss.files import write_json

__all__ = ["DEMO_CLASSES", "DEMO_PARTNERS", "DemoPaths", "find_demo_dataset", "generate_demo_dataset",
           "generate_source_dataset"]

logger = logging.getLogger(__name__)

#: Bump when the generator's output changes, so that cached datasets are regenerated.
DEMO_VERSION = 2

#: The 14 object classes, from most to least frequent in the label pool.
DEMO_CLASSES: tuple[str, ...] = (
    "disk", "square", "triangle", "cross",  # head partners
    "ellipse", "ring", "star", "diamond",  # mostly medium
    "stripes", "half_disk", "hexagon", "crescent", "frame", "checker",  # mostly tail
)
#: Partner head class of each non-head class (drawn together with it; often a look-alike).
DEMO_PARTNERS: dict[str, str] = {
    "ellipse": "triangle", "star": "triangle",
    "ring": "cross", "diamond": "cross",
    "half_disk": "disk", "hexagon": "disk", "crescent": "disk",
    "stripes": "square", "frame": "square", "checker": "square",
}
_NUM_HEAD_PARTNERS = 4  # the first four classes are the head partners
_NUM_STRONG = 6  # the last six classes are drawn with their partner with probability _Q_STRONG
_Q_STRONG, _Q_WEAK, _Q_TEST = 0.85, 0.5, 0.25
_P_EXTRA_HEAD, _P_EXTRA_TEST = 0.25, 0.15
_SS = 2  # supersampling factor (anti-aliasing)
_IMAGE_NAME = re.compile(r"^\d{6}\.png$")


@dataclass(frozen=True)
class DemoPaths:
    """Where :func:`generate_demo_dataset` put the dataset.

    Attributes:
        train_json: COCO-format annotations of the training split.
        test_json: COCO-format annotations of the test split.
        image_root: the folder that the ``file_name`` entries of both JSON files are relative to.
    """

    train_json: Path
    test_json: Path
    image_root: Path


# ----------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------

def _partner_index() -> np.ndarray:
    idx = np.full(len(DEMO_CLASSES), -1, dtype=np.int64)
    for k, name in enumerate(DEMO_CLASSES):
        if name in DEMO_PARTNERS:
            idx[k] = DEMO_CLASSES.index(DEMO_PARTNERS[name])
    return idx


def _pool_labels(rng: np.random.Generator, size: int, decay: float) -> np.ndarray:
    """(size, C) label pool: a main class, its partner, and sometimes a random head class."""
    c = len(DEMO_CLASSES)
    partner = _partner_index()
    weights = decay ** np.arange(c, dtype=np.float64)
    main = rng.choice(c, size=size, p=weights / weights.sum())
    q = np.where(np.arange(c) >= c - _NUM_STRONG, _Q_STRONG, _Q_WEAK)
    with_partner = (partner[main] >= 0) & (rng.random(size) < q[main])
    with_extra = rng.random(size) < _P_EXTRA_HEAD
    extra = rng.integers(_NUM_HEAD_PARTNERS, size=size)
    labels = np.zeros((size, c), dtype=np.int64)
    rows = np.arange(size)
    labels[rows, main] = 1
    labels[rows[with_partner], partner[main[with_partner]]] = 1
    labels[rows[with_extra], extra[with_extra]] = 1
    return labels


def _balanced_labels(rng: np.random.Generator, per_class: int) -> np.ndarray:
    """Label rows added greedily (main class among the least frequent) until each class has ``per_class``."""
    c = len(DEMO_CLASSES)
    partner = _partner_index()
    counts = np.zeros(c, dtype=np.int64)
    rows: list[np.ndarray] = []
    while counts.min() < per_class:
        row = np.zeros(c, dtype=np.int64)
        main = int(rng.choice(np.flatnonzero(counts == counts.min())))
        row[main] = 1
        if partner[main] >= 0 and rng.random() < _Q_TEST:
            row[partner[main]] = 1
        if rng.random() < _P_EXTRA_TEST:
            row[rng.integers(c)] = 1
        counts += row
        rows.append(row)
    return np.stack(rows)


# ----------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------

def _regular_polygon(n: int, radius: float = 1.0, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular n-gon (or an n-pointed star with inner radius ``inner``), one vertex up."""
    if inner is None:
        ang = np.pi / 2 + 2 * np.pi * np.arange(n) / n
        rad = np.full(n, radius)
    else:
        ang = np.pi / 2 + np.pi * np.arange(2 * n) / n
        rad = np.where(np.arange(2 * n) % 2 == 0, radius, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def _in_polygon(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over the points (u, v)."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(verts, np.roll(verts, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = (x2 - x1) * (v - y1) / (y2 - y1) + x1
        inside ^= crosses & (u < x_at)
    return inside


_TRIANGLE = _regular_polygon(3, 1.05)
_HEXAGON = _regular_polygon(6, 0.98)
_STAR = _regular_polygon(5, 1.05, inner=0.45)
_DIAMOND = np.array([[0.0, 1.0], [0.55, 0.0], [0.0, -1.0], [-0.55, 0.0]])

ShapeFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


def _box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v))


#: Shape masks in the object's frame: (u, v) in units of the object radius.
#: Each returns (inside mask, second-colour mask or None).
_SHAPES: dict[str, ShapeFn] = {
    "disk": lambda u, v: (u * u + v * v <= 1.0, None),
    "square": lambda u, v: (_box(u, v) <= 0.8, None),
    "triangle": lambda u, v: (_in_polygon(u, v, _TRIANGLE), None),
    "cross": lambda u, v: (((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)), None),
    "ellipse": lambda u, v: (u * u + (v / 0.45) ** 2 <= 1.0, None),
    "ring": lambda u, v: ((u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2), None),
    "star": lambda u, v: (_in_polygon(u, v, _STAR), None),
    "diamond": lambda u, v: (_in_polygon(u, v, _DIAMOND), None),
    "stripes": lambda u, v: (_box(u, v) <= 0.8, np.floor((u + 0.8) / 0.32) % 2 == 1),
    "half_disk": lambda u, v: ((u * u + v * v <= 1.0) & (v >= -0.1), None),
    "hexagon": lambda u, v: (_in_polygon(u, v, _HEXAGON), None),
    "crescent": lambda u, v: ((u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2), None),
    "frame": lambda u, v: ((_box(u, v) <= 0.85) & (_box(u, v) >= 0.48), None),
    "checker": lambda u, v: (
        _box(u, v) <= 0.8,
        (np.floor((u + 0.8) / (1.6 / 3)) + np.floor((v + 0.8) / (1.6 / 3))) % 2 == 1,
    ),
}
assert set(_SHAPES) == set(DEMO_CLASSES)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates (x, y), each (size * _SS, size * _SS), in output pixels."""
    t = (np.arange(size * _SS, dtype=np.float64) + 0.5) / _SS
    x, y = np.meshgrid(t, t, indexing="xy")
    return x, y


Window = tuple[slice, slice]  # (rows, cols) in output pixels


def _window(x0: float, y0: float, x1: float, y1: float, size: int) -> Window | None:
    """The output-pixel window covering the box [x0, x1] x [y0, y1], clipped; None if empty."""
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(size, int(np.ceil(x1)) + 1), min(size, int(np.ceil(y1)) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _sub_grid(size: int, win: Window) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled coordinates (x, y) inside ``win``."""
    x, y = _grid(size)
    rows = slice(win[0].start * _SS, win[0].stop * _SS)
    cols = slice(win[1].start * _SS, win[1].stop * _SS)
    return x[rows, cols], y[rows, cols]


def _pool(a: np.ndarray) -> np.ndarray:
    """Average each _SS x _SS block of the trailing two axes (supersampled -> output pixels)."""
    out = a[..., 0::_SS, 0::_SS].astype(np.float64)
    for i in range(_SS):
        for j in range(_SS):
            if i or j:
                out += a[..., i::_SS, j::_SS]
    return out / (_SS * _SS)


def _blend(img: np.ndarray, win: Window, alpha: np.ndarray, premult: np.ndarray) -> None:
    """``img[win] = img[win] * (1 - alpha) + premult`` in place (premultiplied colour)."""
    view = img[:, win[0], win[1]]
    view *= 1.0 - alpha
    view += premult


def _interp_matrix(size: int, k: int) -> np.ndarray:
    """(size, k) linear interpolation weights from k control points spread over [0, size]."""
    pos = (np.arange(size) + 0.5) / size * (k - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, k - 2)
    frac = pos - lo
    m = np.zeros((size, k))
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] += frac
    return m


def _random_colour(rng: np.random.Generator, v_range: tuple[float, float] = (0.3, 1.0)) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.25, 1.0), rng.uniform(*v_range)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


@lru_cache(maxsize=None)
def _class_hues() -> dict[str, float]:
    """Base hue of each class: the head partners spread around the colour circle, each other class
    close to its partner's hue (look-alike colours, as look-alike shapes)."""
    hues = {name: k / _NUM_HEAD_PARTNERS for k, name in enumerate(DEMO_CLASSES[:_NUM_HEAD_PARTNERS])}
    offsets = (0.07, -0.07, 0.14)
    taken: dict[str, int] = {}
    for name in DEMO_CLASSES[_NUM_HEAD_PARTNERS:]:
        partner = DEMO_PARTNERS[name]
        n = taken.get(partner, 0)
        taken[partner] = n + 1
        hues[name] = (hues[partner] + offsets[n]) % 1.0
    return hues


def _class_colour(rng: np.random.Generator, shape: str) -> np.ndarray:
    """A colour near the class's base hue (jitter +-0.02), saturated, of random brightness."""
    h = (_class_hues()[shape] + rng.uniform(-0.02, 0.02)) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.45, 1.0)))


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(3, size, size) smooth two-colour background."""
    k = int(rng.integers(2, 6))
    m = _interp_matrix(size, k)
    field = m @ rng.random((k, k)) @ m.T  # (size, size) in [0, 1]
    a, b = _random_colour(rng, (0.15, 0.95)), _random_colour(rng, (0.15, 0.95))
    return a[:, None, None] + (b - a)[:, None, None] * field[None]


def _draw_segment(img: np.ndarray, size: int, p0: np.ndarray, p1: np.ndarray, width: float, colour: np.ndarray) -> None:
    """Draw a line segment of ``width`` pixels onto ``img`` in place."""
    half = width / 2
    win = _window(min(p0[0], p1[0]) - half, min(p0[1], p1[1]) - half, max(p0[0], p1[0]) + half, max(p0[1], p1[1]) + half, size)
    if win is None:
        return
    x, y = _sub_grid(size, win)
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    mask = (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 <= half**2
    alpha = _pool(mask)
    _blend(img, win, alpha, colour[:, None, None] * alpha)


def _draw_dot(img: np.ndarray, size: int, c: np.ndarray, radius: float, colour: np.ndarray) -> None:
    win = _window(c[0] - radius, c[1] - radius, c[0] + radius, c[1] + radius, size)
    if win is None:
        return
    x, y = _sub_grid(size, win)
    alpha = _pool((x - c[0]) ** 2 + (y - c[1]) ** 2 <= radius**2)
    _blend(img, win, alpha, colour[:, None, None] * alpha)


def _draw_distractor(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """Draw a line, a dot cluster or a polyline (none of them a class) onto ``img`` in place."""
    kind = int(rng.integers(3))
    colour = _random_colour(rng)
    if kind == 0:  # line
        _draw_segment(img, size, rng.uniform(0, size, 2), rng.uniform(0, size, 2), rng.uniform(0.6, 1.6), colour)
    elif kind == 1:  # dot cluster
        centre = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(3, 9))):
            _draw_dot(img, size, centre + rng.normal(0, size * 0.06, 2), rng.uniform(0.5, 1.6), colour)
    else:  # polyline
        pts = rng.uniform(0, size, 2) + np.cumsum(rng.normal(0, size * 0.15, (4, 2)), axis=0)
        width = rng.uniform(0.6, 1.4)
        for p0, p1 in zip(pts[:-1], pts[1:]):
            _draw_segment(img, size, p0, p1, width, colour)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place(rng: np.random.Generator, size: int, placed: list[tuple[float, float, float, float]]) -> tuple[float, float, float]:
    """Centre and radius of a new object, overlapping earlier ones by at most 0.3 box IoU if possible."""
    best: tuple[float, tuple[float, float, float]] | None = None
    for _ in range(30):
        r = rng.uniform(0.14, 0.24) * size
        cx, cy = rng.uniform(0.8 * r, size - 0.8 * r, 2)
        box = (cx - r, cy - r, cx + r, cy + r)
        worst = max((_iou(box, p) for p in placed), default=0.0)
        if best is None or worst < best[0]:
            best = (worst, (float(cx), float(cy), float(r)))
        if worst <= 0.3:
            break
    assert best is not None
    return best[1]


def _draw_object(
    img: np.ndarray, rng: np.random.Generator, size: int, shape: str, cx: float, cy: float, r: float
) -> tuple[list[int], int]:
    """Draw one object onto ``img`` (3, size, size) in place; return its COCO bbox [x, y, w, h] and area."""
    theta = rng.uniform(0, 2 * np.pi)
    reach = 1.25 * r  # every shape lies within 1.25 radii of its centre
    win = _window(cx - reach, cy - reach, cx + reach, cy + reach, size)
    assert win is not None  # centres lie inside the image
    x, y = _sub_grid(size, win)
    dx, dy = (x - cx) / r, (y - cy) / r
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    inside, second = _SHAPES[shape](u, v)
    alpha = _pool(inside)

    # a colour that stands out from the background under the object (9 times in 10)
    under = (img[:, win[0], win[1]] * alpha).sum(axis=(1, 2)) / max(float(alpha.sum()), 1e-9)
    colour = _class_colour(rng, shape)
    if rng.random() < 0.9:
        for _ in range(10):
            if abs(_luma(colour) - _luma(under)) >= 0.2:
                break
            colour = _class_colour(rng, shape)
    field = np.broadcast_to(colour[:, None, None], (3,) + inside.shape).copy()
    if second is not None:
        other = _random_colour(rng, (0.05, 0.35) if _luma(colour) > 0.5 else (0.65, 1.0))
        field[:, second] = other[:, None]
    phi = rng.uniform(0, 2 * np.pi)
    field *= 1.0 + rng.uniform(0.0, 0.3) * (np.cos(phi) * u + np.sin(phi) * v)[None]  # shading
    _blend(img, win, alpha, _pool(field * inside[None]))

    ys, xs = np.nonzero(alpha > 0)
    x0, y0 = win[1].start + int(xs.min()), win[0].start + int(ys.min())
    bbox = [x0, y0, int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return bbox, int(round(float(alpha.sum())))


def _render(label_row: np.ndarray, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Draw one scene with an object of each positive class; return (3, size, size) uint8 and its objects."""
    img = _background(rng, size)
    n_distract = int(rng.integers(1, 5))
    on_top = rng.random(n_distract) < 0.3
    for k in range(n_distract):
        if not on_top[k]:
            _draw_distractor(img, rng, size)
    classes = [int(k) for k in np.flatnonzero(label_row)]
    if rng.random() < 0.15:
        classes.append(int(rng.choice(classes)))  # a second instance of one class
    classes = [classes[i] for i in rng.permutation(len(classes))]  # drawing (occlusion) order
    placed: list[tuple[float, float, float, float]] = []
    objects = []
    for k in classes:
        cx, cy, r = _place(rng, size, placed)
        placed.append((cx - r, cy - r, cx + r, cy + r))
        bbox, area = _draw_object(img, rng, size, DEMO_CLASSES[k], cx, cy, r)
        objects.append({"category": k, "bbox": bbox, "area": area})
    for k in range(n_distract):
        if on_top[k]:
            _draw_distractor(img, rng, size)
    img += rng.normal(0.0, rng.uniform(0.01, 0.05), img.shape)
    u8 = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(u8)), objects


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------

def _write_split(
    out_dir: Path, split: str, split_id: int, labels: np.ndarray, seed: int, size: int, params: dict[str, Any]
) -> Path:
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, row in enumerate(labels):
        rng = np.random.default_rng([seed, split_id, i])
        img, objects = _render(row, rng, size)
        image_id = i + 1
        file_name = f"{split}/{image_id:06d}.png"
        write_png(img, str(out_dir / "images" / file_name), compression_level=6)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category"] + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"dbloss demo data ({split} split), procedurally generated", "version": str(DEMO_VERSION), "parameters": params},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(DEMO_CLASSES)],
    }
    path = out_dir / f"{split}.json"
    path.write_text(json.dumps(coco, separators=(",", ":")))
    return path


def _paths(out_dir: Path) -> DemoPaths:
    return DemoPaths(train_json=out_dir / "train.json", test_json=out_dir / "test.json", image_root=out_dir / "images")


def _parameters(*, seed: int = 0, image_size: int = 64, max_count: int = 800, min_count: int = 4,
                pareto_shape: float = 6.0, pool_size: int = 8000, pool_decay: float = 0.75,
                test_per_class: int = 50) -> dict[str, Any]:
    """The generation parameters recorded in ``manifest.json`` (the defaults: the demo's)."""
    return {"version": DEMO_VERSION, "seed": int(seed), "image_size": int(image_size), "max_count": int(max_count),
            "min_count": int(min_count), "pareto_shape": float(pareto_shape), "pool_size": int(pool_size),
            "pool_decay": float(pool_decay), "test_per_class": int(test_per_class)}


def find_demo_dataset(out_dir: str | os.PathLike[str], *, seed: int = 0) -> DemoPaths:
    """The demo dataset that :func:`generate_demo_dataset` (default parameters) wrote in ``out_dir``.

    Reading never generates: ``dbloss train`` / ``dbloss demo`` generate it first (an explicit
    step, logged), and ``dbloss data make-demo DIR`` makes it by hand.

    Raises:
        UsageError: ``out_dir`` holds no complete demo dataset (the message names the command).
    """
    out = Path(out_dir)
    if not _is_complete(out, _parameters(seed=seed)):
        raise UsageError(f"no complete demo dataset in {out}: generate it with `dbloss data make-demo {out}` "
                         f"(`dbloss train` and `dbloss demo` generate it on first use)")
    return _paths(out)


def _is_complete(out_dir: Path, params: dict[str, Any]) -> bool:
    manifest = out_dir / "manifest.json"
    try:
        found = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if found.get("parameters") != params:
        return False
    for split in ("train", "test"):
        count = found.get("num_images", {}).get(split)
        if not (out_dir / f"{split}.json").is_file() or not isinstance(count, int):
            return False
        if sum(1 for _ in (out_dir / "images" / split).glob("*.png")) != count:
            return False
    return True


def _clear_previous(out_dir: Path) -> None:
    """Remove a previous demo dataset's files; refuse if our folders hold anything else."""
    for split in ("train", "test"):
        folder = out_dir / "images" / split
        if folder.is_dir():
            foreign = [p.name for p in folder.iterdir() if not (p.is_file() and _IMAGE_NAME.match(p.name))]
            if foreign:
                raise FileExistsError(
                    f"{folder} holds files that the demo generator did not write (e.g. {foreign[0]!r}); "
                    "choose another output folder"
                )
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for split in ("train", "test"):
        folder = out_dir / "images" / split
        if folder.is_dir():
            shutil.rmtree(folder)
        (out_dir / f"{split}.json").unlink(missing_ok=True)


def generate_demo_dataset(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    image_size: int = 64,
    max_count: int = 800,
    min_count: int = 4,
    pareto_shape: float = 6.0,
    pool_size: int = 8000,
    pool_decay: float = 0.75,
    test_per_class: int = 50,
    force: bool = False,
) -> DemoPaths:
    """Write (or reuse) the built-in long-tailed multi-label demo dataset; see the module docstring.

    If ``out_dir`` already holds a complete dataset made with the same parameters (its
    ``manifest.json`` says so and all images are there), it is reused without redrawing.
    Otherwise the files of any previous demo dataset there are replaced.

    Args:
        out_dir: output folder (created if needed).
        seed: the random seed; the same parameters give byte-identical files. Default 0.
        image_size: side of the square images, >= 32. Default 64.
        max_count: ``max_count`` of the long-tail subset of the training pool. Default 800.
        min_count: ``min_count`` of the long-tail subset. Default 4.
        pareto_shape: shape of its Pareto target curve. Default 6.
        pool_size: number of label vectors in the pool the training split is drawn from. Default 8000.
        pool_decay: ratio of successive class frequencies in the pool. Default 0.75.
        test_per_class: minimum positives per class in the balanced test split. Default 50.
        force: regenerate even if a matching dataset exists. Default False.

    Returns:
        :class:`DemoPaths` with the two COCO JSON files and the image root.

    With the defaults: about 1,400 training images (class counts about 800 down to 7;
    4 head / 5 medium / 5 tail), about 510 test images (50-52 positives per class).

    >>> import tempfile
    >>> paths = generate_demo_dataset(tempfile.mkdtemp(), image_size=32, pool_size=2000,
    ...                               max_count=200, test_per_class=5)  # doctest: +SKIP
    >>> paths.train_json.name, paths.image_root.name  # doctest: +SKIP
    ('train.json', 'images')
    """
    for name, value, low in (("image_size", image_size, 32), ("pool_size", pool_size, 1), ("test_per_class", test_per_class, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"Expected `{name}` to be an int >= {low}, but got {value!r}")
    if not (0 < pool_decay <= 1):
        raise ValueError(f"Expected `pool_decay` in (0, 1], but got {pool_decay!r}")
    out = Path(out_dir)
    params = _parameters(seed=seed, image_size=image_size, max_count=max_count, min_count=min_count,
                         pareto_shape=pareto_shape, pool_size=pool_size, pool_decay=pool_decay,
                         test_per_class=test_per_class)
    if not force and _is_complete(out, params):
        logger.info("reusing the demo dataset in %s", out)
        return _paths(out)

    logger.info("generating the built-in demo dataset in %s (once; later runs reuse it)", out)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    pool = _pool_labels(np.random.default_rng([seed, 0]), pool_size, pool_decay)
    train_idx = make_longtail_subset(pool, max_count=max_count, min_count=min_count, pareto_shape=pareto_shape, seed=seed)
    train = pool[train_idx]
    test = _balanced_labels(np.random.default_rng([seed, 2]), test_per_class)
    paths = _paths(out)
    _write_split(out, "train", 1, train, seed, image_size, params)
    _write_split(out, "test", 2, test, seed, image_size, params)
    manifest = {
        "parameters": params,
        "classes": list(DEMO_CLASSES),
        "num_images": {"train": int(len(train)), "test": int(len(test))},
        "class_freq": {"train": train.sum(0).tolist(), "test": test.sum(0).tolist()},
    }
    write_json(out / "manifest.json", manifest)  # written last: marks completion
    logger.info(
        "demo dataset written to %s: %d train / %d test images in %.1f s",
        out, len(train), len(test), time.perf_counter() - start,
    )
    return paths


# ----------------------------------------------------------------------------------------
# The balanced single-object source set (the stand-in for ImageNet)
# ----------------------------------------------------------------------------------------

#: Split id of the source set's random streams (train 1, test 2): its images are never the demo's.
_SOURCE_SPLIT = 3


def generate_source_dataset(
    out_dir: str | os.PathLike[str],
    *,
    per_class: int = 300,
    seed: int = 0,
    image_size: int = 64,
    force: bool = False,
) -> Path:
    """Write (or reuse) a *balanced, single-label* source set: ``per_class`` scenes of one object
    per class, drawn like the demo images (same classes, backgrounds, distractors and noise, but
    from random streams of their own), as an ``ImageFolder`` tree ``OUT_DIR/<class>/000001.png``.

    It plays the part of ImageNet for the demo: a large balanced single-label task on which a
    backbone is pretrained (``dbloss pretrain``) before it is fine-tuned on the small long-tailed
    multi-label target, as the paper fine-tunes an ImageNet ResNet-50 on VOC-MLT / COCO-MLT
    (ImageNet, too, holds most of VOC's classes as single-label categories). A complete set with
    the same parameters (``manifest.json``) is reused.

    Returns:
        ``out_dir`` (the ImageFolder root).
    """
    for name, value, low in (("per_class", per_class, 1), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"Expected `{name}` to be an int >= {low}, but got {value!r}")
    out = Path(out_dir)
    params = {"version": DEMO_VERSION, "kind": "source", "per_class": int(per_class), "seed": int(seed),
              "image_size": int(image_size)}
    manifest = out / "manifest.json"
    try:
        if not force and json.loads(manifest.read_text()).get("parameters") == params and all(
                sum(1 for _ in (out / c).glob("*.png")) == per_class for c in DEMO_CLASSES):
            logger.info("reusing the source dataset in %s", out)
            return out
    except (OSError, json.JSONDecodeError):
        pass
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    for k, name in enumerate(DEMO_CLASSES):
        folder = out / name
        if folder.is_dir():
            foreign = [p.name for p in folder.iterdir() if not (p.is_file() and _IMAGE_NAME.match(p.name))]
            if foreign:
                raise FileExistsError(f"{folder} holds files that the generator did not write (e.g. {foreign[0]!r}); "
                                      "choose another output folder")
            shutil.rmtree(folder)
        folder.mkdir()
        row = np.zeros(len(DEMO_CLASSES), dtype=np.int64)
        row[k] = 1
        for i in range(per_class):
            img, _ = _render(row, np.random.default_rng([seed, _SOURCE_SPLIT, k, i]), image_size)
            write_png(img, str(folder / f"{i + 1:06d}.png"), compression_level=6)
    write_json(manifest, {"parameters": params, "classes": list(DEMO_CLASSES)})  # last: complete
    logger.info("source dataset written to %s: %d classes x %d images in %.1f s", out, len(DEMO_CLASSES), per_class,
                time.perf_counter() - start)
    return out


def write_synthetic_features(path: str | os.PathLike[str], n: int, seed: int, num_classes: int = 8,
                             dim: int = 32) -> None:
    """Write an ``.npz`` of long-tailed multi-label features in the :func:`dbloss.data.features.load_feature_file`
    format: class k is present with probability ``0.5 * 0.6^k`` (every sample has a label) and shifts the
    (n, dim) Gaussian features along its own fixed direction, so that a linear head can learn it.

    >>> import tempfile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "f.npz"); write_synthetic_features(p, 50, seed=0, num_classes=3, dim=4)
    >>> d = np.load(p); d["features"].shape, d["labels"].shape, bool(d["labels"].sum(1).min() >= 1)
    ((50, 4), (50, 3), True)
    """
    rng = np.random.default_rng(seed)
    probs = 0.5 * 0.6 ** np.arange(num_classes)
    labels = (rng.random((n, num_classes)) < probs).astype(np.int64)
    labels[np.arange(n), rng.integers(0, num_classes, n) * (labels.sum(1) == 0)] = 1
    directions = np.random.default_rng(123).normal(size=(num_classes, dim))
    feats = rng.normal(size=(n, dim)) + labels @ directions * 1.5
    np.savez(path, features=feats.astype(np.float32), labels=labels,
             class_names=np.array([f"c{k}" for k in range(num_classes)]))
