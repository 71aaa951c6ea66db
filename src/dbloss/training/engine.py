"""The training loop and evaluation, in the shape of torchvision's classification reference.

* :func:`train` (the entry point, like the reference's ``main``): builds the run with
  :func:`build`, trains epoch after epoch with :func:`train_one_epoch` (the paper's schedule:
  SGD, or AdamW as an option; linear warm-up, step decay, gradient clipping), writes an atomic
  checkpoint every epoch and tests at the end: ``metrics.json``, ``metrics.md``, ``predictions.npz``.
  The recipe's method (:mod:`dbloss.methods`: plain, ML-GCN, OLTR, BBN, decoupling, ...) is reached
  only through its hooks: the network (``set_classifier``, ``wrap``), the training batches
  (``train_data``), the loss of a step (``step_loss``) and the stages (``stages``, ``enter_stage``):
  a method with a second stage runs the same loop over :func:`train_one_epoch` with the stage's
  configuration, in the same run folder; checkpoints name their stage, so ``--resume`` continues in it.
* :func:`evaluate_checkpoint` tests a saved checkpoint with the same :func:`build`;
  :func:`model_from_checkpoint` rebuilds a trained model for prediction and export.

Around it, one module per concern: :mod:`dbloss.training.schedule` (optimiser, warm-up, step
decays, their warnings), :mod:`dbloss.training.loaders` (devices, loaders, the training sampler),
:mod:`dbloss.training.evaluation` (scores, thresholds, the test record),
:mod:`dbloss.training.checkpoints` (run folders, resuming) and :mod:`dbloss.training.health`.

Runs in one process or under ``torchrun`` (DistributedDataParallel; only rank 0 logs and saves).
Checkpoints hold tensors and plain types only and are read with ``weights_only=True``
(:mod:`dbloss.files`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from dbloss.config import TrainConfig, load_config
from dbloss.data.pipeline import DataBundle, build_data, eval_view, prepare_data
from dbloss.distributed import DistEnv, barrier, init_distributed
from dbloss.errors import NonFiniteLossError, TrainingCollapsedError, UsageError
from dbloss.files import load_checkpoint, save_checkpoint
from dbloss.losses import build_loss
from dbloss.methods import Method, Stage, StageContext, create_method
from dbloss.methods.base import trainable_parameters
from dbloss.models.classifier import build_model
from dbloss.models.pretrain import BUILTIN_WEIGHTS, resolve_weights
from dbloss.models.weights import is_pretrained, resolve_frozen_stages
from dbloss.stats import LabelStats
from dbloss.training.checkpoints import (RUN_FILES, check_run_dir, read_checkpoint, read_resume, resume_source,
                                         rng_state, start_run_dir, store_thresholds)
from dbloss.training.evaluation import dataset_targets, test_model, validation_scores, write_results
from dbloss.training.health import chance_map, chance_message, collapse_message, non_finite_advice, stalled_loss_message
from dbloss.training.loaders import (make_loader, progress_batches, resolve_device, run_autocast, run_inputs,
                                     train_loader)
from dbloss.training.schedule import build_optimizer, get_lr

__all__ = ["NonFiniteLossError", "RUN_FILES", "build", "build_network", "evaluate_checkpoint", "model_from_checkpoint",
           "prior_bias_", "train", "train_one_epoch"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The builder shared by train and evaluate_checkpoint
# ---------------------------------------------------------------------------------------------

def _initial_weights(cfg: TrainConfig, data: DataBundle, env: DistEnv, progress: bool) -> str | None:
    """``cfg.model.weights``, with the built-in pretrained backbone made once (by rank 0) and cached."""
    weights = cfg.model.weights
    if weights == BUILTIN_WEIGHTS and data.input_type == "image":
        if env.is_main:
            with torch.random.fork_rng(devices=[]):  # pretraining here or not: the same initial model
                weights = resolve_weights(weights, cfg.model.backbone, cfg.data.image_size, cfg.data.root,
                                          progress=progress)
        barrier(env)
        if not env.is_main:  # the other ranks read the cached file that rank 0 made
            weights = resolve_weights(weights, cfg.model.backbone, cfg.data.image_size, cfg.data.root, progress=False)
    return weights


def build(cfg: TrainConfig, device: torch.device, env: DistEnv, *, label_stats: dict[str, Any] | None = None,
          progress: bool = True) -> tuple[DataBundle, LabelStats, nn.Module]:
    """The data, label statistics and model of a recipe, the model on ``device``.

    Training (``label_stats`` None): statistics counted on the training split, the recipe's
    initial weights and frozen stages. Evaluation (``label_stats`` from a checkpoint): those
    statistics (the data must have their classes), and a model that will receive the
    checkpoint's weights, with nothing frozen.
    """
    data = build_data(cfg)
    if label_stats is None:
        stats = LabelStats.from_labels(data.train_labels, data.class_names, head_min=cfg.eval.head_min,
                                       tail_max=cfg.eval.tail_max)
        weights, frozen = _initial_weights(cfg, data, env, progress), cfg.model.frozen_stages
    else:
        stats = LabelStats.from_dict(label_stats)
        if data.class_names != stats.class_names:
            raise UsageError(f"the evaluation data's classes {data.class_names[:5]}... differ from the checkpoint's "
                             f"{stats.class_names[:5]}...")
        weights, frozen = None, 0
    model = build_network(cfg, len(data.class_names), device, input_type=data.input_type,
                          in_features=data.in_features, weights=weights, frozen_stages=frozen, stats=stats)
    return data, stats, model


def build_network(cfg: TrainConfig, num_classes: int, device: torch.device, *, input_type: str = "image",
                  in_features: int | None = None, weights: str | None = None,
                  frozen_stages: int | None = 0, stats: LabelStats | None = None) -> nn.Module:
    """The model of a recipe on ``device``: the one builder behind :func:`build` (train, evaluate)
    and :func:`model_from_checkpoint` (predict, export). Defaults: no initial weights, nothing
    frozen (a model that will receive a checkpoint's weights). ``stats``: the training labels'
    statistics (ML-GCN builds its label graph from them)."""
    model = build_model(num_classes, input_type=input_type,  # type: ignore[arg-type]
                        backbone=cfg.model.backbone, weights=weights, frozen_stages=frozen_stages,
                        neck_dim=cfg.model.neck_dim, dropout=cfg.model.dropout, in_features=in_features)
    method = create_method(cfg.method)
    method.set_classifier(model, cfg, stats)
    _init_bias(model, cfg, stats)
    model = method.wrap(model, cfg)
    model = model.to(device)
    if device.type == "cuda" and cfg.run.channels_last and input_type == "image":
        model = model.to(memory_format=torch.channels_last)
    return model


def _init_bias(model: nn.Module, cfg: TrainConfig, stats: LabelStats | None) -> None:
    """``model.bias_init``: the classifier's initial bias (``prior``: :func:`prior_bias_`)."""
    if cfg.model.bias_init == "prior":
        if not isinstance(model.classifier, nn.Linear) or model.classifier.bias is None:
            raise UsageError(f"model.bias_init=prior sets a linear classifier's bias, but method "
                             f"{cfg.method.name!r} has none")
        if stats is not None:  # (a model that will receive a checkpoint's weights needs no initial bias)
            prior_bias_(model.classifier.bias, stats.class_freq, stats.num_samples)


def prior_bias_(bias: torch.Tensor, class_freq: Any, num_samples: int) -> torch.Tensor:
    """Set a classifier's bias (C,) in place to the log-odds of each class's training prior,
    ``b_k = log(p_k / (1 - p_k))``, ``p_k = n_k / N`` (clamped to [1/(2N), 1 - 1/(2N)]): every logit
    starts at its class's base rate, as the prior initialisation of Lin et al.'s focal loss (ICCV 2017),
    instead of at about 0 (a prior of 1/2). With hundreds of rare classes a zero bias makes the first
    epochs spend the weights on pushing every score down; on the built-in 500-class features a linear
    head's test mAP rose from 41.5 to 54.8 with it (BENCHMARKS.md). Reads no random state.

    >>> b = prior_bias_(torch.zeros(2), [50, 1], 100); [round(v, 3) for v in b.tolist()]
    [0.0, -4.595]
    """
    n = float(num_samples)
    p = (torch.as_tensor(class_freq, dtype=torch.float64) / n).clamp(0.5 / n, 1 - 0.5 / n)
    with torch.no_grad():
        bias.copy_(torch.log(p / (1 - p)).to(bias.dtype))
    return bias


def _model_input(state: dict[str, torch.Tensor]) -> tuple[str, int | None]:
    """``(input_type, in_features)`` of a saved model's state dict: image models have a
    ``backbone`` with parameters; a feature head's first layer takes the features (the neck's, else
    the classifier's; a BBN's branches both start with one)."""
    if any(k.startswith("backbone.") for k in state):
        return "image", None
    first = next((state[k] for p in ("", "conventional.") for k in (f"{p}neck.fc.weight", f"{p}classifier.weight",
                                                                     f"{p}classifier.gc2") if k in state), None)
    if first is None or first.ndim != 2:
        raise UsageError("the checkpoint's model is neither an image model (no backbone) nor a feature head "
                         "(no neck.fc / classifier weight)")
    return "features", int(first.shape[1])


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu"
                          ) -> tuple[TrainConfig, LabelStats, nn.Module]:
    """A trained model rebuilt from a checkpoint's configuration and label statistics (no data is
    read; :func:`build_network`), its weights loaded, in eval mode on ``device``.

    Args:
        ckpt: a checkpoint written by :func:`train` (``checkpoint.pt`` / ``best.pt``), as read by
            :func:`dbloss.files.load_checkpoint`: ``model``, ``config`` and ``label_stats``.

    Returns:
        ``(cfg, stats, model)``.
    """
    cfg = load_config(None, [], base=ckpt["config"])
    stats = LabelStats.from_dict(ckpt["label_stats"])
    input_type, in_features = _model_input(ckpt["model"])
    model = build_network(cfg, len(stats.class_names), torch.device(device), input_type=input_type,
                          in_features=in_features, stats=stats)
    model.load_state_dict(ckpt["model"])
    return cfg, stats, model.eval()


