"""``dbloss tune``: a recipe's settings chosen on a validation split, then retrained and tested once.

A recipe's learning rate, weight decay, head and loss terms were chosen on the data it was
written for; on other data they are guesses. :func:`tune` searches them with Optuna:

1. **Trials** (``OUT/trials/NNNN/``): each trains the recipe with one set of values on the
   training split minus a validation split (``val_size``, 10% when the recipe has none), keeps
   the epoch with the best validation mAP (so the number of epochs is chosen by early stopping:
   ``patience``), and never reads the test split (:func:`dbloss.training.engine.train` with ``test=False``).
   The TPE sampler proposes the values; the first trial is the recipe's own values, so the study
   starts from the untuned recipe; the median pruner stops a trial whose validation mAP after an
   epoch is below the median of earlier trials at that epoch. A trial that diverges or collapses
   (:mod:`dbloss.training.health`) scores 0.
2. **The final run** (``OUT/``): the best trial's values, the epochs it kept (the learning-rate
   schedule cut at that epoch, so the run follows the trial's) and the decision threshold it chose
   on validation, trained on *all* training samples and tested once: the usual run folder
   (``metrics.json`` ...), and ``tuned.yaml``, the resolved recipe that ``dbloss train`` takes.

The study lives in an SQLite file in ``OUT`` (``study.db``) unless ``storage`` names another
Optuna storage (``sqlite:///...``, ``postgresql://...``): a killed call resumes where it stopped
(a trial cut off mid-way is run again), and several processes or machines given the same storage
and study name share one study (the extra workers with ``search_only=True``). ``tune.json`` and
``trials.csv`` list every trial (values, validation mAP, best epoch, seconds, state), rewritten
after each trial.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from dbloss.config import TrainConfig, load_config
from dbloss.methods import create_method
from dbloss.errors import TrainingFailedError, UsageError
from dbloss.files import write_json, write_text

__all__ = ["DB_TERMS", "Param", "final_config", "search_space", "tune"]

log = logging.getLogger(__name__)

#: The DB family's loss terms that depend on the data's scale (label cardinality, class counts),
#: searched for the losses that use them: mu (the re-balancing map's midpoint, r depends on how many
#: labels an item has), neg_scale (lambda) and init_bias (kappa, scaling the NTR class bias).
DB_TERMS: dict[str, tuple[str, ...]] = {
    "r-bce": ("mu",), "r-focal": ("mu",), "ntr-focal": ("neg_scale", "init_bias"),
    "db-focal": ("mu", "neg_scale", "init_bias"),
}
_TERM_RANGES: dict[str, tuple[float, float, bool]] = {  # (low, high, log)
    "mu": (0.05, 0.9, False), "neg_scale": (1.0, 8.0, False), "init_bias": (0.0, 0.1, False),
}
#: The hidden width of the MLP head that the search weighs against a linear head on features.
MLP_WIDTH = 256
#: The validation fraction trials hold out when the recipe has no validation split.
DEFAULT_VAL_FRACTION = 0.1
#: Early stopping for trials of a recipe that has none: epochs without a better validation mAP.
DEFAULT_PATIENCE = 5


@dataclass(frozen=True)
class Param:
    """One searched setting: a configuration key (``loss.args.mu`` style), its range or choices,
    and the recipe's own value (the first trial's)."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    initial: Any = None

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def _cfg(overrides: Sequence[str]) -> TrainConfig:
    """(The examples' configurations.)"""
    return load_config(None, overrides)


def _loss_term(cfg: TrainConfig, name: str) -> float:
    """The value a recipe's loss uses for a DB term: its ``loss_args``, else the loss's default."""
    from dbloss.losses.factory import _RECIPES
    from dbloss.losses.reference import DBParams

    if name in cfg.loss.args:
        return float(cfg.loss.args[name])
    return float(_RECIPES[cfg.loss.name].defaults.get(name, getattr(DBParams(), name)))


def _span(key: str, low: float, high: float, log_scale: bool, initial: float) -> Param:
    """A float range widened to hold the recipe's own value (the first trial)."""
    return Param(key, min(low, initial), max(high, initial), log_scale, initial=initial)


