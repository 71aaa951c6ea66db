"""A per-class logistic-regression baseline on precomputed features: a row of every comparison on features.

One binary scikit-learn ``LogisticRegression`` per class on the recipe's features (the one-vs-rest
linear model that a 20-line script fits), its regularisation ``C`` and ``class_weight`` chosen on a
validation split carved from the training split, then refitted on all training samples and tested
once. :func:`train_logistic_regression` writes the run folder as :func:`dbloss.training.engine.train` does
(``config.yaml``, ``label_stats.json``, ``metrics.json`` / ``metrics.md`` / ``predictions.npz``)
plus ``logreg.json`` (the choice, the validation mAP of every grid point, the fit seconds);
:func:`logistic_regression_scores` is the same on arrays (dense or SciPy sparse).

Speed, measured on a shared 2-core CPU (25,000 x 256 dense float32 features, 500 long-tailed
classes): scikit-learn's ``lbfgs`` fits a class in 50-100 ms on one BLAS thread, ``liblinear`` in
0.8-5 s (it copies the dense matrix into its own format on every fit); on 20,000 x 50,000 sparse
TF-IDF rows the two are within 10-30%, lbfgs ahead. So :data:`SOLVER` is lbfgs, the features stay
float32, every fit runs on one BLAS thread (two BLAS threads per fit were 10x slower on the busy
machine) and the classes run on joblib threads. Along the ``C`` grid each class is warm-started
from the previous (smaller) ``C``'s solution. The whole grid (8 points) and the refit take 2.4 min
on the dense set and 4.8 min on the sparse one (about 110 and 210 CPU-seconds: other jobs shared
the two cores); Reuters-21578 (7,769 x 24,828 TF-IDF, 90 classes) takes 26 s.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dbloss.config import TrainConfig, save_config
from dbloss.errors import UsageError

__all__ = ["C_GRID", "CLASS_WEIGHTS", "DEFAULT_THRESHOLD_SEARCH", "DEFAULT_VAL_FRACTION", "FEATURE_DATASETS",
           "LogRegFit", "MAX_ITER", "SOLVER", "logistic_regression_scores", "train_logistic_regression"]

log = logging.getLogger(__name__)

#: The datasets whose recipes read precomputed features: those the baseline can fit.
FEATURE_DATASETS: tuple[str, ...] = ("features", "reuters", "text-csv")
#: The regularisation strengths tried (inverse of the L2 penalty; scikit-learn's default is 1).
C_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
#: The class weightings tried: none, and scikit-learn's "balanced" (positives weighted n / (2 n_pos)).
CLASS_WEIGHTS: tuple[str | None, ...] = (None, "balanced")
#: The scikit-learn solver (measured the faster one; see the module docstring).
SOLVER = "lbfgs"
#: lbfgs iterations per fit; a fit that reaches it is counted and warned about.
MAX_ITER = 1000
#: The fraction of the training split held out for the choice when the recipe has no ``val_size``.
DEFAULT_VAL_FRACTION = 0.1
#: The global threshold grid (``[low, high, step]``) when the recipe has no ``threshold_search``.
DEFAULT_THRESHOLD_SEARCH: tuple[float, float, float] = (0.05, 0.95, 0.01)


@dataclass
class LogRegFit:
    """What :func:`logistic_regression_scores` returns.

    Attributes:
        test_scores: (N_test, C) float32 probabilities of the model refitted on all training samples.
        val_scores: (N_val, C) float32 validation probabilities of the chosen setting (fitted
            without the validation samples): what thresholds are chosen on.
        val_targets: (N_val, C) validation labels.
        C, class_weight: the chosen setting.
        grid: one ``{"C", "class_weight", "val_mAP"}`` per grid point, in the order tried.
        seconds: ``{"grid", "refit", "total"}`` wall-clock seconds of the fits.
        constant_classes: classes scored with a constant (their training labels were all one value),
            ``{"select": [...], "refit": [...]}``.
        not_converged: fits that reached ``max_iter``, ``{"select": n, "refit": n}``.
    """

    test_scores: np.ndarray
    val_scores: np.ndarray
    val_targets: np.ndarray
    C: float
    class_weight: str | None
    grid: list[dict[str, Any]]
    seconds: dict[str, float]
    constant_classes: dict[str, list[int]] = field(default_factory=dict)
    not_converged: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Arrays: the per-class fits
# ---------------------------------------------------------------------------------------------

def _as_matrix(x: Any) -> Any:
    """Features as scikit-learn fits them fastest: float32, CSR when sparse, C-contiguous when dense."""
    if hasattr(x, "tocsr"):
        return x.tocsr().astype(np.float32, copy=False)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_labels(y: Any) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"Expected (N, C) labels, but got shape {y.shape}")
    return (y > 0).astype(np.int8)


def _stack(a: Any, b: Any) -> Any:
    if hasattr(a, "tocsr"):
        import scipy.sparse as sp

        return sp.vstack([a, b], format="csr")
    return np.concatenate([a, b])


def _fit_class(x: Any, y: np.ndarray, x_eval: Any, settings: Sequence[tuple[str | None, float]],
               max_iter: int) -> tuple[np.ndarray, int, bool]:
    """One class: fit a binary ``LogisticRegression`` on ``(x, y)`` for each ``(class_weight, C)`` of
    ``settings`` (the previous solution warm-starts the next one of the same class weight) and score
    ``x_eval``. Returns ``(scores (len(settings), N_eval) float32, fits that reached max_iter,
    constant)``; a class whose labels are all one value is scored with that value (constant True)."""
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression

    out = np.empty((len(settings), x_eval.shape[0]), dtype=np.float32)
    if y.min() == y.max():
        out[:] = float(y[0])
        return out, 0, True
    unconverged = 0
    model, weight = None, object()
    for g, (cw, c) in enumerate(settings):
        if model is None or cw != weight:
            model, weight = LogisticRegression(solver=SOLVER, class_weight=cw, max_iter=max_iter, warm_start=True), cw
        model.set_params(C=c).fit(x, y)
        unconverged += int(np.max(model.n_iter_) >= max_iter)
        out[g] = expit(np.asarray(model.decision_function(x_eval), dtype=np.float64))
    return out, unconverged, False


def _n_jobs(n_jobs: int | None, num_classes: int) -> int:
    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(n_jobs), num_classes))


def _fit_all(x: Any, y: np.ndarray, x_eval: Any, settings: Sequence[tuple[str | None, float]], *, n_jobs: int,
             max_iter: int, progress: bool, desc: str) -> tuple[np.ndarray, int, list[int]]:
    """Every class with :func:`_fit_class`: ``(scores (G, N_eval, C), fits that reached max_iter,
    constant classes)``.

    The classes run on ``n_jobs`` threads (joblib's threading backend: lbfgs spends its time in
    BLAS and scikit-learn's Cython loss, which release the GIL, and threads share the features
    where processes would be sent them), each fit on one BLAS / OpenMP thread. Fits that reach
    ``max_iter`` are counted, not warned about one by one.
    """
    from joblib import Parallel, delayed
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    num_classes = y.shape[1]
    scores = np.empty((len(settings), x_eval.shape[0], num_classes), dtype=np.float32)
    unconverged, constant = 0, []
    # both process-wide: set here, once, not in the threads (whose exits would restore each other's state)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted (n_iter_), reported once by the caller
        work = (delayed(_fit_class)(x, y[:, k], x_eval, settings, max_iter) for k in range(num_classes))
        results = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(work)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=num_classes, desc=desc, leave=False, dynamic_ncols=True)
        for k, (s, bad, const) in enumerate(results):
            scores[:, :, k] = s
            unconverged += bad
            if const:
                constant.append(k)
    return scores, unconverged, constant


def _val_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Validation mAP, classes without a validation positive left out (NaN when none has one)."""
    from dbloss.metrics import mean_average_precision

    with warnings.catch_warnings():  # a small hold-out may lack a rare class: its AP is left out (NaN)
        warnings.simplefilter("ignore")
        return float(mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets))["total"])


