"""OLTR (Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019), in the
multi-label form that Wu et al. (ECCV 2020) compared against: sigmoid outputs, any loss of
``build_loss``.

OLTR trains in two stages. Stage 1 is the plain model (backbone, neck, linear classifier). At
the stage boundary the visual memory is formed: the centroid of every class from the stage-1
features of the training set. Stage 2 adds, and trains with everything else:

* **modulated attention** on the backbone's last feature map ``f`` (B, F, h, w)
  (:class:`ModulatedAttention`): ``f + SA(f) ⊙ NL(f)``, a non-local self-attention ``NL``
  (embedded Gaussian, F/2 channels, its output convolution zero-initialised so that stage 2
  starts from stage 1's features) modulated by a spatial attention ``SA`` (a softmax over the
  h·w positions of a linear map of the whole feature map);
* the **dynamic meta-embedding** of the direct feature ``v`` (B, D) (:func:`meta_embedding`,
  the reference)::

      v_memory = softmax(T_hal(v)) · M                     memory feature from the centroids M (C, D)
      e        = tanh(T_sel(v))                            concept selector (B, D)
      gamma    = s / min_k ||v - c_k||                     reachability (s = 10, the release's)
      v_meta   = gamma · (v + e ⊙ v_memory)

  classified by a cosine classifier (:class:`CosineClassifier`, scale 16); the hallucinator
  ``T_hal`` starts from the stage-1 classifier's weights, as in the release;
* the **discriminative centroid loss** (:func:`discriminative_centroid_loss`): features are pulled
  to the centroids of their classes and pushed (a hinge at margin 10 on the mean squared
  distance) from the others; it is added to the recipe's loss with weight ``method.centroid_weight``
  (the release's 0.01) and is what updates the centroids (the memory reads them detached).
  OLTR weighs it against a per-sample loss (softmax cross-entropy); the losses of ``build_loss``
  average over the C classes as well as the samples, so the model returns it divided by C, which
  keeps the release's balance between the two terms.

Multi-label form (our choices; the paper is single-label and Wu et al. did not publish theirs):

* a class's centroid is the mean feature of the training images that contain it (an image with
  several labels counts towards each of its classes' centroids);
* the centroid loss attracts a feature to the centroid of **every** positive class and repels it
  from the negative ones (labels outside {0, 1}, e.g. ``ignore_index``, are neither), and is
  divided by C (above); on the built-in data the release's weight 0.01 so normalised scored
  higher validation mAP than 0.01 without the division (README, "OLTR and BBN");
* the hallucinator keeps OLTR's softmax over classes: the memory feature is a convex combination
  of centroids, which for several positive classes mixes theirs.

Other deviations: the centroids are computed with the evaluation transform on the training
images in eval mode (the release's ``train_plain``); the centroid loss's gradient is autograd's
(the release's hand-written backward averages each centroid's pull over its samples in the
batch); the direct feature is this project's neck output (the release's ResNet ``fc`` feature);
the spatial attention's linear layer is sized for the feature map at the recipe's
``image_size`` (7 x 7 for ResNet-50 at 224, as in the release; it grows with (h·w)² · F).
Backbones without a feature map (timm models return pooled features, precomputed features) run
without modulated attention (a warning says so).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dbloss.devices import autocast, to_input
from dbloss.methods.base import Method, Stage, StageContext, second_stage
from dbloss.models.classifier import FeatureClassifier, FrozenBatchNormModule, MultiLabelClassifier

if TYPE_CHECKING:
    from dbloss.config import TrainConfig

__all__ = ["OLTR", "CosineClassifier", "MetaEmbeddingClassifier", "ModulatedAttention", "OLTRNetwork", "OLTROptions",
           "class_centroids", "discriminative_centroid_loss", "enter_memory_stage", "meta_embedding", "memory_centroids",
           "oltr_network"]

log = logging.getLogger(__name__)

#: The release's constants: reachability scale, cosine classifier scale, centroid-loss margin and repel weight.
REACH_SCALE, COSINE_SCALE, MARGIN, REPEL_WEIGHT = 10.0, 16.0, 10.0, 0.01


def _squared_distances(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(B, C) ``||v_i - c_k||^2`` of (B, D) features and (C, D) centroids (never negative)."""
    d2 = features.pow(2).sum(1, keepdim=True) + centroids.pow(2).sum(1)[None, :] - 2.0 * features @ centroids.t()
    return d2.clamp_min(0.0)