def _build_loss(cfg: TrainConfig, stats: LabelStats) -> nn.Module:
    """The recipe's loss on the training split's class counts."""
    try:
        return build_loss(cfg.loss.name, torch.as_tensor(stats.class_freq), stats.num_samples, **cfg.loss.args)
    except TypeError as e:  # build_loss's documented error for an argument the loss does not take: the recipe's
        raise UsageError(f"loss_args: {e}") from e


def _log_model(model: nn.Module, cfg: TrainConfig) -> None:
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    origin = f"weights={cfg.model.weights}" if is_pretrained(cfg.model.weights) else "from scratch (weights=none)"
    log.info("model: %s, %s; frozen stages: %d (%d of %d parameters frozen)", cfg.model.backbone, origin,
             resolve_frozen_stages(cfg.model.frozen_stages, cfg.model.weights), n_frozen, n_all)


def _wrap(model: nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device) -> nn.Module:
    """What the training step calls: the model under DDP and/or ``torch.compile`` (saved: ``model``)."""
    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.run.compile else net


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

class _RunLog:
    """``log.jsonl`` (append-only JSON lines) and TensorBoard scalars; no-ops off rank 0."""

    def __init__(self, out: Path, env: DistEnv, tensorboard: bool) -> None:
        self.path = out / "log.jsonl" if env.is_main else None
        self.writer = None
        if env.is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))

    def write(self, **record: Any) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class _TrainState:
    """Where training stands: epochs done, the global iteration, the best validated epoch so far."""

    epoch: int = 0
    iteration: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "micro_f1": -1.0})
    stage: int = 1  # the stage the model is in (2: decoupling's classifier stage, dbloss.methods.decoupling)
    losses: list[float] = field(default_factory=list)  # this stage's epoch losses (this process's; training.health)
    health: dict[str, str] = field(default_factory=dict)  # what training.health found, by kind (each reported once)


