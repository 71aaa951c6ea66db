"""The training loop and evaluation (torchvision-references style, one readable file).

``train(cfg)`` builds data, model, loss, sampler and optimiser from a :class:`TrainConfig`,
trains with the paper's schedule (SGD, or AdamW as an option; linear warm-up, step decay,
gradient clipping), writes an atomic checkpoint every epoch, and evaluates at the end:
``metrics.json`` + ``metrics.md``.
Runs in one process or under ``torchrun`` (DistributedDataParallel; only rank 0 logs and saves).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from dbloss.config import TrainConfig, save_config
from dbloss.distributed import DistEnv, barrier, gather_predictions, init_distributed
from dbloss.losses import build_loss
from dbloss.metrics import f1_scores, mean_average_precision, summarize
from dbloss.model import build_model, is_pretrained, resolve_frozen_stages
from dbloss.pipeline import DataBundle, build_data
from dbloss.pretrain import BUILTIN_WEIGHTS, resolve_weights
from dbloss.sampling import ClassAwareSampler
from dbloss.stats import LabelStats

__all__ = ["NonFiniteLossError", "build_optimizer", "get_lr", "lr_step_epochs", "schedule_warnings", "train", "evaluate_checkpoint", "predict",
           "validation_scores"]

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW (decoupled weight decay), at ``cfg.lr``;
    the schedule (:func:`get_lr`) sets each step's rate."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_step_epochs(cfg: TrainConfig) -> list[int]:
    """The epochs (0-based, the first epoch run at the decayed rate) of the step decays:
    ``lr_steps`` are fractions of ``cfg.epochs``, rounded half up, so that changing ``epochs``
    keeps the schedule's shape.

    >>> from dbloss.config import TrainConfig
    >>> lr_step_epochs(TrainConfig(epochs=8)), lr_step_epochs(TrainConfig(epochs=16))
    ([5, 7], [10, 14])
    """
    return [int(math.floor(f * cfg.epochs + 0.5)) for f in cfg.lr_steps]


def get_lr(cfg: TrainConfig, it: int, epoch: int) -> float:
    """Learning rate at global iteration ``it`` in ``epoch`` (0-based): step decay by ``lr_gamma``
    at each epoch of :func:`lr_step_epochs`, times mmcv's linear warm-up factor over the first
    ``warmup_iters`` iterations, which rises from ``warmup_ratio`` to 1.

    >>> from dbloss.config import TrainConfig
    >>> cfg = TrainConfig(lr=0.02, warmup_iters=500, warmup_ratio=1/3, epochs=8)  # steps at 5/8, 7/8
    >>> round(get_lr(cfg, 0, 0), 5), get_lr(cfg, 600, 1), round(get_lr(cfg, 9000, 7), 6)
    (0.00667, 0.02, 0.0002)
    """
    lr = cfg.lr * cfg.lr_gamma ** sum(epoch >= s for s in lr_step_epochs(cfg))
    if it < cfg.warmup_iters:
        lr *= 1 - (1 - it / cfg.warmup_iters) * (1 - cfg.warmup_ratio)
    return lr


def schedule_warnings(cfg: TrainConfig, num_train: int, iters_per_epoch: int, samples_per_epoch: int) -> list[str]:
    """What in a run's settings would silently weaken it, each as a sentence naming the setting:
    a step decay that never happens or happens twice at once, a warm-up longer than the run or
    past the first decay, a batch larger than the data, a sampler epoch far from the data's size.

    Args:
        num_train: training samples; iters_per_epoch: optimiser steps per epoch (one rank);
        samples_per_epoch: samples one epoch draws (all ranks).
    """
    out = []
    steps = lr_step_epochs(cfg)
    for frac, ep in zip(cfg.lr_steps, steps):
        if ep >= cfg.epochs:
            out.append(f"lr step at {frac:g} of training falls at epoch {ep + 1} of {cfg.epochs}: it never happens "
                       f"(the whole run is at the full rate)")
        elif ep <= 0:
            out.append(f"lr step at {frac:g} of training falls at epoch 1 of {cfg.epochs}: the run never trains at "
                       f"the full rate")
    if len(set(s for s in steps if 0 < s < cfg.epochs)) < len([s for s in steps if 0 < s < cfg.epochs]):
        out.append(f"lr_steps {cfg.lr_steps} put two decays in the same epoch with epochs={cfg.epochs} ({steps})")
    total = iters_per_epoch * cfg.epochs
    if cfg.warmup_iters and cfg.warmup_iters >= total:
        out.append(f"warmup_iters={cfg.warmup_iters} is longer than the run ({total} iterations): the learning rate "
                   f"never reaches lr={cfg.lr:g}")
    else:
        first = min((s for s in steps if 0 < s < cfg.epochs), default=None)
        if first is not None and cfg.warmup_iters > first * iters_per_epoch:
            out.append(f"warmup_iters={cfg.warmup_iters} runs past the first lr step (epoch {first + 1}, iteration "
                       f"{first * iters_per_epoch}): the rate decays before it has reached lr={cfg.lr:g}")
    if cfg.batch_size > num_train:
        out.append(f"batch_size={cfg.batch_size} is larger than the {num_train} training samples")
    if cfg.sampler == "class-aware":
        ratio = samples_per_epoch / max(num_train, 1)
        if ratio > 16 or ratio < 0.25:
            out.append(f"a class-aware epoch draws {samples_per_epoch} samples, {ratio:.2g}x the {num_train} training "
                       f"samples (max class count x classes / sampler_reduce={cfg.sampler_reduce}): every "
                       f"epoch-based setting (epochs, lr_steps) is stretched by that factor; adjust `sampler_reduce`")
    return out


def resolve_device(device: str, env: DistEnv) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _num_workers(cfg: TrainConfig, device: torch.device) -> int:
    if cfg.workers >= 0:
        return cfg.workers
    cpus = os.cpu_count() or 1
    return max(0, min(8 if device.type == "cuda" else 2, cpus - 1))


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def _loader(ds: Any, batch_size: int, sampler: Any, cfg: TrainConfig, device: torch.device,
            generator: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
    workers = _num_workers(cfg, device)
    pin = cfg.pin_memory if cfg.pin_memory is not None else device.type == "cuda"
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      persistent_workers=cfg.persistent_workers and workers > 0, drop_last=drop_last,
                      generator=generator)


@torch.no_grad()
def predict(model: nn.Module, ds: Any, cfg: TrainConfig, device: torch.device, env: DistEnv) -> torch.Tensor:
    """Sigmoid scores (N, C) on CPU for every sample of ``ds``, gathered from all ranks."""
    sampler = DistributedSampler(ds, num_replicas=env.world_size, rank=env.rank, shuffle=False) \
        if env.distributed else None
    if env.distributed and len(ds) % env.world_size and env.is_main:
        log.warning("evaluation: %d samples do not split evenly over %d ranks; padding duplicates are removed",
                    len(ds), env.world_size)
    loader = _loader(ds, cfg.eval_batch_size, sampler, cfg, device)
    model.eval()
    idx_parts, score_parts = [], []
    for x, _, idx in loader:
        x = x.to(device, non_blocking=True)
        if x.ndim == 4 and cfg.channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(cfg, device):
            logits = model(x)
        score_parts.append(torch.sigmoid(logits.float()).cpu())
        idx_parts.append(torch.as_tensor(idx))
    indices = torch.cat(idx_parts) if idx_parts else torch.zeros(0, dtype=torch.long)
    scores = torch.cat(score_parts) if score_parts else torch.zeros(0, 0)
    return gather_predictions(env, indices, scores, len(ds))


def _targets(ds: Any) -> torch.Tensor:
    """(N, C) targets of a dataset built by :mod:`dbloss.pipeline`."""
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets)
    return torch.as_tensor(ds.table.labels)


def select_threshold(scores: torch.Tensor, targets: torch.Tensor, search: list[float]) -> float:
    """The global threshold in ``arange(low, high + step/2, step)`` maximising micro-F1."""
    low, high, step = search
    grid = np.round(np.arange(low, high + step / 2, step), 6)
    f1 = [f1_scores(scores, targets, threshold=float(t))["micro_f1"] for t in grid]
    return float(grid[int(np.argmax(f1))])


def validation_scores(model: nn.Module, data: DataBundle, cfg: TrainConfig, device: torch.device,
                      env: DistEnv) -> dict[str, float]:
    """Micro/macro-F1 on the validation split at the threshold the run will use (searched on it when
    ``threshold_search`` is set, else ``cfg.threshold``): what recipes and epochs are chosen on."""
    val_scores, val_targets = predict(model, data.val, cfg, device, env), _targets(data.val)
    threshold = cfg.threshold
    if cfg.threshold_search:
        threshold = select_threshold(val_scores, val_targets, cfg.threshold_search)
    f1 = f1_scores(val_scores, val_targets, threshold=threshold)
    with warnings.catch_warnings():  # a small hold-out may lack a rare class: its AP is left out (NaN)
        warnings.simplefilter("ignore")
        val_map = float(mean_average_precision(val_scores, val_targets)["total"])
    return {"micro_f1": float(f1["micro_f1"]), "macro_f1": float(f1["macro_f1"]), "mAP": val_map,
            "threshold": threshold}


def _evaluate(model: nn.Module, data: DataBundle, stats: LabelStats, cfg: TrainConfig, device: torch.device,
              env: DistEnv, val: dict[str, float] | None = None) -> dict[str, Any]:
    """Test the model; ``val`` is its :func:`validation_scores` when already computed (keep_best)."""
    threshold = cfg.threshold
    if val is None and data.val is not None:
        val = validation_scores(model, data, cfg, device, env)
    if val is not None:
        threshold = val["threshold"]
    scores = predict(model, data.test, cfg, device, env)
    targets = _targets(data.test)
    res = summarize(scores, targets, stats.split, threshold=threshold, class_names=stats.class_names)
    per_class_f1 = f1_scores(scores, targets, threshold=threshold)["per_class_f1"].double()
    res["per_class_f1"] = [None if math.isnan(v) else v for v in per_class_f1.tolist()]
    res["macro_f1_groups"] = {g: _nanmean_or_none(per_class_f1[idx]) for g, idx in stats.split.items()}
    res["_scores"], res["_targets"] = scores, targets  # written to predictions.npz by rank 0, not to JSON
    res.update(name=cfg.name, loss=cfg.loss, sampler=cfg.sampler, dataset=cfg.dataset, class_names=stats.class_names,
               train_class_freq=stats.class_freq.tolist(), split=stats.split, epochs=cfg.epochs, seed=cfg.seed,
               num_train=int(stats.num_samples), num_test=len(data.test))
    if val is not None:
        res["val"] = val
    return res


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None and tensors/arrays as lists (strict JSON)."""
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