def search_space(cfg: TrainConfig, input_type: str) -> list[Param]:
    """What :func:`tune` searches for a recipe: the learning rate (log scale, from a thirtieth to thirty
    times the recipe's: a linear head on sparse TF-IDF wants far larger steps than one on dense
    embeddings), the weight decay (log scale, 1e-6 to 1e-2), on features the head (linear or
    one hidden layer of :data:`MLP_WIDTH`), and the DB family's scale-sensitive terms
    (:data:`DB_TERMS`). The sampler (the recipe's identity: RS vs ERM) and the loss are not searched.

    >>> [p.key for p in search_space(load_config(None, ["loss.name=db-focal"]), "features")]
    ['optim.lr', 'optim.weight_decay', 'model.neck_dim', 'loss.args.mu', 'loss.args.neg_scale', 'loss.args.init_bias']
    >>> [p.key for p in search_space(load_config(None, ["loss.name=bce"]), "image")]
    ['optim.lr', 'optim.weight_decay']
    """
    space = [_span("optim.lr", cfg.optim.lr / 30, cfg.optim.lr * 30, True, cfg.optim.lr),
             _span("optim.weight_decay", 1e-6, 1e-2, True, max(cfg.optim.weight_decay, 1e-6))]
    if input_type == "features" and create_method(cfg.method).network_name == "plain":  # a linear classifier
        initial = 0 if cfg.model.neck_dim == 0 else MLP_WIDTH
        space.append(Param("model.neck_dim", choices=(0, MLP_WIDTH), initial=initial))
    for name in DB_TERMS.get(cfg.loss.name, ()):
        low, high, log_scale = _TERM_RANGES[name]
        space.append(_span(f"loss.args.{name}", low, high, log_scale, _loss_term(cfg, name)))
    return space


def _overrides(values: dict[str, Any]) -> list[str]:
    import json

    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def trial_config(cfg: TrainConfig, values: dict[str, Any], out_dir: Path) -> TrainConfig:
    """A trial: ``cfg`` with ``values``, a validation split, the best validated epoch kept (by mAP),
    early stopping where the recipe has none, in ``out_dir``; no TensorBoard."""
    extra: dict[str, Any] = {"data.val_size": cfg.data.val_size or DEFAULT_VAL_FRACTION,
                             "run.out_dir": str(out_dir), "run.tensorboard": False, "eval.monitor": "mAP",
                             "eval.keep_best": not _two_stage(cfg), "eval.patience": trial_patience(cfg)}
    return load_config(None, _overrides({**values, **extra}), base=cfg.to_dict())


def _two_stage(cfg: TrainConfig) -> bool:
    return len(create_method(cfg.method).stages(cfg)) > 1  # keep_best spans one stage only


def trial_patience(cfg: TrainConfig) -> int:
    """The early-stopping patience of a trial of ``cfg``: the recipe's, or :data:`DEFAULT_PATIENCE`
    where it has none and runs more than twice as many epochs (0 for two-stage methods).

    >>> trial_patience(_cfg(["schedule.epochs=8"])), trial_patience(_cfg(["schedule.epochs=100"]))
    (0, 5)
    >>> trial_patience(_cfg(["schedule.epochs=100", "eval.keep_best=true", "eval.patience=3", "data.val_size=10"]))
    3
    """
    if _two_stage(cfg):
        return 0
    if cfg.eval.patience:
        return cfg.eval.patience
    return DEFAULT_PATIENCE if cfg.schedule.epochs > 2 * DEFAULT_PATIENCE else 0


def _cut_schedule(cfg: TrainConfig, epochs: int) -> list[float]:
    """``cfg.schedule.lr_steps`` for a run of ``epochs`` that follows ``cfg``'s schedule up to that epoch: the
    decays that fell before it, as fractions of the shorter run.

    >>> _cut_schedule(_cfg(["schedule.epochs=8", "schedule.lr_steps=[0.625, 0.875]"]), 6)  # decays at 5, 7
    [0.8333333333333334]
    """
    from dbloss.training.schedule import lr_step_epochs

    return [s / epochs for s in lr_step_epochs(cfg) if 0 < s < epochs]


def final_config(cfg: TrainConfig, values: dict[str, Any], best: dict[str, Any], out_dir: Path) -> TrainConfig:
    """The final run: ``cfg`` with the best trial's ``values``, trained on all training samples
    (no validation split) for the epochs the trial kept (``best["epoch"]``, its schedule cut there)
    and deciding at the global threshold the trial chose on validation (``best["threshold"]``)."""
    extra: dict[str, Any] = {"data.val_size": 0, "eval.keep_best": False, "eval.patience": 0,
                             "eval.threshold_search": None, "run.out_dir": str(out_dir)}
    epochs = int(best.get("epoch") or 0)
    if 0 < epochs < cfg.schedule.epochs and not _two_stage(cfg):
        extra.update({"schedule.epochs": epochs, "schedule.lr_steps": _cut_schedule(cfg, epochs)})
    if best.get("threshold") is not None:
        extra["eval.threshold"] = float(best["threshold"])
    return load_config(None, _overrides({**values, **extra}), base=cfg.to_dict())


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------

