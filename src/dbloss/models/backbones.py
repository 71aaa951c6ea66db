"""Backbones from timm and open_clip: building, freezing by stage, and each model's preprocessing.

``backbone: timm:NAME`` in a recipe builds any timm model (``timm:convnext_tiny``,
``timm:vit_base_patch16_224``, ``timm:resnet50``, or a name with a pretrained tag such as
``timm:vit_base_patch16_224.augreg_in21k``) with ``timm.create_model(NAME, pretrained=...,
num_classes=0)``: the model returns pooled ``(B, F)`` features (its own pooling: global average
for CNNs, the class token or average of tokens for ViTs, after its final norm), which
:class:`dbloss.models.classifier.MultiLabelClassifier` feeds to the neck unpooled.

Freezing (the paper's "freeze the first stage", generalised): ``frozen_stages=N`` freezes the
stem and the first ``N`` of the model's *stages*, which are timm's own coarse parameter groups
(``model.group_matcher(coarse=True)``, the groups timm's layer-wise lr decay uses), in order:

========================  ==========================================  ========================
family                    stem (group 0)                              stages after the stem
========================  ==========================================  ========================
ResNet (``resnet*``)      ``conv1``, ``bn1``                          4: ``layer1`` .. ``layer4``
ConvNeXt                  ``stem``                                    5: ``stages.0`` .. ``stages.3``, then the final ``head.norm``
ViT / DeiT                ``patch_embed``, ``cls_token``, ``pos_embed``  depth (12 for tiny/base): ``blocks.0`` .. ``blocks.11``; the final ``norm`` goes with the last block
EfficientNet              ``conv_stem``, ``bn1``                      7: ``blocks.0`` .. ``blocks.6`` (``conv_head`` with the last)
Swin                      ``patch_embed``                             5: ``layers.0`` .. ``layers.3``, then the final ``norm``
========================  ==========================================  ========================

So ``frozen_stages=1`` is the paper's setting for a ResNet (stem + ``layer1``, as torchvision's
ResNets in :func:`dbloss.models.classifier.build_backbone`), the stem and first stage of a ConvNeXt, the patch
embedding and first block of a ViT; "train only the last ``K`` blocks" is ``frozen_stages =
num_stages - K`` (:func:`timm_stages` lists them); ``frozen_stages = num_stages`` freezes the whole
backbone (a linear probe). ``None``: 1 with pretrained weights, 0 from scratch
(:func:`dbloss.models.weights.resolve_frozen_stages`). Frozen parameters get ``requires_grad=False``;
``MultiLabelClassifier.train`` keeps the batch norms whose parameters are all frozen in eval mode,
so their running statistics stay those of the pretrained model.

Preprocessing: :func:`backbone_preprocessing` gives the mean, std and input size a backbone was
trained with (timm's ``pretrained_cfg``, open_clip's model config; ImageNet's for torchvision and
``small_cnn``). dbloss's image transforms default to ImageNet's mean and std; most timm CNNs use
them too, but many ViTs (``vit_*_224.augreg*``: 0.5 / 0.5) and every CLIP model (OpenAI's
0.481 / 0.269 ...) do not: ``dbloss features`` normalises with the backbone's own values.

timm and open_clip are optional dependencies (``pip install 'dbloss[timm]'``,
``pip install 'dbloss[clip]'``), imported only when such a backbone is asked for.
"""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from dbloss.errors import UsageError
from dbloss.models.weights import is_pretrained, load_local_weights, resolve_frozen_stages
from dbloss.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["MissingDependencyError", "Preprocessing", "TIMM_PREFIX", "CLIP_PREFIX", "backbone_preprocessing",
           "build_timm_backbone", "freeze_timm_stages", "is_timm_name", "parse_clip_name", "timm_stage_groups",
           "timm_stages"]

#: Prefix of timm backbone names in recipes and on the command line (``timm:resnet50``).
TIMM_PREFIX = "timm:"
#: Prefix of CLIP image towers (``clip:ViT-B-16@openai``, through open_clip); features only.
CLIP_PREFIX = "clip:"

