"""The baselines the DB paper compares with: sigmoid focal, class weights, LDAM and ASL.

Each loss is a pure function and a thin module (hyper-parameters and buffers only); see
:mod:`dbloss.losses._common` for the shared conventions (shapes, ``reduction``,
``ignore_index``, float32 compute under autocast).

References:
    Focal: Lin et al., ICCV 2017. CB: Cui et al., CVPR 2019. LDAM: Cao et al., NeurIPS 2019.
    ASL: Ridnik et al., ICCV 2021.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from dbloss.labels import check_ignore_index
from dbloss.losses._common import (
    ArrayLike,
    MultiLabelLoss,
    Reduction,
    autocast_off,
    check_hparams,
    check_reduction,
    prepare,
    reduce,
    validate_class_freq,
)

__all__ = [
    "AsymmetricLoss",
    "LDAMLoss",
    "SigmoidFocalLoss",
    "asymmetric_loss",
    "class_balanced_weight",
    "inverse_frequency_weight",
    "ldam_loss",
    "ldam_margin",
    "sigmoid_focal_loss",
]


# --------------------------------------------------------------------------------------------
# class weights and margins
# --------------------------------------------------------------------------------------------
def inverse_frequency_weight(class_freq: ArrayLike, power: float = 1.0) -> torch.Tensor:
    """Per-class weights ``w_k ∝ n_k^-power``, normalised to average 1 over classes.

    ``power=1`` is re-weighting by inverse frequency (RW), ``power=0.5`` its square-root variant.

    Args:
        class_freq: (C,) positive training samples per class, all > 0.
        power: exponent. Default 1.

    Returns:
        (C,) float32 weights with mean 1.

    >>> inverse_frequency_weight([1, 3]).tolist()
    [1.5, 0.5]
    """
    check_hparams(power=power)
    freq = validate_class_freq(class_freq, require_positive=True)
    w = freq.pow(-float(power))
    return (w / w.mean()).to(torch.float32)


def class_balanced_weight(class_freq: ArrayLike, beta: float = 0.9) -> torch.Tensor:
    """Class-balanced weights by the effective number of samples (Cui et al., CVPR 2019).

    ``w_k = (1 - beta) / (1 - beta^n_k)``, normalised to sum to C.

    Args:
        class_freq: (C,) positive training samples per class, all > 0.
        beta: in [0, 1). Default 0.9 (the CB_beta of the original DB release).

    Returns:
        (C,) float32 weights summing to C.

    >>> [round(v, 4) for v in class_balanced_weight([1, 2], beta=0.5).tolist()]
    [1.2, 0.8]
    """
    check_hparams(beta=beta)
    if not float(beta) < 1:
        raise ValueError(f"Expected `beta` in [0, 1), but got {beta!r}")
    freq = validate_class_freq(class_freq, require_positive=True)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(float(beta), dtype=torch.float64), freq))
    return (w * (len(w) / w.sum())).to(torch.float32)


def ldam_margin(class_freq: ArrayLike, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM per-class margins ``Delta_k = C_m / n_k^(1/4)``, with ``C_m`` chosen so that max Delta = max_margin.

    Args:
        class_freq: (C,) positive training samples per class, all > 0.
        max_margin: the largest margin (of the rarest class). Default 0.5 (as LDAM).

    Returns:
        (C,) float32 margins.

    >>> ldam_margin([1, 16]).tolist()
    [0.5, 0.25]
    """
    check_hparams(max_margin=max_margin)
    freq = validate_class_freq(class_freq, require_positive=True)
    m = freq.pow(-0.25)
    return (m * (float(max_margin) / m.max())).to(torch.float32)