def _storage(url: str) -> Any:
    """An Optuna RDB storage with heartbeats, so that a trial whose process was killed is failed
    (and run again) instead of counting as running forever."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several processes on one file
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since v2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30,
                                          heartbeat_stale_trial_callback=retry, **kwargs)


def _open_study(study_name: str, url: str, sampler: Any, pruner: Any, attempts: int = 5) -> Any:
    """Create or load the study; workers starting together race to create its tables and its row,
    and the loser retries (then loads what the winner made)."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.create_study(study_name=study_name, storage=_storage(url), direction="maximize",
                                       load_if_exists=True, sampler=sampler, pruner=pruner)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.DuplicatedStudyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _finished(study: Any) -> list[Any]:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=done)


def _trial_rows(study: Any, space: Sequence[Param]) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "val_mAP": t.value,
                     "best_epoch": t.user_attrs.get("best_epoch"), "epochs_run": t.user_attrs.get("epochs_run"),
                     "seconds": t.user_attrs.get("seconds"), "worker": t.user_attrs.get("worker"),
                     "failure": t.user_attrs.get("failure"),
                     **{p.key: t.params.get(p.key) for p in space}})
    return rows


def _write_study(out: Path, study: Any, space: Sequence[Param], meta: dict[str, Any]) -> None:
    """``tune.json`` (the study, every trial) and ``trials.csv``, rewritten after each trial."""
    rows = _trial_rows(study, space)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(done, key=lambda r: r["val_mAP"]) if done else None
    write_json(out / "tune.json", {**meta, "best_trial": best, "trials": rows})
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "trials.csv", buf.getvalue())


def _objective(cfg: TrainConfig, space: Sequence[Param], out: Path) -> Callable[[Any], float]:
    """Optuna's objective: one trial's best validation mAP (0 for a run that diverged or collapsed)."""
    import optuna

    from dbloss.training.engine import train

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in space}
        tcfg = trial_config(cfg, values, out / "trials" / f"{trial.number:04d}")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        def report(epoch: int, val: dict[str, Any]) -> None:
            trial.report(float(val["mAP"]), epoch)
            if trial.should_prune():
                trial.set_user_attr("best_epoch", epoch)
                raise optuna.TrialPruned(f"validation mAP {val['mAP']:.4f} after epoch {epoch}")

        t0 = time.perf_counter()
        try:
            res = train(tcfg, overwrite=True, progress=False, on_epoch=report, test=False)
        except TrainingFailedError as e:  # a step too large for the data: the worst score, and why
            trial.set_user_attr("failure", str(e).split(";")[0])
            res = {"best": {"epoch": 0, "mAP": 0.0}, "epochs_run": None}
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            for name in ("checkpoint.pt", "best.pt"):  # a trial's weights are not kept
                (Path(tcfg.run.out_dir) / name).unlink(missing_ok=True)
        best = res["best"]
        trial.set_user_attr("best_epoch", best.get("epoch"))
        trial.set_user_attr("epochs_run", res.get("epochs_run"))
        trial.set_user_attr("threshold", best.get("threshold"))
        value = float(best.get("mAP", 0.0))
        return value if math.isfinite(value) else 0.0

    return objective


def _wait_for_running(study: Any, poll: float = 5.0) -> None:
    """Wait until no trial of the study runs (other workers' trials finish, stale ones are failed)."""
    import optuna

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        log.info("waiting for %d running trial(s) of other workers: %s", len(running),
                 ", ".join(str(t.number) for t in running))
        time.sleep(poll)


