"""Answers from a trained run: class scores and predicted labels for new images or features.

:class:`Predictor` rebuilds a run's model from its checkpoint (the configuration and label
statistics it holds, with the engine's one builder, :func:`dbloss.training.engine.model_from_checkpoint`),
preprocesses images exactly as the run's evaluation did (:func:`dbloss.data.transforms.eval_transform`
at the run's ``image_size``) and decides with the run's thresholds:

* the per-class thresholds chosen on the validation split, when the run stored them;
* else the global threshold it chose (or ``cfg.eval.threshold``);
* unless overridden: ``threshold=`` (one number for every class) or ``top_k=`` (the k highest).

A class is predicted when its score is *above* its threshold (as :func:`dbloss.metrics.f1_scores` counts).

:func:`predict_inputs` is ``dbloss predict CHECKPOINT INPUTS... --out FILE``: image files, folders
(recursive, sorted), CSV files of image paths, COCO-format JSON files, or ``.npz`` features (the
:func:`~dbloss.data.features.load_feature_file` format) for feature models; batched, with a progress
bar; :func:`write_predictions` writes one row per input (``id``, ``path``, ``labels`` joined by ``;``,
one score column per class) as CSV or JSON lines. An unreadable input is an error naming it, or
with ``skip_bad`` left out, named in ``<out>.skipped.txt`` and counted.

A feature model (a run with ``dataset=features``) answers for images given the backbone its
features came from (``backbone=``): :func:`dbloss.apps.embed.build_extractor` embeds the images and the
head scores the embeddings.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dbloss.config import TrainConfig
from dbloss.data.images import ImageLoadError, load_image
from dbloss.errors import UsageError
from dbloss.files import load_checkpoint, write_text

__all__ = ["FEATURE_SUFFIXES", "Prediction", "PredictionTable", "Predictor", "checkpoint_file", "predict_inputs",
           "read_checkpoint", "write_predictions"]

log = logging.getLogger(__name__)

#: The checkpoint entries that predict and export need.
_CHECKPOINT_KEYS: tuple[str, ...] = ("model", "config", "label_stats")
#: Inputs read as precomputed features rather than images.
FEATURE_SUFFIXES = frozenset({".npz"})
#: Output formats of :func:`write_predictions`, by file ending.
_FORMATS: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_FIXED_COLUMNS: tuple[str, ...] = ("id", "path", "labels")


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------

def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint of a run: ``path`` itself if it is a file; in a run folder ``best.pt`` (the
    best validated epoch, which the run was tested with) if present, else ``checkpoint.pt``.

    Raises:
        FileNotFoundError: no such file, or a folder holding neither checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "checkpoint.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no best.pt or checkpoint.pt in this folder (is it a finished run?)")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint file or run folder at {path}")
    return path


def read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(file, checkpoint)`` of a run folder or checkpoint file (:func:`checkpoint_file`), read as
    data (``weights_only=True``) and checked to be a dbloss run's checkpoint.

    Raises:
        UsageError: a file that is not a dbloss checkpoint: a weights file (a bare state dict, as
            ``dbloss pretrain`` or torchvision write), another program's checkpoint, or a file that
            is not ``torch.save`` data; the message names the file and what it holds.
    """
    file = checkpoint_file(path)
    ckpt = load_checkpoint(file)
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        raise UsageError(f"{file}: a weights file (a state dict of {len(ckpt)} tensors, as `dbloss pretrain` or "
                         f"torchvision write), not a dbloss run's checkpoint; give a run folder or its "
                         f"checkpoint.pt / best.pt (model, config and label statistics)")
    missing = [k for k in _CHECKPOINT_KEYS if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UsageError(f"{file}: not a dbloss checkpoint (no {', '.join(missing)}; it holds {found}); give a run "
                         f"folder or its checkpoint.pt / best.pt")
    return file, ckpt


def _thresholds(ckpt: dict[str, Any], cfg: TrainConfig, num_classes: int) -> tuple[Tensor, str]:
    """The run's decision thresholds (C,) and where they come from: per class, global, or the config."""
    stored = ckpt.get("thresholds") or {}
    per_class = stored.get("per_class")
    if per_class is not None:
        t = torch.as_tensor(per_class, dtype=torch.float32)
        if t.shape != (num_classes,) or not torch.isfinite(t).all():
            raise UsageError(f"the checkpoint's per-class thresholds have shape {tuple(t.shape)} (or non-finite "
                             f"values); expected {num_classes} finite numbers")
        return t, "per-class"
    if stored.get("global") is not None:
        return torch.full((num_classes,), float(stored["global"])), "global"
    return torch.full((num_classes,), float(cfg.eval.threshold)), "config"


def _normalisation(transform: Any) -> tuple[list[float], list[float]]:
    """The mean and std of the ``Normalize`` step of a torchvision ``Compose``."""
    for step in getattr(transform, "transforms", []):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return [float(m) for m in step.mean], [float(s) for s in step.std]
    raise ValueError(f"no Normalize step in {transform!r}")


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """One input's answer: its ``id`` and ``path`` (None for tensors), the predicted ``labels``
    (class names, in class order) and every class's ``scores`` (sigmoid, by class name)."""

    id: str
    path: str | None
    labels: list[str]
    scores: dict[str, float]


class Predictor:
    """A trained run's model, preprocessing and thresholds; call it on images or features.

    Build it with :meth:`from_checkpoint`. ``predictor(inputs)`` returns (B, C) float32 sigmoid
    scores on the CPU; :meth:`predict` returns a :class:`Prediction` per input.

    Inputs (``inputs``): a list of image file paths, PIL images or uint8 (3, H, W) tensors
    (decoded images: preprocessed here); a uint8 (B, 3, H, W) batch (preprocessed here); a float
    (B, 3, S, S) batch, taken as already preprocessed (what :attr:`transform` returns, S the run's
    ``image_size``); for feature models a (B, D) float tensor or array of features.

    Attributes:
        model: the classifier, eval mode, on :attr:`device`: (B, 3, S, S) or (B, D) -> (B, C) logits.
        config: the run's resolved :class:`~dbloss.config.TrainConfig`.
        class_names: the C class names.
        thresholds: (C,) float32, the decision thresholds (see the module docstring).
        threshold_source: ``"per-class"``, ``"global"`` or ``"config"``.
        input_type: ``"image"`` or ``"features"`` (what :attr:`model` takes).
        in_features: D for feature models, else None.
        extractor: the frozen backbone that embeds images for a feature model, or None.
        transform: one decoded uint8 (3, H, W) image -> float32 (3, S, S); None for a feature
            model without an extractor.
        checkpoint: the file the model was read from.

    >>> predictor = Predictor.from_checkpoint("runs/demo/erm")  # doctest: +SKIP
    >>> predictor(["photo.jpg"]).shape, predictor.predict(["photo.jpg"])[0].labels  # doctest: +SKIP
    (torch.Size([1, 14]), ['disk', 'star'])
    """

    def __init__(self, model: nn.Module, config: TrainConfig, class_names: Sequence[str], thresholds: Tensor, *,
                 threshold_source: str = "given", extractor: nn.Module | None = None,
                 device: str | torch.device = "cpu", checkpoint: str | Path | None = None) -> None:
        from dbloss.data.transforms import eval_transform

        self.device = _device(device)
        self.model = model.eval().to(self.device)
        self.config = config
        self.class_names = list(class_names)
        self.thresholds = torch.as_tensor(thresholds, dtype=torch.float32).cpu()
        if self.thresholds.shape != (len(self.class_names),):
            raise ValueError(f"Expected {len(self.class_names)} thresholds, but got shape "
                             f"{tuple(self.thresholds.shape)}")
        self.threshold_source = threshold_source
        dim = getattr(self.model, "in_features", None)  # D of a model on features (dbloss.models.classifier), None for images
        self.input_type = "features" if dim else "image"
        self.in_features: int | None = int(dim) if dim else None
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.extractor = None if extractor is None else extractor.eval().to(self.device)
        self.transform: Callable[[Tensor], Tensor] | None
        if self.input_type == "image":
            if extractor is not None:
                raise UsageError("an image model takes images itself: a backbone is only for feature models")
            self.transform = eval_transform(config.data.image_size)  # exactly the run's evaluation preprocessing
            self.image_size: int | None = int(config.data.image_size)
            if self.device.type == "cuda" and config.run.channels_last:  # as the run evaluated on CUDA
                self.model = self.model.to(memory_format=torch.channels_last)
        elif self.extractor is not None:
            dim = int(getattr(self.extractor, "dim"))
            if dim != self.in_features:
                raise UsageError(f"backbone {getattr(self.extractor, 'spec', '?')!r} gives {dim}-dimensional "
                                 f"features, but the feature model takes {self.in_features}-dimensional features; "
                                 f"give the backbone the model's training features were extracted with")
            self.transform = getattr(self.extractor, "transform")
            self.image_size = int(getattr(self.extractor, "meta", {}).get("image_size") or 0) or None
        else:
            self.transform, self.image_size = None, None

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "auto", backbone: str | None = None,
                        backbone_weights: str | None = "DEFAULT", backbone_image_size: int | None = None,
                        data_root: str | Path | None = None) -> "Predictor":
        """The predictor of a run folder (``best.pt`` if present, else ``checkpoint.pt``) or checkpoint file.

        Args:
            path: a run folder or a checkpoint file written by ``dbloss train``.
            device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``, ... Default ``"auto"``.
            backbone: feature models only: the backbone that embeds images for the head
                (:func:`dbloss.apps.embed.build_extractor`: ``timm:NAME``, ``clip:ARCH[@TAG]``, a
                torchvision name, ``small_cnn``), the one the training features came from.
            backbone_weights: its weights (``"DEFAULT"``, a local file, ``"demo-source"``, None for
                random init, seeded as ``dbloss features`` seeds it). Default ``"DEFAULT"``.
            backbone_image_size: its input size; default the one recorded in the run's training
                features file when it names the same backbone, else the backbone's own.
            data_root: where ``demo-source`` weights are cached (default ``demo_data``).

        Raises:
            FileNotFoundError: no such file or run folder.
            UsageError: not a dbloss checkpoint (a weights file, another program's file), a backbone
                for an image model, a backbone whose features do not fit the head (both dimensions named).
        """
        from dbloss.training.engine import model_from_checkpoint

        file, ckpt = read_checkpoint(path)
        cfg, stats, model = model_from_checkpoint(ckpt, "cpu")
        thresholds, source = _thresholds(ckpt, cfg, len(stats.class_names))
        extractor = None
        if backbone is not None:
            extractor = _feature_extractor(cfg, backbone, backbone_weights, backbone_image_size, data_root)
        log.info("%s: %d classes, %s thresholds", file, len(stats.class_names), source)
        return cls(model, cfg, stats.class_names, thresholds, threshold_source=source, extractor=extractor,
                   device=device, checkpoint=file)

    # -- properties --------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def accepts_images(self) -> bool:
        """Whether :meth:`__call__` takes images (an image model, or a feature model with a backbone)."""
        return self.transform is not None

    @property
    def normalisation(self) -> tuple[list[float], list[float]] | None:
        """The (mean, std) that :attr:`transform` normalises images with; None without images."""
        if self.extractor is not None:
            meta = getattr(self.extractor, "meta", {})
            return list(meta.get("mean", [])), list(meta.get("std", []))
        return None if self.transform is None else _normalisation(self.transform)

    # -- scoring -----------------------------------------------------------------------

    def _images_needed(self, what: str) -> None:
        if not self.accepts_images:
            raise UsageError(f"{self.checkpoint or 'this model'} is a feature model: it takes "
                             f"{self.in_features}-dimensional features, not {what}; give features (.npz), or the "
                             f"backbone its training features came from (--backbone SPEC / backbone=...) to embed "
                             f"images")

    def preprocess(self, image: Any) -> Tensor:
        """One image (a path, a PIL image or a decoded uint8 (3, H, W) tensor) -> float32 (3, S, S)."""
        self._images_needed("images")
        if isinstance(image, (str, Path)):
            try:
                image = load_image(image)
            except ImageLoadError as e:
                raise UsageError(str(e)) from None
        elif not isinstance(image, Tensor):
            try:
                from PIL import Image
            except ImportError:  # pragma: no cover - torchvision depends on pillow
                Image = None  # type: ignore[assignment]
            if Image is None or not isinstance(image, Image.Image):
                raise TypeError(f"Expected an image path, a PIL image or a uint8 (3, H, W) tensor, but got "
                                f"{type(image).__name__}")
            from torchvision.transforms.v2.functional import pil_to_tensor

            image = pil_to_tensor(image.convert("RGB"))
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"Expected a decoded uint8 (3, H, W) RGB image, but got {image.dtype} of shape "
                             f"{tuple(image.shape)}")
        assert self.transform is not None  # _images_needed
        return self.transform(image)

    def _batch(self, inputs: Any) -> Tensor:
        """``inputs`` as the batch the pipeline's first stage takes (preprocessed images or features)."""
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(inputs)
        if isinstance(inputs, Tensor):
            x = inputs
            if x.ndim == 2:
                if self.input_type != "features":
                    raise ValueError(f"Expected images for this image model, but got a 2-D tensor {tuple(x.shape)}")
                if x.shape[1] != self.in_features:
                    raise UsageError(f"features of dimension {x.shape[1]}, but the feature model takes "
                                     f"{self.in_features}-dimensional features")
                return x.float()
            self._images_needed("images")
            if x.ndim == 3:
                x = x.unsqueeze(0)
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"Expected images of shape (B, 3, H, W), but got {tuple(inputs.shape)}")
            if x.dtype == torch.uint8:
                return torch.stack([self.preprocess(img) for img in x])
            if not x.is_floating_point():
                raise ValueError(f"Expected uint8 (decoded) or float (preprocessed) images, but got {x.dtype}")
            if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
                raise ValueError(f"Expected preprocessed float images of size {self.image_size} x {self.image_size} "
                                 f"(the run's evaluation preprocessing), but got {tuple(x.shape[-2:])}; pass uint8 "
                                 f"images, paths or PIL images to have them preprocessed")
            return x
        if isinstance(inputs, (str, Path)) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        if not inputs:
            raise ValueError("Expected at least one input, but got none")
        return torch.stack([self.preprocess(item) for item in inputs])

    @torch.inference_mode()
    def scores(self, batch: Tensor) -> Tensor:
        """(B, C) float32 sigmoid scores (CPU) of a batch that :meth:`_batch` made: preprocessed
        (B, 3, S, S) images or (B, D) features."""
        x = batch.to(self.device)
        if self.extractor is not None and x.ndim == 4:
            x = self.extractor(x)
        if x.ndim == 4 and self.device.type == "cuda" and self.config.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.model(x).float()).cpu()

    def __call__(self, inputs: Any) -> Tensor:
        """(B, C) float32 sigmoid scores of ``inputs`` (see the class docstring)."""
        return self.scores(self._batch(inputs))

    def decide(self, scores: Tensor, threshold: float | None = None, top_k: int | None = None) -> Tensor:
        """(B, C) bool: the predicted classes of (B, C) ``scores``: above the run's thresholds, above
        ``threshold`` (one number), or the ``top_k`` highest of each row."""
        if threshold is not None and top_k is not None:
            raise ValueError("Expected one of `threshold` or `top_k`, not both")
        scores = torch.as_tensor(scores)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.num_classes:
                raise ValueError(f"Expected `top_k` to be an int in [1, {self.num_classes}], but got {top_k!r}")
            mask = torch.zeros(scores.shape, dtype=torch.bool)
            return mask.scatter_(1, scores.topk(top_k, dim=1).indices, True)
        if threshold is not None:
            if not np.isfinite(float(threshold)):
                raise ValueError(f"Expected a finite `threshold`, but got {threshold!r}")
            return scores > float(threshold)
        return scores > self.thresholds

    def predict(self, inputs: Any, threshold: float | None = None, top_k: int | None = None) -> list[Prediction]:
        """A :class:`Prediction` per input: predicted labels (the run's thresholds unless
        ``threshold`` or ``top_k`` is given, see :meth:`decide`) and every class's score."""
        scores = self(inputs)
        mask = self.decide(scores, threshold, top_k)
        items = [inputs] if isinstance(inputs, (str, Path)) else inputs
        paths = [str(p) if isinstance(p, (str, Path)) else None for p in items] \
            if isinstance(items, Sequence) and len(items) == len(scores) else [None] * len(scores)
        return [Prediction(p if p is not None else str(i), p, [c for c, on in zip(self.class_names, row) if on],
                           dict(zip(self.class_names, map(float, s))))
                for i, (p, s, row) in enumerate(zip(paths, scores.tolist(), mask.tolist()))]


