"""Pure multi-label loss functions on tensors: the Distribution-Balanced loss and its baselines.

Every loss takes ``logits`` (B, C), a floating tensor, and ``targets`` (B, C) with values in
{0, 1} or ``ignore_index`` (default -1), and honours ``reduction`` in {"none", "mean", "sum"}:

* ``"none"``: the (B, C) element-wise loss, 0 at ignored entries;
* ``"mean"``: the sum over unmasked elements divided by their number (0 when all are masked);
* ``"sum"``: the sum over unmasked elements.

Half-precision logits (float16, bfloat16) are upcast and the loss is computed and returned in
float32 (float64 logits stay float64), with autocast switched off inside, so the losses are safe
under ``torch.autocast``. Inputs are never modified.

All losses are configurations of a few shared pieces: :func:`_prepare` (validation and upcast),
:func:`_focal_bce` (binary cross-entropy with optional focal modulation), and :func:`_reduce`.
The DB family (db-focal, r-*, ntr-focal) has two paths with the same equations (``backend``):
on the CPU the fused C++ kernel of :mod:`dbloss.losses.fused`, elsewhere torch ops through
:class:`_WeightedSignedFocal`, a hand-written backward; the property tests run both and check
them against the references (DB with everything off equals focal / BCE).

References:
    DB: Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed
    Datasets", ECCV 2020, https://arxiv.org/abs/2007.09654.
    Focal: Lin et al., ICCV 2017. CB: Cui et al., CVPR 2019. LDAM: Cao et al., NeurIPS 2019.
    ASL: Ridnik et al., ICCV 2021.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dbloss.losses import fused

__all__ = [
    "BACKENDS",
    "REDUCTIONS",
    "Reduction",
    "asymmetric_loss",
    "class_balanced_weight",
    "distribution_balanced_loss",
    "inverse_frequency_weight",
    "ldam_loss",
    "ldam_margin",
    "negative_tolerant_bias",
    "rebalance_weight",
    "sigmoid_focal_loss",
    "validate_class_freq",
]

Reduction = Literal["none", "mean", "sum"]
#: The valid values of every ``reduction`` argument.
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")

Backend = Literal["auto", "torch", "kernel"]
#: The valid values of the DB losses' ``backend`` argument: "kernel" is the fused CPU kernel
#: (:mod:`dbloss.losses.fused`), "torch" the composite of torch ops (any device), "auto" the
#: kernel where it applies (CPU, float logits, outside torch.compile) and builds, else torch.
#: Both compute the same equations with a hand-written first derivative (no double backward).
BACKENDS: tuple[str, ...] = ("auto", "torch", "kernel")

ArrayLike = Any  # a sequence, numpy array or tensor of class counts


# --------------------------------------------------------------------------------------------
# validation helpers (shared by the functions here and the modules)
# --------------------------------------------------------------------------------------------
def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"Expected argument `reduction` to be one of {REDUCTIONS}, but got {reduction!r}")
    return reduction


def check_hparams(*, positive: Sequence[str] = (), **values: float) -> None:
    """Raise ``ValueError`` unless every value is a finite number >= 0 (> 0 for names in ``positive``)."""
    for name, value in values.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Expected `{name}` to be a number, but got {value!r}") from None
        if not math.isfinite(v) or v < 0 or (name in positive and v == 0):
            expected = "a finite number > 0" if name in positive else "a finite number >= 0"
            raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is one of :data:`BACKENDS`, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"Expected argument `backend` to be one of {BACKENDS}, but got {backend!r}")
    return backend


def _check_ignore_index(ignore_index: int) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"Expected `ignore_index` to be an int, but got {ignore_index!r}")
    if ignore_index in (0, 1):
        raise ValueError(f"Expected `ignore_index` to differ from the labels 0 and 1, but got {ignore_index}")
    return int(ignore_index)


def validate_class_freq(
    class_freq: ArrayLike,
    num_samples: int | float | None = None,
    *,
    require_positive: bool = False,
    require_below_total: bool = False,
) -> torch.Tensor:
    """Check per-class positive counts and return them as a float64 (C,) tensor (on their device).

    Args:
        class_freq: (C,) number of positive training samples ``n_k`` per class.
        num_samples: N, the number of training samples; must be >= max(n_k).
        require_positive: every class must have ``n_k > 0`` (weights use ``1 / n_k``).
        require_below_total: every class must have ``n_k < N`` (the NTR bias uses ``log(N - n_k)``).

    Raises ``ValueError`` naming the offending class index and value.

    >>> validate_class_freq([3, 1], 4, require_positive=True).tolist()
    [3.0, 1.0]
    """
    if isinstance(class_freq, torch.Tensor):
        freq = class_freq.detach().to(torch.float64)
    else:
        freq = torch.as_tensor(np.asarray(class_freq, dtype=np.float64))
    if freq.ndim != 1 or freq.numel() == 0:
        raise ValueError(f"Expected `class_freq` to be a non-empty 1-D (C,) sequence, but got shape {tuple(freq.shape)}")
    bad = ~torch.isfinite(freq) | (freq < 0)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"Expected `class_freq` to hold finite counts >= 0, but got {freq[k].item()} for class {k}")
    if require_positive and bool((freq == 0).any()):
        k = int(torch.nonzero(freq == 0)[0, 0])
        raise ValueError(
            f"Class {k} has no positive training sample (class_freq[{k}] = 0): its re-balancing weight and "
            "bias would be infinite; drop the class or use a loss that does not depend on class counts"
        )
    if num_samples is not None:
        check_hparams(num_samples=num_samples, positive=("num_samples",))
        n = float(num_samples)
        if n < float(freq.max()):
            k = int(torch.argmax(freq))
            raise ValueError(
                f"Expected `num_samples` >= max(class_freq), but got num_samples={num_samples} "
                f"and class_freq[{k}] = {freq[k].item():g}"
            )
        if require_below_total and bool((freq == n).any()):
            k = int(torch.nonzero(freq == n)[0, 0])
            raise ValueError(
                f"Class {k} is positive in every training sample (class_freq[{k}] = num_samples = {num_samples:g}): "
                "its negative-tolerant bias -log(N / n_k - 1) would be infinite"
            )
    elif require_below_total:
        raise ValueError("`num_samples` is required to check class_freq < num_samples")
    return freq


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half-precision logits, else the logits' own floating dtype."""
    return torch.promote_types(logits.dtype, torch.float32)


