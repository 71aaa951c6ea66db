"""Multi-label losses for long-tailed data: the Distribution-Balanced loss and its baselines.

Start with :mod:`dbloss.losses.reference`: the DB loss as the paper writes it (re-balanced
weighting, negative-tolerant regularisation, focal term), its hyper-parameters as one
:class:`DBParams`, and the public :func:`distribution_balanced_loss`. The faster paths that
compute the same equations (a fused CPU kernel, torch ops with a hand-written backward) are
chosen in one place, :func:`dbloss.losses.fast.select_backend`, and tested against the
reference. The baselines (focal, RW/CB weights, LDAM, ASL) are in :mod:`dbloss.losses.baselines`;
the modules hold hyper-parameters and buffers only; :func:`build_loss` builds any of
:data:`LOSS_NAMES` from a training set's class counts.

>>> from dbloss.losses import build_loss
>>> loss_fn = build_loss("db-focal", class_freq=[10, 5, 2], num_samples=20)
"""

from dbloss.losses._common import REDUCTIONS, Reduction
from dbloss.losses.factory import LOSS_NAMES, build_loss
from dbloss.losses.modules import AsymmetricLoss, DistributionBalancedLoss, LDAMLoss, SigmoidFocalLoss
from dbloss.losses.reference import (
    BACKENDS,
    DBParams,
    distribution_balanced_loss,
    negative_tolerant_bias,
    rebalance_map,
    rebalance_ratio,
    rebalance_weight,
)

__all__ = [
    "BACKENDS",
    "LOSS_NAMES",
    "REDUCTIONS",
    "AsymmetricLoss",
    "DBParams",
    "DistributionBalancedLoss",
    "LDAMLoss",
    "Reduction",
    "SigmoidFocalLoss",
    "build_loss",
    "distribution_balanced_loss",
    "negative_tolerant_bias",
    "rebalance_map",
    "rebalance_ratio",
    "rebalance_weight",
]
