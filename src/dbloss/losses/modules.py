"""``nn.Module`` wrappers of :mod:`dbloss.losses.functional`: they hold hyper-parameters and buffers only.

Class statistics are ``register_buffer``s, so ``.to(device)`` moves them; every module is called
as ``loss_fn(logits, targets)`` with (B, C) logits and (B, C) targets in {0, 1, ignore_index}.
Hyper-parameters and class counts are validated at construction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dbloss.losses import functional as LF
from dbloss.losses.functional import Backend, Reduction

__all__ = ["AsymmetricLoss", "DistributionBalancedLoss", "LDAMLoss", "SigmoidFocalLoss"]


class _MultiLabelLoss(nn.Module):
    """Common part: ``reduction``, ``ignore_index`` and the expected number of classes."""

    def __init__(self, num_classes: int | None, reduction: Reduction, ignore_index: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reduction = LF.check_reduction(reduction)
        self.ignore_index = LF._check_ignore_index(ignore_index)

    def _prepare(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return LF._prepare(logits, targets, self.ignore_index, self.num_classes)

    def _hparams(self) -> dict[str, Any]:
        return {}

    def extra_repr(self) -> str:
        items = {"num_classes": self.num_classes, **self._hparams(), "reduction": self.reduction,
                 "ignore_index": self.ignore_index}
        return ", ".join(f"{k}={v!r}" for k, v in items.items())


class DistributionBalancedLoss(_MultiLabelLoss):
    """The Distribution-Balanced loss (Wu et al., ECCV 2020, arXiv 2007.09654) as a module.

    For sample i, class k, label y in {0, 1} and logit z::

        r_ik  = (1 / n_k) / sum_{j : y_ij = 1} (1 / n_j)
        r_hat = alpha + sigmoid(beta * (r_ik - mu))                      re-balanced weight
        nu_k  = init_bias * -log(N / n_k - 1)                            NTR bias
        z'    = y * (z + nu_k) + (1 - y) * neg_scale * (z + nu_k)
        w'    = y + (1 - y) / neg_scale
        loss  = scale * r_hat * w' * (1 - p_t)^gamma * BCE(z', y)        p_t from z'

    A sample with no positive label gets ``r_hat = alpha + 1`` (the limit r -> +inf; the
    original release gives the same). ``rebalance=False`` drops ``r_hat`` (NTR-focal);
    ``neg_scale=1, init_bias=0`` drops NTR (R-focal); ``gamma=0`` drops the focal term.

    Reproducing the original release (github.com/wutong16/DistributionBalancedLoss,
    ``ResampleLoss``): it divided ``init_bias`` by ``neg_scale`` (a bug confirmed by the authors,
    issue #8), so the positive logits got ``nu / neg_scale``; and its focal ``balance_param=2.0``
    doubled the loss, which the trainer then averaged over all B x C elements. Its VOC-MLT
    config (init_bias 0.05, neg_scale 5, mu 0.3) is reproduced exactly by
    ``init_bias=0.01, neg_scale=5.0, mu=0.3, scale=2.0``, and its COCO-MLT config (init_bias
    0.05, neg_scale 2, mu 0.2) by ``init_bias=0.025, neg_scale=2.0, mu=0.2, scale=2.0``.

    Args:
        class_freq: (C,) positive training samples per class ``n_k`` (a float32 buffer).
        num_samples: N, the number of training samples (>= max n_k).
        alpha, beta, mu: the re-balancing map. Defaults 0.1, 10, 0.3 (the paper's VOC values).
        neg_scale: ``lambda`` > 0. Default 5.
        init_bias: ``kappa`` >= 0. Default 0.05.
        gamma: focal focusing parameter. Default 2.
        scale: constant loss factor. Default 1.
        rebalance: apply the re-balanced weight. Default True.
        reduction: "none" | "mean" | "sum". Default "mean" (over unmasked elements).
        ignore_index: label value to mask out. Default -1.
        backend: "auto" (default: the fused CPU kernel where it applies and builds, else torch
            ops), "kernel" or "torch"; see :data:`dbloss.losses.functional.BACKENDS`.

    Raises ``ValueError`` at construction for a class with ``n_k = 0`` (when re-balancing or
    init_bias > 0) or ``n_k = N`` (when init_bias > 0), naming the class index.

    Shapes: logits (B, C) floating, targets (B, C); output scalar, or (B, C) for "none".

    >>> loss_fn = DistributionBalancedLoss(torch.tensor([10, 5, 2]), 20)
    >>> loss = loss_fn(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 1]]))
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """

    class_freq: torch.Tensor

    def __init__(
        self,
        class_freq: Any,
        num_samples: int | float,
        *,
        alpha: float = 0.1,
        beta: float = 10.0,
        mu: float = 0.3,
        neg_scale: float = 5.0,
        init_bias: float = 0.05,
        gamma: float = 2.0,
        scale: float = 1.0,
        rebalance: bool = True,
        reduction: Reduction = "mean",
        ignore_index: int = -1,
        backend: Backend = "auto",
    ) -> None:
        freq = LF._check_db_args(class_freq, num_samples, alpha=alpha, beta=beta, mu=mu, neg_scale=neg_scale,
                                 init_bias=init_bias, gamma=gamma, scale=scale, rebalance=rebalance)
        super().__init__(len(freq), reduction, ignore_index)
        self.register_buffer("class_freq", freq.to(torch.float32))  # a copy, on class_freq's device
        self.num_samples = float(num_samples)
        self.alpha, self.beta, self.mu = float(alpha), float(beta), float(mu)
        self.neg_scale, self.init_bias = float(neg_scale), float(init_bias)
        self.gamma, self.scale, self.rebalance = float(gamma), float(scale), bool(rebalance)
        self.backend = LF.check_backend(backend)
        self._terms: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _hparams(self) -> dict[str, Any]:
        return dict(num_samples=self.num_samples, alpha=self.alpha, beta=self.beta, mu=self.mu,
                    neg_scale=self.neg_scale, init_bias=self.init_bias, gamma=self.gamma, scale=self.scale,
                    rebalance=self.rebalance, backend=self.backend)

    def _class_terms(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(C,) ``1 / n_k`` and NTR bias in ``dtype``, cached until ``class_freq`` is moved or written to."""
        freq = self.class_freq
        key = (dtype, freq.device, freq.data_ptr(), freq._version)
        terms = self._terms.get(key)
        if terms is None:
            terms = LF._db_class_terms(freq, self.num_samples, self.init_bias, dtype)
            self._terms = {key: terms}
        return terms

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return LF._db_forward(logits, targets, self.class_freq, self.num_samples, alpha=self.alpha, beta=self.beta,
                              mu=self.mu, neg_scale=self.neg_scale, init_bias=self.init_bias, gamma=self.gamma,
                              scale=self.scale, rebalance=self.rebalance, reduction=self.reduction,
                              ignore_index=self.ignore_index, backend=self.backend, class_terms=self._class_terms)