def meta_embedding(direct: torch.Tensor, centroids: torch.Tensor, hallucination: torch.Tensor,
                   selection: torch.Tensor, reach_scale: float = REACH_SCALE) -> torch.Tensor:
    """OLTR's dynamic meta-embedding ``gamma · (v + e ⊙ v_memory)`` (the module docstring's equations).

    Args:
        direct: (B, D) direct features ``v``.
        centroids: (C, D) the visual memory ``M`` (class centroids).
        hallucination: (B, C) ``T_hal(v)``, the logits of the memory coefficients (softmax over classes).
        selection: (B, D) ``T_sel(v)``, the concept selector before its tanh.
        reach_scale: ``s`` of the reachability ``s / min_k ||v - c_k||``. Default 10 (the release's).

    Returns:
        (B, D) meta-embeddings.

    >>> v, m = torch.tensor([[3.0, 4.0]]), torch.zeros(2, 2)   # the memory at the origin: ||v - c|| = 5
    >>> meta_embedding(v, m, torch.zeros(1, 2), torch.zeros(1, 2), reach_scale=10.0).tolist()
    [[6.0, 8.0]]
    """
    v_memory = hallucination.softmax(dim=1) @ centroids  # (B, D)
    concept = torch.tanh(selection)
    reach = reach_scale / _squared_distances(direct, centroids).min(dim=1, keepdim=True).values.sqrt().clamp_min(1e-6)
    return reach * (direct + concept * v_memory)