#: Training samples whose scores the collapse check looks at after every epoch.
_PROBE_SAMPLES = 64


@torch.no_grad()
def _probe_scores(model: nn.Module, data: DataBundle, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """(P, C) sigmoid scores of P evenly spaced training samples (evaluation transform, the model in
    eval mode): what the collapse check reads. No loader and no random state is used, so a run
    with the check trains exactly as one without it."""
    ds = eval_view(data.train, cfg)
    n = min(_PROBE_SAMPLES, len(ds))
    xs = torch.stack([torch.as_tensor(ds[int(i)][0]) for i in torch.linspace(0, len(ds) - 1, n).round().long()])
    model.eval()
    with run_autocast(cfg, device):
        logits = model(run_inputs(xs, cfg, device))
    return torch.sigmoid(logits.float()).cpu()


def _report_health(kind: str, message: str, state: _TrainState, runlog: _RunLog, env: DistEnv) -> None:
    """Record a finding of :mod:`dbloss.training.health` (once per kind): a warning, ``log.jsonl``, ``metrics.json``."""
    if kind in state.health:
        return
    state.health[kind] = message
    runlog.write(type="health", kind=kind, epoch=state.epoch, message=message)
    if env.is_main:
        log.warning("%s", message)


def _check_health(model: nn.Module, data: DataBundle, cfg: TrainConfig, device: torch.device, env: DistEnv,
                  state: _TrainState, runlog: _RunLog, val: dict[str, Any] | None) -> None:
    """After an epoch (:mod:`dbloss.training.health`): a collapsed model stops the run (``health=stop``) or is
    warned about; a loss that does not fall and a validation mAP at chance are warned about."""
    if cfg.run.health == "off":
        return
    advice = {"lr": cfg.optim.lr, "optimizer": cfg.optim.name, "weight_decay": cfg.optim.weight_decay}
    collapsed = collapse_message(_probe_scores(model, data, cfg, device), epoch=state.epoch, **advice)
    if collapsed is not None:
        if cfg.run.health == "stop":
            runlog.write(type="health", kind="collapse", epoch=state.epoch, message=collapsed)
            raise TrainingCollapsedError(f"{collapsed} (run.health=warn goes on training instead)")
        _report_health("collapse", collapsed, state, runlog, env)
    stalled = stalled_loss_message(state.losses, **advice)
    if stalled is not None:
        _report_health("stalled_loss", stalled, state, runlog, env)
    if val is not None and len(state.losses) >= 2:
        _check_chance(val["mAP"], data, cfg, state, runlog, env)


def _check_chance(val_map: float, data: DataBundle, cfg: TrainConfig, state: _TrainState, runlog: _RunLog,
                  env: DistEnv) -> None:
    """Warn when the validation mAP is at chance level (:func:`dbloss.training.health.chance_message`)."""
    at_chance = chance_message(val_map, chance_map(dataset_targets(data.val)), epoch=state.epoch, lr=cfg.optim.lr,
                               optimizer=cfg.optim.name, weight_decay=cfg.optim.weight_decay)
    if at_chance is not None:
        _report_health("chance", at_chance, state, runlog, env)


def _raise_if_non_finite(first_bad: torch.Tensor, epoch: int, checkpoint: Path, cfg: TrainConfig) -> None:
    """``first_bad``: (iteration, loss) of the first non-finite loss, iteration -1 while there is none."""
    it, value = first_bad.tolist()  # a host synchronisation: called at the log interval and at the end of the epoch
    if it >= 0:
        last = str(checkpoint) if checkpoint.is_file() else "none (no epoch has finished yet)"
        raise NonFiniteLossError(f"non-finite loss ({value}) at epoch {epoch + 1}, iteration {int(it)} (global); "
                                 f"last good checkpoint: {last}; "
                                 f"{non_finite_advice(cfg.optim.lr, cfg.optim.name, cfg.optim.grad_clip)}")


def train_one_epoch(net: nn.Module, method: Method, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, loader: DataLoader, cfg: TrainConfig, device: torch.device,
                    env: DistEnv, epoch: int, it: int, runlog: _RunLog, *, checkpoint: Path,
                    show: bool = False) -> tuple[int, dict[str, Any]]:
    """One epoch of training from global iteration ``it``: returns the iteration after it and the
    epoch's record (mean loss, iterations, seconds).

    The step stays on the device; the host waits for it only at the log interval (and once at the
    end of the epoch), where the loss is logged and checked. Raises :class:`NonFiniteLossError`,
    naming the first iteration whose loss (mean over ranks) was not finite, before anything of
    this epoch is saved.
    """
    net.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    t0, n_it = time.perf_counter(), 0
    acc = torch.float32 if device.type == "mps" else torch.float64  # sums as the host's floats (no float64 on MPS)
    loss_sum = torch.zeros((), dtype=acc, device=device)
    first_bad = torch.tensor([-1.0, 0.0], dtype=acc, device=device)  # (iteration, loss) of the first non-finite loss
    bar = progress_batches(loader, show, f"epoch {epoch + 1}/{cfg.schedule.epochs}")
    for x, y, _ in bar:
        lr = get_lr(cfg, it, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = method.step_loss(net, loss_fn, x, y.to(device, non_blocking=True), cfg, device, epoch)
        value = loss.detach()
        if env.distributed:
            torch.distributed.all_reduce(value)
            value /= env.world_size
        new_bad = (first_bad[0] < 0) & ~torch.isfinite(value)
        first_bad = torch.where(new_bad, torch.stack([torch.full_like(loss_sum, it), value.to(acc)]), first_bad)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += value.to(acc)
        n_it += 1
        if it % cfg.run.log_interval == 0:  # the one host synchronisation of the step (nanoGPT keeps the same)
            _raise_if_non_finite(first_bad, epoch, checkpoint, cfg)
            value_f = float(value)
            if show and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{value_f:.4f}", lr=f"{lr:.2e}")  # type: ignore[attr-defined]
            runlog.write(type="iter", epoch=epoch + 1, iteration=it, loss=value_f, lr=lr)
            runlog.scalar("train/loss", value_f, it)
            runlog.scalar("train/lr", lr, it)
        it += 1
    _raise_if_non_finite(first_bad, epoch, checkpoint, cfg)
    return it, {"type": "epoch", "epoch": epoch + 1, "iterations": n_it, "loss": float(loss_sum) / max(n_it, 1),
                "seconds": round(time.perf_counter() - t0, 2)}


def _restore(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, device: torch.device) -> _TrainState:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())  # RNG states are CPU byte tensors, wherever they were mapped
    if device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
    state = _TrainState(ckpt["epoch"], ckpt["iteration"], stage=ckpt.get("stage", 1))
    state.best = ckpt.get("best", state.best)
    return state


def _training_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                         state: _TrainState, cfg: TrainConfig, stats: LabelStats,
                         device: torch.device) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds: tensors and plain types only (read back with ``weights_only=True``)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": state.epoch, "iteration": state.iteration, "rng": rng_state(device), "config": cfg.to_dict(),
            "label_stats": stats.to_dict(), "best": state.best, "stage": state.stage}


