"""Devices and data loaders of a run: the device of this rank, autocast and inputs, the evaluation
and training loaders (the training sampler from the recipe, then the method's ``train_data``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler

from dbloss.config import TrainConfig
from dbloss.data.features import collate_features
from dbloss.data.pipeline import DataBundle
from dbloss.devices import autocast, to_input
from dbloss.devices import resolve_device as device_for_rank
from dbloss.distributed import DistEnv
from dbloss.errors import UsageError
from dbloss.methods import Method
from dbloss.sampling import ClassAwareSampler
from dbloss.training.schedule import lr_step_epochs, schedule_warnings

__all__ = ["make_loader", "num_workers", "progress_batches", "resolve_device", "run_autocast", "run_inputs",
           "train_loader", "train_sampler"]

log = logging.getLogger("dbloss.training.engine")  # the run's log, as the loop's


def resolve_device(device: str, env: DistEnv) -> torch.device:
    """``run.device`` for this rank (``"auto"``: its CUDA device when there is one, else the CPU)."""
    return device_for_rank(device, env.local_rank)


def num_workers(cfg: TrainConfig, device: torch.device) -> int:
    if cfg.data.workers >= 0:
        return cfg.data.workers
    cpus = os.cpu_count() or 1
    return max(0, min(8 if device.type == "cuda" else 2, cpus - 1))


def run_autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    return autocast(cfg.run.amp, device)


def run_inputs(x: torch.Tensor, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """A batch of inputs on ``device`` (images channels-last on CUDA when the recipe asks)."""
    return to_input(x, device, cfg.run.channels_last)


def make_loader(ds: Any, batch_size: int, sampler: Any, cfg: TrainConfig, device: torch.device,
                generator: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
    workers = num_workers(cfg, device)
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else device.type == "cuda"
    # collate_features: a feature dataset's batch as fetched in one go (FeatureDataset.__getitems__), without
    # default_collate's second copy; any other batch goes to default_collate
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      persistent_workers=cfg.data.persistent_workers and workers > 0, drop_last=drop_last,
                      generator=generator, collate_fn=collate_features)


def train_loader(cfg: TrainConfig, method: Method, data: DataBundle, env: DistEnv,
                  device: torch.device) -> tuple[Any, torch.Generator, DataLoader]:
    """The training sampler (``set_epoch`` it), the loader's generator (seed it) and the loader."""
    if cfg.optim.batch_size % env.world_size:
        raise UsageError(f"optim.batch_size={cfg.optim.batch_size} must be divisible by the number of ranks "
                         f"({env.world_size})")
    per_rank = cfg.optim.batch_size // env.world_size
    sampler = train_sampler(cfg, data, env)
    dataset = data.train
    sampler, dataset = method.train_data(sampler, dataset, cfg, data.train_labels, num_replicas=env.world_size,
                                         rank=env.rank)  # e.g. BBN's pairs of samplers
    generator = torch.Generator()
    per_epoch = len(sampler)  # samples this rank draws per epoch
    # a last batch of one sample breaks batch norm in training mode: drop it (it is 1 of the epoch's samples)
    drop_last = per_epoch % per_rank == 1 and per_epoch > 1
    loader = make_loader(dataset, per_rank, sampler, cfg, device, generator=generator, drop_last=drop_last)
    if env.is_main:
        for message in schedule_warnings(cfg, len(data.train), len(loader), per_epoch * env.world_size):
            log.warning("%s", message)
        log.info("schedule: %d epochs of %d iterations (%d samples), lr %g decayed x%g at epochs %s, %d warm-up "
                 "iterations%s", cfg.schedule.epochs, len(loader), per_epoch * env.world_size, cfg.optim.lr,
                 cfg.schedule.lr_gamma, [e + 1 for e in lr_step_epochs(cfg)], cfg.schedule.warmup_iters,
                 "; the last sample of each epoch is dropped (a batch of one)" if drop_last else "")
    return sampler, generator, loader


def train_sampler(cfg: TrainConfig, data: DataBundle, env: DistEnv) -> Any:
    """The recipe's training sampler (``cfg.sampler.name``), this rank's part of it."""
    if cfg.sampler.name == "class-aware":  # sampler.epoch "data": an epoch as long as the training split
        length = len(data.train) if cfg.sampler.epoch == "data" else None
        return ClassAwareSampler(data.train_labels, num_samples_cls=cfg.sampler.num_samples_cls,
                                 reduce=cfg.sampler.reduce, seed=cfg.run.seed, num_replicas=env.world_size,
                                 rank=env.rank, epoch_length=length)
    return DistributedSampler(data.train, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                              seed=cfg.run.seed)


def progress_batches(loader: DataLoader, show: bool, desc: str) -> Iterator[Any]:
    if not show:
        return iter(loader)
    from tqdm import tqdm

    return iter(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True))
