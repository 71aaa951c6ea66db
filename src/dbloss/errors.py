"""The project's error types: what the ``dbloss`` command reports as ``error: ...`` (exit code 2).

:class:`UsageError` is bad input (a recipe, an override, a file, a run folder); being a
``ValueError`` it is caught wherever a ``ValueError`` is. Anything else that escapes a command
(``TypeError``, ``KeyError``, ...) is a bug and surfaces as a traceback.
"""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "UsageError"]


class UsageError(ValueError):
    """Bad input from the user: the message names the setting, file or flag and what was expected."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""
