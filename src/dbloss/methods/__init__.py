"""Methods as plug-ins: one module per method, found by name in :data:`METHODS`.

A method implements the hooks of :class:`dbloss.methods.base.Method` (the network, the batches,
the loss of a step, its stages) and declares its options as a dataclass (``Options``), which is
the recipe's ``method`` section besides ``name``. The training loop calls only the hooks.
Adding a method: a module with a ``Method`` subclass, one line in :data:`METHODS`, a recipe.
"""

from __future__ import annotations

from dbloss.methods.base import Method, NoOptions, Stage, StageContext
from dbloss.methods.bbn import BBN
from dbloss.methods.decoupling import Decoupling
from dbloss.methods.ml_gcn import MLGCN
from dbloss.methods.oltr import OLTR
from dbloss.methods.plain import Plain

__all__ = ["METHODS", "Method", "NoOptions", "Stage", "StageContext", "create_method", "method_options"]

#: The methods by name (``method.name`` in a recipe): a plain dict, as timm's ``create_*`` functions keep theirs.
METHODS: dict[str, type[Method]] = {
    "plain": Plain,
    "ml-gcn": MLGCN,
    "oltr": OLTR,
    "bbn": BBN,
    "decoupling": Decoupling,
}


def method_options(name: str) -> type:
    """The options dataclass of method ``name``."""
    if name not in METHODS:
        raise ValueError(f"Expected a method among {tuple(METHODS)}, but got {name!r}")
    return METHODS[name].Options


def create_method(method: object) -> Method:
    """The method of a configuration's ``method`` section (``.name``, ``.options``).

    >>> create_method(type("M", (), {"name": "bbn", "options": None})()).name
    'bbn'
    """
    name = getattr(method, "name")
    if name not in METHODS:
        raise ValueError(f"Expected `method.name` to be one of {tuple(METHODS)}, but got {name!r}")
    return METHODS[name](getattr(method, "options", None))
