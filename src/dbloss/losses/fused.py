"""The fused CPU kernel of the DB loss family (``csrc/db_focal.cpp``), built on first use.

One kernel call checks the labels, computes the re-balanced weight, the NTR shift and scale and
the focal BCE, reduces the loss and writes the gradient, so the backward pass is one multiply.
It is compiled with :func:`torch.utils.cpp_extension.load` for this machine's vector ISA (the
one torch itself dispatches to) the first time it is needed, and cached in
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) under
``py<X.Y>_torch<version>/`` (:func:`build_directory`), where torch rebuilds it when the source
or flags change (concurrent processes wait on torch's advisory file lock, which a killed
build does not leave held); the build needs a C++ compiler and takes 10-30 s. Call
:func:`build` (or run ``dbloss kernel``, which also checks it against the torch path) to build
it ahead of time, e.g. before ``torchrun`` starts many processes.

:func:`available` tells whether the kernel can be used; when the build fails (no compiler, say)
the DB losses fall back to the pure-torch path with a one-time warning
(:func:`dbloss.losses.fast.select_backend` decides). The kernel computes the equations of
:mod:`dbloss.losses.reference` (tests compare the two in value and gradient); it runs on the CPU
for float32/float64 and has a first derivative only (double backward raises).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

__all__ = ["KernelBuildError", "available", "build", "build_directory", "db_focal", "kernel_directory"]

_SOURCE = Path(__file__).with_name("csrc") / "db_focal.cpp"

# the flags torch's own CPU code (and inductor) use for each vector ISA torch dispatches to
_ISA_FLAGS = {
    "AVX512": (["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"], "AVX512"),
    "AVX2": (["-mavx2", "-mfma", "-mf16c"], "AVX2"),
}

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


class KernelBuildError(RuntimeError):
    """The fused kernel could not be compiled or loaded (the message says why)."""


def build_directory(name: str, default_root: str) -> Path:
    """Where the kernel is built and cached: ``$TORCH_EXTENSIONS_DIR`` (else torch's default root,
    ``~/.cache/torch_extensions``) / ``py<version>_torch<version>`` / ``name``, created if needed."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or default_root)
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
    path = root / tag / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """Put the ``ninja`` package's binary on PATH for the build when no ninja is found there
    (torch builds with ninja; the pip package ships one, but a venv's bin is on PATH only when active)."""
    if shutil.which("ninja"):
        yield
        return
    try:
        import ninja
    except ImportError:
        yield
        return
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _cpp_extension() -> Any:
    """``torch.utils.cpp_extension``, imported without its CUDA_HOME warning on CPU-only machines."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    except ImportError as exc:  # pragma: no cover - part of every torch build
        raise KernelBuildError(f"torch.utils.cpp_extension is unavailable: {exc}") from exc
    finally:
        log.setLevel(level)
    return cpp_extension


def _build_spec() -> tuple[str, str, list[str]]:
    """(extension name, torch's CPU capability, compiler flags) for this machine."""
    isa = torch.backends.cpu.get_cpu_capability()
    flags, macro = _ISA_FLAGS.get(isa, ([], ""))
    cflags = ["-O3", "-fopenmp-simd", *flags]
    if macro:
        cflags += [f"-DCPU_CAPABILITY={macro}", f"-DCPU_CAPABILITY_{macro}"]
    return f"dbloss_db_focal_{isa.lower()}", isa, cflags


def kernel_directory() -> Path:
    """The directory the kernel is (or will be) built and cached in, for this machine's ISA."""
    return build_directory(_build_spec()[0], _cpp_extension().get_default_build_root())


@functools.lru_cache(maxsize=None)
def _outcome(verbose: bool = False) -> Callable[..., Any] | KernelBuildError:
    """The registered op, or the error that prevented building it, cached for the process.

    lru_cache does not cache a raised exception, so the failure is returned, not raised: a
    machine without a compiler attempts the build once, not at every loss call.
    """
    try:
        return _build_and_load(verbose)
    except KernelBuildError as exc:
        return exc


def _load(verbose: bool = False) -> Callable[..., Any]:
    """The kernel's registered op; raise :class:`KernelBuildError` if it cannot be built."""
    op = _outcome(verbose)
    if isinstance(op, KernelBuildError):
        raise KernelBuildError(str(op))
    return op


def _build_and_load(verbose: bool) -> Callable[..., Any]:
    """Compile (or reuse the cached build of) the kernel and return the registered op."""
    if os.environ.get("DBLOSS_NO_KERNEL"):
        raise KernelBuildError("disabled by the DBLOSS_NO_KERNEL environment variable")
    cpp_extension = _cpp_extension()
    name, isa, cflags = _build_spec()
    try:
        t0 = time.perf_counter()
        build_dir = build_directory(name, cpp_extension.get_default_build_root())
        with _ninja_on_path():
            cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=cflags, is_python_module=False,
                               build_directory=str(build_dir), verbose=verbose)
        if verbose:
            print(f"dbloss: fused DB kernel ({isa}) ready in {time.perf_counter() - t0:.1f} s")
    except Exception as exc:  # compiler missing, build error, ...: the torch path still works
        raise KernelBuildError(f"could not build the fused DB kernel from {_SOURCE}: {exc}") from exc
    return torch.ops.dbloss.db_focal_loss


def build(verbose: bool = True) -> None:
    """Build the kernel now (cached by torch for later processes); raise :class:`KernelBuildError` on failure."""
    _load(verbose)


def available() -> bool:
    """True when the kernel is built (building it now if needed); warns once and returns False if it cannot be."""
    op = _outcome()
    if isinstance(op, KernelBuildError):
        _warn_once(str(op))
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(f"dbloss: {message}; using the pure-torch DB loss", RuntimeWarning, stacklevel=3)


def db_focal(z: torch.Tensor, y: torch.Tensor, inv_freq: torch.Tensor, bias: torch.Tensor | None, *,
             alpha: float, beta: float, mu: float, neg_scale: float, gamma: float, scale: float, rebalance: bool,
             ignore_index: int, reduction: str) -> torch.Tensor:
    """Run the kernel on prepared CPU inputs (see ``csrc/db_focal.cpp`` for the equations).

    Autograd is implemented in C++: the forward writes dL/dz (when ``z`` requires grad), the
    backward multiplies it by the incoming gradient; double backward raises.

    Args:
        z: (B, C) float32/float64 logits, contiguous.
        y: (B, C) labels of z's dtype, values in {0, 1, ignore_index}; any other value raises
            ``ValueError`` naming it and its (row, class).
        inv_freq: (C,) ``1 / n_k`` of z's dtype.
        bias: (C,) NTR bias of z's dtype, or None.

    Returns:
        The loss: 0-d, or (B, C) for ``reduction="none"``.
    """
    return _load()(z, y, inv_freq, bias, alpha, beta, mu, neg_scale, gamma, scale, rebalance, ignore_index,
                   REDUCTIONS[reduction])
