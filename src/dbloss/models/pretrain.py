"""Pretrain a backbone on a balanced single-label image set: the stand-in for ImageNet weights.

The paper fine-tunes an ImageNet-pretrained ResNet-50; where no weights can be downloaded,
``dbloss pretrain`` makes them: it trains the backbone with a linear classifier and softmax
cross-entropy on an ``ImageFolder`` tree (``ROOT/<class>/<image>``, balanced classes expected)
and writes the backbone's state dict, which ``weights=PATH`` loads for fine-tuning (the
classifier is left out; the file holds tensors only and is read with ``weights_only``).

``weights=demo-source`` in a recipe means "the backbone pretrained on the built-in source set"
(:func:`dbloss.data.synthetic.generate_source_dataset`): :func:`builtin_weights` draws the set and
pretrains once, caching both under ``<data_root>/pretrained/``; later runs reuse them.

Recipe: SGD (momentum 0.9, weight decay 5e-4), cosine decay from ``lr`` over all iterations,
the demo's training augmentation (crop, resize, flip), ``val_fraction`` held out to report the
top-1 accuracy. A JSON beside the weights records the settings, classes and accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset

from dbloss.data.images import load_image
from dbloss.data.transforms import eval_transform, train_transform
from dbloss.files import save_checkpoint, write_json
from dbloss.models.classifier import SmallConvNet

__all__ = ["BUILTIN_WEIGHTS", "PretrainConfig", "builtin_weights", "pretrain", "resolve_weights"]

log = logging.getLogger(__name__)

#: The ``weights`` value that selects the backbone pretrained on the built-in source set.
BUILTIN_WEIGHTS = "demo-source"
_HEAD_PREFIXES = ("fc.", "classifier.", "head")


@dataclass
class PretrainConfig:
    """Settings of :func:`pretrain` (the defaults pretrain ``small_cnn`` on the source set in about a minute)."""

    backbone: str = "small_cnn"
    image_size: int = 32
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    val_fraction: float = 0.1
    photometric: bool = False  # the demo classes are partly told apart by hue
    seed: int = 0
    workers: int = 0
    device: str = "auto"

    def validate(self) -> "PretrainConfig":
        for f in ("image_size", "epochs", "batch_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Expected `{f}` to be an int >= 1, but got {v!r}")
        for f in ("lr", "momentum", "weight_decay"):
            if getattr(self, f) < 0:
                raise ValueError(f"Expected `{f}` >= 0, but got {getattr(self, f)!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"Expected 0 <= `val_fraction` < 1, but got {self.val_fraction!r}")
        return self


def _source_model(backbone: str, num_classes: int) -> nn.Module:
    """The backbone with a linear classifier over ``num_classes`` source classes."""
    if backbone == "small_cnn":
        net = SmallConvNet()
        return nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(net.out_features, num_classes))
    if backbone not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"Unknown backbone {backbone!r}; expected 'small_cnn' or a torchvision model name")
    return torchvision.models.get_model(backbone, weights=None, num_classes=num_classes)


def _backbone_state(model: nn.Module, backbone: str) -> dict[str, torch.Tensor]:
    """What ``weights=PATH`` loads: the backbone's parameters and buffers, no classifier."""
    if backbone == "small_cnn":
        return {k: v.detach().cpu().clone() for k, v in model[0].state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return right / max(total, 1)


def pretrain(data: str | Path, out: str | Path, cfg: PretrainConfig | None = None, *,
             progress: bool = True) -> dict[str, Any]:
    """Pretrain ``cfg.backbone`` on the ImageFolder tree ``data``; write its state dict to ``out``.

    Args:
        data: ``ROOT/<class>/<image file>`` (any format torchvision decodes); the classes should be balanced.
        out: the ``.pth`` file to write (atomically); ``out`` with suffix ``.json`` gets the record.
        cfg: settings (:class:`PretrainConfig`).

    Returns:
        The record: settings, class names and counts, validation top-1 accuracy, seconds.
    """
    cfg = (cfg or PretrainConfig()).validate()
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise FileNotFoundError(f"pretraining data folder not found: {data}")
    if out.suffix not in (".pth", ".pt"):
        raise ValueError(f"Expected the output weights file to end in .pth or .pt, but got {out}")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the entry point seeds once (weight init)
    full = torchvision.datasets.ImageFolder(str(data), loader=load_image)
    counts = [0] * len(full.classes)
    for _, k in full.samples:
        counts[k] += 1
    if len(full.classes) < 2:
        raise ValueError(f"{data}: expected at least 2 class folders, found {full.classes}")
    if max(counts) > 2 * min(counts):
        log.warning("%s: the classes are not balanced (%d to %d images); a balanced source task is expected",
                    data, min(counts), max(counts))
    perm = torch.randperm(len(full), generator=gen).tolist()
    n_val = int(round(cfg.val_fraction * len(full)))
    train_set = torchvision.datasets.ImageFolder(
        str(data), loader=load_image, transform=train_transform(cfg.image_size, photometric=cfg.photometric))
    val_set = torchvision.datasets.ImageFolder(str(data), loader=load_image, transform=eval_transform(cfg.image_size))
    train_loader = DataLoader(Subset(train_set, perm[n_val:]), batch_size=cfg.batch_size, shuffle=True,
                              generator=gen, num_workers=cfg.workers, drop_last=len(perm) - n_val > cfg.batch_size)
    val_loader = DataLoader(Subset(val_set, perm[:n_val]), batch_size=256, num_workers=cfg.workers)

    device = _device(cfg.device)
    model = _source_model(cfg.backbone, len(full.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    log.info("pretraining %s on %s: %d classes, %d train / %d val images, %d epochs", cfg.backbone, data,
             len(full.classes), len(perm) - n_val, n_val, cfg.epochs)
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum, n = 0.0, 0
        batches = train_loader
        if progress:
            from tqdm import tqdm

            batches = tqdm(train_loader, desc=f"pretrain {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                raise RuntimeError(f"pretraining: non-finite loss at epoch {epoch + 1}; lower `lr` ({cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum, n = loss_sum + float(loss.detach()), n + 1
        log.info("pretrain epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, loss_sum / max(n, 1))
    accuracy = _accuracy(model, val_loader, device) if n_val else None
    record = {"config": dataclasses.asdict(cfg), "data": str(data), "classes": full.classes, "class_counts": counts,
              "val_accuracy": accuracy, "seconds": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, _backbone_state(model, cfg.backbone))  # tensors only: `weights=PATH` reads it as data
    write_json(out.with_suffix(".json"), record)
    log.info("pretrained %s: validation top-1 %s in %.0f s -> %s", cfg.backbone,
             "n/a" if accuracy is None else f"{accuracy:.3f}", record["seconds"], out)
    return record


def builtin_weights(cache_dir: str | Path, backbone: str = "small_cnn", image_size: int = 32, *,
                    per_class: int = 300, progress: bool = True, **settings: Any) -> Path:
    """The backbone pretrained on the built-in source set, made on first use and cached in ``cache_dir``.

    Reused when ``cache_dir/<backbone>_<image_size>.json`` records the same settings and source set.
    """
    from dbloss.data.synthetic import generate_source_dataset

    cache = Path(cache_dir)
    source = generate_source_dataset(cache / "source", per_class=per_class)
    cfg = PretrainConfig(backbone=backbone, image_size=image_size, **settings).validate()
    path = cache / f"{backbone}_{image_size}.pth"
    meta = path.with_suffix(".json")
    try:
        saved = json.loads(meta.read_text())
        if path.is_file() and saved["config"] == dataclasses.asdict(cfg) and saved["data"] == str(source) and \
                saved.get("per_class") == per_class:
            return path
    except (OSError, json.JSONDecodeError, KeyError):
        pass
    record = pretrain(source, path, cfg, progress=progress)
    write_json(meta, {**record, "per_class": per_class})
    return path


def resolve_weights(weights: str | None, backbone: str, image_size: int, data_root: str | None,
                    progress: bool = True) -> str | None:
    """``weights`` with :data:`BUILTIN_WEIGHTS` replaced by the cached file's path (made if needed)."""
    if weights != BUILTIN_WEIGHTS:
        return weights
    cache = Path(data_root or "demo_data") / "pretrained"
    return str(builtin_weights(cache, backbone, image_size, progress=progress))
