"""Distributed helpers: the process group set up from ``torchrun``'s environment, and gathering.

``torchrun --nproc_per_node=G -m dbloss train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them (nanoGPT-style) and starts the process
group (NCCL on CUDA, gloo on CPU). Without them everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "gather_predictions", "barrier", "shutdown_distributed"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``; ``local_rank`` picks its GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Start the process group if ``torchrun`` launched us, else return a single-process env."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if env.world_size > 1 and not dist.is_initialized():
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return env


def shutdown_distributed() -> None:
    """Destroy the process group, if one was started (what a command does before it exits: a
    gloo group left to the interpreter's shutdown can abort the process after its work is done)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def gather_predictions(env: DistEnv, indices: torch.Tensor, scores: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Collect every rank's (indices (n,), scores (n, C)) into one (num_samples, C) tensor on CPU.

    Ranks may have evaluated padding duplicates (a distributed sampler repeats samples to make
    the shards equally long); each index is kept once. Raises if an index is missing.
    """
    if env.distributed:
        parts: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * env.world_size
        dist.all_gather_object(parts, (indices.cpu(), scores.cpu()))
        indices = torch.cat([p[0] for p in parts if p is not None])
        scores = torch.cat([p[1] for p in parts if p is not None])
    out = torch.full((num_samples, scores.shape[1]), float("nan"), dtype=scores.dtype)
    out[indices.cpu()] = scores.cpu()
    seen = torch.zeros(num_samples, dtype=torch.bool)
    seen[indices.cpu()] = True
    if not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten()[:5].tolist()
        raise RuntimeError(f"evaluation is missing predictions for {int((~seen).sum())} samples, e.g. {missing}")
    return out