class CosineClassifier(nn.Module):
    """OLTR's cosine-norm classifier: (B, D) -> (B, C) logits ``s · (x / (1 + ||x||)) · w_k / ||w_k||``.

    The input is squashed to a norm below 1 (``||x|| / (1 + ||x||)``), so logits lie in (-s, s).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = COSINE_SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squashed = x / (1.0 + x.norm(dim=1, keepdim=True))
        return self.scale * squashed @ F.normalize(self.weight, dim=1).t()


class MetaEmbeddingClassifier(nn.Module):
    """OLTR's stage-2 classifier: (B, D) direct features and the (C, D) memory -> (B, C) logits."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.hallucinator = nn.Linear(in_features, num_classes)
        self.selector = nn.Linear(in_features, in_features)
        self.cosine = CosineClassifier(in_features, num_classes)

    def forward(self, direct: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        meta = meta_embedding(direct, memory.to(direct.dtype), self.hallucinator(direct), self.selector(direct))
        return self.cosine(meta)


class ModulatedAttention(nn.Module):
    """OLTR's modulated attention: (B, F, h, w) -> (B, F, h, w), ``f + SA(f) ⊙ NL(f)``.

    Args:
        channels: F. height, width: the feature map's size (the spatial attention's linear layer
            maps the flattened F·h·w map to h·w position weights).
        reduction: the non-local block's channel reduction (F / reduction inner channels). Default 2.
    """

    def __init__(self, channels: int, height: int, width: int, reduction: int = 2) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.size = (height, width)
        self.g = nn.Conv2d(channels, inner, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.conv_mask = nn.Conv2d(inner, channels, 1, bias=False)
        self.fc_spatial = nn.Linear(channels * height * width, height * width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's initialisation: He-normal embeddings, zero biases, a zero output convolution
        (the block starts as the identity)."""
        for conv in (self.g, self.theta, self.phi):
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_mask.weight)
        self.fc_spatial.reset_parameters()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.shape
        if (h, w) != self.size:
            raise ValueError(f"modulated attention was built for {self.size[0]} x {self.size[1]} feature maps (the "
                             f"recipe's image_size), but got {h} x {w}; use the image size the model was trained at")
        theta = self.theta(f).flatten(2).transpose(1, 2)  # (B, hw, F')
        phi = self.phi(f).flatten(2)  # (B, F', hw)
        g = self.g(f).flatten(2).transpose(1, 2)  # (B, hw, F')
        non_local = (theta @ phi).softmax(dim=-1) @ g  # (B, hw, F'): embedded Gaussian
        mask = self.conv_mask(non_local.transpose(1, 2).reshape(b, -1, h, w))  # (B, F, h, w)
        spatial = self.fc_spatial(f.flatten(1)).softmax(dim=1).view(b, 1, h, w)  # (B, 1, h, w)
        return f + spatial * mask


def class_centroids(features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of the features of each class's positive samples (multi-label: a sample
    counts for each of its classes). ``sums / counts`` are the centroids.

    Args:
        features: (N, D). targets: (N, C), 1 marks a positive (anything else is not).

    Returns:
        ``(sums (C, D), counts (C,))`` in ``features``' dtype.

    >>> s, n = class_centroids(torch.tensor([[1.0, 0.0], [3.0, 2.0]]), torch.tensor([[1, 1], [1, 0]]))
    >>> (s / n[:, None]).tolist()
    [[2.0, 1.0], [1.0, 0.0]]
    """
    pos = (targets == 1).to(features.dtype)
    return pos.t() @ features, pos.sum(0)


def discriminative_centroid_loss(features: torch.Tensor, targets: torch.Tensor, centroids: torch.Tensor,
                                 margin: float = MARGIN, repel_weight: float = REPEL_WEIGHT) -> torch.Tensor:
    """OLTR's discriminative centroid loss, multi-label: ``attract + repel_weight * repel``.

    ``attract = sum_{(i, k): y_ik = 1} ||v_i - c_k||^2 / (2 B)``;
    ``repel = max(0, margin - sum_{(i, k): y_ik = 0} ||v_i - c_k||^2 / (B C))``.

    Args:
        features: (B, D) direct features. targets: (B, C) in {0, 1} (other values, e.g. an ignore
            index, count as neither). centroids: (C, D).

    Returns:
        A scalar in ``features``' dtype.
    """
    b, c = targets.shape
    d2 = _squared_distances(features, centroids.to(features.dtype))
    attract = (d2 * (targets == 1)).sum() / (2.0 * b)
    repel = (margin - (d2 * (targets == 0)).sum() / (b * c)).clamp_min(0.0)
    return attract + repel_weight * repel


class OLTRNetwork(FrozenBatchNormModule):
    """OLTR: backbone -> [modulated attention] -> pool -> neck -> linear (stage 1) or meta-embedding
    (stage 2) classifier. ``forward(x)`` -> (B, C) logits; ``forward(x, targets)`` -> (logits, the
    discriminative centroid loss divided by C), the loss 0 in stage 1.

    Attributes:
        in_features: D for a model on (B, D) features, None for an image model.
        centroids: (C, D) the visual memory, a parameter trained only by the centroid loss.
        memory_ready: (bool buffer) whether the model is in stage 2 (saved with the state dict).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, classifier: nn.Linear, feat_dim: int,
                 attention: ModulatedAttention | None = None, in_features: int | None = None) -> None:
        super().__init__()
        num_classes = classifier.out_features
        self.backbone = backbone
        self.attention = attention
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = neck
        self.classifier = classifier
        self.meta = MetaEmbeddingClassifier(feat_dim, num_classes)
        self.centroids = nn.Parameter(torch.zeros(num_classes, feat_dim))
        self.register_buffer("memory_ready", torch.zeros((), dtype=torch.bool))
        self.in_features = in_features
        self._stage2 = False  # the host's copy of memory_ready: forward never reads a tensor to branch
        for p in self._stage2_parameters():
            p.requires_grad_(False)  # unused in stage 1 (and so not seen by DDP)
        self.register_load_state_dict_post_hook(_sync_stage)

    def _stage2_parameters(self) -> list[nn.Parameter]:
        modules = [self.meta] + ([self.attention] if self.attention is not None else [])
        return [p for m in modules for p in m.parameters()] + [self.centroids]

    def direct_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) the direct features ``v`` (the neck's output)."""
        h = self.backbone(x)
        if h.ndim == 4:
            if self._stage2 and self.attention is not None:
                h = self.attention(h)
            h = self.pool(h)
        return self.neck(h.flatten(1))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        v = self.direct_features(x)
        if not self._stage2:
            logits = self.classifier(v)
            return logits if targets is None else (logits, v.new_zeros(()))
        logits = self.meta(v, self.centroids.detach())
        if targets is None:
            return logits
        # per (sample, class) term, as the losses of build_loss (the release's is per sample, like its softmax CE)
        return logits, discriminative_centroid_loss(v.float(), targets, self.centroids) / targets.shape[1]


def _sync_stage(module: nn.Module, incompatible: Any) -> None:
    """After ``load_state_dict``: the stage the loaded weights are in (a stage-2 checkpoint's
    model runs its meta-embedding; one read of a tensor, at load time)."""
    module._stage2 = bool(module.memory_ready)


def enter_memory_stage(model: OLTRNetwork, centroids: torch.Tensor | None = None) -> None:
    """Turn a stage-1 OLTR model into stage 2, in place: modulated attention, meta-embedding and
    centroids trained, the stage-1 linear classifier no longer used (frozen).

    ``centroids`` (C, D), the stage boundary of a run: the memory, and the hallucinator
    initialised from the stage-1 classifier (the release's). None when the model will receive
    the weights of a stage-2 checkpoint (resume).
    """
    if not isinstance(model, OLTRNetwork):
        raise TypeError(f"Expected an OLTRNetwork, but got {type(model).__name__}")
    if centroids is not None:
        if centroids.shape != model.centroids.shape:
            raise ValueError(f"Expected centroids of shape {tuple(model.centroids.shape)}, but got "
                             f"{tuple(centroids.shape)}")
        with torch.no_grad():
            model.centroids.copy_(centroids)
            model.meta.hallucinator.weight.copy_(model.classifier.weight)
            model.meta.hallucinator.bias.copy_(model.classifier.bias)
    for p in model._stage2_parameters():
        p.requires_grad_(True)
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    model.memory_ready.fill_(True)
    model._stage2 = True


def _feature_map_size(backbone: nn.Module, image_size: int) -> tuple[int, int, int] | None:
    """(F, h, w) of the backbone's output for one ``image_size`` image, None when it pools itself."""
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            out = backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        backbone.train(was)
    return tuple(out.shape[1:]) if out.ndim == 4 else None  # type: ignore[return-value]


def oltr_network(base: nn.Module, *, attention: bool = True, image_size: int = 224) -> OLTRNetwork:
    """The OLTR model of a model built by :func:`dbloss.models.classifier.build_model` (its backbone, neck and
    linear classifier; the modulated attention sized for ``image_size`` images when ``attention``
    and the backbone gives feature maps)."""
    if isinstance(base, MultiLabelClassifier):
        att = None
        if attention:
            size = _feature_map_size(base.backbone, image_size)
            if size is None:
                log.warning("OLTR: the backbone returns pooled features, not a feature map: no modulated attention")
            else:
                att = ModulatedAttention(*size)
        return OLTRNetwork(base.backbone, base.neck, base.classifier, base.classifier.in_features, att)
    if isinstance(base, FeatureClassifier):
        if attention:
            log.info("OLTR on precomputed features: no feature map, so no modulated attention")
        return OLTRNetwork(nn.Identity(), base.neck, base.classifier, base.classifier.in_features,
                           in_features=base.in_features)
    raise TypeError(f"OLTR builds on a MultiLabelClassifier or a FeatureClassifier, not {type(base).__name__}")


@torch.no_grad()
def memory_centroids(model: OLTRNetwork, context: StageContext, num_classes: int) -> torch.Tensor:
    """OLTR's memory: (C, D) the mean direct feature of each class's training samples (multi-label:
    a sample counts for each of its classes), from ``context.train_batches`` (the evaluation
    transform), the model in eval mode; every rank sums its share and the sums are all-reduced."""
    model.eval()
    sums = counts = None
    for x, y in context.train_batches():
        s, n = class_centroids(model.direct_features(x).float(), y)
        sums, counts = (s, n) if sums is None else (sums + s, counts + n)
    if sums is None:
        raise ValueError("OLTR: no training sample to form the memory from")
    context.all_reduce(sums)
    context.all_reduce(counts)
    if context.is_main and bool((counts == 0).any()):
        log.warning("OLTR: %d classes have no training sample: their centroids are 0", int((counts == 0).sum()))
    return sums / counts.clamp_min(1)[:, None]


@dataclass
class OLTROptions:
    """``method: {name: oltr, ...}``: the attention, the centroid loss's weight and the memory stage."""

    attention: bool = True  # modulated attention on the backbone's last feature map (where it has one)
    centroid_weight: float = 0.01  # weight of the discriminative centroid loss (the release's 0.01)
    stage2_epochs: int = 4  # epochs of the memory stage (stage 2)
    stage2_sampler: Literal["random", "class-aware"] = "class-aware"
    stage2_lr: float | None = None  # null: the recipe's `optim.lr`

    def validate(self) -> None:
        if self.centroid_weight < 0:
            raise ValueError(f"Expected `method.centroid_weight` >= 0, but got {self.centroid_weight!r}")
        if self.stage2_epochs < 1:
            raise ValueError(f"Expected `method.stage2_epochs` >= 1 with method 'oltr' (its stage 2 trains the "
                             f"modulated attention and the meta-embedding classifier), but got {self.stage2_epochs!r}")
        if self.stage2_lr is not None and self.stage2_lr < 0:
            raise ValueError(f"Expected `method.stage2_lr` >= 0 or null, but got {self.stage2_lr!r}")


class OLTR(Method):
    """OLTR: stage 1 the plain model; stage 2 the memory (class centroids), modulated attention and the
    meta-embedding classifier, with the discriminative centroid loss."""

    name = "oltr"
    Options = OLTROptions

    def wrap(self, model: nn.Module, cfg: "TrainConfig") -> nn.Module:
        return oltr_network(model, attention=self.options.attention, image_size=cfg.data.image_size)

    def step_loss(self, net: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: "TrainConfig",
                  device: torch.device, epoch: int) -> torch.Tensor:
        """The recipe's loss plus the weighted discriminative centroid loss the model returns (0 in stage 1)."""
        with autocast(cfg.run.amp, device):
            logits, centroid_loss = net(to_input(x, device, cfg.run.channels_last), targets=y)
        return loss_fn(logits.float(), y) + self.options.centroid_weight * centroid_loss.float()

    def stages(self, cfg: "TrainConfig") -> list[Stage]:
        o = self.options
        return [Stage(1, cfg, 0), second_stage(cfg, o.stage2_epochs, o.stage2_sampler, o.stage2_lr, "oltr")]

    def enter_stage(self, model: nn.Module, stage: Stage, *, fresh: bool, context: StageContext | None = None) -> None:
        """Stage 2: the memory from the stage-1 features (``fresh``), then modulated attention,
        meta-embedding and centroids trained (:func:`enter_memory_stage`)."""
        centroids = None
        if fresh:
            if context is None:
                raise ValueError("OLTR's stage 2 forms its memory from the training data: a StageContext is needed")
            centroids = memory_centroids(model, context, model.centroids.shape[0])
        enter_memory_stage(model, centroids)
