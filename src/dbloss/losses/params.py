"""The DB loss's hyper-parameters and the pieces the reference (:mod:`dbloss.losses.reference`) and the
fast paths (:mod:`dbloss.losses.fast`) share: :class:`DBParams` (one frozen dataclass, the paper's
defaults), the backends, and the class prior as a logit (Eq. 8). Both import this module; it
imports neither.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dbloss.losses._common import ArrayLike, check_hparams, validate_class_freq

__all__ = ["BACKENDS", "Backend", "DBParams", "check_backend", "prior_logit"]


Backend = Literal["auto", "torch", "kernel", "reference"]
#: The valid values of ``backend``: "reference" is this file; "kernel" the fused CPU kernel and
#: "torch" torch ops with a hand-written backward (:mod:`dbloss.losses.fast`); "auto" (the
#: default) the kernel where it applies and builds, else "torch". See :func:`dbloss.losses.fast.select_backend`.
BACKENDS: tuple[str, ...] = ("auto", "torch", "kernel", "reference")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is one of :data:`BACKENDS`, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"Expected argument `backend` to be one of {BACKENDS}, but got {backend!r}")
    return backend


@dataclass(frozen=True)
class DBParams:
    """The hyper-parameters of the DB loss, with the paper's symbols (defaults: its VOC-MLT values).

    Attributes:
        alpha: alpha, the lower bound of the re-balanced weight r_hat (Eq. 5). Default 0.1.
        beta: beta, the steepness of the smoothing map (Eq. 5). Default 10.
        mu: mu, the ratio r at which the map is halfway (Eq. 5). Default 0.3.
        neg_scale: lambda > 0, the NTR scale of negative logits; the negative term is weighted
            1 / lambda (Eq. 7). 1 with init_bias 0 switches NTR off. Default 5.
        init_bias: kappa >= 0, the scale of the NTR class bias nu_k = kappa * b_k (Eq. 8). Default 0.05.
        gamma: gamma, the focal focusing parameter (Eq. 9); 0 gives the BCE form. Default 2.
        scale: a constant factor on the loss (not in the paper; 2 reproduces the original
            release's focal ``balance_param``). Default 1.
        rebalance: multiply by r_hat (False: r_hat = 1, the paper's NTR-Focal). Default True.

    Every number must be finite and >= 0 (``neg_scale`` > 0); ``ValueError`` otherwise.

    >>> DBParams(mu=0.2).mu, DBParams().neg_scale
    (0.2, 5.0)
    """

    alpha: float = 0.1
    beta: float = 10.0
    mu: float = 0.3
    neg_scale: float = 5.0
    init_bias: float = 0.05
    gamma: float = 2.0
    scale: float = 1.0
    rebalance: bool = True

    def __post_init__(self) -> None:
        numbers = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rebalance"}
        check_hparams(positive=("neg_scale",), **numbers)
        for name, value in numbers.items():
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "rebalance", bool(self.rebalance))

    @classmethod
    def of(cls, params: DBParams | None = None, **hparams: Any) -> DBParams:
        """``params`` (default :class:`DBParams`\\ ()) with the fields named in ``hparams`` replaced.

        Raises ``TypeError`` naming an unknown field and listing the valid ones.
        """
        if params is not None and not isinstance(params, DBParams):
            raise TypeError(f"Expected `params` to be a DBParams, but got {type(params).__name__}")
        unknown = sorted(set(hparams) - set(cls.names()))
        if unknown:
            raise TypeError(f"Unknown DB hyper-parameter(s) {unknown}; valid ones are {list(cls.names())}")
        base = _DEFAULT_PARAMS if params is None else params
        return dataclasses.replace(base, **hparams) if hparams else base

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def check_class_freq(self, class_freq: ArrayLike, num_samples: int | float) -> torch.Tensor:
        """Validate class counts for these hyper-parameters; return them as float64 (C,).

        r_hat needs every n_k > 0 (when ``rebalance``), the NTR bias 0 < n_k < N (when kappa > 0).
        """
        return validate_class_freq(class_freq, num_samples, require_positive=self.rebalance or self.init_bias > 0,
                                   require_below_total=self.init_bias > 0)


_DEFAULT_PARAMS = DBParams()


def prior_logit(class_freq: torch.Tensor, num_samples: float) -> torch.Tensor:
    """``b_k = -log(N / n_k - 1) = log(p_k / (1 - p_k))``, the class prior ``p_k = n_k / N`` as a logit (Eq. 8).

    No validation: ``class_freq`` is a floating (C,) tensor with ``0 < n_k < N``
    (:func:`negative_tolerant_bias` checks that).

    >>> prior_logit(torch.tensor([1.0, 2.0]), 4).tolist()
    [-1.0986123085021973, 0.0]
    """
    return torch.log(class_freq) - torch.log(num_samples - class_freq)
