"""Multi-label losses for long-tailed data: the Distribution-Balanced loss and its baselines.

``dbloss.losses.functional`` holds the pure functions; the modules here are thin wrappers that
hold hyper-parameters and class statistics (as buffers); :func:`build_loss` builds any of
:data:`LOSS_NAMES` from a training set's class counts.

>>> from dbloss.losses import build_loss
>>> loss_fn = build_loss("db-focal", class_freq=[10, 5, 2], num_samples=20)
"""

from dbloss.losses.factory import LOSS_NAMES, build_loss
from dbloss.losses.functional import REDUCTIONS, Reduction
from dbloss.losses.modules import AsymmetricLoss, DistributionBalancedLoss, LDAMLoss, SigmoidFocalLoss

__all__ = [
    "LOSS_NAMES",
    "REDUCTIONS",
    "AsymmetricLoss",
    "DistributionBalancedLoss",
    "LDAMLoss",
    "Reduction",
    "SigmoidFocalLoss",
    "build_loss",
]
