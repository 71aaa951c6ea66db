"""The plain multi-label classifier (``method: {name: plain}``, the default): backbone, neck and a
linear classifier trained in one stage on the recipe's sampler and loss. Every hook is the
protocol's default (:class:`dbloss.methods.base.Method`); the paper's comparison rows (ERM, RS,
the re-weighted and focal losses, DB-Focal) are all this method with another loss or sampler.
"""

from __future__ import annotations

from dbloss.methods.base import Method

__all__ = ["Plain"]


class Plain(Method):
    """The plain classifier: nothing changed."""

    name = "plain"
