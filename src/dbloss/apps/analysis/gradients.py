"""Gradients of CE, BCE and negative-tolerant BCE with respect to a negative logit (the paper's Fig. 4).

Wu et al. (ECCV 2020, arXiv 2007.09654), Sec. 3.3: with BCE every negative label of an image is
pushed down with gradient ``sigmoid(z)`` independently of the others, so the many negatives of a
tail class keep getting suppressed (*over-suppression*); softmax cross-entropy stops pushing once
the positive logit dominates (its gradient ``softmax(z)_k`` depends on the other logits). The
negative-tolerant regularisation (NTR) replaces the negative term by
``1/lambda * log(1 + exp(lambda * (z + nu_k)))``, with the class-specific bias
``nu_k = kappa * -log(1/p_k - 1)`` from the class prior ``p_k = n_k / N``: its gradient falls
off quickly once the negative logit is low (*tolerance*), and the bias lets it start at the
prior.

Every gradient here is computed by ``torch.autograd.grad`` through the losses themselves:
``torch.nn.functional.cross_entropy`` for CE, and the project's own modules from
:func:`dbloss.losses.build_loss` for BCE (``"bce"``) and NTR (``"ntr-focal"`` with ``gamma=0``,
i.e. re-balancing and focal term off, NTR on), with ``reduction="sum"`` so that the value is the
per-element gradient. Nothing is re-derived by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from dbloss.losses import build_loss, negative_tolerant_bias
from dbloss.apps.analysis.output import write_analysis
from dbloss.apps.plots import GROUP_COLORS

__all__ = [
    "GradientCurves",
    "bce_negative_gradient",
    "ce_negative_gradient",
    "gradient_curves",
    "gradient_figure",
    "ntr_negative_gradient",
    "run_gradient_analysis",
]


def _grid(logits: Sequence[float] | np.ndarray) -> torch.Tensor:
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    if z.ndim != 1 or z.numel() == 0:
        raise ValueError(f"Expected `logits` to be a non-empty 1-D grid, but got shape {tuple(z.shape)}")
    return z


def ce_negative_gradient(
    logits: Sequence[float] | np.ndarray,
    *,
    num_classes: int = 20,
    pos_logit: float = 2.0,
    other_logit: float = 0.0,
) -> np.ndarray:
    """d CE / d z_neg of softmax cross-entropy, for each value of one negative logit ``z_neg``.

    The C-way problem has the positive class 0 at ``pos_logit``, the studied negative class 1 at
    ``z_neg`` and the other C - 2 negatives at ``other_logit``. Gradients by autograd through
    ``torch.nn.functional.cross_entropy``.

    Args:
        logits: (M,) values of ``z_neg``.
        num_classes: C >= 2. Default 20 (VOC).
        pos_logit, other_logit: the fixed logits. Defaults 2 and 0.

    Returns:
        (M,) float64 gradients.

    >>> round(float(ce_negative_gradient([0.0], num_classes=2, pos_logit=0.0)[0]), 3)
    0.5
    """
    if num_classes < 2:
        raise ValueError(f"Expected `num_classes` >= 2, but got {num_classes}")
    z = _grid(logits)
    m = z.numel()
    neg = z.clone().requires_grad_(True)
    cols = [torch.full((m,), float(pos_logit), dtype=z.dtype), neg]
    cols += [torch.full((m,), float(other_logit), dtype=z.dtype)] * (num_classes - 2)
    full = torch.stack(cols, dim=1)
    loss = F.cross_entropy(full, torch.zeros(m, dtype=torch.long), reduction="sum")
    (grad,) = torch.autograd.grad(loss, neg)
    return grad.numpy()


def _negative_gradient(loss_fn: torch.nn.Module, z: torch.Tensor) -> np.ndarray:
    logits = z[:, None].clone().requires_grad_(True)
    loss = loss_fn(logits, torch.zeros_like(logits, dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, logits)
    return grad[:, 0].numpy()


def bce_negative_gradient(logits: Sequence[float] | np.ndarray) -> np.ndarray:
    """d BCE / d z for a negative label (y = 0), by autograd through ``build_loss("bce")``.

    >>> round(float(bce_negative_gradient([0.0])[0]), 3)
    0.5
    """
    z = _grid(logits)
    loss_fn = build_loss("bce", [1], 2, reduction="sum")
    return _negative_gradient(loss_fn, z)


def ntr_negative_gradient(
    logits: Sequence[float] | np.ndarray,
    class_freq: int | float,
    num_samples: int | float,
    *,
    neg_scale: float = 5.0,
    init_bias: float = 0.05,
) -> np.ndarray:
    """d L / d z of the negative-tolerant BCE for a negative label of a class with ``n_k`` of N positives.

    The loss is ``build_loss("ntr-focal", [n_k], N, gamma=0, neg_scale=lambda, init_bias=kappa)``:
    the DB loss with re-balancing off, focal off and NTR on. ``z`` is the model's logit (before
    the bias ``nu_k``).

    Args:
        logits: (M,) values of the negative logit.
        class_freq: ``n_k``, 0 < n_k < N.
        num_samples: N.
        neg_scale: ``lambda``. Default 5 (the paper's).
        init_bias: ``kappa``. Default 0.05 (the paper's).

    >>> round(float(ntr_negative_gradient([0.0], 1, 2, init_bias=0.0)[0]), 3)
    0.5
    """
    z = _grid(logits)
    loss_fn = build_loss("ntr-focal", [class_freq], num_samples, gamma=0.0, neg_scale=neg_scale,
                         init_bias=init_bias, reduction="sum")
    return _negative_gradient(loss_fn, z)


@dataclass
class GradientCurves:
    """Gradients with respect to a negative logit over a grid of logit values.

    Attributes:
        logits: (M,) the grid of negative-logit values.
        ce: (K, M) CE gradients, one row per value of ``ce_other_logits``.
        ce_other_logits: (K,) the value of the other negative logits for each CE row.
        ce_num_classes, ce_pos_logit: the CE problem.
        bce: (M,) BCE gradients.
        ntr: (G, M) NTR gradients, one row per class prior.
        ntr_labels: G names ("head", "tail", ...), ``ntr_class_freq`` (G,) and ``num_samples``.
        ntr_bias: (G,) the NTR bias ``nu_k`` of each prior.
        neg_scale, init_bias: lambda and kappa.
    """

    logits: np.ndarray
    ce: np.ndarray
    ce_other_logits: np.ndarray
    ce_num_classes: int
    ce_pos_logit: float
    bce: np.ndarray
    ntr: np.ndarray
    ntr_labels: list[str]
    ntr_class_freq: np.ndarray
    num_samples: float
    ntr_bias: np.ndarray
    neg_scale: float
    init_bias: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers."""
        return {
            "params": {
                "ce_num_classes": self.ce_num_classes, "ce_pos_logit": self.ce_pos_logit,
                "ce_other_logits": self.ce_other_logits.tolist(), "neg_scale": self.neg_scale,
                "init_bias": self.init_bias, "num_samples": self.num_samples,
                "ntr_class_freq": dict(zip(self.ntr_labels, self.ntr_class_freq.tolist())),
                "ntr_prior": dict(zip(self.ntr_labels, (self.ntr_class_freq / self.num_samples).tolist())),
                "ntr_bias": dict(zip(self.ntr_labels, self.ntr_bias.tolist())),
            },
            "logits": self.logits.tolist(),
            "bce": self.bce.tolist(),
            "ce": {f"other_logit={o:g}": row.tolist() for o, row in zip(self.ce_other_logits, self.ce)},
            "ntr": {lab: row.tolist() for lab, row in zip(self.ntr_labels, self.ntr)},
        }


def gradient_curves(
    logits: Sequence[float] | np.ndarray | None = None,
    *,
    class_freq: dict[str, int | float] | None = None,
    num_samples: int | float = 1142,
    neg_scale: float = 5.0,
    init_bias: float = 0.05,
    ce_num_classes: int = 20,
    ce_pos_logit: float = 2.0,
    ce_other_logits: Sequence[float] = (-2.0, 0.0, 2.0),
) -> GradientCurves:
    """CE, BCE and NTR gradients with respect to a negative logit over a grid.

    Args:
        logits: (M,) grid of negative-logit values. Default 401 points in [-6, 6].
        class_freq: ``{label: n_k}`` of the classes whose NTR curve to draw. Default the most and
            least frequent classes of VOC-MLT, ``{"head": 775, "tail": 4}``.
        num_samples: N. Default 1142 (VOC-MLT's training set).
        neg_scale, init_bias: NTR's lambda and kappa. Defaults 5 and 0.05 (the paper's).
        ce_num_classes, ce_pos_logit, ce_other_logits: the CE problem (see
            :func:`ce_negative_gradient`); one CE curve per value of ``ce_other_logits``.

    >>> g = gradient_curves([-1.0, 0.0, 1.0])
    >>> g.ce.shape, g.ntr.shape
    ((3, 3), (2, 3))
    """
    z = np.linspace(-6.0, 6.0, 401) if logits is None else np.asarray(logits, dtype=np.float64)
    class_freq = {"head": 775, "tail": 4} if class_freq is None else dict(class_freq)
    if not class_freq:
        raise ValueError("Expected at least one class in `class_freq`")
    others = np.asarray(ce_other_logits, dtype=np.float64)
    labels = list(class_freq)
    freq = np.asarray([class_freq[k] for k in labels], dtype=np.float64)
    return GradientCurves(
        logits=z,
        ce=np.stack([ce_negative_gradient(z, num_classes=ce_num_classes, pos_logit=ce_pos_logit, other_logit=o)
                     for o in others]),
        ce_other_logits=others,
        ce_num_classes=int(ce_num_classes),
        ce_pos_logit=float(ce_pos_logit),
        bce=bce_negative_gradient(z),
        ntr=np.stack([ntr_negative_gradient(z, n, num_samples, neg_scale=neg_scale, init_bias=init_bias) for n in freq]),
        ntr_labels=labels,
        ntr_class_freq=freq,
        num_samples=float(num_samples),
        ntr_bias=negative_tolerant_bias(freq, num_samples, init_bias).double().numpy(),
        neg_scale=float(neg_scale),
        init_bias=float(init_bias),
    )


def gradient_figure(g: GradientCurves) -> Figure:
    """Two panels: (a) CE (for each value of the other logits), BCE and NTR gradients against
    the negative logit; (b) NTR for each class prior against BCE, with the NTR bias marked."""
    fig = Figure(figsize=(12.0, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    z = g.logits
    blues = ["#9ecae1", "#4292c6", "#08519c", "#08306b"]
    for i, (o, row) in enumerate(zip(g.ce_other_logits, g.ce)):
        ax1.plot(z, row, color=blues[i % len(blues)], lw=1.6, ls="--",
                 label=f"CE (C={g.ce_num_classes}, positive logit {g.ce_pos_logit:g}, other negatives {o:g})")
    ax1.plot(z, g.bce, color="k", lw=2, label="BCE")
    first = len(g.ntr_labels) - 1  # the rarest class given last (tail by default)
    ax1.plot(z, g.ntr[first], color="#d62728", lw=2,
             label=f"NTR ({g.ntr_labels[first]}: p={g.ntr_class_freq[first] / g.num_samples:.3f})")
    ax1.set_title(f"(a) gradient w.r.t. a negative logit (\u03bb={g.neg_scale:g}, \u03ba={g.init_bias:g})", fontsize=10)
    ax1.set_xlabel("negative logit z")
    ax1.set_ylabel("dL / dz")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(alpha=0.3)

    ax2.plot(z, g.bce, color="k", lw=2, label="BCE")
    palette = ["#d62728", "#2ca02c", "#9467bd", "#8c564b"]
    for i, (lab, row, n, nu) in enumerate(zip(g.ntr_labels, g.ntr, g.ntr_class_freq, g.ntr_bias)):
        color = GROUP_COLORS.get(lab.split(" ")[0], palette[i % len(palette)])
        ax2.plot(z, row, color=color, lw=2, label=f"NTR {lab}: n={n:g}/{g.num_samples:g}, \u03bd={nu:+.3f}")
        ax2.axvline(-nu, color=color, ls=":", lw=1)
    ax2.set_title("(b) NTR for a head vs a tail class prior (dotted: z = -\u03bd)", fontsize=10)
    ax2.set_xlabel("negative logit z")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.grid(alpha=0.3)
    return fig


def run_gradient_analysis(
    out_dir: str | Path,
    *,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    logits: Sequence[float] | np.ndarray | None = None,
    neg_scale: float = 5.0,
    init_bias: float = 0.05,
    ce_num_classes: int | None = None,
    ce_pos_logit: float = 2.0,
    ce_other_logits: Sequence[float] = (-2.0, 0.0, 2.0),
) -> dict[str, Any]:
    """Compute :func:`gradient_curves`; write ``gradients.png`` and ``gradients.json`` into ``out_dir``.

    With ``labels`` ((N, C) label matrix), the head and tail NTR curves use its most and least
    frequent (non-empty) classes, N is its number of rows and CE uses its C; without, the
    VOC-MLT defaults of :func:`gradient_curves`.

    Returns ``{"figure": Path, "json": Path, "summary": {...}}`` (the priors and biases used).
    """
    kwargs: dict[str, Any] = {}
    if labels is not None:
        from dbloss.stats import LabelStats

        stats = LabelStats.from_labels(labels, class_names)
        freq = stats.class_freq
        ok = np.flatnonzero((freq > 0) & (freq < stats.num_samples))
        if ok.size == 0:
            raise ValueError("Expected a class with 0 < n_k < N in `labels` for the NTR curves")
        hi, lo = ok[np.argmax(freq[ok])], ok[np.argmin(freq[ok])]
        names = stats.class_names
        kwargs["class_freq"] = {f"head ({names[hi]})": int(freq[hi]), f"tail ({names[lo]})": int(freq[lo])}
        kwargs["num_samples"] = stats.num_samples
        kwargs["ce_num_classes"] = stats.num_classes if ce_num_classes is None else ce_num_classes
    elif ce_num_classes is not None:
        kwargs["ce_num_classes"] = ce_num_classes
    g = gradient_curves(logits, neg_scale=neg_scale, init_bias=init_bias, ce_pos_logit=ce_pos_logit,
                        ce_other_logits=ce_other_logits, **kwargs)
    data = g.to_dict()
    fig_path, json_path = write_analysis(out_dir, "gradients", gradient_figure(g), data)
    return {"figure": fig_path, "json": json_path, "summary": data["params"]}