#: What ``weights`` means for timm: timm's pretrained weights (downloaded by timm, cached by huggingface_hub).
_PRETRAINED_WORDS = ("DEFAULT", "default", "pretrained")


class MissingDependencyError(UsageError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class Preprocessing(NamedTuple):
    """How a backbone's inputs are normalised: ``mean`` and ``std`` (RGB, [0, 1] scale) and the
    square input ``size`` it was trained at."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int


def _import(module: str, extra: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{what} needs the optional dependency {module!r} ({e}); install it with "
                                     f"`pip install 'dbloss[{extra}]'`") from None


def _timm(what: str) -> Any:
    return _import("timm", "timm", what)


def is_timm_name(name: str) -> bool:
    """Whether a backbone name is a timm model (``timm:NAME``).

    >>> is_timm_name("timm:convnext_tiny"), is_timm_name("resnet50")
    (True, False)
    """
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def _timm_model_name(name: str) -> str:
    """``NAME`` of ``timm:NAME``, checked against timm's registry (close matches named when unknown)."""
    timm = _timm(f"backbone {name!r}")
    model_name = name[len(TIMM_PREFIX):] if is_timm_name(name) else name
    arch = model_name.split(".", 1)[0]
    if not model_name or not timm.is_model(arch):
        names = timm.list_models()
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
        if not close:  # a part of the name, e.g. 'convnext' of 'convnxt_tiny' or 'vit' of 'vit_huge_xyz'
            part = max(re.split(r"[_\-.]", arch) or [arch], key=len)
            close = timm.list_models(f"*{part}*")[:5]
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UsageError(f"Unknown timm model {model_name!r} (backbone {name!r}){hint}. "
                         f"`timm.list_models('*part*')` lists the {len(names)} names")
    return model_name


def _group_label(names: list[str]) -> str:
    """A short label of a parameter group: its distinct module prefixes up to the first index
    (``layer1``, ``stages.0``, ``blocks.11+norm``)."""
    seen: list[str] = []
    for n in names:
        parts = n.split(".")[:-1] or n.split(".")
        cut = next((k for k, p in enumerate(parts) if re.search(r"\d", p)), None)
        prefix = ".".join(parts[: cut + 1] if cut is not None else parts[:2])
        if prefix not in seen:
            seen.append(prefix)
    return "+".join(seen)


def timm_stage_groups(model: nn.Module) -> list[list[str]]:
    """The parameter names of a timm model in its coarse groups: the stem first, then one list per stage.

    Groups are ``timm.models.group_parameters(model, model.group_matcher(coarse=True))`` in order
    (parameters that no pattern matches, such as ConvNeXt's final ``head.norm``, form the last group).

    Raises:
        UsageError: the model defines no group matcher.
    """
    timm = _timm("freezing a timm model")
    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        raise UsageError(f"timm model {type(model).__name__} defines no `group_matcher`: it cannot be frozen by "
                         "stage; set frozen_stages=0") from None
    groups = timm.models.group_parameters(model, matcher)
    return [list(groups[k]) for k in sorted(groups)]


def timm_stages(name_or_model: str | nn.Module) -> list[str]:
    """The labels of a timm model's stem and stages, the stem first (what ``frozen_stages`` counts).

    >>> timm_stages("timm:resnet18")
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    model = name_or_model
    if isinstance(name_or_model, str):
        model = _timm(f"backbone {name_or_model!r}").create_model(_timm_model_name(name_or_model), pretrained=False,
                                                                num_classes=0)
    groups = timm_stage_groups(model)
    return ["stem"] + [_group_label(g) for g in groups[1:]]


def freeze_timm_stages(model: nn.Module, frozen_stages: int, name: str = "timm model") -> list[str]:
    """Freeze the stem and the first ``frozen_stages`` stages of a timm model (``requires_grad=False``);
    ``0`` freezes nothing. Returns the labels of the frozen groups.

    Raises:
        UsageError: more stages than the model has (the message lists them).
    """
    if frozen_stages == 0:
        return []
    groups = timm_stage_groups(model)
    if frozen_stages > len(groups) - 1:
        labels = ", ".join(_group_label(g) for g in groups[1:])
        raise UsageError(f"frozen_stages={frozen_stages}: {name} has {len(groups) - 1} stages after its stem "
                         f"({labels}); expected frozen_stages <= {len(groups) - 1}")
    params = dict(model.named_parameters())
    for group in groups[: frozen_stages + 1]:
        for n in group:
            params[n].requires_grad_(False)
    return ["stem"] + [_group_label(g) for g in groups[1: frozen_stages + 1]]


def _local_weights(weights: str | None) -> Path | None:
    """A local weights file named by ``weights`` (``.pth``/``.pt`` or an existing path), else None."""
    if not is_pretrained(weights):
        return None
    path = Path(str(weights))
    if path.suffix in (".pth", ".pt", ".safetensors") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        return path
    return None


def build_timm_backbone(
    name: str,
    weights: str | None = None,
    frozen_stages: int | None = None,
    *,
    image_size: int | None = None,
    **model_kwargs: Any,
) -> tuple[nn.Module, int]:
    """A timm model as a feature extractor: (B, 3, H, W) -> pooled (B, F), and F.

    Args:
        name: ``"timm:NAME"`` (or ``NAME``), any ``timm.list_models()`` name, optionally with a
            pretrained tag (``timm:vit_base_patch16_224.augreg_in21k``).
        weights: ``"DEFAULT"`` (timm's pretrained weights of that name/tag, downloaded by timm where
            the network allows and cached by huggingface_hub), a local ``.pth``/``.pt`` state dict
            of the model (its classifier may be absent; read with ``weights_only``), a local
            ``.safetensors`` file as timm's hub publishes them (read by timm's own loader, which
            drops the classifier and resamples a ViT's position embeddings), or
            ``None``/``"none"`` (random init).
        frozen_stages: freeze the stem and the first ``N`` stages (module docstring, per family);
            ``None``: 1 with pretrained weights, 0 without.
        image_size: for models with a fixed input size (ViT, Swin, ...): resize their position
            embeddings / windows to this square size (``model.set_input_size``); ignored by CNNs.
            Default None (the size is not known here, as in ``dbloss train``): models that can
            resample their position embeddings per input (timm's ``dynamic_img_size``: ViT, DeiT,
            EVA, ...) are built so, and take any ``image_size`` the recipe gives (a multiple of
            the patch size); others (Swin) keep theirs (224 for most).
        model_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate=0.1``).

    Raises:
        UsageError: an unknown model (close names listed), an unknown ``weights`` word, more
            ``frozen_stages`` than stages; ``MissingDependencyError`` without timm.
        ValueError: a weights file that does not fit the model (names the wrong or missing keys).

    >>> import torch
    >>> net, dim = build_timm_backbone("timm:resnet18", weights=None)
    >>> net(torch.zeros(2, 3, 64, 64)).shape, dim
    (torch.Size([2, 512]), 512)
    """
    timm = _timm(f"backbone {name!r}")
    model_name = _timm_model_name(name)
    frozen = resolve_frozen_stages(frozen_stages, weights)
    local = _local_weights(weights)
    if is_pretrained(weights) and local is None and weights not in _PRETRAINED_WORDS:
        raise UsageError(f"backbone {name!r}: expected weights to be DEFAULT (timm's pretrained weights), none, or "
                         f"a local .pth/.pt/.safetensors file, but got {weights!r}; for other pretrained weights of "
                         f"the model name timm's tag in the backbone, e.g. 'timm:{model_name.split('.')[0]}.TAG'")
    pretrained = is_pretrained(weights) and local is None
    if local is not None and local.suffix == ".safetensors":  # timm's own loader: safetensors hold tensors only
        model_kwargs = {**model_kwargs, "pretrained_cfg_overlay": {"file": str(local)}}

    def create(**extra: Any) -> nn.Module:
        try:
            return timm.create_model(model_name, pretrained=pretrained or "pretrained_cfg_overlay" in model_kwargs,
                                     num_classes=0, **model_kwargs, **extra)
        except Exception as e:  # noqa: BLE001 - timm's loader and checkpoint filters raise any kind on a foreign file
            if "pretrained_cfg_overlay" in model_kwargs:
                raise ValueError(f"{local}: weights do not match backbone {name!r} ({type(e).__name__}: "
                                 f"{str(e)[:500]})") from None
            if not pretrained or not isinstance(e, (OSError, RuntimeError, ValueError)):
                raise
            raise UsageError(f"backbone {name!r}: timm could not fetch its pretrained weights ({type(e).__name__}: "
                             f"{e}). Without network access give a local file (weights=PATH.pth) or weights=none "
                             "(HF_HUB_OFFLINE=1 makes timm fail at once instead of retrying)") from None

    model = create()
    if image_size is None and "dynamic_img_size" not in model_kwargs and not getattr(model, "dynamic_img_size", True) \
            and "dynamic_img_size" in inspect.signature(type(model).__init__).parameters:
        model = create(dynamic_img_size=True)  # a ViT at any input size: position embeddings resampled per input
    if local is not None and local.suffix != ".safetensors":
        load_local_weights(model, local, name)
    if image_size is not None and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=int(image_size))
    freeze_timm_stages(model, frozen, name=f"backbone {name!r}")
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model, dim


def parse_clip_name(name: str) -> tuple[str, str | None]:
    """``clip:ARCH[@PRETRAINED]`` -> ``(ARCH, PRETRAINED or None)``.

    >>> parse_clip_name("clip:ViT-B-16@openai"), parse_clip_name("clip:RN50")
    (('ViT-B-16', 'openai'), ('RN50', None))
    """
    if not name.startswith(CLIP_PREFIX) or len(name) == len(CLIP_PREFIX):
        raise UsageError(f"Expected a CLIP backbone as 'clip:ARCH[@PRETRAINED]' (e.g. clip:ViT-B-16@openai), "
                         f"but got {name!r}")
    arch, _, tag = name[len(CLIP_PREFIX):].partition("@")
    return arch, tag or None


def _clip_preprocessing(name: str) -> Preprocessing:
    open_clip = _import("open_clip", "clip", f"backbone {name!r}")
    arch, tag = parse_clip_name(name)
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.5)
        raise UsageError(f"Unknown open_clip model {arch!r} (backbone {name!r})"
                         + (f"; close matches: {', '.join(close)}" if close else "")
                         + "; `open_clip.list_models()` lists them")
    pp = dict(cfg.get("preprocess_cfg", {}))
    if tag:
        pp.update({k: v for k, v in (open_clip.get_pretrained_cfg(arch, tag) or {}).items() if k in ("mean", "std")})
    size = cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return Preprocessing(tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                         tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)), int(size))


def backbone_preprocessing(name: str) -> Preprocessing:
    """The normalisation and input size a backbone expects: ``(mean, std, size)``.

    * ``timm:NAME``: timm's ``pretrained_cfg`` of that model / tag (no weights are read);
    * ``clip:ARCH[@TAG]``: open_clip's model and pretrained configuration (OpenAI's CLIP mean/std
      unless the model says otherwise);
    * torchvision names: ImageNet's mean/std at 224; ``small_cnn``: ImageNet's at 32 (the demo's).

    >>> backbone_preprocessing("resnet50")
    Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), size=224)
    >>> backbone_preprocessing("timm:vit_base_patch16_224.augreg_in21k").mean  # doctest: +SKIP
    (0.5, 0.5, 0.5)
    """
    if is_timm_name(name):
        timm = _timm(f"backbone {name!r}")
        model_name = _timm_model_name(name)
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None:
            return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224)
        size = cfg.input_size[-1] if cfg.input_size else 224
        return Preprocessing(tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std), int(size))
    if isinstance(name, str) and name.startswith(CLIP_PREFIX):
        return _clip_preprocessing(name)
    return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 32 if name == "small_cnn" else 224)