def _log_constant(constant: list[int], where: str, class_names: Sequence[str] | None) -> None:
    if constant:
        named = ", ".join(str(class_names[k]) if class_names else str(k) for k in constant[:10])
        log.warning("%d class(es) have training labels of one value in %s (%s%s): scored with that constant, "
                    "not fitted", len(constant), where, named, ", ..." if len(constant) > 10 else "")


def logistic_regression_scores(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    *,
    x_val: Any = None,
    y_val: Any = None,
    seed: int = 0,
    val_size: int | float = DEFAULT_VAL_FRACTION,
    c_grid: Sequence[float] = C_GRID,
    class_weights: Sequence[str | None] = CLASS_WEIGHTS,
    max_iter: int = MAX_ITER,
    n_jobs: int | None = None,
    progress: bool = False,
    class_names: Sequence[str] | None = None,
) -> LogRegFit:
    """One-vs-rest logistic regression, ``C`` and ``class_weight`` chosen on validation mAP.

    Each class gets a binary scikit-learn ``LogisticRegression`` (:data:`SOLVER`, L2 penalty). Every
    ``(class_weight, C)`` of the grid is fitted on the training part and scored on the validation
    split; the setting with the best validation mAP (classes without a validation positive left out;
    ties: the first in grid order, which tries smaller ``C`` first) is refitted on all training
    samples (training part + validation) and scores ``x_test``, which nothing before reads.

    Args:
        x_train: (N, D) features, dense (array / tensor) or SciPy sparse; y_train: (N, C) {0, 1} labels.
        x_test: (N_test, D) features to score.
        x_val, y_val: a validation split of its own (then all of ``x_train`` is the training part);
            None: ``val_size`` (a count, or a fraction) of ``x_train`` is held out with ``seed``
            (:func:`dbloss.data.pipeline.holdout_count`, the recipes' hold-out).
        c_grid, class_weights: the grid (default :data:`C_GRID` x :data:`CLASS_WEIGHTS`).
        n_jobs: threads the classes are spread over (None: the CPUs this process may use).
        class_names: for log lines only.

    Returns:
        :class:`LogRegFit`.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 5)).astype(np.float32); y = (x[:, :2] > 0).astype(int)
    >>> fit = logistic_regression_scores(x[:150], y[:150], x[150:], c_grid=(1.0,), class_weights=(None,), n_jobs=1)
    >>> fit.test_scores.shape, fit.C, fit.val_scores.shape
    ((50, 2), 1.0, (15, 2))
    """
    from dbloss.data.pipeline import _holdout

    if not c_grid or not class_weights:
        raise ValueError(f"Expected a non-empty grid, but got c_grid={list(c_grid)}, "
                         f"class_weights={list(class_weights)}")
    for cw in class_weights:
        if cw not in (None, "balanced"):
            raise ValueError(f"Expected each class weight to be None or 'balanced', but got {cw!r}")
    x_train, y_train, x_test = _as_matrix(x_train), _as_labels(y_train), _as_matrix(x_test)
    if x_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"Expected as many training rows as labels, but got {x_train.shape[0]} and {y_train.shape[0]}")
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"Expected test features of dimension {x_train.shape[1]}, but got {x_test.shape[1]}")
    if (x_val is None) != (y_val is None):
        raise ValueError("Expected both `x_val` and `y_val`, or neither")
    if x_val is None:
        fit_idx, val_idx = _holdout(x_train.shape[0], val_size, seed)
        x_fit, y_fit, x_val, y_val = x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx]
        x_all, y_all = x_train, y_train
    else:
        x_val, y_val = _as_matrix(x_val), _as_labels(y_val)
        if x_val.shape[1] != x_train.shape[1] or y_val.shape[1] != y_train.shape[1]:
            raise ValueError(f"Expected validation features / labels of {x_train.shape[1]} / {y_train.shape[1]} "
                             f"columns, but got {x_val.shape[1]} / {y_val.shape[1]}")
        x_fit, y_fit = x_train, y_train
        x_all, y_all = _stack(x_train, x_val), np.concatenate([y_train, y_val])
    settings = [(cw, float(c)) for cw in class_weights for c in sorted(c_grid)]
    jobs = _n_jobs(n_jobs, y_train.shape[1])
    log.info("logistic regression: %d classes, %d x %d %s features; choosing C in %s and class_weight in %s on "
             "%d validation samples (fitted on %d), %d thread(s)", y_train.shape[1], x_all.shape[0],
             x_all.shape[1], "sparse" if hasattr(x_all, "tocsr") else "dense", sorted(c_grid), list(class_weights),
             x_val.shape[0], x_fit.shape[0], jobs)

    t0 = time.perf_counter()
    val_scores, bad_select, const_select = _fit_all(x_fit, y_fit, x_val, settings, n_jobs=jobs, max_iter=max_iter,
                                                    progress=progress, desc="logreg grid")
    t_grid = time.perf_counter() - t0
    _log_constant(const_select, "the training part of the validation hold-out", class_names)
    grid = [{"C": c, "class_weight": cw, "val_mAP": _val_map(val_scores[g], y_val)}
            for g, (cw, c) in enumerate(settings)]
    for point in grid:
        log.info("logistic regression C=%g class_weight=%s: validation mAP %.4f", point["C"], point["class_weight"],
                 point["val_mAP"])
    finite = [g for g, p in enumerate(grid) if math.isfinite(p["val_mAP"])]
    if not finite:
        raise ValueError("no class has a positive in the validation split: the setting cannot be chosen "
                         "(hold out more samples: a larger `val_size`)")
    best = max(finite, key=lambda g: grid[g]["val_mAP"])  # ties: the first tried
    cw, c = settings[best]
    log.info("logistic regression: chose C=%g class_weight=%s (validation mAP %.4f) in %.1f s; refitting on all %d "
             "training samples", c, cw, grid[best]["val_mAP"], t_grid, x_all.shape[0])

    t1 = time.perf_counter()
    test_scores, bad_refit, const_refit = _fit_all(x_all, y_all, x_test, [(cw, c)], n_jobs=jobs, max_iter=max_iter,
                                                   progress=progress, desc="logreg refit")
    t_refit = time.perf_counter() - t1
    _log_constant(const_refit, "the whole training split", class_names)
    if bad_select or bad_refit:
        log.warning("logistic regression: %d of %d fits stopped at max_iter=%d before converging",
                    bad_select + bad_refit, len(settings) * y_train.shape[1] + y_train.shape[1], max_iter)
    return LogRegFit(test_scores=test_scores[0], val_scores=val_scores[best], val_targets=y_val.astype(np.int64),
                     C=c, class_weight=cw, grid=grid,
                     seconds={"grid": round(t_grid, 2), "refit": round(t_refit, 2),
                              "total": round(t_grid + t_refit, 2)},
                     constant_classes={"select": const_select, "refit": const_refit},
                     not_converged={"select": bad_select, "refit": bad_refit})


