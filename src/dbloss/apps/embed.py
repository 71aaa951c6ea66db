"""Frozen-backbone features: pooled image embeddings written to ``.npz`` for ``dataset=features``.

:func:`extract_features` (``dbloss features BACKBONE INPUTS... --out feats.npz``) runs a frozen
backbone (eval mode, no gradients) over images in batches and writes, in input order:

=================  ============  ==========================================================
key                shape         contents
=================  ============  ==========================================================
``features``       (N, D)        float32 pooled embeddings
``labels``         (N, C)        int64 {0, 1} labels of CSV / COCO inputs ((N, 0) for bare images)
``class_names``    (C,)          str
``ids``            (N,)          str sample ids (the reader's ids; bare images: their paths)
``paths``          (N,)          str image paths as read
``meta``           ()            str, JSON: backbone, weights, image size, mean, std, dim
=================  ============  ==========================================================

``features``, ``labels`` and ``class_names`` are what :func:`dbloss.data.features.load_feature_file`
reads, so the file trains a head with ``dataset: features`` (``train_ann`` / ``test_ann``); a
``<out>.json`` beside it records the same metadata, the counts and the images left out.

Backbones: ``clip:ARCH[@PRETRAINED]`` (an open_clip image tower, ``model.encode_image``, with
open_clip's own preprocessing: resize of the short side, centre crop, CLIP normalisation),
``timm:NAME`` and the names :func:`dbloss.models.classifier.build_backbone` takes (torchvision models,
``small_cnn``); those two use dbloss's evaluation transform (resize to ``image_size`` square, as
training does) with the backbone's own mean and std (:func:`dbloss.models.backbones.backbone_preprocessing`).

Inputs: image files, folders (searched recursively, sorted), CSV files of image paths with label
columns (:func:`dbloss.data.custom.read_csv`), COCO-format JSON files
(:func:`dbloss.data.coco.read_coco`), or :class:`~dbloss.data.table.MultiLabelSet` s;
:func:`extract_demo_features` does the built-in demo data's train and test splits.

Caching and resuming: every finished batch is written at once to a cache folder beside the output
(``.features-cache/<backbone key>/``), keyed per image by (resolved path, file size, modification
time) under a key of the backbone configuration; an interrupted run, or a later run over
overlapping inputs, computes only the images that are not there yet. An unreadable image is an
error naming it, or, with ``skip_bad``, left out, logged by name and counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dbloss.models.backbones import (CLIP_PREFIX, MissingDependencyError, backbone_preprocessing, build_timm_backbone,
                              is_timm_name, parse_clip_name)
from dbloss.data.images import ImageLoadError, load_image
from dbloss.data.table import MultiLabelSet
from dbloss.errors import UsageError
from dbloss.files import write_json
from dbloss.models.weights import is_pretrained

__all__ = ["FeatureExtractor", "FeatureResult", "ImageInputs", "IMAGE_SUFFIXES", "build_extractor",
           "check_feature_dim", "collect_inputs", "extract_demo_features", "extract_features", "extractor_from_meta",
           "read_feature_meta"]

log = logging.getLogger(__name__)

#: Bump when the extraction changes its output for the same backbone, so that caches are not reused.
EMBED_VERSION = 1
#: File endings taken as images in folders and on the command line.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: The cache folder's name (beside the output file).
CACHE_NAME = ".features-cache"


class FeatureExtractor(nn.Module):
    """A frozen backbone: normalised images (B, 3, S, S) -> (B, D) float32 embeddings.

    Attributes:
        spec: the backbone as named (``"timm:resnet18"``, ``"clip:RN50@openai"``, ``"resnet50"``).
        dim: D.
        transform: one decoded uint8 (3, H, W) image -> float32 (3, S, S), the backbone's preprocessing.
        meta: backbone, weights, image size, mean, std, preprocessing, dim: what the features depend
            on (the cache key, and saved in every features file).

    The model stays in eval mode (``train()`` does not change it) and has no trainable parameters;
    4-D outputs (feature maps of torchvision backbones) are average-pooled.
    """

    def __init__(self, spec: str, model: nn.Module, dim: int, transform: Callable[[Tensor], Tensor],
                 meta: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = int(dim)
        self.transform = transform
        self.meta = {**meta, "dim": self.dim, "version": EMBED_VERSION}

    def train(self, mode: bool = True) -> "FeatureExtractor":  # frozen: always in eval mode
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if out.ndim == 4:
            out = out.mean(dim=(2, 3))
        return out.flatten(1).float()

    @property
    def key(self) -> str:
        """A hash of :attr:`meta`: features with the same key are interchangeable."""
        return hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _device(name: str | torch.device) -> torch.device:
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def _seeded(weights: str | None) -> Iterator[None]:
    """Random init from a fixed seed (0), the global generator restored afterwards: a random-init
    extractor gives the same features in every call, so its cached batches stay valid."""
    if is_pretrained(weights):
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _clip_extractor(spec: str, weights: str | None, image_size: int | None) -> FeatureExtractor:
    try:
        import open_clip
    except ImportError as e:
        raise MissingDependencyError(f"backbone {spec!r} needs the optional dependency 'open_clip' ({e}); install "
                                     f"it with `pip install 'dbloss[clip]'`") from None
    from torchvision.transforms.functional import to_pil_image

    from dbloss.files import load_checkpoint

    arch, tag = parse_clip_name(spec)
    pp = backbone_preprocessing(spec)  # checks the architecture name
    local = Path(str(weights)) if is_pretrained(weights) and (
        Path(str(weights)).suffix in (".pt", ".pth", ".bin", ".safetensors") or Path(str(weights)).is_file()) else None
    if tag is None and local is None and is_pretrained(weights):
        if weights not in ("DEFAULT", "default"):
            tag = str(weights)
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if not tags:
                raise UsageError(f"backbone {spec!r}: open_clip publishes no weights for {arch!r}; give a local "
                                 f"file (--weights PATH) or weights=none")
            tag = "openai" if "openai" in tags else tags[0]
    elif tag is not None and local is not None:
        raise UsageError(f"backbone {spec!r} names pretrained weights {tag!r} and a weights file {local}: give one")
    kwargs = {"force_image_size": int(image_size)} if image_size else {}
    try:
        with _seeded(None if tag is None and local is None else "pretrained"):
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, **kwargs)
    except RuntimeError as e:
        raise UsageError(f"backbone {spec!r}: open_clip could not build it with pretrained={tag!r} ({e}); "
                         f"tags for {arch}: {open_clip.list_pretrained_tags_by_model(arch)}") from None
    if local is not None:  # a state dict of the whole CLIP model or of its image tower
        if local.suffix == ".safetensors" and local.is_file():
            from safetensors.torch import load_file

            state = load_file(str(local))
        else:
            state = load_checkpoint(local, kind="weights")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(f"{local}: expected a state dict (a mapping of tensor names), got {type(state).__name__}")
        target = model if any(str(k).startswith("visual.") for k in state) else model.visual
        own = target.state_dict()
        wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if wrong or missing or unexpected:
            raise ValueError(f"{local}: weights do not match backbone {spec!r}; wrong shape for {wrong[:5]}, "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        target.load_state_dict(state)
    visual = model.visual  # encode_image(x) is visual(x); the text tower is not needed
    size = image_size or pp.size
    meta = {"backbone": spec, "weights": _file_identity(local) if local else tag, "image_size": int(size),
            "mean": list(getattr(visual, "image_mean", None) or pp.mean),
            "std": list(getattr(visual, "image_std", None) or pp.std), "preprocess": "open_clip",
            "open_clip": open_clip.__version__}
    dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[-1])
    return FeatureExtractor(spec, visual, dim, lambda img: preprocess(to_pil_image(img)), meta)


def build_extractor(
    backbone: str,
    weights: str | None = "DEFAULT",
    *,
    image_size: int | None = None,
    data_root: str | Path | None = None,
) -> FeatureExtractor:
    """The frozen feature extractor of a backbone name (see the module docstring).

    Args:
        backbone: ``clip:ARCH[@PRETRAINED]``, ``timm:NAME``, a torchvision model name or ``small_cnn``.
        weights: ``"DEFAULT"`` (the published weights: timm's, torchvision's, open_clip's ``openai``
            or first tag), a local weights file, ``"demo-source"`` (``small_cnn`` pretrained on the
            built-in source set, made on first use under ``data_root``), a torchvision weights name,
            an open_clip tag, or ``None``/``"none"`` (random init). Default ``"DEFAULT"``.
        image_size: the input size; default the backbone's own (:func:`backbone_preprocessing`).
        data_root: where ``demo-source`` weights are cached (default ``demo_data``).

    >>> ext = build_extractor("timm:resnet18", weights=None, image_size=64)
    >>> ext(torch.zeros(2, 3, 64, 64)).shape, ext.dim
    (torch.Size([2, 512]), 512)
    """
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 8):
        raise ValueError(f"Expected `image_size` >= 8 or None, but got {image_size!r}")
    if backbone.startswith(CLIP_PREFIX):
        return _clip_extractor(backbone, weights, image_size)
    from dbloss.data.transforms import eval_transform

    pp = backbone_preprocessing(backbone)
    size = int(image_size or pp.size)
    if backbone == "small_cnn" and weights in ("DEFAULT", "default"):
        raise UsageError("backbone 'small_cnn' has no published weights: use weights demo-source (pretrained on the "
                         "built-in source set, made on first use), a local .pth file, or none")
    if weights == "demo-source":
        from dbloss.models.pretrain import resolve_weights

        with torch.random.fork_rng(devices=[]):  # pretraining here (first use) or not: the caller's generator unchanged
            weights = resolve_weights(weights, backbone, size, None if data_root is None else str(data_root))
    from dbloss.models.classifier import build_backbone

    with _seeded(weights):
        if is_timm_name(backbone):
            model, dim = build_timm_backbone(backbone, weights, frozen_stages=0, image_size=size)
        else:
            model, dim = build_backbone(backbone, weights, frozen_stages=0)
    local = Path(str(weights)) if is_pretrained(weights) and Path(str(weights)).is_file() else None
    meta = {"backbone": backbone, "weights": _file_identity(local) if local else (weights or "none"),
            "image_size": size, "mean": list(pp.mean), "std": list(pp.std), "preprocess": "dbloss-resize"}
    if is_timm_name(backbone):  # which weights DEFAULT means, and the model code, are timm's
        import timm

        meta["timm"] = timm.__version__
    return FeatureExtractor(backbone, model, dim, eval_transform(size, mean=pp.mean, std=pp.std), meta)


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------

@dataclass
class ImageInputs:
    """Images to embed, in order: ``ids``, resolved ``paths``, ``labels`` (N, C) or None, ``class_names``."""

    ids: list[str]
    paths: list[Path]
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_table(cls, table: MultiLabelSet) -> "ImageInputs":
        if table.paths is None:
            raise UsageError("Expected a dataset with image paths, but this one has none (a label-only table?)")
        return cls(list(table.ids), [table.image_path(i) for i in range(len(table))], table.labels,
                   list(table.class_names))


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_inputs(
    inputs: Sequence[str | Path | MultiLabelSet],
    *,
    images_root: str | Path | None = None,
    path_column: str = "image",
    label_column: str | None = None,
) -> ImageInputs:
    """The images (and labels) named by ``inputs``, in order.

    Args:
        inputs: image files; folders (their images, recursively, sorted by path); ``.csv`` files
            (:func:`~dbloss.data.custom.read_csv`: a ``path_column`` and one 0/1 column per class,
            or a ``label_column`` of class lists); COCO-format ``.json`` files
            (:func:`~dbloss.data.coco.read_coco`); :class:`MultiLabelSet` s with image paths.
        images_root: the folder that CSV / COCO image paths are relative to (default: the
            annotation file's folder).

    Labelled inputs (CSV, COCO, tables) must share their class names, and cannot be mixed with bare
    images or folders. Ids must be unique (bare images and folder images: their paths).

    Raises:
        FileNotFoundError: an input that does not exist. UsageError: an input of an unknown kind,
        mixed labelled and unlabelled inputs, different class names, duplicate ids, no images.
    """
    from dbloss.data.coco import read_coco
    from dbloss.data.custom import read_csv

    if isinstance(inputs, (str, Path, MultiLabelSet)):
        inputs = [inputs]
    parts: list[tuple[str, ImageInputs]] = []
    for item in inputs:
        if isinstance(item, MultiLabelSet):
            parts.append(("a dataset", ImageInputs.from_table(item)))
            continue
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise UsageError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            parts.append((str(path), ImageInputs([str(p) for p in found], found)))
        elif path.suffix.lower() == ".csv":
            parts.append((str(path), ImageInputs.from_table(
                read_csv(path, images_root, path_column=path_column, label_column=label_column))))
        elif path.suffix.lower() == ".json":
            parts.append((str(path), ImageInputs.from_table(read_coco(path, images_root or path.parent))))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if not path.exists():
                raise FileNotFoundError(f"input image not found: {path}")
            parts.append((str(path), ImageInputs([str(path)], [path])))
        elif not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        else:
            raise UsageError(f"{path}: expected an image file ({', '.join(sorted(IMAGE_SUFFIXES))}), a folder, a "
                             f".csv of image paths and labels or a COCO-format .json")
    if not parts:
        raise UsageError("no inputs: give image files, folders, a .csv or a COCO .json")
    labelled = [(src, p) for src, p in parts if p.labels is not None]
    if labelled and len(labelled) != len(parts):
        bare = next(src for src, p in parts if p.labels is None)
        raise UsageError(f"inputs mix labelled ({labelled[0][0]}) and unlabelled ones ({bare}); extract them "
                         "into separate files")
    for src, p in labelled[1:]:
        if p.class_names != labelled[0][1].class_names:
            raise UsageError(f"{src}: class names {p.class_names} differ from those of {labelled[0][0]} "
                             f"({labelled[0][1].class_names})")
    ids = [i for _, p in parts for i in p.ids]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise UsageError(f"duplicate sample id {dup!r} in the inputs (an image given twice?)")
    labels = np.concatenate([p.labels for _, p in labelled]) if labelled else None
    return ImageInputs(ids, [q for _, p in parts for q in p.paths], labels,
                       list(labelled[0][1].class_names) if labelled else [])


# ----------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------

def _image_key(path: Path) -> str | None:
    """The cache key of one image file: (resolved path, size, modification time); None if missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return hashlib.sha1(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def _save_npz(path: Path, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Cache:
    """Finished batches of one backbone configuration: ``<root>/<key>/batch-*.npz`` (``keys``, ``features``)."""

    def __init__(self, root: Path, extractor: FeatureExtractor) -> None:
        self.dir = root / extractor.key
        self.dim = extractor.dim
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = self.dir / "backbone.json"
        if not spec.is_file():
            write_json(spec, extractor.meta)

    def load(self, wanted: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for f in sorted(self.dir.glob("batch-*.npz")):
            try:
                with np.load(f, allow_pickle=False) as z:
                    keys = z["keys"]
                    if wanted.isdisjoint(keys.tolist()):  # the features of a batch are read only when needed
                        continue
                    feats = z["features"]
            except (OSError, ValueError, KeyError) as e:  # a torn file cannot happen (atomic writes); a foreign one can
                log.warning("ignoring unreadable cache file %s (%s)", f, e)
                continue
            if feats.ndim != 2 or feats.shape[1] != self.dim or len(keys) != len(feats):
                raise UsageError(f"{f}: cached features of shape {feats.shape} do not fit this backbone (dimension "
                                 f"{self.dim}); delete the cache folder {self.dir}")
            for k, row in zip(keys.tolist(), feats):
                if k in wanted:
                    found[k] = row
        return found

    def add(self, keys: list[str], feats: np.ndarray) -> None:
        name = hashlib.sha1("\0".join(keys).encode()).hexdigest()[:16]
        _save_npz(self.dir / f"batch-{name}.npz", keys=np.asarray(keys), features=feats.astype(np.float32))


# ----------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------

class _Images(Dataset):
    """``(position, image or None, error or None)`` of the images at ``positions`` (never raises on a bad file)."""

    def __init__(self, paths: list[Path], positions: list[int], transform: Callable[[Tensor], Tensor]) -> None:
        self.paths, self.positions, self.transform = paths, positions, transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int) -> tuple[int, Tensor | None, str | None]:
        i = self.positions[j]
        try:
            return i, self.transform(load_image(self.paths[i])), None
        except ImageLoadError as e:
            return i, None, e.reason


def _collate(items: list[tuple[int, Tensor | None, str | None]]) -> list[tuple[int, Tensor | None, str | None]]:
    return items


@dataclass
class FeatureResult:
    """What :func:`extract_features` wrote: the ``.npz`` and its ``.json``, and the counts."""

    path: Path
    json_path: Path
    num_inputs: int  # images asked for
    num_rows: int  # rows written (num_inputs - skipped)
    dim: int
    computed: int  # images run through the backbone in this call
    cached: int  # images taken from the cache
    skipped: list[dict[str, str]]  # {"path", "reason"} of the unreadable images left out
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def _run(extractor: FeatureExtractor, data: ImageInputs, out: Path, *, batch_size: int, device: torch.device,
         workers: int, skip_bad: bool, cache_dir: Path | None, progress: bool) -> FeatureResult:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    keys = [_image_key(p) for p in data.paths]
    cache = _Cache(cache_dir, extractor) if cache_dir is not None else None
    found = cache.load({k for k in keys if k}) if cache is not None else {}
    rows: dict[int, np.ndarray] = {i: found[k] for i, k in enumerate(keys) if k in found}
    todo = [i for i in range(len(data)) if i not in rows]
    log.info("%s: %d images, %d cached, %d to compute (%s)", out.name, len(data), len(rows), len(todo), extractor.spec)
    extractor.to(device)
    loader = DataLoader(_Images(data.paths, todo, extractor.transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate)
    skipped: list[dict[str, str]] = []
    bar = tqdm(total=len(todo), desc=f"features {extractor.spec}", unit="img", disable=not progress or not todo)
    with torch.inference_mode():
        for batch in loader:
            for i, img, reason in batch:
                if img is None:
                    if not skip_bad:
                        hint = ("; for CSV / COCO inputs: is --images the folder their paths are relative to?"
                                if str(reason).startswith("no such file") else "")
                        raise UsageError(f"cannot read image {data.paths[i]}: {reason} (use --skip-bad to leave "
                                         f"unreadable images out; {len(rows)} finished images are cached{hint})")
                    log.warning("skipping unreadable image %s: %s", data.paths[i], reason)
                    skipped.append({"path": str(data.paths[i]), "reason": str(reason)})
            good = [(i, img) for i, img, _ in batch if img is not None]
            if good:
                feats = extractor(torch.stack([img for _, img in good]).to(device)).cpu().numpy()
                if cache is not None and all(keys[i] for i, _ in good):
                    cache.add([keys[i] for i, _ in good], feats)  # type: ignore[misc]
                rows.update({i: f for (i, _), f in zip(good, feats)})
            bar.update(len(batch))
    bar.close()
    keep = [i for i in range(len(data)) if i in rows]
    if not keep:
        raise UsageError(f"no image of the {len(data)} inputs could be read (e.g. {skipped[0]['path']})")
    feats = np.stack([rows[i] for i in keep]).astype(np.float32)
    labels = data.labels[keep] if data.labels is not None else np.zeros((len(keep), 0), dtype=np.int64)
    meta = json.dumps(extractor.meta, sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(out, features=feats, labels=labels.astype(np.int64), class_names=np.asarray(data.class_names, dtype=str),
              ids=np.asarray([data.ids[i] for i in keep], dtype=str),
              paths=np.asarray([str(data.paths[i]) for i in keep], dtype=str), meta=np.asarray(meta))
    result = FeatureResult(out, out.with_suffix(".json"), len(data), len(keep), extractor.dim, len(todo) - len(skipped),
                           len(data) - len(todo), skipped, round(time.perf_counter() - start, 3))
    write_json(result.json_path, {**result.to_dict(), "meta": extractor.meta, "num_skipped": len(skipped),
                                  "class_names": data.class_names})
    if skipped:
        log.warning("%s: %d unreadable images left out: %s", out.name, len(skipped),
                    ", ".join(s["path"] for s in skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
    log.info("%s: %d x %d features (%d computed, %d cached) in %.1f s", out, len(keep), extractor.dim,
             result.computed, result.cached, result.seconds)
    return result


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"Expected the output to be a .npz file (what dataset=features reads), but got {out}")
    return out


def extract_features(
    backbone: str | FeatureExtractor,
    inputs: Sequence[str | Path | MultiLabelSet],
    out: str | Path,
    *,
    weights: str | None = "DEFAULT",
    image_size: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    workers: int = 0,
    skip_bad: bool = False,
    images_root: str | Path | None = None,
    path_column: str = "image",
    label_column: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    data_root: str | Path | None = None,
) -> FeatureResult:
    """Embed images with a frozen backbone and write ``out`` (.npz) and ``out`` .json (module docstring).

    Args:
        backbone: a backbone name (:func:`build_extractor`) or a built :class:`FeatureExtractor`.
        inputs: image files, folders, CSV / COCO JSON files, tables (:func:`collect_inputs`).
        out: the ``.npz`` to write.
        weights, image_size, data_root: as :func:`build_extractor` (unused with an extractor).
        batch_size: images per forward pass. Default 64.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``, ... Default ``"auto"``.
        workers: ``DataLoader`` worker processes that read images. Default 0.
        skip_bad: leave unreadable images out (logged, named in the JSON, counted) instead of raising.
        images_root, path_column, label_column: as :func:`collect_inputs`.
        cache_dir: the cache folder. Default ``.features-cache`` beside ``out``.
        use_cache: read and write the cache (False: compute everything, keep nothing).
        progress: show a progress bar.

    Returns:
        A :class:`FeatureResult`.

    Raises:
        UsageError: an unreadable image without ``skip_bad`` (naming it; finished batches stay
        cached), bad inputs or backbone names (see :func:`collect_inputs`, :func:`build_extractor`).

    >>> res = extract_features("timm:resnet18", ["photos/"], "feats.npz", weights=None)  # doctest: +SKIP
    >>> res.num_rows, res.dim  # doctest: +SKIP
    (12, 512)
    """
    out = _check_out(out)
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` >= 1, but got {batch_size!r}")
    data = collect_inputs(inputs, images_root=images_root, path_column=path_column, label_column=label_column)
    extractor = backbone if isinstance(backbone, FeatureExtractor) else build_extractor(
        backbone, weights, image_size=image_size, data_root=data_root)
    cache = None if not use_cache else Path(cache_dir) if cache_dir is not None else out.parent / CACHE_NAME
    return _run(extractor, data, out, batch_size=batch_size, device=_device(device), workers=workers,
                skip_bad=skip_bad, cache_dir=cache, progress=progress)


def extract_demo_features(
    backbone: str | FeatureExtractor,
    out_dir: str | Path,
    *,
    data_root: str | Path = "demo_data",
    weights: str | None = "DEFAULT",
    image_size: int | None = None,
    **kwargs: Any,
) -> dict[str, FeatureResult]:
    """Features of the built-in demo data: ``out_dir/train.npz`` and ``out_dir/test.npz``.

    The demo dataset is generated in ``data_root`` first if needed (as ``dbloss train`` does); the
    files train a head with ``dataset: features`` (``configs/demo_features``). Other keyword
    arguments go to :func:`extract_features`.
    """
    from dbloss.data.coco import read_coco
    from dbloss.data import generate_demo_dataset  # the package name stays while its module is renamed

    paths = generate_demo_dataset(data_root, seed=0)
    extractor = backbone if isinstance(backbone, FeatureExtractor) else build_extractor(
        backbone, weights, image_size=image_size, data_root=data_root)
    out = Path(out_dir)
    return {split: extract_features(extractor, [read_coco(ann, paths.image_root)], out / f"{split}.npz", **kwargs)
            for split, ann in (("train", paths.train_json), ("test", paths.test_json))}


def read_feature_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` of a features file written here (backbone, weights, image size, mean, std,
    dim); ``{}`` for files from elsewhere (e.g. TF-IDF features)."""
    path = Path(path)
    if path.suffix != ".npz":
        return {}
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])) if "meta" in z.files else {}


def extractor_from_meta(meta: dict[str, Any], *, data_root: str | Path | None = None) -> FeatureExtractor:
    """Rebuild the extractor that wrote a features file from its ``meta`` (:func:`read_feature_meta`),
    e.g. to embed new images for a head trained on that file.

    Raises:
        UsageError: ``meta`` is empty (a file from elsewhere), or the rebuilt extractor differs from
            the recorded one (e.g. its local weights file changed since); the message names both.
    """
    if not meta or "backbone" not in meta:
        raise UsageError("these features record no backbone (not written by `dbloss features`): name the backbone")
    w = meta.get("weights")
    weights = w["path"] if isinstance(w, dict) else (None if w in (None, "none") else w)
    ext = build_extractor(meta["backbone"], weights, image_size=meta.get("image_size"), data_root=data_root)
    differs = {k: (meta.get(k), v) for k, v in ext.meta.items() if meta.get(k) != v}
    if differs:
        raise UsageError(f"the backbone {meta['backbone']!r} rebuilt here differs from the one that wrote the "
                         f"features: {differs} (recorded, now)")
    return ext


def check_feature_dim(path: str | Path, expected: int | nn.Module, *, what: str = "the feature model") -> int:
    """Check that the features in ``path`` have the dimension a feature model takes; returns it.

    Args:
        path: a features file (``.npz`` / ``.pt``, as :func:`~dbloss.data.features.load_feature_file` reads).
        expected: the dimension, or a model whose first ``nn.Linear`` takes the features
            (:class:`~dbloss.models.classifier.FeatureClassifier`).

    Raises:
        UsageError: the dimensions differ; the message names both, and the file's backbone.
    """
    from dbloss.data.features import load_feature_file

    if isinstance(expected, nn.Module):
        first = next((m for m in expected.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise TypeError(f"Expected a feature model with an nn.Linear layer, but got {type(expected).__name__}")
        expected = first.in_features
    feats, _, _ = load_feature_file(path)
    if feats.shape[1] != expected:
        backbone = read_feature_meta(path).get("backbone")
        source = f" (from backbone {backbone})" if backbone else ""
        raise UsageError(f"{path}: features of dimension {feats.shape[1]}{source}, but {what} takes {expected}-"
                         f"dimensional features; extract them with the backbone the model was trained on")
    return int(feats.shape[1])