def _autocast_off(device: torch.device) -> ContextManager[Any]:
    """A context that disables autocast on ``device`` if it is on (losses are computed in float32)."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except (TypeError, RuntimeError):  # device types autocast does not know
        return nullcontext()
    return torch.autocast(device_type=device.type, enabled=False) if enabled else nullcontext()


def _bad_label_error(targets: torch.Tensor, ignore_index: int, i: int, k: int) -> ValueError:
    return ValueError(
        f"Expected `targets` values in {{0, 1, {ignore_index}}} (ignore_index={ignore_index}), "
        f"but got {targets[i, k].item()!r} at (row, class) = ({i}, {k})"
    )


def _labels(targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check that ``targets`` holds only 0, 1 or ``ignore_index``; return (positive, unmasked) bool masks.

    The unmasked mask is None when no entry equals ``ignore_index`` (the common case, and the
    fast one: one min/max pass and one comparison instead of five passes).
    """
    t = targets.detach()
    if t.dtype == torch.bool:
        return t, None
    if t.numel():
        lo, hi = (float(v) for v in torch.aminmax(t))
        if lo >= 0 and hi <= 1:
            is_pos = t == 1
            # in [0, 1], every value is 0 or 1 exactly when the values add up to the count of ones
            if not t.is_floating_point() or float(t.sum(dtype=torch.float64)) == float(is_pos.sum()):
                return is_pos, None
    is_pos = t == 1
    mask = t != ignore_index
    valid = is_pos | (t == 0) | ~mask
    if not bool(valid.all()):
        i, k = (int(v) for v in torch.nonzero(~valid)[0])
        raise _bad_label_error(t, ignore_index, i, k)
    return is_pos, mask