def _feature_extractor(cfg: TrainConfig, backbone: str, weights: str | None, image_size: int | None,
                       data_root: str | Path | None) -> nn.Module:
    """The frozen backbone that embeds images for a feature model; warns when the run's training
    features record another backbone."""
    from dbloss.apps.embed import build_extractor, read_feature_meta

    if cfg.data.dataset not in ("features", "reuters"):
        raise UsageError(f"--backbone {backbone}: this is an image model (dataset={cfg.data.dataset}, backbone "
                         f"{cfg.model.backbone}); it takes images itself, a backbone is only for feature models")
    meta: dict[str, Any] = {}
    if cfg.data.train_ann and Path(cfg.data.train_ann).is_file():
        try:
            meta = read_feature_meta(cfg.data.train_ann)
        except (OSError, ValueError, KeyError):  # a foreign or moved file: nothing recorded to compare with
            meta = {}
    if meta.get("backbone") and meta["backbone"] != backbone:
        log.warning("the model's training features (%s) come from backbone %s, but images are embedded with %s",
                    cfg.data.train_ann, meta["backbone"], backbone)
    if image_size is None and meta.get("backbone") == backbone:
        image_size = meta.get("image_size")
    return build_extractor(backbone, weights, image_size=image_size, data_root=data_root)


