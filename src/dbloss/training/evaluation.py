"""Evaluation: scores of a dataset (gathered over the ranks), the validation-chosen threshold and
per-class thresholds, and the test record a run writes (``metrics.json``, ``metrics.md``,
``predictions.npz``).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from dbloss.config import TrainConfig
from dbloss.data.pipeline import DataBundle
from dbloss.distributed import DistEnv, gather_predictions
from dbloss.files import jsonable, write_json, write_text
from dbloss.methods import create_method
from dbloss.metrics import f1_scores, mean_average_precision, nanmean, summarize
from dbloss.stats import LabelStats
from dbloss.tables import results_table
from dbloss.thresholds import per_class_thresholds
from dbloss.training.loaders import make_loader, run_autocast, run_inputs

__all__ = ["dataset_targets", "evaluate", "predict", "result_record", "sampling_label", "select_threshold",
           "test_model", "validation_scores", "write_results"]

log = logging.getLogger("dbloss.training.engine")


@torch.no_grad()
def predict(model: nn.Module, ds: Any, cfg: TrainConfig, device: torch.device, env: DistEnv) -> torch.Tensor:
    """Sigmoid scores (N, C) on CPU for every sample of ``ds``, gathered from all ranks."""
    sampler = DistributedSampler(ds, num_replicas=env.world_size, rank=env.rank, shuffle=False) \
        if env.distributed else None
    if env.distributed and len(ds) % env.world_size and env.is_main:
        log.warning("evaluation: %d samples do not split evenly over %d ranks; padding duplicates are removed",
                    len(ds), env.world_size)
    model.eval()
    idx_parts, score_parts = [], []
    for x, _, idx in make_loader(ds, cfg.eval.batch_size, sampler, cfg, device):
        with run_autocast(cfg, device):
            logits = model(run_inputs(x, cfg, device))
        score_parts.append(torch.sigmoid(logits.float()).cpu())
        idx_parts.append(torch.as_tensor(idx))
    indices = torch.cat(idx_parts) if idx_parts else torch.zeros(0, dtype=torch.long)
    scores = torch.cat(score_parts) if score_parts else torch.zeros(0, 0)
    return gather_predictions(env, indices, scores, len(ds))


def dataset_targets(ds: Any) -> torch.Tensor:
    """(N, C) targets of a dataset built by :mod:`dbloss.data.pipeline`."""
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets)
    return torch.as_tensor(ds.table.labels)


def evaluate(model: nn.Module, ds: Any, device: torch.device, cfg: TrainConfig,
             env: DistEnv | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, targets)``, both (N, C) on CPU: the model's sigmoid scores for every sample of
    ``ds`` (gathered from all ranks under ``torchrun``) and the dataset's {0, 1} targets."""
    return predict(model, ds, cfg, device, env or DistEnv()), dataset_targets(ds)


def select_threshold(scores: torch.Tensor, targets: torch.Tensor, search: list[float]) -> float:
    """The global threshold in ``arange(low, high + step/2, step)`` maximising micro-F1."""
    low, high, step = search
    grid = np.round(np.arange(low, high + step / 2, step), 6)
    f1 = [f1_scores(scores, targets, threshold=float(t))["micro_f1"] for t in grid]
    return float(grid[int(np.argmax(f1))])


def validation_scores(model: nn.Module, data: DataBundle, cfg: TrainConfig, device: torch.device,
                      env: DistEnv) -> dict[str, Any]:
    """Micro/macro-F1 on the validation split at the threshold the run will use (searched on it when
    ``threshold_search`` is set, else ``cfg.eval.threshold``): what recipes and epochs are chosen on.
    Also the per-class thresholds chosen on it (:func:`dbloss.thresholds.per_class_thresholds`,
    the global one for classes with fewer than ``min_val_positives`` validation positives)."""
    val_scores, val_targets = evaluate(model, data.val, device, cfg, env)
    threshold = cfg.eval.threshold
    if cfg.eval.threshold_search:
        threshold = select_threshold(val_scores, val_targets, cfg.eval.threshold_search)
    f1 = f1_scores(val_scores, val_targets, threshold=threshold)
    with warnings.catch_warnings():  # a small hold-out may lack a rare class: its AP is left out (NaN)
        warnings.simplefilter("ignore")
        val_map = float(mean_average_precision(val_scores, val_targets)["total"])
    per_class = per_class_thresholds(val_scores, val_targets, fallback=threshold,
                                     min_positives=cfg.eval.min_val_positives)
    return {"micro_f1": float(f1["micro_f1"]), "macro_f1": float(f1["macro_f1"]), "mAP": val_map,
            "threshold": threshold, "per_class_thresholds": per_class.tolist()}


