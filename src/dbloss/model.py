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

__all__ = ["MultiLabelClassifier", "FeatureClassifier", "build_model", "build_backbone", "SmallConvNet"]


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
    """A small CNN for CPU demos: four conv-BN-ReLU stages, (B, 3, H, W) -> (B, 32 * width, H/16, W/16)."""

    def __init__(self, width: int = 2) -> None:
        super().__init__()
        chans = [3, 16 * width, 32 * width, 64 * width, 128 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.out_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_backbone(
    name: str,
    weights: str | None = None,
    frozen_stages: int = 1,
) -> tuple[nn.Module, int]:
    """A feature extractor (B, 3, H, W) -> (B, F, h, w) and its channel count F.

    Args:
        name: ``"small_cnn"`` (built-in, for CPU demos) or any torchvision classification model
            name (``"resnet50"``, ``"resnet18"``, ``"convnext_tiny"``, ...).
        weights: ``None``/``"none"`` (random init), a torchvision weights name such as
            ``"DEFAULT"`` or ``"IMAGENET1K_V1"`` (downloaded by torchvision when not cached), or a
            path to a local ``.pth`` state dict of the torchvision model.
        frozen_stages: for ResNets, freeze the stem and the first ``frozen_stages`` residual
            stages (the paper freezes 1). Ignored for other backbones.
    """
    if name == "small_cnn":
        net = SmallConvNet()
        return net, net.out_features
    if name not in torchvision.models.list_models(module=torchvision.models):
        valid = ", ".join(["small_cnn"] + torchvision.models.list_models(module=torchvision.models)[:8])
        raise ValueError(f"Unknown backbone {name!r}; expected 'small_cnn' or a torchvision model name ({valid}, ...)")
    tv_weights = None
    local: Path | None = None
    if weights not in (None, "none", "None"):
        if Path(str(weights)).suffix in (".pth", ".pt") or Path(str(weights)).exists():
            local = Path(str(weights))
            if not local.is_file():
                raise FileNotFoundError(f"backbone weights file not found: {local}")
        else:
            tv_weights = weights
    model = torchvision.models.get_model(name, weights=tv_weights)
    if local is not None:
        state = torch.load(local, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith(("fc.", "classifier.", "head"))]
        if bad:
            raise ValueError(f"{local}: weights do not match backbone {name!r}; missing {bad[:5]}")
    if hasattr(model, "fc") and hasattr(model, "layer1"):  # ResNet family
        feat_dim = model.fc.in_features
        stages = [nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool),
                  model.layer1, model.layer2, model.layer3, model.layer4]
        for stage in stages[: frozen_stages + 1 if frozen_stages > 0 else 0]:
            for p in stage.parameters():
                p.requires_grad_(False)
        return nn.Sequential(*stages), feat_dim
    if hasattr(model, "features"):  # VGG, DenseNet, EfficientNet, ConvNeXt, MobileNet...
        with torch.no_grad():
            model.eval()
            feat_dim = model.features(torch.zeros(1, 3, 64, 64)).shape[1]
        return model.features, feat_dim
    raise ValueError(f"Backbone {name!r} has no `features` or ResNet stages to extract features from")


class MultiLabelClassifier(nn.Module):
    """Backbone -> global average pool -> neck -> linear: (B, 3, H, W) images to (B, C) logits."""

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
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.neck(self.pool(self.backbone(x)).flatten(1)))


class FeatureClassifier(nn.Module):
    """A head on precomputed features: (B, D) -> (B, C) logits.

    ``hidden=0`` is a linear classifier; ``hidden>0`` adds one hidden layer (the same neck as
    the image model: Linear -> BatchNorm1d -> ReLU -> Dropout).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.5) -> None:
        super().__init__()
        self.neck = Neck(in_features, hidden, dropout) if hidden > 0 else nn.Identity()
        self.classifier = nn.Linear(hidden if hidden > 0 else in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.neck(x))


def build_model(
    num_classes: int,
    *,
    input_type: Literal["image", "features"] = "image",
    backbone: str = "resnet50",
    weights: str | None = None,
    frozen_stages: int = 1,
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
