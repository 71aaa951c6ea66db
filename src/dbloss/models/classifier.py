"""Classifiers: a torchvision backbone, global average pooling, the paper's neck and a linear head.

The paper's model (the original release's ``SimpleClassifier``): ResNet-50 pre-trained on
ImageNet with its first stage frozen, global average pooling, a neck ``Linear(2048 -> 256) ->
BatchNorm1d -> ReLU -> Dropout(0.5)`` and a linear classifier. :func:`build_model` builds it
from torchvision by name, so any torchvision classification backbone works; for precomputed
features (text, frozen foundation models) :class:`FeatureClassifier` is a linear or small MLP head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

from dbloss.models.backbones import build_timm_backbone
# is_pretrained and resolve_frozen_stages live in dbloss.models.weights (shared with the timm backbones); the
# names stay importable from here for dbloss.training.engine until it imports them from there
from dbloss.models.weights import is_pretrained, load_local_weights, resolve_frozen_stages

__all__ = ["MultiLabelClassifier", "FeatureClassifier", "build_model", "build_backbone", "SmallConvNet",
           "FrozenBatchNormModule", "keep_frozen_batchnorms_in_eval", "reinitialize"]


class Neck(nn.Module):
    """``Linear -> BatchNorm1d -> ReLU -> Dropout``: (B, in_features) -> (B, out_features)."""

    def __init__(self, in_features: int, out_features: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.bn(self.fc(x))))


class SmallConvNet(nn.Module):
    """A small CNN for CPU demos: four conv-BN-ReLU-maxpool stages, (B, 3, H, W) -> (B, 32 * width, H/16, W/16).

    ``stages`` holds the four stages (the first is the "stem" that ``frozen_stages`` counts like a
    ResNet's stem + first stage), so the paper's "freeze the first stage" applies to it as well.
    """

    def __init__(self, width: int = 2) -> None:
        super().__init__()
        chans = [3, 16 * width, 32 * width, 64 * width, 128 * width]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2))
            for cin, cout in zip(chans[:-1], chans[1:]))
        self.out_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def _freeze(stages: list[nn.Module], n: int) -> None:
    for stage in stages[:n]:
        for p in stage.parameters():
            p.requires_grad_(False)


def build_backbone(
    name: str,
    weights: str | None = None,
    frozen_stages: int | None = None,
) -> tuple[nn.Module, int]:
    """A feature extractor (B, 3, H, W) -> (B, F, h, w) and its channel count F.

    Args:
        name: ``"small_cnn"`` (built-in, for CPU demos) or any torchvision classification model
            name (``"resnet50"``, ``"resnet18"``, ``"convnext_tiny"``, ...).
        weights: ``None``/``"none"`` (random init), a torchvision weights name such as
            ``"DEFAULT"`` or ``"IMAGENET1K_V1"`` (downloaded by torchvision when not cached), or a
            path to a local ``.pth`` state dict of the model (e.g. written by ``dbloss pretrain``).
        frozen_stages: freeze the stem and the first ``frozen_stages`` stages (ResNets: stem +
            ``layer1`` ... ; ``small_cnn``: its first ``frozen_stages + 1`` conv stages, the first
            counting as the stem). ``None`` (default): the paper's 1 with pretrained weights, 0
            without; freezing random layers is an error (:func:`dbloss.models.weights.resolve_frozen_stages`). Other
            backbones cannot be frozen by stage: a request > 0 raises.

    ``"timm:NAME"`` builds a timm model instead (:func:`dbloss.models.backbones.build_timm_backbone`:
    pooled (B, F) features, timm's stages frozen), with ``weights`` DEFAULT, a local file or none.
    """
    if name.startswith("timm:"):
        return build_timm_backbone(name, weights, frozen_stages)
    frozen = resolve_frozen_stages(frozen_stages, weights)
    local: Path | None = None
    tv_weights = None
    if is_pretrained(weights):
        if Path(str(weights)).suffix in (".pth", ".pt") or Path(str(weights)).exists():
            local = Path(str(weights))
            if not local.is_file():
                raise FileNotFoundError(f"backbone weights file not found: {local}")
        else:
            tv_weights = weights
    if name == "small_cnn":
        if tv_weights is not None:
            raise ValueError(f"backbone 'small_cnn' has no published weights; expected weights=none or a local "
                             f".pth file (e.g. from `dbloss pretrain`), but got {weights!r}")
        net = SmallConvNet()
        if local is not None:
            load_local_weights(net, local, name)
        _freeze(list(net.stages), frozen + 1 if frozen > 0 else 0)
        return net, net.out_features
    if name not in torchvision.models.list_models(module=torchvision.models):
        valid = ", ".join(["small_cnn"] + torchvision.models.list_models(module=torchvision.models)[:8])
        raise ValueError(f"Unknown backbone {name!r}; expected 'small_cnn' or a torchvision model name ({valid}, ...)")
    model = torchvision.models.get_model(name, weights=tv_weights)
    if local is not None:
        load_local_weights(model, local, name)
    if hasattr(model, "fc") and hasattr(model, "layer1"):  # ResNet family
        feat_dim = model.fc.in_features
        stages = [nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool),
                  model.layer1, model.layer2, model.layer3, model.layer4]
        _freeze(stages, frozen + 1 if frozen > 0 else 0)
        return nn.Sequential(*stages), feat_dim
    if frozen > 0:
        raise ValueError(f"frozen_stages={frozen}: backbone {name!r} has no ResNet stages to freeze; "
                         "set frozen_stages=0")
    if hasattr(model, "features"):  # VGG, DenseNet, EfficientNet, ConvNeXt, MobileNet...
        with torch.no_grad():
            model.eval()
            feat_dim = model.features(torch.zeros(1, 3, 64, 64)).shape[1]
        return model.features, feat_dim
    raise ValueError(f"Backbone {name!r} has no `features` or ResNet stages to extract features from")


def keep_frozen_batchnorms_in_eval(module: nn.Module) -> None:
    """Put every batch norm of ``module`` whose parameters are all frozen in eval mode (its running
    statistics frozen too, as in the original release's ``frozen_stages``); call after ``train()``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def reinitialize(module: nn.Module) -> None:
    """Draw new initial weights for every layer of ``module`` that has ``reset_parameters``."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


class FrozenBatchNormModule(nn.Module):
    """An ``nn.Module`` whose ``train()`` keeps the batch norms of frozen layers in eval mode
    (:func:`keep_frozen_batchnorms_in_eval`): the base of the models that wrap a built one (OLTR, BBN)."""

    def train(self, mode: bool = True) -> "FrozenBatchNormModule":
        super().train(mode)
        if mode:
            keep_frozen_batchnorms_in_eval(self)
        return self


def _keep_representation_frozen(model: nn.Module) -> None:
    """With ``model.frozen_representation`` (set by :func:`dbloss.methods.decoupling.freeze_representation`
    for a classifier-only stage), everything but ``model.classifier`` stays in eval mode."""
    if getattr(model, "frozen_representation", False):
        for name, child in model.named_children():
            if name != "classifier":
                child.eval()


class MultiLabelClassifier(nn.Module):
    """Backbone -> global average pool -> neck -> linear: (B, 3, H, W) images to (B, C) logits.

    ``in_features`` is None (the model takes images; a :class:`FeatureClassifier`'s is D)."""

    in_features = None

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, neck_dim: int | None = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = Neck(feat_dim, neck_dim, dropout) if neck_dim else nn.Identity()
        self.classifier = nn.Linear(neck_dim or feat_dim, num_classes)

    def train(self, mode: bool = True) -> "MultiLabelClassifier":
        """Like ``nn.Module.train``, but batch norms of frozen stages stay in eval mode (their
        running statistics are frozen too, as in the original release's ``frozen_stages``)."""
        super().train(mode)
        if mode:
            keep_frozen_batchnorms_in_eval(self.backbone)
            _keep_representation_frozen(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if feats.ndim == 4:  # (B, F, h, w) feature maps; timm backbones return pooled (B, F)
            feats = self.pool(feats)
        return self.classifier(self.neck(feats.flatten(1)))


class FeatureClassifier(nn.Module):
    """A head on precomputed features: (B, D) -> (B, C) logits.

    ``hidden=0`` is a linear classifier; ``hidden>0`` adds one hidden layer (the same neck as
    the image model: Linear -> BatchNorm1d -> ReLU -> Dropout). ``in_features``: D.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_features = in_features
        self.neck = Neck(in_features, hidden, dropout) if hidden > 0 else nn.Identity()
        self.classifier = nn.Linear(hidden if hidden > 0 else in_features, num_classes)

    def train(self, mode: bool = True) -> "FeatureClassifier":
        """Like ``nn.Module.train``; a frozen representation (decoupling's stage 2) stays in eval mode."""
        super().train(mode)
        if mode:
            _keep_representation_frozen(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.neck(x))


def build_model(
    num_classes: int,
    *,
    input_type: Literal["image", "features"] = "image",
    backbone: str = "resnet50",
    weights: str | None = None,
    frozen_stages: int | None = None,
    neck_dim: int = 256,
    dropout: float = 0.5,
    in_features: int | None = None,
) -> nn.Module:
    """Build the classifier of a recipe (see the module docstring)."""
    if num_classes < 1:
        raise ValueError(f"Expected num_classes >= 1, but got {num_classes}")
    if input_type == "features":
        if not in_features:
            raise ValueError("input_type='features' needs `in_features` (the feature dimension)")
        return FeatureClassifier(in_features, num_classes, hidden=neck_dim, dropout=dropout)
    if input_type != "image":
        raise ValueError(f"Expected input_type to be one of ('image', 'features'), but got {input_type!r}")
    net, feat_dim = build_backbone(backbone, weights, frozen_stages)
    return MultiLabelClassifier(net, feat_dim, num_classes, neck_dim, dropout)