# ----------------------------------------------------------------------------------------
# Inputs (the command line's)
# ----------------------------------------------------------------------------------------

@dataclass
class _Inputs:
    """What to predict: ``ids`` and ``paths`` of images, or the rows of feature files."""

    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)  # one (N_i, D) block per feature file
    feature_files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _csv_images(path: Path, images_root: str | Path | None, path_column: str,
                id_column: str | None) -> tuple[list[str], list[str]]:
    """``(ids, paths)`` of a CSV file of image paths. A CSV with label columns (as training reads)
    goes through :func:`dbloss.data.custom.read_csv`; one with only a path (and id) column, which
    that reader refuses for want of classes, is read here."""
    from dbloss.data.custom import read_csv

    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if path_column not in header:
            raise UsageError(f"{path}: no image path column {path_column!r} (--path-column); the columns are {header}")
        if id_column is not None and id_column not in header:
            raise UsageError(f"{path}: no id column {id_column!r} (--id-column); the columns are {header}")
        if set(header) - {path_column, id_column}:  # a labelled CSV: the training reader and its checks
            table = read_csv(path, images_root, path_column=path_column, id_column=id_column, allow_empty=True)
            return list(table.ids), [str(table.image_path(i)) for i in range(len(table))]
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    root = Path(images_root) if images_root is not None else path.parent
    rows = [r for r in rows if any(r.values())]
    blank = [n for n, r in enumerate(rows, start=2) if not r[path_column]]
    if blank:
        raise UsageError(f"{path}: empty image path on line(s) {blank[:5]}")
    if not rows:
        raise UsageError(f"{path}: no image paths (only a header)")
    paths = [str(root / r[path_column]) for r in rows]
    return [r[id_column] for r in rows] if id_column else [r[path_column] for r in rows], paths


