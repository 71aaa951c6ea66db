"""``nn.Module`` wrappers of the losses: they hold hyper-parameters and buffers only.

:class:`DistributionBalancedLoss` wraps :func:`dbloss.losses.reference.distribution_balanced_loss`;
the baselines' modules live beside their functions in :mod:`dbloss.losses.baselines` and are
re-exported here. Class statistics are ``register_buffer``s, so ``.to(device)`` moves them;
every module is called as ``loss_fn(logits, targets)`` with (B, C) logits and (B, C) targets in
{0, 1, ignore_index}. Hyper-parameters and class counts are validated at construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dbloss.losses import fast
from dbloss.losses._common import MultiLabelLoss, Reduction
from dbloss.losses.baselines import AsymmetricLoss, LDAMLoss, SigmoidFocalLoss
from dbloss.losses.reference import Backend, DBParams, check_backend, distribution_balanced_loss

__all__ = ["AsymmetricLoss", "DistributionBalancedLoss", "LDAMLoss", "SigmoidFocalLoss"]


class DistributionBalancedLoss(MultiLabelLoss):
    """The Distribution-Balanced loss (Wu et al., ECCV 2020, arXiv 2007.09654) as a module.

    The equations are those of :mod:`dbloss.losses.reference`; the hyper-parameters one
    :class:`~dbloss.losses.reference.DBParams` (``self.params``), given as ``params=`` and/or
    as its field names (``alpha=``, ``mu=``, ... replace the fields of ``params``).

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
        params: the hyper-parameters. Default ``DBParams()`` (the paper's VOC values).
        reduction: "none" | "mean" | "sum". Default "mean" (over unmasked elements).
        ignore_index: label value to mask out. Default -1.
        backend: "auto" (default: the fused CPU kernel where it applies and builds, else torch
            ops), "kernel", "torch" or "reference"; see :data:`dbloss.losses.reference.BACKENDS`.
        **hparams: fields of :class:`~dbloss.losses.reference.DBParams` (alpha, beta, mu,
            neg_scale, init_bias, gamma, scale, rebalance).

    Raises ``ValueError`` at construction for a class with ``n_k = 0`` (when re-balancing or
    init_bias > 0) or ``n_k = N`` (when init_bias > 0), naming the class index.

    Shapes: logits (B, C) floating, targets (B, C); output scalar, or (B, C) for "none".

    >>> loss_fn = DistributionBalancedLoss(torch.tensor([10, 5, 2]), 20, mu=0.2)
    >>> loss = loss_fn(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 1]]))
    >>> loss.shape, bool(loss > 0), loss_fn.params == DBParams(mu=0.2)
    (torch.Size([]), True, True)
    """

    class_freq: torch.Tensor

    def __init__(
        self,
        class_freq: Any,
        num_samples: int | float,
        params: DBParams | None = None,
        *,
        reduction: Reduction = "mean",
        ignore_index: int = -1,
        backend: Backend = "auto",
        **hparams: Any,
    ) -> None:
        self.params = DBParams.of(params, **hparams)
        freq = self.params.check_class_freq(class_freq, num_samples)
        super().__init__(len(freq), reduction, ignore_index)
        self.backend = check_backend(backend)
        self.register_buffer("class_freq", freq.to(torch.float32))  # a copy, on class_freq's device
        self.num_samples = float(num_samples)
        self._terms: dict[tuple[Any, ...], fast.ClassTerms] = {}

    # the hyper-parameters, read-only: a new value is a new module (or a new `params`)
    alpha = property(lambda self: self.params.alpha)
    beta = property(lambda self: self.params.beta)
    mu = property(lambda self: self.params.mu)
    neg_scale = property(lambda self: self.params.neg_scale)
    init_bias = property(lambda self: self.params.init_bias)
    gamma = property(lambda self: self.params.gamma)
    scale = property(lambda self: self.params.scale)
    rebalance = property(lambda self: self.params.rebalance)

    def _hparams(self) -> dict[str, Any]:
        return dict(num_samples=self.num_samples, **dataclasses.asdict(self.params), backend=self.backend)

    def _class_terms(self, dtype: torch.dtype) -> fast.ClassTerms:
        """(C,) ``1 / n_k`` and NTR bias in ``dtype``, cached until ``class_freq`` is moved or written to."""
        freq = self.class_freq
        key = (dtype, freq.device, freq.data_ptr(), freq._version)
        terms = self._terms.get(key)
        if terms is None:
            terms = fast.class_terms(freq, self.num_samples, self.params.init_bias, dtype)
            self._terms = {key: terms}
        return terms

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return distribution_balanced_loss(logits, targets, self.class_freq, self.num_samples, self.params,
                                              reduction=self.reduction, ignore_index=self.ignore_index,
                                              backend="reference")
        return fast.db_loss(logits, targets, self.class_freq, self.num_samples, self.params,
                            reduction=self.reduction, ignore_index=self.ignore_index, backend=self.backend,
                            terms=self._class_terms)