# --------------------------------------------------------------------------------------------
# sigmoid focal loss (gamma = 0: BCE; with class weights: RW, CB)
# --------------------------------------------------------------------------------------------
def _focal_bce(z: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Element-wise ``(1 - p_t)^gamma * BCE(z, y)`` for y in {0, 1}, numerically stable.

    ``1 - p_t = sigmoid(-s)`` with the signed logit ``s = z`` for positives and ``-z`` for
    negatives, so the modulation is ``exp(gamma * logsigmoid(-s))``; gamma = 0 gives plain BCE.
    """
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    if gamma == 0:
        return bce
    s = torch.where(y > 0, z, -z)
    return torch.exp(gamma * F.logsigmoid(-s)) * bce


def _check_focal_hparams(gamma: float, alpha: float | None) -> None:
    check_hparams(gamma=gamma)
    if alpha is not None:
        check_hparams(alpha=alpha)
        if float(alpha) > 1:
            raise ValueError(f"Expected `alpha` in [0, 1] or None, but got {alpha!r}")


def _focal(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, gamma: float, alpha: float | None,
           weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    with autocast_off(z.device):
        loss = _focal_bce(z, y, gamma)
        if alpha is not None:
            loss = loss * torch.where(y > 0, y.new_tensor(alpha), y.new_tensor(1.0 - alpha))
        if weight is not None:
            loss = loss * weight
        return reduce(loss, mask, reduction)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -1,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017), with optional class weights; gamma = 0 is BCE.

    ``loss_ik = w_ik * alpha_t * (1 - p_t)^gamma * BCE(z_ik, y_ik)`` with ``p_t = sigmoid(z)`` for
    positives and ``1 - sigmoid(z)`` for negatives, ``alpha_t = alpha`` for positives and
    ``1 - alpha`` for negatives (no alpha term when ``alpha is None``).

    Args:
        logits: (B, C) floating logits.
        targets: (B, C) labels in {0, 1, ignore_index}.
        gamma: focusing parameter >= 0. Default 2.
        alpha: positive/negative balance in [0, 1], or None (default) for none.
        weight: optional weights broadcastable to (B, C), e.g. (C,) class weights.
        reduction: "none" | "mean" | "sum". Default "mean" (over unmasked elements).
        ignore_index: label value to mask out. Default -1.

    Returns:
        The reduced loss (float32 for half-precision logits), or (B, C) for "none".

    >>> z, y = torch.zeros(1, 2), torch.tensor([[1, 0]])
    >>> round(sigmoid_focal_loss(z, y, gamma=0.0).item(), 4)  # log 2
    0.6931
    """
    check_reduction(reduction)
    _check_focal_hparams(gamma, alpha)
    z, y, mask = prepare(logits, targets, check_ignore_index(ignore_index))
    w = None if weight is None else torch.as_tensor(weight, device=z.device).to(z.dtype)
    return _focal(z, y, mask, float(gamma), None if alpha is None else float(alpha), w, reduction)


class SigmoidFocalLoss(MultiLabelLoss):
    """Sigmoid focal loss with optional per-class weights; ``gamma=0`` is (weighted) BCE.

    ``loss_ik = w_k * alpha_t * (1 - p_t)^gamma * BCE(z_ik, y_ik)`` (see :func:`sigmoid_focal_loss`).

    Args:
        num_classes: C, checked against the logits (None: not checked, unless class_weight is given).
        gamma: focusing parameter >= 0. Default 2.
        alpha: positive/negative balance in [0, 1], or None (default).
        class_weight: optional (C,) class weights (a buffer), e.g. from
            :func:`inverse_frequency_weight` or :func:`class_balanced_weight`.
        reduction: "none" | "mean" | "sum". Default "mean".
        ignore_index: label value to mask out. Default -1.

    >>> loss_fn = SigmoidFocalLoss(gamma=0.0)
    >>> round(loss_fn(torch.zeros(1, 2), torch.tensor([[1, 0]])).item(), 4)
    0.6931
    """

    class_weight: torch.Tensor | None

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        gamma: float = 2.0,
        alpha: float | None = None,
        class_weight: torch.Tensor | None = None,
        reduction: Reduction = "mean",
        ignore_index: int = -1,
    ) -> None:
        _check_focal_hparams(gamma, alpha)
        weight = None
        if class_weight is not None:
            weight = torch.as_tensor(class_weight).detach().to(torch.float32).clone()
            if weight.ndim != 1 or not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
                raise ValueError(f"Expected `class_weight` to be a 1-D tensor of finite values >= 0, got {weight}")
            if num_classes is not None and len(weight) != num_classes:
                raise ValueError(f"Expected {num_classes} class weights, but got {len(weight)}")
            num_classes = len(weight)
        super().__init__(num_classes, reduction, ignore_index)
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.register_buffer("class_weight", weight)

    def _hparams(self) -> dict[str, Any]:
        return dict(gamma=self.gamma, alpha=self.alpha, weighted=self.class_weight is not None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y, mask = self._prepare(logits, targets)
        w = None if self.class_weight is None else self.class_weight.to(dtype=z.dtype, device=z.device)
        return _focal(z, y, mask, self.gamma, self.alpha, w, self.reduction)


# --------------------------------------------------------------------------------------------
# LDAM
# --------------------------------------------------------------------------------------------
def _ldam(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, margin: torch.Tensor, s: float,
          reduction: str) -> torch.Tensor:
    with autocast_off(z.device):
        return reduce(_focal_bce(s * (z - y * margin), y, 0.0), mask, reduction)


def ldam_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_freq: ArrayLike,
    *,
    max_margin: float = 0.5,
    s: float = 30.0,
    reduction: Reduction = "mean",
    ignore_index: int = -1,
) -> torch.Tensor:
    """Multi-label LDAM (Cao et al., NeurIPS 2019): a per-class margin on positive logits, then scaled BCE.

    ``loss_ik = BCE(s * (z_ik - y_ik * Delta_k), y_ik)`` with ``Delta_k = C_m / n_k^(1/4)``,
    ``max_k Delta_k = max_margin`` (see :func:`ldam_margin`). Rare classes must clear a larger margin.

    Args:
        logits: (B, C) floating logits.
        targets: (B, C) labels in {0, 1, ignore_index}.
        class_freq: (C,) positive training samples per class, all > 0.
        max_margin: the largest margin. Default 0.5.
        s: logit scale. Default 30 (as LDAM).
        reduction: "none" | "mean" | "sum". Default "mean".
        ignore_index: label value to mask out. Default -1.

    >>> round(ldam_loss(torch.zeros(1, 2), torch.tensor([[1, 0]]), [1, 16], s=1.0).item(), 4)
    0.8336
    """
    check_reduction(reduction)
    check_hparams(s=s, positive=("s",))
    ignore_index = check_ignore_index(ignore_index)
    margin = ldam_margin(class_freq, max_margin)
    z, y, mask = prepare(logits, targets, ignore_index, len(margin))
    return _ldam(z, y, mask, margin.to(dtype=z.dtype, device=z.device), float(s), reduction)