def _check_pair(logits: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` unless (logits, targets) are (B, C) tensors of one shape and device."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"Expected `logits` to be a torch.Tensor, but got {type(logits).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"Expected `targets` to be a torch.Tensor, but got {type(targets).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"Expected `logits` to be a floating-point tensor, but got dtype {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"Expected `logits` to be 2-D (B, C), but got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"Expected `targets` to have the shape of `logits` {tuple(logits.shape)}, but got {tuple(targets.shape)}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"Expected {num_classes} classes (len(class_freq)), but `logits` has {logits.shape[1]} columns"
        )
    if targets.device != logits.device:
        raise ValueError(f"Expected `targets` on the device of `logits` ({logits.device}), but got {targets.device}")


def _prepare(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a (logits, targets) pair; return upcast logits ``z``, float 0/1 labels ``y`` and the mask.

    ``y`` is 1 where ``targets == 1`` and 0 elsewhere (including ignored entries); ``mask`` is
    ``targets != ignore_index``, or None when nothing is ignored. ``logits`` and ``targets`` are
    not modified.
    """
    _check_pair(logits, targets, num_classes)
    is_pos, mask = _labels(targets, ignore_index)
    dtype = _compute_dtype(logits)
    # a {0, 1} target tensor of the compute dtype is used as is (no copy; nothing writes to it)
    y = targets.detach() if mask is None and targets.dtype == dtype else is_pos.to(dtype)
    return logits.to(dtype), y, mask


def _reduce(loss: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Zero the masked entries of a (B, C) loss (``mask`` None: nothing is masked) and reduce it
    ("mean" divides by the unmasked count)."""
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return _reduce_masked(loss, mask, reduction)


def _reduce_masked(loss: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce a (B, C) loss whose masked entries are already zero."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = loss.numel() if mask is None else mask.sum().clamp(min=1).to(loss.dtype)
    return loss.sum() / count if loss.numel() else loss.sum()


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


# --------------------------------------------------------------------------------------------
# class statistics -> weights, biases, margins
# --------------------------------------------------------------------------------------------
def _rebalance_core(y: torch.Tensor, inv_freq: torch.Tensor, alpha: float, beta: float, mu: float) -> torch.Tensor:
    if beta == 0:  # sigmoid(0) everywhere (and no 0 * inf for samples without positives)
        return torch.full((y.shape[0], inv_freq.shape[0]), alpha + 0.5, dtype=y.dtype, device=y.device)
    denom = y @ inv_freq  # (B,): sum of 1/n_j over positives j
    # r = inv_freq / denom as one outer product; a sample with no positive label has denom = 0,
    # so r = +inf (the limit as its positives vanish) and the weight is sigmoid(+inf) + alpha = alpha + 1.
    return torch.outer(beta / denom, inv_freq).sub_(beta * mu).sigmoid_().add_(alpha)


def rebalance_weight(
    targets: torch.Tensor,
    class_freq: ArrayLike,
    alpha: float = 0.1,
    beta: float = 10.0,
    mu: float = 0.3,
    ignore_index: int = -1,
) -> torch.Tensor:
    """The DB re-balanced weight ``r_hat`` (Wu et al. 2020, Eq. 7-8), for positive and negative terms alike.

    For sample i and class k::

        r_ik   = (1 / n_k) / sum_{j : y_ij = 1} (1 / n_j)
        r_hat  = alpha + sigmoid(beta * (r_ik - mu))

    ``r_ik`` is the ratio of the class-level sampling probability of class k to the
    instance-level probability of sample i under class-aware re-sampling. Ignored entries do not
    count as positives. A sample with no positive label is never over-sampled through a class;
    its weight is the limit r -> +inf, ``alpha + 1`` (the original release gives the same value).

    Args:
        targets: (B, C) labels in {0, 1, ignore_index}.
        class_freq: (C,) positive training samples per class, all > 0.
        alpha, beta, mu: offset, steepness and shift of the smoothing map. Defaults 0.1, 10, 0.3.
        ignore_index: label value that is neither positive nor negative. Default -1.

    Returns:
        (B, C) float32 weights (float64 if ``class_freq`` is a float64 tensor).

    >>> w = rebalance_weight(torch.tensor([[1, 1], [0, 1]]), [1, 4])
    >>> [round(v, 3) for v in w[0].tolist()], [round(v, 3) for v in w[1].tolist()]
    ([1.093, 0.369], [1.1, 1.099])
    """
    check_hparams(alpha=alpha, beta=beta, mu=mu)
    ignore_index = _check_ignore_index(ignore_index)
    freq = validate_class_freq(class_freq, require_positive=True)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"Expected `targets` to be a torch.Tensor, but got {type(targets).__name__}")
    if targets.ndim != 2 or targets.shape[1] != len(freq):
        raise ValueError(f"Expected `targets` of shape (B, {len(freq)}) (C = len(class_freq)), "
                         f"but got {tuple(targets.shape)}")
    f64 = isinstance(class_freq, torch.Tensor) and class_freq.dtype == torch.float64
    dtype = torch.float64 if f64 else torch.float32
    y = _labels(targets, ignore_index)[0].to(dtype)
    return _rebalance_core(y, (1.0 / freq).to(dtype=dtype, device=y.device), float(alpha), float(beta), float(mu))


def _ntr_bias_core(freq: torch.Tensor, num_samples: float, init_bias: float) -> torch.Tensor:
    if init_bias == 0:
        return torch.zeros_like(freq)
    return init_bias * (torch.log(freq) - torch.log(num_samples - freq))  # = init_bias * logit(n_k / N)


def negative_tolerant_bias(class_freq: ArrayLike, num_samples: int | float, init_bias: float = 0.05) -> torch.Tensor:
    """The NTR class-specific bias ``nu_k = init_bias * -log(N / n_k - 1)`` (Wu et al. 2020, Eq. 9).

    ``-log(N / n_k - 1) = logit(p_k)`` with the class prior ``p_k = n_k / N``, so adding ``nu`` to
    zero logits gives ``sigmoid(nu_k / init_bias) = p_k``: the classifier starts at the prior.

    Args:
        class_freq: (C,) positive training samples per class, ``0 < n_k < N`` (if init_bias > 0).
        num_samples: N, the number of training samples.
        init_bias: the scale ``kappa``. Default 0.05 (the paper's value).

    Returns:
        (C,) float32 bias (zeros when ``init_bias == 0``).

    >>> negative_tolerant_bias([1, 2, 3], 4, init_bias=1.0).tolist()
    [-1.0986123085021973, 0.0, 1.0986123085021973]
    """
    check_hparams(init_bias=init_bias)
    freq = validate_class_freq(class_freq, num_samples, require_positive=init_bias > 0,
                               require_below_total=init_bias > 0)
    return _ntr_bias_core(freq, float(num_samples), float(init_bias)).to(torch.float32)


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
# losses
# --------------------------------------------------------------------------------------------
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
    ignore_index = _check_ignore_index(ignore_index)
    z, y, mask = _prepare(logits, targets, ignore_index)
    w = None if weight is None else torch.as_tensor(weight, device=z.device).to(z.dtype)
    return _focal_core(z, y, mask, float(gamma), None if alpha is None else float(alpha), w, reduction)


def _check_focal_hparams(gamma: float, alpha: float | None) -> None:
    check_hparams(gamma=gamma)
    if alpha is not None:
        check_hparams(alpha=alpha)
        if float(alpha) > 1:
            raise ValueError(f"Expected `alpha` in [0, 1] or None, but got {alpha!r}")


def _focal_core(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, gamma: float, alpha: float | None,
                weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    with _autocast_off(z.device):
        loss = _focal_bce(z, y, gamma)
        if alpha is not None:
            loss = loss * torch.where(y > 0, y.new_tensor(alpha), y.new_tensor(1.0 - alpha))
        if weight is not None:
            loss = loss * weight
        return _reduce(loss, mask, reduction)


def _check_db_args(class_freq: ArrayLike, num_samples: int | float, *, rebalance: bool, init_bias: float,
                   **hparams: float) -> torch.Tensor:
    """Validate the DB hyper-parameters and class counts; return the counts (float64, (C,))."""
    check_hparams(init_bias=init_bias, positive=("neg_scale",), **hparams)
    return validate_class_freq(class_freq, num_samples, require_positive=bool(rebalance) or float(init_bias) > 0,
                               require_below_total=float(init_bias) > 0)


def _db_core(
    z: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    freq: torch.Tensor,
    num_samples: float,
    *,
    alpha: float,
    beta: float,
    mu: float,
    neg_scale: float,
    init_bias: float,
    gamma: float,
    scale: float,
    rebalance: bool,
    reduction: str,
) -> torch.Tensor:
    """DB loss on prepared inputs; ``freq`` is the (C,) class count in ``z``'s dtype and device.

    The hot path: everything that depends only on the labels (re-balancing weight, NTR scale and
    loss weight, mask, ``scale``) is folded into one (B, C) weight without autograd, and the
    logit-dependent part runs in :class:`_WeightedSignedFocal`, whose backward is written out
    (about 3x fewer passes over (B, C) than composing autograd ops; see benchmarks/bench_core.py).
    """
    with _autocast_off(z.device), torch.no_grad():
        # y is 0/1, so affine maps of y replace torch.where (cheaper on the CPU)
        weight = _rebalance_core(y, 1.0 / freq, alpha, beta, mu) if rebalance else torch.ones_like(z)
        if neg_scale != 1:  # loss weight 1 for positives, 1/neg_scale for negatives
            weight = torch.addcmul(weight * (1.0 / neg_scale), weight, y, value=1.0 - 1.0 / neg_scale)
        sign_scale = y * (1.0 + neg_scale) - neg_scale  # 1 for positives, -neg_scale for negatives
        if scale != 1:
            weight.mul_(scale)
        if mask is not None:
            weight.mul_(mask)  # ignored entries: zero loss and zero gradient
        bias = _ntr_bias_core(freq, num_samples, init_bias) if init_bias != 0 else None
    with _autocast_off(z.device):
        loss = _WeightedSignedFocal.apply(z, bias, sign_scale, weight, float(gamma))
        return _reduce_masked(loss, mask, reduction)


class _WeightedSignedFocal(torch.autograd.Function):
    """Element-wise ``w * sigmoid(-s)^gamma * softplus(-s)`` with the signed logit
    ``s = (z + bias) * c`` (c = 1 for positives, -neg_scale for negatives): the focal BCE of the
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


def distribution_balanced_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_freq: ArrayLike,
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
) -> torch.Tensor:
    """The Distribution-Balanced loss (Wu et al., ECCV 2020): re-balanced weighting + NTR + focal.

    For sample i, class k, label y and logit z::

        r_hat = alpha + sigmoid(beta * (r_ik - mu))             re-balanced weight (rebalance_weight)
        nu_k  = init_bias * -log(N / n_k - 1)                   NTR bias (negative_tolerant_bias)
        z'    = y * (z + nu_k) + (1 - y) * neg_scale * (z + nu_k)
        w'    = y + (1 - y) / neg_scale
        loss  = scale * r_hat * w' * (1 - p_t)^gamma * BCE(z', y),   p_t from z'

    ``rebalance=False`` uses r_hat = 1; ``neg_scale=1, init_bias=0`` switches NTR off; ``gamma=0``
    switches the focal term off (r-BCE).

    Args:
        logits: (B, C) floating logits (never modified).
        targets: (B, C) labels in {0, 1, ignore_index}.
        class_freq: (C,) positive training samples per class ``n_k``.
        num_samples: N, the number of training samples.
        alpha, beta, mu: the re-balancing map. Defaults 0.1, 10, 0.3.
        neg_scale: ``lambda``, the NTR negative scale. Default 5.
        init_bias: ``kappa``, the NTR bias scale. Default 0.05.
        gamma: focal focusing parameter. Default 2.
        scale: a constant factor on the loss. Default 1.
        rebalance: apply the re-balanced weight. Default True.
        reduction: "none" | "mean" | "sum". Default "mean" (over unmasked elements).
        ignore_index: label value to mask out. Default -1.
        backend: "auto" (default), "kernel" or "torch"; see :data:`BACKENDS`. Same equations.

    Returns:
        The reduced loss (float32 for half-precision logits), or (B, C) for "none".

    >>> z, y = torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 1]])
    >>> loss = distribution_balanced_loss(z, y, [10, 5, 2], 20)
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """
    check_reduction(reduction)
    check_backend(backend)
    ignore_index = _check_ignore_index(ignore_index)
    freq = _check_db_args(class_freq, num_samples, alpha=alpha, beta=beta, mu=mu, neg_scale=neg_scale,
                          init_bias=init_bias, gamma=gamma, scale=scale, rebalance=rebalance)
    return _db_forward(logits, targets, freq, float(num_samples), alpha=float(alpha), beta=float(beta),
                       mu=float(mu), neg_scale=float(neg_scale), init_bias=float(init_bias), gamma=float(gamma),
                       scale=float(scale), rebalance=bool(rebalance), reduction=reduction,
                       ignore_index=ignore_index, backend=backend)


def _kernel_dtype(logits: torch.Tensor, targets: torch.Tensor, backend: str) -> torch.dtype | None:
    """The dtype the fused kernel computes these inputs in, or None to use the torch path.

    The kernel takes CPU logits computed in float32/float64 and targets that convert to that
    dtype exactly (bool, integers, or floats no wider: a float64 0.9999999999 must not become
    float32 1). ``backend="kernel"`` raises when it cannot be used; "auto" falls back.
    """
    if backend == "torch":
        return None
    dtype = _compute_dtype(logits)
    usable = (logits.device.type == "cpu" and dtype in (torch.float32, torch.float64)
              and not (targets.is_floating_point() and torch.finfo(targets.dtype).bits > torch.finfo(dtype).bits))
    if backend == "kernel":
        if not usable:
            raise ValueError(f"backend='kernel' needs CPU logits computed in float32/float64 and targets no wider "
                             f"than them, but got logits {logits.dtype} on {logits.device} and targets "
                             f"{targets.dtype}; use backend='torch' or 'auto'")
        fused.build(verbose=False)  # raises fused.KernelBuildError if it cannot be built
        return dtype
    if not usable or torch.compiler.is_compiling() or not fused.available():
        return None
    return dtype


def _db_forward(
    logits: torch.Tensor,
    targets: torch.Tensor,
    freq: torch.Tensor,
    num_samples: float,
    *,
    alpha: float,
    beta: float,
    mu: float,
    neg_scale: float,
    init_bias: float,
    gamma: float,
    scale: float,
    rebalance: bool,
    reduction: str,
    ignore_index: int,
    backend: str,
    class_terms: Callable[[torch.dtype], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
) -> torch.Tensor:
    """DB loss of (B, C) ``logits`` and ``targets`` for validated hyper-parameters and (C,) counts ``freq``
    (any float dtype, on the logits' device), through the fused kernel or the torch ops (see :data:`BACKENDS`).

    ``class_terms(dtype)``, when given, returns what :func:`_db_class_terms` would (a module caches them).
    """
    _check_pair(logits, targets, len(freq))
    dtype = _kernel_dtype(logits, targets, backend)
    if dtype is None:
        z, y, mask = _prepare(logits, targets, ignore_index)
        return _db_core(z, y, mask, freq.to(dtype=z.dtype, device=z.device), num_samples, alpha=alpha, beta=beta,
                        mu=mu, neg_scale=neg_scale, init_bias=init_bias, gamma=gamma, scale=scale,
                        rebalance=rebalance, reduction=reduction)
    z = logits.to(dtype).contiguous()
    y = targets.detach().to(dtype).contiguous()
    inv_freq, bias = class_terms(dtype) if class_terms is not None else _db_class_terms(freq, num_samples, init_bias,
                                                                                        dtype)
    inv_freq, bias = inv_freq.to(z.device), None if bias is None else bias.to(z.device)  # no-ops when already there
    return fused.db_focal(z, y, inv_freq, bias, alpha=alpha, beta=beta, mu=mu, neg_scale=neg_scale, gamma=gamma,
                          scale=scale, rebalance=rebalance, ignore_index=ignore_index, reduction=reduction)


def _db_class_terms(freq: torch.Tensor, num_samples: float, init_bias: float,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel's per-class inputs: ``1 / n_k`` and the NTR bias (None when init_bias = 0), (C,) in ``dtype``."""
    f = freq.to(dtype)
    return 1.0 / f, (_ntr_bias_core(f, num_samples, init_bias) if init_bias != 0 else None)


def _ldam_core(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, margin: torch.Tensor, s: float,
               reduction: str) -> torch.Tensor:
    with _autocast_off(z.device):
        return _reduce(_focal_bce(s * (z - y * margin), y, 0.0), mask, reduction)


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
    ignore_index = _check_ignore_index(ignore_index)
    margin = ldam_margin(class_freq, max_margin)
    z, y, mask = _prepare(logits, targets, ignore_index, len(margin))
    return _ldam_core(z, y, mask, margin.to(dtype=z.dtype, device=z.device), float(s), reduction)


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
        gamma_pos, gamma_neg: focusing parameters. Defaults 0 and 4.
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
    ignore_index = _check_ignore_index(ignore_index)
    z, y, mask = _prepare(logits, targets, ignore_index)
    return _asl_core(z, y, mask, float(gamma_pos), float(gamma_neg), float(clip), float(eps), bool(detach_focal),
                     reduction)


def _check_asl_hparams(gamma_pos: float, gamma_neg: float, clip: float, eps: float) -> None:
    check_hparams(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps, positive=("eps",))
    if not float(clip) < 1 or not float(eps) < 1:
        raise ValueError(f"Expected `clip` in [0, 1) and `eps` in (0, 1), but got clip={clip!r}, eps={eps!r}")


def _asl_core(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, gamma_pos: float, gamma_neg: float,
              clip: float, eps: float, detach_focal: bool, reduction: str) -> torch.Tensor:
    log_eps = math.log(eps)
    with _autocast_off(z.device):
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
        return _reduce(torch.where(y > 0, nll_pos, nll_neg), mask, reduction)