def _collect(inputs: Sequence[str | Path], *, images_root: str | Path | None, path_column: str,
             id_column: str | None) -> _Inputs:
    """The inputs named on the command line, in order (see :func:`predict_inputs`)."""
    from dbloss.data.features import load_feature_file
    from dbloss.apps.embed import IMAGE_SUFFIXES, collect_inputs

    out = _Inputs()
    kinds: set[str] = set()
    for item in inputs:
        path = Path(item)
        suffix = path.suffix.lower()
        if suffix in FEATURE_SUFFIXES:
            feats, _, _ = load_feature_file(path)  # FileNotFoundError / ValueError name the file
            with np.load(path, allow_pickle=False) as z:
                ids = [str(i) for i in z["ids"]] if "ids" in z.files else [str(i) for i in range(len(feats))]
                paths = [str(p) for p in z["paths"]] if "paths" in z.files else [str(path)] * len(feats)
            kinds.add("features")
            out.features.append(feats)
            out.feature_files.append(path)
        elif path.is_dir() or suffix == ".json":  # folders (recursive, sorted) and COCO files: embed's reader
            found = collect_inputs([path], images_root=images_root)
            kinds.add("images")
            ids, paths = list(found.ids), [str(p) for p in found.paths]
        elif suffix == ".csv":
            if not path.is_file():
                raise FileNotFoundError(f"CSV file not found: {path}")
            kinds.add("images")
            ids, paths = _csv_images(path, images_root, path_column, id_column)
        elif suffix in IMAGE_SUFFIXES:  # a missing image is an unreadable input (an error, or --skip-bad)
            kinds.add("images")
            ids, paths = [str(path)], [str(path)]
        elif not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        else:
            raise UsageError(f"{path}: expected an image file ({', '.join(sorted(IMAGE_SUFFIXES))}), a folder, a .csv "
                             f"of image paths, a COCO-format .json or .npz features")
        out.ids += ids
        out.paths += paths
    if not out.ids:
        raise UsageError("no inputs: give image files, folders, a .csv, a COCO .json or .npz features")
    if len(kinds) > 1:
        raise UsageError("the inputs mix images and .npz features: predict them in separate calls")
    return out


