"""Devices and numerics of a step: the device a run uses, autocast, inputs on the device.

Pure helpers shared by the training loop and the methods' step losses (:mod:`dbloss.methods`).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "resolve_device", "to_input"]


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this rank's CUDA device when there is one, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for ``amp`` in {"none", "bf16", "fp16"} on ``device``'s type."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_input(x: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """A batch of inputs on ``device``: (B, ...) tensors; images (B, 3, H, W) channels-last on CUDA
    when ``channels_last``."""
    x = x.to(device, non_blocking=True)
    if x.ndim == 4 and channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x