class LDAMLoss(MultiLabelLoss):
    """Multi-label LDAM: ``BCE(s * (z - y * Delta_k), y)`` with ``Delta_k ∝ n_k^(-1/4)``, max ``max_margin``.

    Args:
        class_freq: (C,) positive training samples per class, all > 0.
        max_margin: the largest margin. Default 0.5.
        s: logit scale > 0. Default 30.
        reduction: "none" | "mean" | "sum". Default "mean".
        ignore_index: label value to mask out. Default -1.

    >>> loss_fn = LDAMLoss(torch.tensor([1, 16]), s=1.0)
    >>> round(loss_fn(torch.zeros(1, 2), torch.tensor([[1, 0]])).item(), 4)
    0.8336
    """

    margin: torch.Tensor

    def __init__(
        self,
        class_freq: Any,
        *,
        max_margin: float = 0.5,
        s: float = 30.0,
        reduction: Reduction = "mean",
        ignore_index: int = -1,
    ) -> None:
        check_hparams(s=s, positive=("s",))
        margin = ldam_margin(class_freq, max_margin)
        super().__init__(len(margin), reduction, ignore_index)
        device = class_freq.device if isinstance(class_freq, torch.Tensor) else None
        self.register_buffer("margin", margin.to(device=device))
        self.max_margin, self.s = float(max_margin), float(s)

    def _hparams(self) -> dict[str, Any]:
        return dict(max_margin=self.max_margin, s=self.s)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y, mask = self._prepare(logits, targets)
        return _ldam(z, y, mask, self.margin.to(dtype=z.dtype, device=z.device), self.s, self.reduction)


# --------------------------------------------------------------------------------------------
# ASL
# --------------------------------------------------------------------------------------------
def _check_asl_hparams(gamma_pos: float, gamma_neg: float, clip: float, eps: float) -> None:
    check_hparams(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps, positive=("eps",))
    if not float(clip) < 1 or not float(eps) < 1:
        raise ValueError(f"Expected `clip` in [0, 1) and `eps` in (0, 1), but got clip={clip!r}, eps={eps!r}")