# ----------------------------------------------------------------------------------------
# Predicting many inputs
# ----------------------------------------------------------------------------------------

class _ImageFiles(Dataset):
    """``(position, preprocessed image or None, reason or None)``: never raises on a bad file."""

    def __init__(self, paths: list[str], transform: Callable[[Tensor], Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return i, self.transform(load_image(self.paths[i])), None
        except ImageLoadError as e:
            return i, None, e.reason


def _as_list(items: list[Any]) -> list[Any]:
    return items


@dataclass
class PredictionTable:
    """Predictions of many inputs, in input order (unreadable ones left out and listed).

    Attributes:
        ids, paths: of the N predicted inputs.
        scores: (N, C) float32 sigmoid scores.
        predicted: (N, C) bool, the decisions.
        class_names: the C classes.
        skipped: ``{"path", "reason"}`` of the inputs left out (``skip_bad``).
        num_inputs: inputs asked for (N + skipped).
        decision: how the labels were decided (``"per-class thresholds"``, ``"threshold 0.3"``, ``"top-2"``...).
    """

    ids: list[str]
    paths: list[str]
    scores: np.ndarray
    predicted: np.ndarray
    class_names: list[str]
    skipped: list[dict[str, str]]
    num_inputs: int
    decision: str

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> Iterator[Prediction]:
        for i, (id_, path) in enumerate(zip(self.ids, self.paths)):
            yield Prediction(id_, path, [c for c, on in zip(self.class_names, self.predicted[i]) if on],
                             dict(zip(self.class_names, map(float, self.scores[i]))))


def _decision(predictor: Predictor, threshold: float | None, top_k: int | None) -> str:
    if top_k is not None:
        return f"top-{top_k}"
    if threshold is not None:
        return f"threshold {threshold:g}"
    return {"per-class": "the run's per-class thresholds", "global": "the run's global threshold "
            f"{float(predictor.thresholds[0]):g}"}.get(predictor.threshold_source,
                                                        f"threshold {float(predictor.thresholds[0]):g} (config)")


def predict_inputs(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    batch_size: int = 64,
    skip_bad: bool = False,
    images_root: str | Path | None = None,
    path_column: str = "image",
    id_column: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> PredictionTable:
    """Predict image files, folders, CSV / COCO JSON files of images, or ``.npz`` features.

    Args:
        predictor: a :class:`Predictor`.
        inputs: image files; folders (their images, recursively, sorted by path); ``.csv`` files
            with a ``path_column`` (relative paths against ``images_root``, default the CSV's folder;
            ids from ``id_column``, default the path; other columns are read as training reads
            label columns, and ignored); COCO-format ``.json`` files (their images); ``.npz``
            features (``features`` (N, D), as :func:`~dbloss.data.features.load_feature_file`
            reads; ids and paths from the file's ``ids`` / ``paths`` when it has them) for
            feature models. Images and features are not mixed in one call.
        threshold: overrides the run's thresholds (:meth:`Predictor.decide`).
        top_k: overrides the run's thresholds (:meth:`Predictor.decide`).
        batch_size: inputs per forward pass. Default 64.
        skip_bad: leave unreadable images out (logged, listed in ``skipped``) instead of raising.
        workers: ``DataLoader`` processes that read images. Default 0.
        progress: show a progress bar.

    Raises:
        FileNotFoundError: a folder, CSV, JSON or features file that does not exist.
        UsageError: an unreadable image without ``skip_bad`` (naming it and why), no readable
            input at all, a features file whose dimension differs from the model's (both named),
            features for an image model or images for a feature model without a backbone.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an int >= 1, but got {batch_size!r}")
    predictor.decide(torch.zeros(1, predictor.num_classes), threshold, top_k)  # checks threshold / top_k first
    data = _collect(inputs, images_root=images_root, path_column=path_column, id_column=id_column)
    blocks: list[Tensor] = []
    keep: list[int] = []
    skipped: list[dict[str, str]] = []
    bar = tqdm(total=len(data), desc="predict", unit="input", disable=not progress)
    if data.features:
        from dbloss.apps.embed import check_feature_dim

        if predictor.input_type != "features":
            raise UsageError(f"{predictor.checkpoint} is an image model ({predictor.config.model.backbone}): it takes "
                             f"images, not .npz features")
        for path, block in zip(data.feature_files, data.features):
            if block.shape[1] != predictor.in_features:  # the error, naming both dimensions and the file's backbone
                check_feature_dim(path, predictor.in_features or 0, what=f"the feature model {predictor.checkpoint}")
        feats = torch.from_numpy(np.concatenate(data.features))
        for start in range(0, len(feats), batch_size):
            blocks.append(predictor.scores(feats[start:start + batch_size]))
            bar.update(len(blocks[-1]))
        keep = list(range(len(feats)))
    else:
        predictor._images_needed("images")
        assert predictor.transform is not None
        loader = DataLoader(_ImageFiles(data.paths, predictor.transform), batch_size=batch_size,
                            num_workers=workers, collate_fn=_as_list)
        for batch in loader:
            for i, _, reason in batch:
                if reason is None:
                    continue
                if not skip_bad:
                    bar.close()
                    raise UsageError(f"cannot read image {data.paths[i]}: {reason} (use --skip-bad / skip_bad=True "
                                     f"to leave unreadable inputs out)")
                log.warning("skipping unreadable image %s: %s", data.paths[i], reason)
                skipped.append({"path": data.paths[i], "reason": str(reason)})
            good = [(i, img) for i, img, _ in batch if img is not None]
            if good:
                blocks.append(predictor.scores(torch.stack([img for _, img in good])))
                keep += [i for i, _ in good]
            bar.update(len(batch))
    bar.close()
    if not keep:
        raise UsageError(f"none of the {len(data)} inputs could be read (e.g. {skipped[0]['path']}: "
                         f"{skipped[0]['reason']})")
    scores = torch.cat(blocks)
    return PredictionTable([data.ids[i] for i in keep], [data.paths[i] for i in keep], scores.numpy(),
                           predictor.decide(scores, threshold, top_k).numpy(), list(predictor.class_names), skipped,
                           len(data), _decision(predictor, threshold, top_k))


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------

def _score_columns(class_names: list[str]) -> list[str]:
    """One column per class, named by the class (``score_<name>`` where a class is called id, path or labels)."""
    return [f"score_{c}" if c in _FIXED_COLUMNS else c for c in class_names]


def write_predictions(table: PredictionTable, out: str | Path,
                      format: Literal["csv", "jsonl"] | None = None) -> dict[str, Path]:
    """Write ``table`` to ``out`` (atomically) and the inputs it left out to ``<out>.skipped.txt``.

    Args:
        format: ``"csv"`` (``id,path,labels,<class>...``: labels joined by ``;``, scores with 8
            significant digits) or ``"jsonl"`` (one JSON object per line: ``id``, ``path``,
            ``labels`` (a list), ``scores`` (by class)). Default: from ``out``'s ending
            (``.csv``; ``.jsonl`` / ``.ndjson``).

    Returns:
        ``{"predictions": out}``, with ``"skipped"`` when inputs were left out (a stale
        ``.skipped.txt`` from an earlier call is removed otherwise).
    """
    out = Path(out)
    fmt = format or _FORMATS.get(out.suffix.lower())
    if fmt not in ("csv", "jsonl"):
        raise UsageError(f"cannot tell the output format of {out}: give --format csv|jsonl or end the file name in "
                         f"{', '.join(_FORMATS)}" if format is None else
                         f"Expected `format` to be one of ('csv', 'jsonl'), but got {format!r}")
    buf = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*_FIXED_COLUMNS, *_score_columns(table.class_names)])
        for row in table.rows():
            writer.writerow([row.id, row.path, ";".join(row.labels), *(f"{s:.8g}" for s in row.scores.values())])
    else:
        for row in table.rows():
            buf.write(json.dumps({"id": row.id, "path": row.path, "labels": row.labels, "scores": row.scores}) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = {"predictions": write_text(out, buf.getvalue())}
    skipped_file = out.with_name(out.name + ".skipped.txt")
    if table.skipped:
        written["skipped"] = write_text(skipped_file, "".join(f"{s['path']}\t{s['reason']}\n" for s in table.skipped))
    else:
        skipped_file.unlink(missing_ok=True)
    return written
