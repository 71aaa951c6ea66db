"""The Distribution-Balanced loss as the paper writes it: read this file beside Sec. 3 of

    Wu, Huang, Liu, Wang, Lin, "Distribution-Balanced Loss for Multi-Label Classification in
    Long-Tailed Datasets", ECCV 2020, https://arxiv.org/abs/2007.09654.

For sample i (``targets`` row), class k, label y_ik in {0, 1}, logit z_ik, n_k positive training
samples of class k among N::

    Sec. 3.2, re-balanced weighting                                         rebalance_ratio, rebalance_map
      P^C_k  = 1/C * 1/n_k                        class-level sampling frequency     (Eq. 2)
      P^I_i  = 1/C * sum_{j: y_ij = 1} 1/n_j      instance-level sampling frequency  (Eq. 3)
      r_ik   = P^C_k / P^I_i                                                         (Eq. 4)
      r_hat  = alpha + sigmoid(beta * (r_ik - mu))  smoothing                        (Eq. 5)
    Sec. 3.3, negative-tolerant regularisation (NTR)                        negative_tolerant_bias
      b_k    = -log(N / n_k - 1) = logit(n_k / N)   the class prior as a logit        (Eq. 8)   prior_logit
      nu_k   = kappa * b_k                                                            (Eq. 8)
      positive term  -log sigmoid(z + nu)             negative term  1/lambda * log(1 + exp(lambda * (z + nu)))  (Eq. 7)
    Sec. 3.4, the DB loss (DB-Focal)                                        distribution_balanced_loss
      q      = sigmoid(z + nu) for y = 1,  sigmoid(lambda * (z + nu)) for y = 0
      L      = r_hat * (1 - q)^gamma * -log q                        for y = 1
               r_hat * 1/lambda * q^gamma * -log(1 - q)             for y = 0        (Eq. 9)

Section and equation numbers refer to the arXiv version; no copy of the paper's text reached this
project, so they are cited from memory and unchecked (the formulas are: tests compare them with the
original release's code path). The hyper-parameters are one frozen :class:`DBParams`. A sample with no positive label has no finite r (P^I_i = 0): its weight is
the limit r -> +inf, ``alpha + 1`` (the original release gives the same value). Ignored
entries (``ignore_index``) are neither positives nor negatives: they do not enter P^I and add
nothing to the loss.

:func:`distribution_balanced_loss` is the public functional. ``backend="reference"`` runs the
lines below it; the default ``"auto"`` (and ``"torch"``, ``"kernel"``) run the faster paths of
:mod:`dbloss.losses.fast`, which compute the same equations and are tested against this file.
The hyper-parameters (:class:`DBParams`) and the prior logit both paths use are in
:mod:`dbloss.losses.params`, below both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dbloss.labels import check_ignore_index, label_masks
from dbloss.losses.params import BACKENDS, Backend, DBParams, check_backend, prior_logit
from dbloss.losses._common import (
    ArrayLike,
    Reduction,
    autocast_off,
    check_hparams,
    check_reduction,
    prepare,
    reduce,
    validate_class_freq,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "DBParams",
    "check_backend",
    "distribution_balanced_loss",
    "negative_tolerant_bias",
    "prior_logit",
    "rebalance_map",
    "rebalance_ratio",
    "rebalance_weight",
]

def _counts(class_freq: ArrayLike) -> tuple[torch.Tensor, torch.dtype]:
    """(C,) validated counts n_k > 0 and the dtype of r: float64 for a float64 tensor, else float32."""
    freq = validate_class_freq(class_freq, require_positive=True)
    f64 = isinstance(class_freq, torch.Tensor) and class_freq.dtype == torch.float64
    return freq, torch.float64 if f64 else torch.float32


def rebalance_ratio(targets: torch.Tensor, class_freq: ArrayLike, *, ignore_index: int = -1,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """The ratio ``r_ik = P^C_k / P^I_i`` of class-level to instance-level sampling frequency (Eq. 2-4).

    Under class-aware re-sampling a class k is drawn with ``P^C_k = 1/C * 1/n_k``, and sample i
    through any of its positive classes, ``P^I_i = 1/C * sum_{j: y_ij = 1} 1/n_j``; the 1/C cancels.

    Args:
        targets: (B, C) labels in {0, 1, ignore_index}; ignored entries are not positives.
        class_freq: (C,) positive training samples per class ``n_k``, all > 0.
        ignore_index: the label value of ignored entries. Default -1.
        dtype: of the result. Default float32 (float64 if ``class_freq`` is a float64 tensor).

    Returns:
        (B, C) r on ``targets``' device; ``+inf`` on rows without a positive label. A positive
        entry has r <= 1, with r = 1 exactly when it is the sample's only positive label.

    >>> rebalance_ratio(torch.tensor([[1, 1], [0, 1]]), torch.tensor([1.0, 4.0], dtype=torch.float64)).tolist()
    [[0.8, 0.2], [4.0, 1.0]]
    """
    freq, default = _counts(class_freq)
    positives = label_masks(targets, check_ignore_index(ignore_index), name="targets")[0]
    if positives.shape[1] != len(freq):
        raise ValueError(f"Expected `targets` of shape (B, {len(freq)}) (C = len(class_freq)), "
                         f"but got {tuple(positives.shape)}")
    y = positives.to(dtype or default)
    inv_freq = (1.0 / freq).to(dtype=y.dtype, device=y.device)  # P^C_k, times C         (Eq. 2)
    p_inst = y @ inv_freq                                        # P^I_i, times C         (Eq. 3)
    return inv_freq / p_inst[:, None]                            # r_ik; 1 / 0 = +inf     (Eq. 4)


def rebalance_map(r: torch.Tensor, alpha: float = 0.1, beta: float = 10.0, mu: float = 0.3) -> torch.Tensor:
    """The smoothing map ``r_hat = alpha + sigmoid(beta * (r - mu))`` (Eq. 5), element-wise.

    Args:
        r: a tensor of ratios (see :func:`rebalance_ratio`); ``+inf`` maps to ``alpha + 1``.
        alpha: offset. Default 0.1 (the paper's VOC value).
        beta: steepness. Default 10 (the paper's VOC value).
        mu: shift. Default 0.3 (the paper's VOC value).

    >>> [round(v, 3) for v in rebalance_map(torch.tensor([0.3, 1.0, float("inf")])).tolist()]
    [0.6, 1.099, 1.1]
    """
    check_hparams(alpha=alpha, beta=beta, mu=mu)
    if beta == 0:  # sigmoid(0) = 1/2 for every r, including r = inf (where 0 * inf would be nan)
        return torch.full_like(r, float(alpha) + 0.5)
    return alpha + torch.sigmoid(beta * (r - mu))


def rebalance_weight(
    targets: torch.Tensor,
    class_freq: ArrayLike,
    alpha: float = 0.1,
    beta: float = 10.0,
    mu: float = 0.3,
    ignore_index: int = -1,
) -> torch.Tensor:
    """The re-balanced weight ``r_hat`` of every entry: :func:`rebalance_map` of :func:`rebalance_ratio`.

    It multiplies the positive and the negative terms of the loss alike; a sample with no
    positive label gets ``alpha + 1``.

    Returns:
        (B, C) float32 weights (float64 if ``class_freq`` is a float64 tensor).

    >>> w = rebalance_weight(torch.tensor([[1, 1], [0, 1]]), [1, 4])
    >>> [round(v, 3) for v in w[0].tolist()], [round(v, 3) for v in w[1].tolist()]
    ([1.093, 0.369], [1.1, 1.099])
    """
    check_hparams(alpha=alpha, beta=beta, mu=mu)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"Expected `targets` to be a torch.Tensor, but got {type(targets).__name__}")
    return rebalance_map(rebalance_ratio(targets, class_freq, ignore_index=ignore_index), alpha, beta, mu)


def negative_tolerant_bias(class_freq: ArrayLike, num_samples: int | float, init_bias: float = 0.05, *,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The NTR class bias ``nu_k = kappa * b_k``, ``b_k = -log(N / n_k - 1)`` (Eq. 8).

    ``b_k = logit(p_k)`` with the class prior ``p_k = n_k / N``, so adding ``nu`` to zero logits
    with kappa = 1 gives ``sigmoid(nu_k) = p_k``: the classifier starts at the prior.

    Args:
        class_freq: (C,) positive training samples per class, ``0 < n_k < N`` (if init_bias > 0).
        num_samples: N, the number of training samples.
        init_bias: the scale ``kappa``. Default 0.05 (the paper's value).
        dtype: of the result (computed in float64). Default float32.

    Returns:
        (C,) bias on ``class_freq``'s device (zeros when ``init_bias == 0``).

    >>> negative_tolerant_bias([1, 2, 3], 4, init_bias=1.0).tolist()
    [-1.0986123085021973, 0.0, 1.0986123085021973]
    """
    check_hparams(init_bias=init_bias)
    n = validate_class_freq(class_freq, num_samples, require_positive=init_bias > 0,
                            require_below_total=init_bias > 0)
    if init_bias == 0:
        return torch.zeros_like(n, dtype=dtype)
    return (init_bias * prior_logit(n, num_samples)).to(dtype)  # nu_k = kappa * b_k


def distribution_balanced_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_freq: ArrayLike,
    num_samples: int | float,
    params: DBParams | None = None,
    *,
    reduction: Reduction = "mean",
    ignore_index: int = -1,
    backend: Backend = "auto",
    **hparams: Any,
) -> torch.Tensor:
    """The Distribution-Balanced loss (Eq. 9): re-balanced weighting, NTR and the focal term.

    Args:
        logits: (B, C) floating logits (never modified).
        targets: (B, C) labels in {0, 1, ignore_index}.
        class_freq: (C,) positive training samples per class ``n_k``.
        num_samples: N, the number of training samples.
        params: the hyper-parameters (default ``DBParams()``, the paper's).
        reduction: "none" | "mean" | "sum". Default "mean" (over unmasked elements).
        ignore_index: label value to mask out. Default -1.
        backend: see :data:`BACKENDS`. Default "auto" (a fast path); "reference" runs the lines below.
        **hparams: fields of :class:`DBParams` (``alpha``, ``beta``, ``mu``, ``neg_scale``,
            ``init_bias``, ``gamma``, ``scale``, ``rebalance``) that replace those of ``params``.

    Returns:
        The reduced loss (float32 for half-precision logits), or (B, C) for "none".

    Switches: ``rebalance=False`` is NTR-Focal; ``neg_scale=1, init_bias=0`` is R-Focal
    (no NTR); ``gamma=0`` the BCE form (R-BCE, ...); all three give BCE.

    >>> z, y = torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 1]])
    >>> loss = distribution_balanced_loss(z, y, [10, 5, 2], 20)
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    >>> ref = distribution_balanced_loss(z, y, [10, 5, 2], 20, backend="reference")
    >>> bool(torch.isclose(loss, ref))
    True
    """
    p = DBParams.of(params, **hparams)
    check_reduction(reduction)
    ignore_index = check_ignore_index(ignore_index)
    check_backend(backend)
    freq = p.check_class_freq(class_freq, num_samples)
    if backend != "reference":
        from dbloss.losses import fast  # the same equations, faster; fast.py imports this file

        return fast.db_loss(logits, targets, freq, float(num_samples), p, reduction=reduction,
                            ignore_index=ignore_index, backend=backend)

    z, y, mask = prepare(logits, targets, ignore_index, num_classes=len(freq))  # y: 0/1, mask: not ignored
    with autocast_off(z.device):
        r_hat = (rebalance_map(rebalance_ratio(targets, freq, ignore_index=ignore_index, dtype=z.dtype),
                               p.alpha, p.beta, p.mu) if p.rebalance else 1.0)          # (Eq. 2-5)
        nu = negative_tolerant_bias(freq, num_samples, p.init_bias, dtype=z.dtype).to(z.device)  # (Eq. 8)
        pos = y > 0
        z_ntr = torch.where(pos, z + nu, p.neg_scale * (z + nu))   # z + nu, lambda * (z + nu)     (Eq. 7)
        w_ntr = y + (1 - y) / p.neg_scale                          # 1, 1 / lambda                 (Eq. 7)
        nll = F.binary_cross_entropy_with_logits(z_ntr, y, reduction="none")   # -log q, -log(1 - q)
        one_minus_pt = torch.sigmoid(torch.where(pos, -z_ntr, z_ntr))          # 1 - q, q
        loss = p.scale * r_hat * w_ntr * one_minus_pt ** p.gamma * nll         # (Eq. 9)
        return reduce(loss, mask, reduction)