class SigmoidFocalLoss(_MultiLabelLoss):
    """Sigmoid focal loss with optional per-class weights; ``gamma=0`` is (weighted) BCE.

    ``loss_ik = w_k * alpha_t * (1 - p_t)^gamma * BCE(z_ik, y_ik)`` (see
    :func:`dbloss.losses.functional.sigmoid_focal_loss`).

    Args:
        num_classes: C, checked against the logits (None: not checked, unless class_weight is given).
        gamma: focusing parameter >= 0. Default 2.
        alpha: positive/negative balance in [0, 1], or None (default).
        class_weight: optional (C,) class weights (a buffer), e.g. from
            :func:`~dbloss.losses.functional.inverse_frequency_weight` or
            :func:`~dbloss.losses.functional.class_balanced_weight`.
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
        LF._check_focal_hparams(gamma, alpha)
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
        return LF._focal_core(z, y, mask, self.gamma, self.alpha, w, self.reduction)


class LDAMLoss(_MultiLabelLoss):
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
        LF.check_hparams(s=s, positive=("s",))
        margin = LF.ldam_margin(class_freq, max_margin)
        super().__init__(len(margin), reduction, ignore_index)
        device = class_freq.device if isinstance(class_freq, torch.Tensor) else None
        self.register_buffer("margin", margin.to(device=device))
        self.max_margin, self.s = float(max_margin), float(s)

    def _hparams(self) -> dict[str, Any]:
        return dict(max_margin=self.max_margin, s=self.s)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y, mask = self._prepare(logits, targets)
        return LF._ldam_core(z, y, mask, self.margin.to(dtype=z.dtype, device=z.device), self.s, self.reduction)


class AsymmetricLoss(_MultiLabelLoss):
    """Asymmetric loss (Ridnik et al., ICCV 2021); see :func:`dbloss.losses.functional.asymmetric_loss`.

    Args:
        num_classes: C, checked against the logits (None: not checked).
        gamma_pos, gamma_neg: focusing parameters. Defaults 0 and 4 (official).
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
        LF._check_asl_hparams(gamma_pos, gamma_neg, clip, eps)
        super().__init__(num_classes, reduction, ignore_index)
        self.gamma_pos, self.gamma_neg = float(gamma_pos), float(gamma_neg)
        self.clip, self.eps, self.detach_focal = float(clip), float(eps), bool(detach_focal)

    def _hparams(self) -> dict[str, Any]:
        return dict(gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, clip=self.clip, eps=self.eps,
                    detach_focal=self.detach_focal)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y, mask = self._prepare(logits, targets)
        return LF._asl_core(z, y, mask, self.gamma_pos, self.gamma_neg, self.clip, self.eps, self.detach_focal,
                            self.reduction)