def _nanmean_or_none(values: torch.Tensor) -> float | None:
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else None


def _write_metrics(out: Path, res: dict[str, Any]) -> None:
    """Write ``metrics.json``, ``metrics.md`` and ``predictions.npz`` (test scores and targets);
    the in-memory predictions are popped from ``res``."""
    scores, targets = res.pop("_scores"), res.pop("_targets")
    np.savez_compressed(out / "predictions.npz", scores=scores.numpy(), targets=targets.numpy())
    _atomic_write_text(out / "metrics.json", json.dumps(jsonable(res), indent=1, allow_nan=False))
    from dbloss.report import results_table

    _atomic_write_text(out / "metrics.md", results_table([jsonable(res)]) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _JsonLog:
    """Append-only JSON-lines log (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, **record: Any) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _batches(loader: DataLoader, show: bool, desc: str) -> Iterator[Any]:
    if not show:
        return iter(loader)
    from tqdm import tqdm

    return iter(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True))


def train(cfg: TrainConfig, *, resume: bool | str = False, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate a recipe; returns the final metrics (as written to ``metrics.json``).

    Args:
        cfg: the resolved recipe.
        resume: ``True`` continues from ``out_dir/checkpoint.pt``; a path continues from that file.
        progress: show a per-iteration progress bar (rank 0 only).
    """
    env = init_distributed(cfg.device)
    device = resolve_device(cfg.device, env)
    out = Path(cfg.out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)  # the entry point of a run seeds once; library parts use their own generators

    data = build_data(cfg)
    stats = LabelStats.from_labels(data.train_labels, data.class_names, head_min=cfg.head_min, tail_max=cfg.tail_max)
    if env.is_main:
        stats.save(out / "label_stats.json")
    weights = cfg.weights
    if weights == BUILTIN_WEIGHTS and data.input_type == "image":  # made once (by rank 0), then cached
        if env.is_main:
            with torch.random.fork_rng(devices=[]):  # pretraining here or not: the same initial model
                weights = resolve_weights(weights, cfg.backbone, cfg.image_size, cfg.data_root, progress=progress)
        barrier(env)
        if not env.is_main:  # the other ranks read the cached file that rank 0 made
            weights = resolve_weights(weights, cfg.backbone, cfg.image_size, cfg.data_root, progress=False)
    model = build_model(len(data.class_names), input_type=data.input_type, backbone=cfg.backbone,
                        weights=weights, frozen_stages=cfg.frozen_stages, neck_dim=cfg.neck_dim,
                        dropout=cfg.dropout, in_features=data.in_features).to(device)
    if env.is_main and data.input_type == "image":
        n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        origin = f"weights={cfg.weights}" if is_pretrained(cfg.weights) else "from scratch (weights=none)"
        log.info("model: %s, %s; frozen stages: %d (%d of %d parameters frozen)", cfg.backbone, origin,
                 resolve_frozen_stages(cfg.frozen_stages, cfg.weights), n_frozen, n_all)
    if device.type == "cuda" and cfg.channels_last and data.input_type == "image":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, torch.as_tensor(stats.class_freq), stats.num_samples, **cfg.loss_args).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    start_epoch, it = 0, 0
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    best: dict[str, Any] = {"epoch": 0, "micro_f1": -1.0}  # keep_best: the best validated epoch so far
    if resume:
        src = ckpt_path if resume is True else Path(str(resume))
        if not src.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {src}")
        ckpt = torch.load(src, map_location=device, weights_only=False)
        saved_cfg = {"optimizer": "sgd", **ckpt["config"]}  # checkpoints from before the option used SGD
        for key in ("loss", "dataset", "sampler", "seed", "batch_size", "optimizer"):
            if saved_cfg.get(key) != getattr(cfg, key):
                raise ValueError(f"--resume: checkpoint {src} was trained with {key}={saved_cfg.get(key)!r}, "
                                 f"but this run has {key}={getattr(cfg, key)!r}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, it = ckpt["epoch"], ckpt["iteration"]
        best = ckpt.get("best", best)
        _set_rng_state(ckpt["rng"], device)
        if env.is_main:
            log.info("resumed from %s at epoch %d (iteration %d)", src, start_epoch, it)

    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    if cfg.batch_size % env.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of ranks ({env.world_size})")
    per_rank = cfg.batch_size // env.world_size
    if cfg.sampler == "class-aware":
        sampler: Any = ClassAwareSampler(data.train_labels, num_samples_cls=cfg.num_samples_cls,
                                         reduce=cfg.sampler_reduce, seed=cfg.seed, num_replicas=env.world_size,
                                         rank=env.rank)
    else:
        sampler = DistributedSampler(data.train, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=cfg.seed)
    loader_gen = torch.Generator()
    per_epoch = len(sampler)  # samples this rank draws per epoch
    # a last batch of one sample breaks batch norm in training mode: drop it (it is 1 of the epoch's samples)
    drop_last = per_epoch % per_rank == 1 and per_epoch > 1
    loader = _loader(data.train, per_rank, sampler, cfg, device, generator=loader_gen, drop_last=drop_last)
    if env.is_main:
        for message in schedule_warnings(cfg, len(data.train), len(loader), per_epoch * env.world_size):
            log.warning("%s", message)
        log.info("schedule: %d epochs of %d iterations (%d samples), lr %g decayed x%g at epochs %s, %d warm-up "
                 "iterations%s", cfg.epochs, len(loader), per_epoch * env.world_size, cfg.lr, cfg.lr_gamma,
                 [e + 1 for e in lr_step_epochs(cfg)], cfg.warmup_iters,
                 "; the last sample of each epoch is dropped (a batch of one)" if drop_last else "")

    writer = None
    if env.is_main and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    jlog = _JsonLog(out / "log.jsonl" if env.is_main else None)
    show = progress and env.is_main

    last_epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience and best["epoch"] and epoch - best["epoch"] >= cfg.patience:
            break  # resumed after an early stop
        last_epoch = epoch + 1
        sampler.set_epoch(epoch)
        loader_gen.manual_seed(cfg.seed + epoch)  # worker seeds for this epoch
        net.train()
        t0, loss_sum, n_it = time.perf_counter(), 0.0, 0
        bar = _batches(loader, show, f"epoch {epoch + 1}/{cfg.epochs}")
        for x, y, _ in bar:
            lr = get_lr(cfg, it, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if x.ndim == 4 and device.type == "cuda" and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(cfg, device):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            value = loss.detach()
            if env.distributed:
                torch.distributed.all_reduce(value)
                value /= env.world_size
            value_f = float(value)
            if not math.isfinite(value_f):
                last = str(ckpt_path) if ckpt_path.is_file() else "none (no epoch has finished yet)"
                raise NonFiniteLossError(f"non-finite loss ({value_f}) at epoch {epoch + 1}, iteration {it} "
                                         f"(global); last good checkpoint: {last}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum, n_it = loss_sum + value_f, n_it + 1
            if show and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{value_f:.4f}", lr=f"{lr:.2e}")  # type: ignore[attr-defined]
            if it % cfg.log_interval == 0:
                jlog.write(type="iter", epoch=epoch + 1, iteration=it, loss=value_f, lr=lr)
                if writer is not None:
                    writer.add_scalar("train/loss", value_f, it)
                    writer.add_scalar("train/lr", lr, it)
            it += 1
        summary = {"type": "epoch", "epoch": epoch + 1, "iterations": n_it, "loss": loss_sum / max(n_it, 1),
                   "seconds": round(time.perf_counter() - t0, 2)}
        jlog.write(**summary)
        if env.is_main:
            log.info("epoch %d/%d: loss %.4f (%d iterations, %.1f s)", epoch + 1, cfg.epochs, summary["loss"], n_it,
                     summary["seconds"])
        if cfg.keep_best:
            val = validation_scores(model, data, cfg, device, env)
            jlog.write(type="val", epoch=epoch + 1, **val)
            if val["micro_f1"] > best["micro_f1"]:  # ties keep the earlier epoch
                best = {"epoch": epoch + 1, **val}
                if env.is_main:  # evaluate_checkpoint reads this file as it reads checkpoint.pt
                    save_checkpoint(best_path, {"model": model.state_dict(), "epoch": epoch + 1, "val": val,
                                                "config": cfg.to_dict(), "label_stats": stats.to_dict()})
            if env.is_main:
                log.info("epoch %d/%d: validation micro-F1 %.4f (best: epoch %d, %.4f)", epoch + 1, cfg.epochs,
                         val["micro_f1"], best["epoch"], best["micro_f1"])
        if env.is_main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "iteration": it, "rng": _rng_state(device), "config": cfg.to_dict(),
                "label_stats": stats.to_dict(), "best": best,
            })
        barrier(env)
        if cfg.patience and epoch + 1 - best["epoch"] >= cfg.patience:  # every rank sees the same val scores
            if env.is_main:
                log.info("early stop after epoch %d: no better validation micro-F1 for %d epochs (best: epoch %d)",
                         epoch + 1, cfg.patience, best["epoch"])
            jlog.write(type="early_stop", epoch=epoch + 1, best_epoch=best["epoch"])
            break

    best_val = None
    if cfg.keep_best and best["epoch"] > 0:  # test the best validated epoch, not the last one
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=False)["model"])
        best_val = {k: best[k] for k in ("micro_f1", "macro_f1", "mAP", "threshold") if k in best}  # its scores: no second val pass
        if env.is_main:
            log.info("testing epoch %d, the best on validation (micro-F1 %.4f)", best["epoch"], best["micro_f1"])

    res = _evaluate(model, data, stats, cfg, device, env, val=best_val)
    if cfg.keep_best:
        res["best_epoch"] = best["epoch"]
        res["epochs_run"] = last_epoch
    if env.is_main:
        _write_metrics(out, res)
        jlog.write(type="eval", **{k: res[k] for k in ("mAP", "micro_f1", "macro_f1", "threshold")})
        if writer is not None:
            for k, v in res["mAP"].items():
                writer.add_scalar(f"test/mAP_{k}", v, it)
            writer.close()
    res.pop("_scores", None), res.pop("_targets", None)
    return res


def evaluate_checkpoint(checkpoint: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a saved checkpoint on the test set of its recipe (or of ``overrides``, e.g. another
    dataset with the same classes); writes ``metrics.json`` / ``metrics.md`` into ``out_dir``."""
    from dbloss.config import load_config

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = load_config(None, list(overrides or []), base=ckpt["config"])
    cfg.out_dir = str(out_dir)
    env = init_distributed(cfg.device)
    device = resolve_device(cfg.device, env)
    stats = LabelStats.from_dict(ckpt["label_stats"])
    data = build_data(cfg)
    if data.class_names != stats.class_names:
        raise ValueError(f"the evaluation data's classes {data.class_names[:5]}... differ from the checkpoint's "
                         f"{stats.class_names[:5]}...")
    model = build_model(len(data.class_names), input_type=data.input_type, backbone=cfg.backbone, weights=None,
                        frozen_stages=0, neck_dim=cfg.neck_dim, dropout=cfg.dropout,  # no training: nothing to freeze
                        in_features=data.in_features).to(device)
    model.load_state_dict(ckpt["model"])
    res = _evaluate(model, data, stats, cfg, device, env)
    if env.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        _write_metrics(Path(out_dir), res)
    res.pop("_scores", None), res.pop("_targets", None)
    return res