def _validate_epoch(model: nn.Module, data: DataBundle, stats: LabelStats, cfg: TrainConfig, device: torch.device,
                    env: DistEnv, state: _TrainState, runlog: _RunLog, best_path: Path) -> dict[str, Any]:
    """keep_best: validate the epoch just trained and save it as ``best.pt`` when its ``cfg.eval.monitor``
    (validation mAP or micro-F1) is the best so far; returns the epoch's validation scores."""
    val = validation_scores(model, data, cfg, device, env)
    runlog.write(type="val", epoch=state.epoch, **val)
    if val[cfg.eval.monitor] > state.best.get(cfg.eval.monitor, -1.0):  # ties keep the earlier epoch
        state.best = {"epoch": state.epoch, **val}
        if env.is_main:  # evaluate_checkpoint reads this file as it reads checkpoint.pt
            save_checkpoint(best_path, {"model": model.state_dict(), "epoch": state.epoch, "val": val,
                                        "config": cfg.to_dict(), "label_stats": stats.to_dict()})
    if env.is_main:
        log.info("epoch %d/%d: validation %s %.4f (best: epoch %d, %.4f)", state.epoch, cfg.schedule.epochs,
                 cfg.eval.monitor, val[cfg.eval.monitor], state.best["epoch"], state.best[cfg.eval.monitor])
    return val