def _asl(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, gamma_pos: float, gamma_neg: float,
         clip: float, eps: float, detach_focal: bool, reduction: str) -> torch.Tensor:
    log_eps = math.log(eps)
    with autocast_off(z.device):
        nll_pos = -F.logsigmoid(z).clamp(min=log_eps)  # -log(max(p, eps)), stable for large |z|
        w_pos = torch.exp(gamma_pos * F.logsigmoid(-z)) if gamma_pos != 0 else None  # (1 - p)^gamma_pos
        if clip > 0:
            nll_neg = -torch.log((torch.sigmoid(-z) + clip).clamp(max=1.0).clamp(min=eps))
            p_m = torch.sigmoid(z) - clip  # shifted probability, weight max(p_m, 0)^gamma_neg
            above = p_m > 0  # pow only where p_m > 0, so that 0 < gamma_neg < 1 has finite gradients
            w_neg = (torch.where(above, torch.where(above, p_m, 1.0).pow(gamma_neg), 0.0)
                     if gamma_neg != 0 else None)
        else:
            nll_neg = -F.logsigmoid(-z).clamp(min=log_eps)
            w_neg = torch.exp(gamma_neg * F.logsigmoid(z)) if gamma_neg != 0 else None  # p^gamma_neg
        if w_pos is not None:
            nll_pos = nll_pos * (w_pos.detach() if detach_focal else w_pos)
        if w_neg is not None:
            nll_neg = nll_neg * (w_neg.detach() if detach_focal else w_neg)
        return reduce(torch.where(y > 0, nll_pos, nll_neg), mask, reduction)


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_focal: bool = True,
    reduction: Reduction = "mean",
    ignore_index: int = -1,
) -> torch.Tensor:
    """Asymmetric loss (ASL, Ridnik et al., ICCV 2021), defaults as the official training recipe.

    With ``p = sigmoid(z)`` and the shifted probability ``p_m = max(p - clip, 0)``::

        L+ = (1 - p)^gamma_pos * -log(max(p, eps))
        L- = p_m^gamma_neg     * -log(max(1 - p_m, eps))

    Args:
        logits: (B, C) floating logits.
        targets: (B, C) labels in {0, 1, ignore_index}.
        gamma_pos: focusing parameter of the positives. Default 0.
        gamma_neg: focusing parameter of the negatives. Default 4.
        clip: probability margin for negatives, in [0, 1). Default 0.05.
        eps: log clamp. Default 1e-8.
        detach_focal: no gradient through the focusing weights (the official
            ``disable_torch_grad_focal_loss=True``). Default True.
        reduction: "none" | "mean" | "sum". Default "mean" (the official code sums).
        ignore_index: label value to mask out. Default -1.

    >>> round(asymmetric_loss(torch.zeros(1, 2), torch.tensor([[1, 0]]), reduction="sum").item(), 4)
    0.7177
    """
    check_reduction(reduction)
    _check_asl_hparams(gamma_pos, gamma_neg, clip, eps)
    z, y, mask = prepare(logits, targets, check_ignore_index(ignore_index))
    return _asl(z, y, mask, float(gamma_pos), float(gamma_neg), float(clip), float(eps), bool(detach_focal),
                reduction)


class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss (Ridnik et al., ICCV 2021); see :func:`asymmetric_loss`.

    Args:
        num_classes: C, checked against the logits (None: not checked).
        gamma_pos: focusing parameter of the positives. Default 0 (official).
        gamma_neg: focusing parameter of the negatives. Default 4 (official).
        clip: probability margin for negatives. Default 0.05 (official).
        eps: log clamp. Default 1e-8 (official).
        detach_focal: no gradient through the focusing weights. Default True (official recipe).
        reduction: "none" | "mean" | "sum". Default "mean".
        ignore_index: label value to mask out. Default -1.

    >>> loss_fn = AsymmetricLoss(reduction="sum")
    >>> round(loss_fn(torch.zeros(1, 2), torch.tensor([[1, 0]])).item(), 4)
    0.7177
    """

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focal: bool = True,
        reduction: Reduction = "mean",
        ignore_index: int = -1,
    ) -> None:
        _check_asl_hparams(gamma_pos, gamma_neg, clip, eps)
        super().__init__(num_classes, reduction, ignore_index)
        self.gamma_pos, self.gamma_neg = float(gamma_pos), float(gamma_neg)
        self.clip, self.eps, self.detach_focal = float(clip), float(eps), bool(detach_focal)

    def _hparams(self) -> dict[str, Any]:
        return dict(gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, clip=self.clip, eps=self.eps,
                    detach_focal=self.detach_focal)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y, mask = self._prepare(logits, targets)
        return _asl(z, y, mask, self.gamma_pos, self.gamma_neg, self.clip, self.eps, self.detach_focal,
                    self.reduction)
