"""Writing run files without half-written results, and reading checkpoints as data, never code.

* :func:`write_text` / :func:`write_json` / :func:`save_checkpoint` write to ``<name>.tmp`` beside
  the target and rename it over the target (atomic on POSIX): a killed process leaves the old
  file or the new one, never a torn one.
* :func:`jsonable` turns tensors, arrays and non-finite floats into strict JSON (NaN/inf -> null).
* :func:`load_checkpoint` reads a ``torch.save`` file with ``weights_only=True``: tensors and
  plain Python types only, so a file from elsewhere cannot run code while it is read. A file whose
  pickle asks for anything else is refused with a :class:`~dbloss.errors.UsageError` naming it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dbloss.errors import UsageError

__all__ = ["jsonable", "load_checkpoint", "save_checkpoint", "write_json", "write_text"]


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None and tensors/arrays as lists (strict JSON).

    >>> jsonable({"a": float("nan"), "b": np.arange(2), 3: (np.float32(0.5), torch.tensor([1.0]))})
    {'a': None, 'b': [0, 1], '3': [0.5, [1.0]]}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return jsonable(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _replace(path: Path, write: Any) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns the path."""
    return _replace(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> Path:
    """Write ``jsonable(obj)`` to ``path`` atomically as strict JSON (no NaN); returns the path."""
    return write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False))


def save_checkpoint(path: str | Path, state: Any) -> Path:
    """``torch.save(state)`` to ``path`` atomically. Keep ``state`` to tensors and plain types
    (dict, list, tuple, str, int, float, bool, None) so that :func:`load_checkpoint` reads it."""
    return _replace(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, kind: str = "checkpoint") -> Any:
    """Read a file written by ``torch.save`` with ``weights_only=True`` (tensors and plain types);
    ``kind`` names the file in messages ("checkpoint", "weights", ...).

    Raises:
        FileNotFoundError: no file at ``path``.
        UsageError: the file is not a readable ``torch.save`` file, or its pickle asks for
            more than tensors and plain types (it would run code when loaded); nothing of it ran.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise UsageError(f"{path}: refused to load: the file asks for {found.group(1)}, more than tensors and "
                             f"plain types, and reading it would run code from the file; it was read with "
                             f"weights_only=True and nothing of it ran") from None
        raise UsageError(f"{path}: not a readable {kind} file (not tensors and plain types written by torch.save; "
                         f"read with weights_only=True)") from None
    except (RuntimeError, EOFError, KeyError) as e:  # truncated, or not written by torch.save (KeyError: legacy format)
        raise UsageError(f"{path}: not a readable {kind} file ({type(e).__name__}: {e})") from None