def _stops_early(cfg: TrainConfig, state: _TrainState, runlog: _RunLog, env: DistEnv) -> bool:
    """patience: no better validation ``cfg.eval.monitor`` for ``patience`` epochs (every rank sees the same scores)."""
    if not (cfg.eval.patience and state.epoch - state.best["epoch"] >= cfg.eval.patience):
        return False
    if env.is_main:
        log.info("early stop after epoch %d: no better validation %s for %d epochs (best: epoch %d)",
                 state.epoch, cfg.eval.monitor, cfg.eval.patience, state.best["epoch"])
    runlog.write(type="early_stop", epoch=state.epoch, best_epoch=state.best["epoch"])
    return True


def _best_validated(model: nn.Module, cfg: TrainConfig, state: _TrainState, best_path: Path, device: torch.device,
                    env: DistEnv) -> dict[str, float] | None:
    """keep_best: load the best validated epoch into ``model``; its validation scores (no second pass)."""
    if not (cfg.eval.keep_best and state.best["epoch"] > 0):
        return None
    model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
    if env.is_main:
        log.info("testing epoch %d, the best on validation (%s %.4f)", state.best["epoch"], cfg.eval.monitor,
                 state.best[cfg.eval.monitor])
    return {k: state.best[k] for k in ("micro_f1", "macro_f1", "mAP", "threshold", "per_class_thresholds")
            if k in state.best}