# ---------------------------------------------------------------------------------------------
# A recipe: the run folder
# ---------------------------------------------------------------------------------------------

def _check_dataset(cfg: TrainConfig) -> None:
    if cfg.data.dataset not in FEATURE_DATASETS:
        raise UsageError(f"data.dataset={cfg.data.dataset!r} is an image dataset: the logistic-regression baseline fits "
                         f"precomputed features (dataset one of {', '.join(FEATURE_DATASETS)}); extract them with "
                         f"`dbloss features` and train on dataset=features")


def _validation_record(fit: LogRegFit, cfg: TrainConfig) -> dict[str, Any]:
    """What :func:`dbloss.training.evaluation.validation_scores` records, from the chosen setting's validation scores:
    the global threshold maximising validation micro-F1 over the recipe's ``threshold_search`` grid
    (:data:`DEFAULT_THRESHOLD_SEARCH` when it has none) and the per-class thresholds."""
    from dbloss.training.evaluation import select_threshold
    from dbloss.metrics import f1_scores
    from dbloss.thresholds import per_class_thresholds

    scores, targets = torch.from_numpy(fit.val_scores), torch.from_numpy(fit.val_targets)
    threshold = select_threshold(scores, targets, list(cfg.eval.threshold_search or DEFAULT_THRESHOLD_SEARCH))
    f1 = f1_scores(scores, targets, threshold=threshold)
    per_class = per_class_thresholds(scores, targets, fallback=threshold, min_positives=cfg.eval.min_val_positives)
    return {"micro_f1": float(f1["micro_f1"]), "macro_f1": float(f1["macro_f1"]), "mAP": _val_map(fit.val_scores,
            fit.val_targets), "threshold": threshold, "per_class_thresholds": per_class.tolist()}


