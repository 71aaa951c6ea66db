"""``build_loss(name, class_freq, num_samples, **overrides)``: the paper's losses by name.

Every name is a configuration of one of four modules (:mod:`dbloss.losses.modules`); the table
:data:`_RECIPES` says which module and which defaults, and nothing else runs.

==============  =======================================================================
name            configuration
==============  =======================================================================
``bce``         plain BCE (ERM)
``rw``          BCE weighted per class by ``1 / n_k`` (mean weight 1)
``rw-sqrt``     BCE weighted per class by ``1 / sqrt(n_k)`` (mean weight 1)
``focal``       sigmoid focal loss, gamma = 2, no alpha
``cb-focal``    focal weighted by the class-balanced effective number, ``cb_beta=0.9``
``ldam``        multi-label LDAM, ``max_margin=0.5``, ``s=30``
``r-bce``       BCE with the DB re-balanced weight only
``r-focal``     focal with the DB re-balanced weight only
``ntr-focal``   focal with negative-tolerant regularisation only
``db-focal``    the full Distribution-Balanced loss
``asl``         asymmetric loss, gamma_pos=0, gamma_neg=4, clip=0.05, eps=1e-8
==============  =======================================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from torch import nn

from dbloss.losses._common import validate_class_freq
from dbloss.losses.baselines import class_balanced_weight, inverse_frequency_weight
from dbloss.losses.modules import AsymmetricLoss, DistributionBalancedLoss, LDAMLoss, SigmoidFocalLoss
from dbloss.losses.reference import DBParams

__all__ = ["LOSS_NAMES", "build_loss"]

Weighting = Literal["none", "inverse", "inverse-sqrt", "class-balanced"]


@dataclass(frozen=True)
class _Recipe:
    """A loss name: the module it builds, its default keyword arguments, and (focal family) its class weights."""

    module: type[nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    weighting: Weighting = "none"


_NO_NTR = {"neg_scale": 1.0, "init_bias": 0.0}

_RECIPES: dict[str, _Recipe] = {
    "bce": _Recipe(SigmoidFocalLoss, {"gamma": 0.0}),
    "rw": _Recipe(SigmoidFocalLoss, {"gamma": 0.0}, "inverse"),
    "rw-sqrt": _Recipe(SigmoidFocalLoss, {"gamma": 0.0}, "inverse-sqrt"),
    "focal": _Recipe(SigmoidFocalLoss, {"gamma": 2.0}),
    "cb-focal": _Recipe(SigmoidFocalLoss, {"gamma": 2.0, "cb_beta": 0.9}, "class-balanced"),
    "ldam": _Recipe(LDAMLoss),
    "r-bce": _Recipe(DistributionBalancedLoss, {"gamma": 0.0, **_NO_NTR}),
    "r-focal": _Recipe(DistributionBalancedLoss, _NO_NTR),
    "ntr-focal": _Recipe(DistributionBalancedLoss, {"rebalance": False}),
    "db-focal": _Recipe(DistributionBalancedLoss),
    "asl": _Recipe(AsymmetricLoss),
}

#: Every name :func:`build_loss` accepts.
LOSS_NAMES: tuple[str, ...] = tuple(_RECIPES)

# Arguments the factory fills in itself; they cannot be overridden.
_STRUCTURAL = frozenset({"class_freq", "num_samples", "num_classes", "class_weight"})


def _keywords(module: type[nn.Module]) -> set[str]:
    """The keyword arguments of ``module`` (for the DB loss, also the fields of :class:`DBParams`)."""
    params = inspect.signature(module.__init__).parameters
    names = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if module is DistributionBalancedLoss:
        names |= {"params", *DBParams.names()}
    return names - _STRUCTURAL


def build_loss(name: str, class_freq: Any, num_samples: int | float, **overrides: Any) -> nn.Module:
    """Build the loss ``name`` (one of :data:`LOSS_NAMES`) for a training set's class statistics.

    Args:
        name: e.g. ``"db-focal"``; see the module docstring for the configurations.
        class_freq: (C,) positive training samples per class ``n_k`` (sequence, array or tensor).
        num_samples: N, the number of training samples.
        **overrides: keyword arguments of the underlying module (for example ``mu``,
            ``neg_scale``, ``init_bias``, ``scale``, ``gamma``, ``reduction``, ``ignore_index``),
            and ``cb_beta`` for ``cb-focal``.

    Returns:
        An ``nn.Module`` called as ``loss_fn(logits, targets)`` with (B, C) tensors.

    Raises:
        ValueError: unknown name (the message lists the valid ones), invalid class counts or
            hyper-parameters.
        TypeError: an override the loss does not take (the message names it and lists the valid ones).

    >>> loss_fn = build_loss("db-focal", [10, 5, 2], 20, mu=0.2)
    >>> type(loss_fn).__name__, loss_fn.mu
    ('DistributionBalancedLoss', 0.2)
    """
    recipe = _RECIPES.get(name)
    if recipe is None:
        raise ValueError(f"Expected argument `name` to be one of {LOSS_NAMES}, but got {name!r}")
    allowed = _keywords(recipe.module) | set(recipe.defaults)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"Loss {name!r} got unexpected argument(s) {unknown}; valid ones are {sorted(allowed)}")
    freq = validate_class_freq(class_freq, num_samples)
    kwargs = {**recipe.defaults, **overrides}
    if recipe.module is DistributionBalancedLoss:
        return DistributionBalancedLoss(freq, num_samples, **kwargs)
    if recipe.module is LDAMLoss:
        return LDAMLoss(freq, **kwargs)
    if recipe.module is AsymmetricLoss:
        return AsymmetricLoss(len(freq), **kwargs)
    cb_beta = kwargs.pop("cb_beta", None)
    weight: torch.Tensor | None = None
    if recipe.weighting == "inverse":
        weight = inverse_frequency_weight(freq, power=1.0)
    elif recipe.weighting == "inverse-sqrt":
        weight = inverse_frequency_weight(freq, power=0.5)
    elif recipe.weighting == "class-balanced":
        weight = class_balanced_weight(freq, beta=cb_beta)
    return SigmoidFocalLoss(len(freq), class_weight=weight, **kwargs)