def _open_run(cfg: TrainConfig, env: DistEnv, device: torch.device, resume: bool | str,
              overwrite: bool) -> dict[str, Any] | None:
    """Check the run folder, read the checkpoint to resume from (None for a fresh run), then
    (rank 0) create the folder, save the configuration and generate the data that needs it."""
    out = Path(cfg.run.out_dir)
    src = resume_source(out, resume)
    check_run_dir(out, resume=src is not None, overwrite=overwrite)
    ckpt = read_resume(src, cfg, create_method(cfg.method), device) if src is not None else None
    if env.is_main:
        start_run_dir(out, cfg, fresh=ckpt is None)
        prepare_data(cfg)  # the explicit generation step (the demo images), once, on rank 0
        if ckpt is not None:
            log.info("resumed from %s at epoch %d (iteration %d)", src, ckpt["epoch"], ckpt["iteration"])
    barrier(env)
    return ckpt


def _finish(model: nn.Module, data: DataBundle, stats: LabelStats, cfg: TrainConfig, device: torch.device,
            env: DistEnv, state: _TrainState, runlog: _RunLog) -> dict[str, Any]:
    """Test the trained (or best validated) model and write the run's results (rank 0)."""
    out = Path(cfg.run.out_dir)
    best_val = _best_validated(model, cfg, state, out / "best.pt", device, env)
    res, scores, targets = test_model(model, data, stats, cfg, device, env, val=best_val)
    if cfg.eval.keep_best:
        res["best_epoch"], res["epochs_run"] = state.best["epoch"], state.epoch
    if best_val is None and "val" in res and cfg.run.health != "off":  # the final model, on the validation split
        _check_chance(res["val"]["mAP"], data, cfg, state, runlog, env)
    res["health"] = list(state.health.values())
    if env.is_main:
        write_results(out, res, scores, targets)
        store_thresholds(out, res)
        runlog.write(type="eval", **{k: res[k] for k in ("mAP", "micro_f1", "macro_f1", "threshold")})
        for k, v in res["mAP"].items():
            runlog.scalar(f"test/mAP_{k}", v, state.iteration)
    runlog.close()
    return res