def f1_record(scores: torch.Tensor, targets: torch.Tensor, stats: LabelStats,
               threshold: float | list[float]) -> dict[str, Any]:
    """Micro / macro-F1, per class and per group at ``threshold`` (global or per class), JSON-ready."""
    f1 = f1_scores(scores, targets, threshold=threshold)
    per_class_f1 = f1["per_class_f1"].double()
    groups = {g: nanmean(per_class_f1[idx]) for g, idx in stats.split.items()}
    return {"micro_f1": float(f1["micro_f1"]), "macro_f1": float(f1["macro_f1"]),
            "per_class_f1": [None if math.isnan(v) else v for v in per_class_f1.tolist()],
            "macro_f1_groups": {g: None if math.isnan(v) else v for g, v in groups.items()}}


def result_record(scores: torch.Tensor, targets: torch.Tensor, stats: LabelStats, cfg: TrainConfig,
                  threshold: float, class_thresholds: list[float] | None = None) -> dict[str, Any]:
    """The test metrics of a run (what ``metrics.json`` holds) from its (N, C) scores and targets:
    F1 at the global ``threshold`` and, with ``class_thresholds``, under ``"per_class_thresholds"``
    the F1 at those (C,) thresholds (chosen on the validation split)."""
    res = summarize(scores, targets, stats.split, threshold=threshold, class_names=stats.class_names)
    f1 = f1_record(scores, targets, stats, threshold)
    res["per_class_f1"], res["macro_f1_groups"] = f1["per_class_f1"], f1["macro_f1_groups"]
    if class_thresholds is not None:
        res["per_class_thresholds"] = {"thresholds": list(class_thresholds),
                                       **f1_record(scores, targets, stats, class_thresholds)}
    res.update(name=cfg.run.name, loss=cfg.loss.name, sampler=sampling_label(cfg), dataset=cfg.data.dataset,
               class_names=stats.class_names, train_class_freq=stats.class_freq.tolist(), split=stats.split,
               epochs=cfg.schedule.epochs, seed=cfg.run.seed,
               num_train=int(stats.num_samples), num_test=len(targets))
    return res


def sampling_label(cfg: TrainConfig) -> str:
    """How a run samples its training data, for tables (:meth:`dbloss.methods.Method.sampling_label`):
    the sampler, BBN's two (``random + reversed``), or the two stages' (``random, then class-aware``).

    >>> from dbloss.config import load_config
    >>> sampling_label(load_config(None, ["method.name=bbn", "sampler.name=random"]))
    'random + reversed'
    >>> sampling_label(load_config(None, ["sampler.name=random"]))
    'random'
    """
    return create_method(cfg.method).sampling_label(cfg)


def test_model(model: nn.Module, data: DataBundle, stats: LabelStats, cfg: TrainConfig, device: torch.device,
               env: DistEnv, val: dict[str, float] | None = None
               ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Test the model at the validation-chosen threshold: ``(record, scores, targets)``; ``val`` is
    its :func:`validation_scores` when already computed (keep_best)."""
    if val is None and data.val is not None:
        val = validation_scores(model, data, cfg, device, env)
    scores, targets = evaluate(model, data.test, device, cfg, env)
    res = result_record(scores, targets, stats, cfg, cfg.eval.threshold if val is None else val["threshold"],
                        None if val is None else val.get("per_class_thresholds"))
    if val is not None:
        res["val"] = val
    return res, scores, targets


def write_results(out: Path, res: dict[str, Any], scores: torch.Tensor, targets: torch.Tensor) -> None:
    """``metrics.json``, ``metrics.md`` and ``predictions.npz`` (test scores and targets)."""
    np.savez_compressed(out / "predictions.npz", scores=scores.numpy(), targets=targets.numpy())
    write_json(out / "metrics.json", res)
    write_text(out / "metrics.md", results_table([jsonable(res)]) + "\n")
