"""Run folders and checkpoints: which files hold a run, refusing to overwrite one, reading a
checkpoint as data and checking it against a run that resumes it (the configuration keys of
:data:`RESUME_KEYS` and the method's own, :meth:`dbloss.methods.Method.resume_keys`), and the
thresholds a finished run stores for :mod:`dbloss.apps.predict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dbloss.config import TrainConfig, load_config, save_config
from dbloss.errors import UsageError
from dbloss.files import load_checkpoint, save_checkpoint
from dbloss.methods import Method, create_method

__all__ = ["REPLACED_FILES", "RESUME_KEYS", "RUN_FILES", "check_run_dir", "read_checkpoint", "read_resume",
           "resume_source", "rng_state", "start_run_dir", "store_thresholds"]


#: The files whose presence means that a run folder holds a run (``--resume`` or ``--overwrite`` it).
RUN_FILES: tuple[str, ...] = ("checkpoint.pt", "best.pt", "metrics.json")


#: What a run writes and ``--overwrite`` removes first (``log.jsonl`` is appended to, so it must go).
REPLACED_FILES: tuple[str, ...] = (*RUN_FILES, "metrics.md", "predictions.npz", "log.jsonl")


#: Configuration keys a resumed run must share with its checkpoint (besides its method's, Method.resume_keys).
RESUME_KEYS: tuple[str, ...] = ("loss.name", "data.dataset", "sampler.name", "run.seed", "optim.batch_size",
                                 "optim.name")


def resume_source(out: Path, resume: bool | str) -> Path | None:
    if not resume:
        return None
    src = out / "checkpoint.pt" if resume is True else Path(str(resume))
    if not src.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {src}")
    return src


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run over a folder that holds one, unless resuming or overwriting it."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other: continue the run in the folder, or replace it")
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held and not resume and not overwrite:
        raise UsageError(f"{out} already holds a run ({', '.join(held)}): pass --resume to continue it or "
                         f"--overwrite to replace it (train(cfg, resume=True) / train(cfg, overwrite=True)), "
                         f"or choose another --out")


def read_checkpoint(path: str | Path, keys: tuple[str, ...],
                     map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`train` (read as data), with the entries ``keys`` that the caller needs."""
    ckpt = load_checkpoint(path, map_location=map_location)
    missing = [k for k in keys if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise UsageError(f"{path}: not a dbloss checkpoint (no {', '.join(missing)})")
    return ckpt


def dotted_key(cfg: TrainConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def read_resume(src: Path, cfg: TrainConfig, method: Method, device: torch.device) -> dict[str, Any]:
    """The checkpoint to resume from, checked against ``cfg`` before anything is written: the keys of
    :data:`RESUME_KEYS` and what the method says a checkpoint of its stage must share
    (:meth:`dbloss.methods.Method.resume_keys`). A checkpoint from before the sections is converted."""
    ckpt = read_checkpoint(src, ("model", "optimizer", "scaler", "epoch", "iteration", "rng", "config"), device)
    saved_cfg = load_config(None, base=ckpt["config"])
    for key in RESUME_KEYS:
        if dotted_key(saved_cfg, key) != dotted_key(cfg, key):
            raise UsageError(f"--resume: checkpoint {src} was trained with {key}={dotted_key(saved_cfg, key)!r}, "
                             f"but this run has {key}={dotted_key(cfg, key)!r}")
    stage = ckpt.get("stage", 1)
    saved, ours = create_method(saved_cfg.method).resume_keys(stage), method.resume_keys(stage)
    for key in [*ours, *(k for k in saved if k not in ours)]:
        if saved.get(key) != ours.get(key):
            raise UsageError(f"--resume: checkpoint {src} (stage {stage}) was trained with {key}={saved.get(key)!r}, "
                             f"but this run has {key}={ours.get(key)!r}")
    return ckpt


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def start_run_dir(out: Path, cfg: TrainConfig, fresh: bool) -> None:
    """Create the run folder (rank 0); a fresh run first removes an overwritten run's files."""
    out.mkdir(parents=True, exist_ok=True)
    if fresh:
        for name in REPLACED_FILES:
            (out / name).unlink(missing_ok=True)
    save_config(cfg, out / "config.yaml")


def store_thresholds(out: Path, res: dict[str, Any]) -> None:
    """Add the decision thresholds the run chose (global, and per class when it had a validation
    split) to its checkpoints, where :mod:`dbloss.apps.predict` reads them."""
    thresholds = {"global": float(res["threshold"]),
                  "per_class": res.get("per_class_thresholds", {}).get("thresholds")}
    for name in ("checkpoint.pt", "best.pt"):
        if (out / name).is_file():
            ckpt = load_checkpoint(out / name)
            save_checkpoint(out / name, {**ckpt, "thresholds": thresholds})