def train(cfg: TrainConfig, *, resume: bool | str = False, overwrite: bool = False, progress: bool = True,
          on_epoch: Callable[[int, dict[str, Any]], None] | None = None, test: bool = True) -> dict[str, Any]:
    """Train and evaluate a recipe; returns the final metrics (as written to ``metrics.json``).

    After every epoch the run's health is checked (:mod:`dbloss.training.health`): a model whose outputs
    collapsed stops the run with :class:`dbloss.errors.TrainingCollapsedError` (``health=stop``),
    a loss that does not fall or a validation mAP at chance is warned about; a non-finite loss
    raises :class:`dbloss.errors.NonFiniteLossError`. Both messages name the fix.

    Args:
        cfg: the resolved recipe.
        resume: ``True`` continues from ``out_dir/checkpoint.pt``; a path continues from that file.
        overwrite: replace the run that ``out_dir`` holds; without it (or ``resume``), a folder
            holding a run (:data:`RUN_FILES`) is refused, so a repeated command loses nothing.
        progress: show a per-iteration progress bar (rank 0 only).
        on_epoch: with ``keep_best``, called after every epoch as ``on_epoch(epoch, val)`` with the
            epoch's validation scores (:func:`validation_scores`); what :mod:`dbloss.training.tune` reports to
            its pruner (an exception it raises ends the run).
        test: ``False`` trains without touching the test split (a tuning trial) and returns
            ``{"best": the best validated epoch and its scores, "epochs_run", "health"}``.
    """
    env = init_distributed(cfg.run.device)
    device = resolve_device(cfg.run.device, env)
    out = Path(cfg.run.out_dir)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    ckpt = _open_run(cfg, env, device, resume, overwrite)
    torch.manual_seed(cfg.run.seed)  # the entry point of a run seeds once; library parts use their own generators
    data, stats, model = build(cfg, device, env, progress=progress)
    method = create_method(cfg.method)  # the hooks of the recipe's method (dbloss.methods); no branch on its name
    if env.is_main:
        stats.save(out / "label_stats.json")
        if data.input_type == "image":
            _log_model(model, cfg)
    loss_fn = _build_loss(cfg, stats).to(device)
    stages = method.stages(cfg)  # one stage, or two (decoupling's classifier stage, OLTR's memory stage)
    optimizer = build_optimizer(trainable_parameters(model), cfg)
    if ckpt is not None and ckpt.get("stage", 1) > 1:  # a later stage's checkpoint: that stage's model and optimiser
        optimizer = _enter_stage(method, model, stages[ckpt["stage"] - 1], optimizer, fresh=False)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.amp == "fp16")
    state = _TrainState() if ckpt is None else _restore(ckpt, model, optimizer, scaler, device)
    runlog = _RunLog(out, env, cfg.run.tensorboard)
    for stage in stages[state.stage - 1:]:
        if stage.number > state.stage:  # a stage boundary (the method says what changes)
            context = _stage_context(model, data, cfg, device, env)
            optimizer = _enter_stage(method, model, stage, optimizer, fresh=True, context=context)
            state.stage = stage.number
            runlog.write(type="stage", stage=stage.number, method=stage.label, epoch=state.epoch)
            if env.is_main:
                log.info("stage %d (%s): %d of %d parameters trained", stage.number, stage.label,
                         sum(p.numel() for p in trainable_parameters(model)),
                         sum(p.numel() for p in model.parameters()))
                save_checkpoint(ckpt_path, _training_checkpoint(model, optimizer, scaler, state, cfg, stats, device))
            barrier(env)
        if state.epoch >= stage.end_epoch:
            continue
        scfg = stage.cfg
        net = _wrap(model, scfg, env, device)
        sampler, loader_gen, loader = train_loader(scfg, method, data, env, device)
        state.losses = []
        for epoch in range(state.epoch - stage.first_epoch, scfg.schedule.epochs):  # epochs counted within the stage
            if cfg.eval.patience and state.best["epoch"] and epoch - state.best["epoch"] >= cfg.eval.patience:
                break  # resumed after an early stop
            sampler.set_epoch(stage.first_epoch + epoch)
            loader_gen.manual_seed(cfg.run.seed + stage.first_epoch + epoch)  # worker seeds for this epoch
            state.iteration, summary = train_one_epoch(net, method, loss_fn, optimizer, scaler, loader, scfg, device,
                                                       env, epoch, state.iteration, runlog, checkpoint=ckpt_path,
                                                       show=progress and env.is_main)
            state.epoch = stage.first_epoch + epoch + 1
            state.losses.append(summary["loss"])
            runlog.write(**summary, **({"stage": stage.number} if len(stages) > 1 else {}))
            if env.is_main:
                log.info("%sepoch %d/%d: loss %.4f (%d iterations, %.1f s)",
                         f"stage {stage.number} " if len(stages) > 1 else "", epoch + 1, scfg.schedule.epochs,
                         summary["loss"], summary["iterations"], summary["seconds"])
            val = _validate_epoch(model, data, stats, cfg, device, env, state, runlog, best_path) \
                if cfg.eval.keep_best else None
            _check_health(model, data, scfg, device, env, state, runlog, val)
            if env.is_main:
                save_checkpoint(ckpt_path, _training_checkpoint(model, optimizer, scaler, state, cfg, stats, device))
            barrier(env)
            if on_epoch is not None and val is not None:
                on_epoch(state.epoch, val)
            if _stops_early(cfg, state, runlog, env):
                break
    if not test:  # a tuning trial: the best validated epoch, or the last one scored on validation
        best = state.best if cfg.eval.keep_best or data.val is None else \
            {"epoch": state.epoch, **validation_scores(model, data, cfg, device, env)}
        runlog.close()
        return {"best": best, "epochs_run": state.epoch, "health": list(state.health.values())}
    return _finish(model, data, stats, cfg, device, env, state, runlog)


