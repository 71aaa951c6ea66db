"""Fast paths of the DB loss: the equations of :mod:`dbloss.losses.reference`, computed faster.

:func:`select_backend` is the one place that chooses which code runs:

* ``"kernel"``: the fused CPU kernel (:mod:`dbloss.losses.fused`, ``csrc/db_focal.cpp``), one
  pass that checks the labels, computes the loss and writes dL/dz, for CPU float32/float64;
* ``"torch"``: torch ops on any device. Everything that depends only on the labels (r_hat, the
  NTR loss weight, the mask, ``scale``) is folded into one (B, C) weight without autograd, and
  the logit-dependent part runs in :class:`_WeightedSignedFocal`, whose backward is written out
  (about 3x fewer passes over (B, C) than autograd through the reference's ops);
* ``"auto"``: the kernel where it applies (CPU, float logits, outside ``torch.compile``) and
  builds, else torch ops.

Both have a first derivative only (double backward raises). ``tests/test_losses.py`` checks each
against the reference in value and gradient (float64; ignored entries, rows without a positive
label, each of re-balancing, NTR and the focal term on and off).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from dbloss.labels import label_masks
from dbloss.losses import fused
from dbloss.losses._common import autocast_off, check_pair, compute_dtype, prepare, reduce_masked
from dbloss.losses.params import DBParams, prior_logit

__all__ = ["ClassTerms", "class_terms", "db_loss", "select_backend", "self_check"]

#: (C,) ``1 / n_k`` and the NTR bias ``nu_k`` (None when kappa = 0), in the compute dtype.
ClassTerms = tuple[torch.Tensor, "torch.Tensor | None"]


def select_backend(logits: torch.Tensor, targets: torch.Tensor, backend: str) -> str:
    """The path that computes the DB loss of these inputs: "kernel" or "torch".

    The kernel takes CPU logits computed in float32/float64 and targets that convert to that
    dtype exactly (bool, integers, or floats no wider: a float64 0.9999999999 must not become
    float32 1). ``backend="kernel"`` raises when it cannot be used (``ValueError``, or
    :class:`fused.KernelBuildError` when it does not build); "auto" falls back to "torch".
    """
    if backend == "torch":
        return "torch"
    dtype = compute_dtype(logits)
    usable = (logits.device.type == "cpu" and dtype in (torch.float32, torch.float64)
              and not (targets.is_floating_point() and torch.finfo(targets.dtype).bits > torch.finfo(dtype).bits))
    if backend == "kernel":
        if not usable:
            raise ValueError(f"backend='kernel' needs CPU logits computed in float32/float64 and targets no wider "
                             f"than them, but got logits {logits.dtype} on {logits.device} and targets "
                             f"{targets.dtype}; use backend='torch' or 'auto'")
        fused.build(verbose=False)
        return "kernel"
    if not usable or torch.compiler.is_compiling() or not fused.available():
        return "torch"
    return "kernel"


def class_terms(freq: torch.Tensor, num_samples: float, init_bias: float, dtype: torch.dtype) -> ClassTerms:
    """The per-class inputs of both paths: ``1 / n_k`` and the NTR bias ``nu_k = kappa * b_k`` (None when
    kappa = 0), (C,) in ``dtype``, for validated counts ``freq`` (see ``DBParams.check_class_freq``)."""
    bias = (init_bias * prior_logit(freq.double(), num_samples)).to(dtype) if init_bias != 0 else None
    return 1.0 / freq.to(dtype), bias


def db_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    freq: torch.Tensor,
    num_samples: float,
    p: DBParams,
    *,
    reduction: str,
    ignore_index: int,
    backend: str,
    terms: Callable[[torch.dtype], ClassTerms] | None = None,
) -> torch.Tensor:
    """DB loss of (B, C) ``logits`` and ``targets`` for validated counts ``freq`` (C,) and ``p``,
    through the path :func:`select_backend` chooses.

    ``terms(dtype)``, when given, returns what :func:`class_terms` would (a module caches them).
    """
    check_pair(logits, targets, len(freq))
    path = select_backend(logits, targets, backend)
    dtype = compute_dtype(logits)
    inv_freq, bias = terms(dtype) if terms is not None else class_terms(freq, num_samples, p.init_bias, dtype)
    inv_freq, bias = inv_freq.to(logits.device), None if bias is None else bias.to(logits.device)
    if path == "kernel":
        z = logits.to(dtype).contiguous()
        y = targets.detach().to(dtype).contiguous()
        try:
            return fused.db_focal(z, y, inv_freq, bias, alpha=p.alpha, beta=p.beta, mu=p.mu, neg_scale=p.neg_scale,
                                  gamma=p.gamma, scale=p.scale, rebalance=p.rebalance, ignore_index=ignore_index,
                                  reduction=reduction)
        except ValueError as kernel_error:  # the kernel's label check failed: report it as dbloss.labels does
            raise _label_error(targets, ignore_index, kernel_error) from None
    z, y, mask = prepare(logits, targets, ignore_index)
    return _torch_path(z, y, mask, inv_freq, bias, p, reduction)


def _label_error(targets: torch.Tensor, ignore_index: int, fallback: ValueError) -> ValueError:
    """The error :func:`dbloss.labels.label_masks` raises for ``targets`` (``fallback`` if it raises none)."""
    try:
        label_masks(targets, ignore_index, name="targets")
    except ValueError as exc:
        return exc
    return fallback


def _torch_path(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, inv_freq: torch.Tensor,
                bias: torch.Tensor | None, p: DBParams, reduction: str) -> torch.Tensor:
    """The torch-ops path on prepared inputs: the label-only factors as one weight, then the focal BCE."""
    with autocast_off(z.device), torch.no_grad():
        # y is 0/1, so affine maps of y replace torch.where (cheaper on the CPU)
        weight = _rebalance_weight(y, inv_freq, p) if p.rebalance else torch.ones_like(z)
        if p.neg_scale != 1:  # loss weight 1 for positives, 1/lambda for negatives
            weight = torch.addcmul(weight * (1.0 / p.neg_scale), weight, y, value=1.0 - 1.0 / p.neg_scale)
        sign_scale = y * (1.0 + p.neg_scale) - p.neg_scale  # 1 for positives, -lambda for negatives
        if p.scale != 1:
            weight.mul_(p.scale)
        if mask is not None:
            weight.mul_(mask)  # ignored entries: zero loss and zero gradient
    with autocast_off(z.device):
        loss = _WeightedSignedFocal.apply(z, bias, sign_scale, weight, p.gamma)
        return reduce_masked(loss, mask, reduction)


def _rebalance_weight(y: torch.Tensor, inv_freq: torch.Tensor, p: DBParams) -> torch.Tensor:
    """r_hat of :func:`~dbloss.losses.reference.rebalance_weight` in four in-place passes over (B, C)."""
    if p.beta == 0:  # sigmoid(0) everywhere (and no 0 * inf for samples without positives)
        return torch.full((y.shape[0], inv_freq.shape[0]), p.alpha + 0.5, dtype=y.dtype, device=y.device)
    denom = y @ inv_freq  # (B,): P^I_i, times C
    # r = inv_freq / denom as one outer product; a sample with no positive label has denom = 0,
    # so r = +inf and the weight is sigmoid(+inf) + alpha = alpha + 1.
    return torch.outer(p.beta / denom, inv_freq).sub_(p.beta * p.mu).sigmoid_().add_(p.alpha)


class _WeightedSignedFocal(torch.autograd.Function):
    """Element-wise ``w * sigmoid(-s)^gamma * softplus(-s)`` with the signed logit
    ``s = (z + bias) * c`` (c = 1 for positives, -lambda for negatives): the focal BCE of the
    shifted / scaled logits, ``1 - p_t = sigmoid(-s)`` and ``-log p_t = softplus(-s)``.

    Gradient: ``dL/dz = -w * c * sigmoid(-s)^gamma * (gamma * (1 - q) * softplus(-s) + q)``, q = sigmoid(-s).
    ``bias`` (C,) may be None; ``c`` and ``w`` (B, C) carry no gradient.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, bias: torch.Tensor | None, c: torch.Tensor, w: torch.Tensor,
                gamma: float) -> torch.Tensor:
        neg_s = (z + bias if bias is not None else z.clone()).mul_(c).neg_()  # -s; never in place on z
        q = torch.sigmoid(neg_s)  # 1 - p_t
        nll = F.softplus(neg_s)  # -log p_t
        wc = w * c
        if gamma == 0:
            ctx.save_for_backward(wc, q, nll)
            ctx.gamma = 0.0
            return nll.mul_(w)
        mod = q * q if gamma == 2 else q.pow(gamma)
        ctx.save_for_backward(wc, q, nll, mod)
        ctx.gamma = gamma
        return (mod * nll).mul_(w)

    @staticmethod
    @torch.autograd.function.once_differentiable  # double backward raises instead of silently returning no graph
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gamma = ctx.gamma
        if gamma == 0:
            wc, q, _ = ctx.saved_tensors
            grad = (q * wc).mul_(grad_out).neg_()
        else:
            wc, q, nll, mod = ctx.saved_tensors
            grad = torch.addcmul(q, 1.0 - q, nll, value=gamma).mul_(mod).mul_(wc).mul_(grad_out).neg_()
        return grad, None, None, None, None


def self_check(batch: int = 64, classes: int = 50, seed: int = 0) -> dict[str, float]:
    """Build the fused kernel and compare it with the torch path on a random float64 problem
    (``dbloss kernel --check``).

    Returns the largest absolute differences of the loss (reduction "none") and of the gradient.
    """
    fused.build(verbose=False)
    g = torch.Generator().manual_seed(seed)
    freq = torch.randint(1, 500, (classes,), generator=g).double()
    logits = 3 * torch.randn(batch, classes, generator=g, dtype=torch.float64)
    targets = (torch.rand(batch, classes, generator=g) < 0.1).double()
    out = {}
    for backend in ("kernel", "torch"):
        z = logits.clone().requires_grad_(True)
        loss = db_loss(z, targets, freq, 2000.0, DBParams(), reduction="none", ignore_index=-1, backend=backend)
        loss.sum().backward()
        out[backend] = (loss.detach(), z.grad)
    return {"max_abs_loss_diff": float((out["kernel"][0] - out["torch"][0]).abs().max()),
            "max_abs_grad_diff": float((out["kernel"][1] - out["torch"][1]).abs().max())}
