"""The paper's analyses (Wu et al., ECCV 2020, arXiv 2007.09654), each as numbers + a figure.

* :mod:`~dbloss.apps.analysis.gradients`: gradient of CE, BCE and negative-tolerant BCE with respect
  to a negative logit (over-suppression vs tolerance).
* :mod:`~dbloss.apps.analysis.resampling`: per-class sampling frequency under uniform and
  class-aware sampling, measured by drawing from :class:`dbloss.sampling.ClassAwareSampler`,
  and the over-sampling of co-occurring head classes.
* :mod:`~dbloss.apps.analysis.weights`: the re-balancing ratio r and weight r_hat per class.

Each has a ``run_*_analysis(..., out_dir)`` that writes ``<name>.png`` and ``<name>.json``.
"""

from dbloss.apps.analysis.gradients import GradientCurves, gradient_curves, gradient_figure, run_gradient_analysis
from dbloss.apps.analysis.resampling import (
    ResamplingAnalysis,
    resampling_analysis,
    resampling_figure,
    run_resampling_analysis,
)
from dbloss.apps.analysis.weights import WeightAnalysis, run_weight_analysis, weight_analysis, weight_figure

__all__ = [
    "GradientCurves",
    "ResamplingAnalysis",
    "WeightAnalysis",
    "gradient_curves",
    "gradient_figure",
    "resampling_analysis",
    "resampling_figure",
    "run_gradient_analysis",
    "run_resampling_analysis",
    "run_weight_analysis",
    "weight_analysis",
    "weight_figure",
]