def _enter_stage(method: Method, model: nn.Module, stage: Stage, optimizer: torch.optim.Optimizer, *, fresh: bool,
                 context: StageContext | None = None) -> torch.optim.Optimizer:
    """The model in ``stage`` (:meth:`dbloss.methods.Method.enter_stage`) and the stage's optimiser over
    what it trains (a stage that trains nothing, tau-norm's, keeps the previous optimiser, unused).
    ``fresh``: the stage boundary of a run; False when the model will receive the weights of a
    checkpoint of that stage (resume)."""
    method.enter_stage(model, stage, fresh=fresh, context=context)
    params = trainable_parameters(model)
    return build_optimizer(params, stage.cfg) if params else optimizer


def _stage_context(model: nn.Module, data: DataBundle, cfg: TrainConfig, device: torch.device,
                   env: DistEnv) -> StageContext:
    """What a method may read at a stage boundary: this rank's share of the training set with the
    evaluation transform, as ``(x, y)`` on ``device``, and a sum over the ranks."""
    def train_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = eval_view(data.train, cfg)
        shard = torch.utils.data.Subset(ds, range(env.rank, len(ds), env.world_size))
        for x, y, _ in make_loader(shard, cfg.eval.batch_size, None, cfg, device):
            yield run_inputs(x, cfg, device), y.to(device)

    def all_reduce(t: torch.Tensor) -> None:
        if env.distributed:
            torch.distributed.all_reduce(t)

    return StageContext(train_batches, all_reduce, env.is_main)


def evaluate_checkpoint(checkpoint: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluate a saved checkpoint on the test set of its recipe (or of ``overrides``, e.g. another
    dataset with the same classes); writes ``metrics.json`` / ``metrics.md`` into ``out_dir``.
    The file is read as data (``weights_only=True``): one that would run code is refused."""
    ckpt = read_checkpoint(checkpoint, ("model", "config", "label_stats"))
    cfg = load_config(None, list(overrides or []), base=ckpt["config"])
    cfg.run.out_dir = str(out_dir)
    env = init_distributed(cfg.run.device)
    device = resolve_device(cfg.run.device, env)
    if env.is_main:
        prepare_data(cfg)
    barrier(env)
    data, stats, model = build(cfg, device, env, label_stats=ckpt["label_stats"], progress=progress)
    model.load_state_dict(ckpt["model"])
    res, scores, targets = test_model(model, data, stats, cfg, device, env)
    if env.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_results(Path(out_dir), res, scores, targets)
    return res
