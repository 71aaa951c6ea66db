"""The loss functions under their former module name (kept so that existing imports work).

The Distribution-Balanced loss and its pieces live in :mod:`dbloss.losses.reference` (the
paper's equations; fast paths in :mod:`dbloss.losses.fast`), the baselines in
:mod:`dbloss.losses.baselines`, the shared checks in :mod:`dbloss.losses._common`.

>>> import torch
>>> from dbloss.losses.functional import distribution_balanced_loss, sigmoid_focal_loss
>>> z, y = torch.zeros(1, 2), torch.tensor([[1, 0]])
>>> round(sigmoid_focal_loss(z, y, gamma=0.0).item(), 4)
0.6931
"""

from dbloss.labels import check_ignore_index
from dbloss.losses._common import REDUCTIONS, Reduction, check_hparams, check_reduction, validate_class_freq
from dbloss.losses.baselines import (
    asymmetric_loss,
    class_balanced_weight,
    inverse_frequency_weight,
    ldam_loss,
    ldam_margin,
    sigmoid_focal_loss,
)
from dbloss.losses.reference import (
    BACKENDS,
    Backend,
    DBParams,
    check_backend,
    distribution_balanced_loss,
    negative_tolerant_bias,
    rebalance_map,
    rebalance_ratio,
    rebalance_weight,
)

__all__ = [
    "BACKENDS",
    "REDUCTIONS",
    "Backend",
    "DBParams",
    "Reduction",
    "asymmetric_loss",
    "check_backend",
    "check_hparams",
    "check_ignore_index",
    "check_reduction",
    "class_balanced_weight",
    "distribution_balanced_loss",
    "inverse_frequency_weight",
    "ldam_loss",
    "ldam_margin",
    "negative_tolerant_bias",
    "rebalance_map",
    "rebalance_ratio",
    "rebalance_weight",
    "sigmoid_focal_loss",
    "validate_class_freq",
]
