"""The optimiser and the schedule of a run: SGD or AdamW, linear warm-up, step decays at fractions of
training, and the warnings for settings that would silently weaken a run. Pure helpers of the
configuration (no data, no model).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dbloss.config import TrainConfig

__all__ = ["build_optimizer", "get_lr", "lr_step_epochs", "schedule_warnings"]


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW (decoupled weight decay), at ``cfg.optim.lr``;
    the schedule (:func:`get_lr`) sets each step's rate."""
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


def lr_step_epochs(cfg: TrainConfig) -> list[int]:
    """The epochs (0-based, the first epoch run at the decayed rate) of the step decays:
    ``lr_steps`` are fractions of ``cfg.schedule.epochs``, rounded half up, so that changing ``epochs``
    keeps the schedule's shape.

    >>> from dbloss.config import load_config
    >>> [lr_step_epochs(load_config(None, [f"schedule.epochs={n}"])) for n in (8, 16)]
    [[5, 7], [10, 14]]
    """
    return [int(math.floor(f * cfg.schedule.epochs + 0.5)) for f in cfg.schedule.lr_steps]


def get_lr(cfg: TrainConfig, it: int, epoch: int) -> float:
    """Learning rate at global iteration ``it`` in ``epoch`` (0-based): step decay by ``lr_gamma``
    at each epoch of :func:`lr_step_epochs`, times mmcv's linear warm-up factor over the first
    ``warmup_iters`` iterations, which rises from ``warmup_ratio`` to 1.

    >>> from dbloss.config import load_config
    >>> cfg = load_config(None, ["optim.lr=0.02", "schedule.warmup_iters=500", "schedule.epochs=8"])  # 5/8, 7/8
    >>> round(get_lr(cfg, 0, 0), 5), get_lr(cfg, 600, 1), round(get_lr(cfg, 9000, 7), 6)
    (0.00667, 0.02, 0.0002)
    """
    lr = cfg.optim.lr * cfg.schedule.lr_gamma ** sum(epoch >= s for s in lr_step_epochs(cfg))
    if it < cfg.schedule.warmup_iters:
        lr *= 1 - (1 - it / cfg.schedule.warmup_iters) * (1 - cfg.schedule.warmup_ratio)
    return lr


def _step_warnings(cfg: TrainConfig, steps: list[int]) -> list[str]:
    out, epochs = [], cfg.schedule.epochs
    for frac, ep in zip(cfg.schedule.lr_steps, steps):
        if ep >= epochs:
            out.append(f"lr step at {frac:g} of training falls at epoch {ep + 1} of {epochs}: it never happens "
                       f"(the whole run is at the full rate)")
        elif ep <= 0:
            out.append(f"lr step at {frac:g} of training falls at epoch 1 of {epochs}: the run never trains at "
                       f"the full rate")
    inside = [s for s in steps if 0 < s < epochs]
    if len(set(inside)) < len(inside):
        out.append(f"schedule.lr_steps {cfg.schedule.lr_steps} put two decays in the same epoch with "
                   f"schedule.epochs={epochs} ({steps})")
    return out


def _warmup_warnings(cfg: TrainConfig, steps: list[int], iters_per_epoch: int) -> list[str]:
    warmup, total = cfg.schedule.warmup_iters, iters_per_epoch * cfg.schedule.epochs
    if warmup and warmup >= total:
        return [f"schedule.warmup_iters={warmup} is longer than the run ({total} iterations): the learning rate "
                f"never reaches lr={cfg.optim.lr:g}"]
    first = min((s for s in steps if 0 < s < cfg.schedule.epochs), default=None)
    if first is not None and warmup > first * iters_per_epoch:
        return [f"schedule.warmup_iters={warmup} runs past the first lr step (epoch {first + 1}, iteration "
                f"{first * iters_per_epoch}): the rate decays before it has reached lr={cfg.optim.lr:g}"]
    return []


def schedule_warnings(cfg: TrainConfig, num_train: int, iters_per_epoch: int, samples_per_epoch: int) -> list[str]:
    """What in a run's settings would silently weaken it, each as a sentence naming the setting:
    a step decay that never happens or happens twice at once, a warm-up longer than the run or
    past the first decay, a batch larger than the data, a sampler epoch far from the data's size.

    Args:
        num_train: training samples; iters_per_epoch: optimiser steps per epoch (one rank);
        samples_per_epoch: samples one epoch draws (all ranks).
    """
    steps = lr_step_epochs(cfg)
    out = _step_warnings(cfg, steps) + _warmup_warnings(cfg, steps, iters_per_epoch)
    if cfg.optim.batch_size > num_train:
        out.append(f"optim.batch_size={cfg.optim.batch_size} is larger than the {num_train} training samples")
    if cfg.sampler.name == "class-aware" and cfg.sampler.epoch == "paper":
        ratio = samples_per_epoch / max(num_train, 1)
        if ratio > 16 or ratio < 0.25:
            out.append(f"a class-aware epoch draws {samples_per_epoch} samples, {ratio:.2g}x the {num_train} training "
                       f"samples (sampler.epoch=paper: max class count x classes / sampler.reduce="
                       f"{cfg.sampler.reduce}): every epoch-based setting (epochs, lr_steps) is stretched by that "
                       f"factor; sampler.epoch=data draws as many samples as the training split holds")
    return out