def tune(
    recipe: str | Path | TrainConfig,
    overrides: Sequence[str] = (),
    *,
    trials: int = 20,
    out: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    search_only: bool = False,
    startup_trials: int | None = None,
    prune_warmup: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Choose a recipe's settings on a validation split (module docstring), retrain, test once.

    Args:
        recipe: a recipe (file or shipped name) or a resolved :class:`TrainConfig`.
        overrides: ``key=value`` settings applied to the recipe before the search (the data's paths...).
        trials: finished trials (complete or pruned) the study should have; a resumed study runs
            only the missing ones.
        out: the run folder (default ``runs/tune_<recipe name>``).
        storage: an Optuna storage URL (default ``sqlite:///OUT/study.db``).
        study_name: default: the recipe's name.
        timeout: stop starting trials after this many seconds.
        search_only: run trials and stop (an extra worker of a shared study): no final run.
        startup_trials: random trials before TPE models the results (default: a third of ``trials``,
            2 to 10). prune_warmup: epochs a trial runs before it can be pruned (default: the
            trials' early-stopping patience, at least 2: a trial is not judged sooner than it
            would judge itself, so a slow starter such as an MLP head is not cut at epoch 2).

    Returns:
        ``{"best_trial", "values", "metrics" (the final run's test metrics; None with search_only),
        "config" (path of tuned.yaml), "trials" (rows of tune.json)}``.
    """
    import optuna

    from dbloss.training.engine import train
    from dbloss.data.pipeline import FEATURE_DATASETS, build_data, prepare_data

    if trials < 1:
        raise UsageError(f"Expected --trials >= 1, but got {trials}")
    cfg = recipe if isinstance(recipe, TrainConfig) else load_config(recipe, list(overrides))
    if isinstance(recipe, TrainConfig) and overrides:
        cfg = load_config(None, list(overrides), base=cfg.to_dict())
    out = Path(out or f"runs/tune_{cfg.run.name}")
    prepare_data(cfg)
    build_data(cfg)  # bad data (a missing file, labels outside {0, 1}...) is an error before any study exists
    out.mkdir(parents=True, exist_ok=True)
    space = search_space(cfg, "features" if cfg.data.dataset in FEATURE_DATASETS else "image")
    study_name = study_name or cfg.run.name
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_startup = startup_trials if startup_trials is not None else min(10, max(2, trials // 3))
    if prune_warmup is None:
        prune_warmup = max(2, trial_patience(cfg))
    study = _open_study(
        study_name=study_name, url=url,
        sampler=optuna.samplers.TPESampler(seed=cfg.run.seed, n_startup_trials=n_startup, multivariate=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup, n_warmup_steps=prune_warmup))
    if not study.get_trials(deepcopy=False):  # a new study starts from the recipe's own values
        study.enqueue_trial({p.key: p.initial for p in space})
    meta = {"recipe": str(recipe) if not isinstance(recipe, TrainConfig) else cfg.run.name, "overrides": list(overrides),
            "study": study_name, "storage": url, "trials_wanted": trials,
            "search_space": [{"key": p.key, "low": p.low, "high": p.high, "log": p.log,
                              "choices": None if p.choices is None else list(p.choices), "recipe": p.initial}
                             for p in space]}
    done = len(_finished(study))
    bar = None
    if progress and done < trials:
        from tqdm import tqdm

        bar = tqdm(total=trials, initial=done, desc=f"tune {study_name}", unit="trial", dynamic_ncols=True)

    def after_trial(study: Any, trial: Any) -> None:
        _write_study(out, study, space, meta)
        if bar is not None and trial.state.name in ("COMPLETE", "PRUNED"):
            bar.update(1)
            if study.best_trials:
                bar.set_postfix(best=f"{study.best_value:.4f}", last=f"{trial.value or 0:.4f}")

    callbacks = [optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                optuna.trial.TrialState.PRUNED)), after_trial]
    t0 = time.perf_counter()
    if done < trials:
        study.optimize(_objective(cfg, space, out), n_trials=None, timeout=timeout,
                       callbacks=callbacks, catch=())
    if bar is not None:
        bar.close()
    search_seconds = time.perf_counter() - t0
    _write_study(out, study, space, meta)
    if search_only:
        return {"best_trial": _best_row(study, space), "values": None, "metrics": None, "config": None,
                "trials": _trial_rows(study, space)}
    _wait_for_running(study)
    best = study.best_trial
    values = {p.key: best.params[p.key] for p in space}
    final = final_config(cfg, values, {"epoch": best.user_attrs.get("best_epoch"),
                                       "threshold": best.user_attrs.get("threshold")}, out)
    tuned = out / "tuned.yaml"
    header = "".join(f"# {line}\n" for line in _header(cfg, meta["recipe"], best, values))
    write_text(tuned, header + final.to_yaml())
    t1 = time.perf_counter()
    metrics = train(load_config(tuned), overwrite=True, progress=progress)
    _write_study(out, study, space, {**meta, "search_seconds": round(search_seconds, 1),
                                     "final_seconds": round(time.perf_counter() - t1, 1),
                                     "test_mAP": metrics["mAP"]})
    return {"best_trial": _best_row(study, space), "values": values, "metrics": metrics, "config": str(tuned),
            "trials": _trial_rows(study, space)}


def _best_row(study: Any, space: Sequence[Param]) -> dict[str, Any] | None:
    rows = [r for r in _trial_rows(study, space) if r["state"] == "COMPLETE"]
    return max(rows, key=lambda r: r["val_mAP"]) if rows else None


def _header(cfg: TrainConfig, recipe: str, best: Any, values: dict[str, Any]) -> list[str]:
    chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    return [f"Chosen by `dbloss tune {recipe}` on a validation split: trial {best.number}, validation mAP "
            f"{best.value:.4f} at epoch {best.user_attrs.get('best_epoch')}.",
            f"Values: {chosen}.",
            "Trained on all training samples for the epochs that trial kept; `dbloss train tuned.yaml --out DIR` "
            "retrains it."]

