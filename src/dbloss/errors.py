"""The project's error types: what the ``dbloss`` command reports as ``error: ...`` (exit code 2).

:class:`UsageError` is bad input (a recipe, an override, a file, a run folder); being a
``ValueError`` it is caught wherever a ``ValueError`` is. Anything else that escapes a command
(``TypeError``, ``KeyError``, ...) is a bug and surfaces as a traceback.
"""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "TrainingCollapsedError", "TrainingFailedError", "UsageError"]


class UsageError(ValueError):
    """Bad input from the user: the message names the setting, file or flag and what was expected."""


class TrainingFailedError(RuntimeError):
    """A run that cannot give a useful model (:mod:`dbloss.training.health`): the message names what went
    wrong, the likely cause and the fix; the CLI reports it as ``error: ...`` (exit code 2)."""


class NonFiniteLossError(TrainingFailedError):
    """The loss became NaN or infinite; the message names the iteration, the last good checkpoint and the fix."""


class TrainingCollapsedError(TrainingFailedError):
    """The model's outputs collapsed to one constant (``health=stop``); the message names the fix."""