def _open_run_dir(out: Path, overwrite: bool) -> None:
    """Create the run folder; refuse one that holds a run (a network's or this baseline's) unless
    ``overwrite``, and then remove that run's result files first."""
    from dbloss.training.checkpoints import RUN_FILES

    held = [f for f in (*RUN_FILES, "logreg.json") if (out / f).exists()]
    if held and not overwrite:
        raise UsageError(f"{out} already holds a run ({', '.join(held)}): pass --overwrite to replace it "
                         f"(train_logistic_regression(cfg, overwrite=True)), or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, "metrics.md", "predictions.npz", "log.jsonl", "logreg.json"):
        (out / name).unlink(missing_ok=True)  # a replaced run's results never stand beside this one's


def train_logistic_regression(cfg: TrainConfig, *, overwrite: bool = False, progress: bool = True,
                              n_jobs: int | None = None) -> dict[str, Any]:
    """The per-class logistic-regression baseline on a feature recipe's data; returns its metrics
    (as written to ``metrics.json``, in :func:`dbloss.training.engine.train`'s format).

    The recipe gives the data (:func:`dbloss.data.pipeline.build_data`), the validation split (its
    ``val_size``; none: :data:`DEFAULT_VAL_FRACTION` of the training split held out with its
    ``seed``), the threshold grid and the head / tail rule; its network, loss and optimiser fields
    are not read. :func:`logistic_regression_scores` chooses ``C`` and ``class_weight`` on the
    validation split and refits on all training samples; the test split is scored once. Writes
    ``cfg.run.out_dir``: ``config.yaml``, ``label_stats.json`` (the training labels as the engine counts
    them for the recipe, so that the head / medium / tail groups are those of the recipe's other
    rows), ``metrics.json`` / ``metrics.md`` / ``predictions.npz`` and ``logreg.json`` (the choice,
    the validation mAP of every grid point, the fit seconds). The record's ``name`` is the recipe's
    (``logreg`` in comparisons), its ``loss`` "logistic" and its ``sampler`` "–".

    Args:
        cfg: the resolved recipe.
        overwrite: replace the run that ``cfg.run.out_dir`` holds (without it such a folder is refused,
            as :func:`dbloss.training.engine.train` refuses it).
        progress: a progress bar over the classes.
        n_jobs: threads the classes are spread over (None: the CPUs this process may use).

    Raises:
        UsageError: an image dataset (the baseline needs features); a folder holding a run.

    >>> from dbloss.config import load_config  # doctest: +SKIP
    >>> cfg = load_config("reuters/_base", ["run.name=logreg", "run.out_dir=runs/logreg"])  # doctest: +SKIP
    >>> res = train_logistic_regression(cfg)  # doctest: +SKIP
    """
    from dbloss.training.evaluation import result_record, write_results
    from dbloss.files import write_json
    from dbloss.data.pipeline import build_data
    from dbloss.stats import LabelStats

    _check_dataset(cfg)
    data = build_data(cfg)
    if data.input_type == "image":  # a future feature kind that the pipeline builds as images
        raise UsageError(f"dataset={cfg.data.dataset!r} builds images: the logistic-regression baseline needs features")
    out = Path(cfg.run.out_dir)
    _open_run_dir(out, overwrite)
    save_config(cfg, out / "config.yaml")
    stats = LabelStats.from_labels(data.train_labels, data.class_names, head_min=cfg.eval.head_min, tail_max=cfg.eval.tail_max)
    stats.save(out / "label_stats.json")

    val = data.val
    fit = logistic_regression_scores(
        data.train.features, data.train.targets, data.test.features,
        x_val=None if val is None else val.features, y_val=None if val is None else val.targets,
        seed=cfg.run.seed, val_size=DEFAULT_VAL_FRACTION, n_jobs=n_jobs, progress=progress, class_names=data.class_names)
    val_record = _validation_record(fit, cfg)
    scores, targets = torch.from_numpy(fit.test_scores), torch.as_tensor(data.test.targets)
    res = result_record(scores, targets, stats, cfg, val_record["threshold"], val_record["per_class_thresholds"])
    res["val"] = val_record
    num_train = len(data.train) + (0 if val is None else len(val))
    # no epochs; no network whose training dbloss.training.health watches (the engine's "health" findings: none)
    res.update(loss="logistic", sampler="–", epochs=None, num_train=num_train, health=[])
    write_results(out, res, scores, targets)
    write_json(out / "logreg.json", {
        "C": fit.C, "class_weight": fit.class_weight, "grid": fit.grid, "seconds": fit.seconds,
        "solver": SOLVER, "max_iter": MAX_ITER, "c_grid": list(C_GRID), "class_weights": list(CLASS_WEIGHTS),
        "num_fit": num_train - len(fit.val_targets) if val is None else len(data.train),
        "num_val": len(fit.val_targets), "num_refit": num_train,
        "val_split": "recipe val_size" if val is not None else f"{DEFAULT_VAL_FRACTION:g} of the training split",
        "constant_classes": fit.constant_classes, "not_converged": fit.not_converged})
    total = res["mAP"]["total"]
    log.info("logistic regression: test mAP %s (C=%g, class_weight=%s; %.1f s); results in %s",
             "n/a" if total is None else f"{total:.4f}", fit.C, fit.class_weight, fit.seconds["total"], out)
    return res
