"""Reuters-21578 benchmark: the loss rows of Huang et al. (EMNLP 2021) on TF-IDF features.

    python benchmarks/reuters.py [--data-root ../shared/data/reuters21578] [--out runs/reuters]
                                 [--rows bce focal cb_focal r_focal ntr_focal db_focal]
                                 [--seeds 0 1 2] [--threads 1] [--reuse] [--set key=value ...]
                                 [--head mlp|linear] [--choice runs/reuters_grid/selection.json]

For every row (a shipped recipe ``reuters/<row>``) and seed it trains and evaluates through the
library (``dbloss.config.load_config`` + ``dbloss.training.engine.train``, the same code path as
``dbloss train reuters/<row> seed=<s> ...``), then fits the one-vs-rest linear SVM baseline of
Huang et al. (``OneVsRestClassifier(LinearSVC(C=1, max_iter=10000, random_state=123))``,
decision threshold 0, mAP from the decision scores) on the same TF-IDF features, with
``class_weight="balanced"`` (the variant of their script that reproduces their published row)
and without (their script's first variant). ``--head linear`` trains every row with a linear
head (``neck_dim=0``: one-vs-rest logistic regression on TF-IDF) instead of the recipes' MLP.
``--choice`` takes each row's optimiser and learning rate from the selection file written by
``benchmarks/reuters_select.py`` (chosen on the validation split) and puts its runs beside that
grid point's seed-0 run, which ``--reuse`` then reads back. It writes

* ``<out>/<row>/seed<s>/``: each run's directory (``metrics.json``, ``predictions.npz``, ...);
* ``<out>/summary.json``: per row, every seed's metrics and the mean / std (machine-readable);
* the results table between the ``reuters:begin`` / ``reuters:end`` markers of ``docs/benchmarks.md``
  (``reuters-<tag>:begin`` / ``:end`` with ``--tag``, for a variant such as ``--set optim.name=adamw``),
  beside Huang et al.'s published micro-/macro-F1 (fine-tuned BERT); ``--benchmarks FILE`` writes
  into another Markdown file, the figure link made relative to it;
* ``docs/figures/reuters_f1.png`` (macro-F1 per group and row; micro/macro-F1 ours vs theirs)
  and ``docs/figures/reuters_table.png`` (the table as an image).

Metrics are fractions in [0, 1] in JSON and x100 in the table and figures. ``--reuse`` keeps a
run whose ``metrics.json`` exists and whose saved ``config.yaml`` equals the recipe's resolved
configuration (so seeds can be run by separate processes and merged by a final call).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dbloss.config import load_config, recipe_dir, saved_config_matches
from dbloss.data.reuters import HUANG_HEAD_MIN, HUANG_TAIL_MAX
from dbloss.training.engine import train
from dbloss.files import write_json
from dbloss.metrics import f1_scores, nanmean, summarize
from dbloss.data.pipeline import build_data
from dbloss.stats import GROUPS, LabelStats

REPO = Path(__file__).resolve().parents[1]
ROWS: tuple[str, ...] = ("bce", "focal", "cb_focal", "r_focal", "ntr_focal", "db_focal")
#: Row labels of Huang et al., Table 2.
LABELS: dict[str, str] = {"bce": "BCE", "focal": "FL", "cb_focal": "CB", "r_focal": "R-FL",
                          "ntr_focal": "NTR-FL", "db_focal": "DB", "svm": "SVM-balanced",
                          "svm_unweighted": "SVM-unweighted"}  # one-vs-rest linear SVMs
HEADS: dict[str, str] = {"mlp": "one-hidden-layer head", "linear": "linear head"}
#: Huang et al. (EMNLP 2021), Reuters-21578, test micro-F1 / macro-F1 (x100); SVM on TF-IDF, others BERT fine-tuned.
#: Their SVM row is compared with our balanced-class-weight refit, the variant of their script that matches it.
PUBLISHED: dict[str, tuple[float, float]] = {
    "bce": (89.14, 47.32), "focal": (89.97, 56.83), "cb_focal": (89.23, 52.96), "r_focal": (89.47, 54.35),
    "ntr_focal": (90.70, 60.70), "db_focal": (90.62, 64.47), "svm": (87.60, 51.63),
}
def markers(tag: str = "") -> tuple[str, str]:
    """The BENCHMARKS.md markers of this table: ``reuters`` or ``reuters-<tag>`` (a variant's own block)."""
    name = f"reuters-{tag}" if tag else "reuters"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def figure_names(tag: str = "") -> tuple[str, str]:
    stem = f"reuters-{tag}" if tag else "reuters"
    return f"{stem}_f1.png", f"{stem}_table.png"
METRICS = ("micro_f1", "macro_f1", "f1_head", "f1_medium", "f1_tail", "map_total", "map_head", "map_medium",
           "map_tail", "threshold", "seconds", "pc_micro_f1", "pc_macro_f1", "pc_f1_head", "pc_f1_medium",
           "pc_f1_tail", "pc_own")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "reuters21578"),
                   help="folder of the reut2-*.sgm files (default: ../shared/data/reuters21578)")
    p.add_argument("--out", default="runs/reuters", help="run directories and summary.json (default: runs/reuters)")
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS,
                   help="recipes reuters/<row> to run (none: the SVM rows only)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per row (default: 0 1 2)")
    p.add_argument("--no-svm", action="store_true", help="skip the linear SVM baseline")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a small shared CPU, more threads were slower)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe overrides for every row, e.g. schedule.epochs=1 (for quick checks)")
    p.add_argument("--head", choices=tuple(HEADS), default="mlp",
                   help="mlp: the recipes' one-hidden-layer head (default); linear: neck_dim=0")
    p.add_argument("--choice", default=None, metavar="SELECTION_JSON",
                   help="per-row optimiser and lr of --head, from benchmarks/reuters_select.py's selection.json")
    p.add_argument("--reuse", action="store_true", help="keep finished runs whose saved configuration matches")
    p.add_argument("--benchmarks", default=str(REPO / "docs" / "benchmarks.md"),
                   help="Markdown file to update (default: docs/benchmarks.md, a page of the documentation site)")
    p.add_argument("--tag", default="", help="a variant's name (e.g. adamw): its own marker block "
                   "reuters-<tag>:begin/end in the Markdown file and its own figures reuters-<tag>_*.png")
    p.add_argument("--figures", default=str(REPO / "docs" / "figures"), help="folder of the figures")
    p.add_argument("--no-figures", action="store_true", help="write no figures (and link none)")
    return p


# --------------------------------------------------------------------------- runs


def head_overrides(head: str) -> list[str]:
    """Recipe overrides of a head: none for the recipes' MLP, ``neck_dim=0`` for a linear head."""
    return ["model.neck_dim=0"] if head == "linear" else []


def row_choice(args: argparse.Namespace, row: str) -> tuple[str, list[str]]:
    """(run-directory prefix, overrides) of ``row``: the selected grid point with --choice, else none."""
    if not getattr(args, "choice", None):
        return "", []
    point = json.loads(Path(args.choice).read_text())["choice"][args.head][row]
    return point["name"], list(point["overrides"])


def _config(row: str, seed: int, args: argparse.Namespace):
    prefix, chosen = row_choice(args, row)
    out = Path(args.out) / prefix / row / f"seed{seed}"
    return load_config(recipe_dir() / "reuters" / f"{row}.yaml",
                       [*head_overrides(args.head), *chosen, *args.set, f"run.seed={seed}", f"run.out_dir={out}"],
                       data={"root": args.data_root})


def _reusable(cfg: Any) -> dict[str, Any] | None:
    out = Path(cfg.run.out_dir)
    metrics, saved, timing = out / "metrics.json", out / "config.yaml", out / "bench_time.json"
    if not (metrics.is_file() and saved.is_file() and timing.is_file()):
        return None
    if not saved_config_matches(cfg, saved):
        return None
    res = json.loads(metrics.read_text())
    res["seconds"] = json.loads(timing.read_text())["seconds"]
    return res


def _flat(res: dict[str, Any]) -> dict[str, float]:
    """The table's numbers of one run (fractions; seconds as measured)."""
    g = res["macro_f1_groups"]
    out = {"micro_f1": res["micro_f1"], "macro_f1": res["macro_f1"], "threshold": res["threshold"],
           "seconds": res.get("seconds", math.nan)}
    for k in GROUPS:
        out[f"f1_{k}"] = math.nan if g[k] is None else g[k]
        out[f"map_{k}"] = math.nan if res["mAP"][k] is None else res["mAP"][k]
    out["map_total"] = res["mAP"]["total"]
    pc = res.get("per_class_thresholds")  # F1 at the per-class thresholds chosen on validation
    out["pc_micro_f1"] = math.nan if pc is None else pc["micro_f1"]
    out["pc_macro_f1"] = math.nan if pc is None else pc["macro_f1"]
    for k in GROUPS:
        v = None if pc is None else pc["macro_f1_groups"][k]
        out[f"pc_f1_{k}"] = math.nan if v is None else v
    # classes with a threshold of their own (enough validation positives), not the global one
    out["pc_own"] = math.nan if pc is None else float(sum(t != res["threshold"] for t in pc["thresholds"]))
    return out


def run_row(row: str, seeds: Sequence[int], args: argparse.Namespace, counter: list[int], total: int) -> list[dict]:
    results = []
    for seed in seeds:
        counter[0] += 1
        cfg = _config(row, seed, args)
        tag = f"[{counter[0]}/{total}] {row} seed {seed}"
        res = _reusable(cfg) if args.reuse else None
        if res is not None:
            print(f"{tag}: reused {cfg.run.out_dir}", flush=True)
            args.reused.append(cfg.run.out_dir)
        else:
            print(f"{tag}: training ({cfg.schedule.epochs} epochs) -> {cfg.run.out_dir}", flush=True)
            t0 = time.perf_counter()
            res = train(cfg, progress=False, overwrite=True)  # not reusable: a stale or unfinished run is replaced
            res["seconds"] = round(time.perf_counter() - t0, 1)
            write_json(Path(cfg.run.out_dir) / "bench_time.json", {"seconds": res["seconds"]}, indent=None)
        f = _flat(res)
        print(f"{tag}: micro-F1 {100 * f['micro_f1']:.2f}  macro-F1 {100 * f['macro_f1']:.2f}  "
              f"(head {100 * f['f1_head']:.1f} / medium {100 * f['f1_medium']:.1f} / tail {100 * f['f1_tail']:.1f})  "
              f"mAP {100 * f['map_total']:.2f}  threshold {f['threshold']:.2f}  {f['seconds']:.0f} s", flush=True)
        results.append({"seed": seed, **f, "best_epoch": res.get("best_epoch"), "epochs_run": res.get("epochs_run"),
                        "split": res["split"]})
    return results


def svm_scores(data: Any, class_weight: str | None = "balanced") -> dict[str, Any]:
    """Huang et al.'s one-vs-rest linear SVM (``Reuters/svm-ovr-tfidf.py``) fitted on ``data.train``.

    ``OneVsRestClassifier(LinearSVC(C=1, max_iter=10000, random_state=123, class_weight=...))``;
    their script fits it without and with ``class_weight="balanced"``. Returns the test metrics of
    :func:`dbloss.metrics.summarize` at decision threshold 0, with ``macro_f1_groups`` (groups
    of the training split by Huang et al.'s rule) and ``split``.
    """
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    cfg_groups = dict(head_min=HUANG_HEAD_MIN, tail_max=HUANG_TAIL_MAX)
    stats = LabelStats.from_labels(data.train_labels, data.class_names, **cfg_groups)
    clf = OneVsRestClassifier(LinearSVC(C=1.0, max_iter=10000, random_state=123, class_weight=class_weight))
    clf.fit(data.train.features, data.train_labels)
    decision = torch.as_tensor(clf.decision_function(data.test.features), dtype=torch.float64)
    # sigmoid is monotone: sigmoid(d) > 0.5 <=> d > 0 (Huang's rule), and AP is unchanged.
    scores, targets = torch.sigmoid(decision), data.test.targets
    res = summarize(scores, targets, stats.split, threshold=0.5)
    per_class = f1_scores(scores, targets, threshold=0.5)["per_class_f1"]
    res["macro_f1_groups"] = {g: nanmean(per_class[idx]) for g, idx in stats.split.items()}  # NaN: no class
    res["threshold"] = 0.0  # on the decision function
    res["split"] = stats.split
    return res


def run_svm(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], dict[str, list[int]]]:
    """Both SVM variants on the training split's features (the recipes' `text_features`): {key: flat metrics}."""
    cfg = _config("bce", 0, args)  # the features depend only on the data fields, shared by every recipe
    t0 = time.perf_counter()
    data = build_data(cfg)
    t_data = time.perf_counter() - t0
    out, split = {}, None
    for key, weight in (("svm", "balanced"), ("svm_unweighted", None)):
        t1 = time.perf_counter()
        res = svm_scores(data, weight)
        split = res.pop("split")
        res["seconds"] = round(t_data + time.perf_counter() - t1, 1)
        out[key] = _flat(res)
    return out, split


def aggregate(results: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (0 for one seed) of every metric over seeds."""
    out = {}
    for m in METRICS:
        vals = [r[m] for r in results if not math.isnan(r[m])]
        out[m] = {"mean": statistics.fmean(vals) if vals else math.nan,
                  "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


# --------------------------------------------------------------------------- report


def _pm(a: dict[str, float], scale: float = 100.0, digits: int = 2) -> str:
    if math.isnan(a["mean"]):
        return "n/a"
    s = f"{scale * a['mean']:.{digits}f}"
    return s + (f" ± {scale * a['std']:.{digits}f}" if a["n"] > 1 else "")


def _table_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for row, entry in summary["rows"].items():
        a = entry["aggregate"]
        pub = PUBLISHED.get(row)
        rows.append([LABELS[row], _pm(a["micro_f1"]), _pm(a["macro_f1"]),
                     f"{pub[0]:.2f}" if pub else "", f"{pub[1]:.2f}" if pub else "",
                     _pm(a["f1_head"], digits=1), _pm(a["f1_medium"], digits=1), _pm(a["f1_tail"], digits=1),
                     _pm(a["map_total"], digits=1), _pm(a["map_head"], digits=1), _pm(a["map_medium"], digits=1),
                     _pm(a["map_tail"], digits=1)])
    return rows


HEADER = ["row", "micro-F1", "macro-F1", "Huang micro-F1", "Huang macro-F1", "macro-F1 head", "macro-F1 medium",
          "macro-F1 tail", "mAP", "mAP head", "mAP medium", "mAP tail"]


def _ranking(summary: dict[str, Any], key: str, ours: bool) -> list[str]:
    rows = [r for r in summary["rows"] if r in PUBLISHED]
    val = (lambda r: summary["rows"][r]["aggregate"][key]["mean"]) if ours else \
        (lambda r: PUBLISHED[r][0 if key == "micro_f1" else 1])
    return sorted(rows, key=val, reverse=True)


def _kendall_tau(a: list[str], b: list[str]) -> float:
    pos = {r: i for i, r in enumerate(b)}
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += 1 if pos[a[i]] < pos[a[j]] else -1
    return s / (n * (n - 1) / 2) if n > 1 else math.nan


def markdown(summary: dict[str, Any], command: str, tag: str = "", figure: bool = True,
             figure_dir: str = "figures") -> str:
    """The marked block of one run of this script; ``figure_dir``: the figures' folder relative to
    the Markdown file (``figures`` for the default ``docs/benchmarks.md``)."""
    env = summary["environment"]
    begin, end = markers(tag)
    lines = [begin, "", f"Generated by `{command}` on {summary['date']} "
             f"({env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} with {env['threads']} thread(s), "
             f"scikit-learn {env['sklearn']}). Seeds: {', '.join(map(str, summary['seeds']))}; "
             "mean ± sample standard deviation over seeds (the SVM is deterministic: one fit). "
             "Test set: the 3,019 ApteMod test documents; groups by training frequency on Huang et al.'s 6,769 "
             "training documents (head 30 / medium 31 / tail 29 classes). "
             f"Ours: TF-IDF ({_features(summary)})"
             + (f" + {HEADS[summary.get('head', 'mlp')]}" if set(summary["rows"]) - {"svm", "svm_unweighted"} else "")
             + "; "
             "Huang et al.: fine-tuned BERT (SVM rows: their one-vs-rest linear SVM on TF-IDF).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(summary)]
    lines += [""]
    for key, name in (("macro_f1", "macro-F1"), ("micro_f1", "micro-F1")):
        ours, theirs = _ranking(summary, key, True), _ranking(summary, key, False)
        short = lambda rows: " > ".join(LABELS[r].split(" ")[0] for r in rows)  # noqa: E731
        if len(ours) < 2:
            continue
        lines.append(f"- {name} ranking, ours: {short(ours)}; Huang et al.: {short(theirs)} "
                     f"(Kendall tau {_kendall_tau(ours, theirs):+.2f}).")
    if "svm" in summary["rows"]:
        a, pub = summary["rows"]["svm"]["aggregate"], PUBLISHED["svm"]
        mi, ma = 100 * a["micro_f1"]["mean"], 100 * a["macro_f1"]["mean"]
        lines.append(f"- SVM reproduction (balanced class weights, the same features): ours {mi:.2f} / {ma:.2f} "
                     f"micro/macro-F1, Huang et al. {pub[0]:.2f} / {pub[1]:.2f}: difference {mi - pub[0]:+.2f} / "
                     f"{ma - pub[1]:+.2f}.")
    chosen = {r: e["overrides"] for r, e in summary["rows"].items() if e.get("overrides")}
    if chosen:
        lines.append("- Optimiser and lr per row (chosen on validation micro-F1, seed 0, by "
                     "`benchmarks/reuters_select.py`): " + ", ".join(
                         f"{LABELS[r].split(' ')[0]} `{' '.join(o)}`" for r, o in chosen.items()) + ".")
    epochs = [r["best_epoch"] for e in summary["rows"].values() for r in e["runs"] if r.get("best_epoch")]
    if epochs:
        lines.append(f"- Best validation epochs (tested): {min(epochs)}-{max(epochs)}; early stopping after "
                     f"{summary.get('patience', 0)} epochs without a better validation micro-F1.")
    times = {row: e["aggregate"]["seconds"]["mean"] for row, e in summary["rows"].items()}
    lines.append("- Wall time per run (data + TF-IDF + training + evaluation), mean over seeds: "
                 + ", ".join(f"{LABELS[r].split(' ')[0]} {t:.0f} s" for r, t in times.items()) + ".")
    if summary["reused"]:
        lines.append(f"- {len(summary['reused'])} of the runs were read back from earlier invocations of this script "
                     "with identical configurations (`--reuse`); their times were measured by those invocations.")
    lines += _threshold_lines(summary)
    if figure:
        lines += ["", f"![Reuters-21578: macro-F1 per group, and ours vs Huang et al.]({figure_dir}/{figure_names(tag)[0]})"]
    lines += ["", end]
    return "\n".join(lines)


def _threshold_lines(summary: dict[str, Any]) -> list[str]:
    """The per-class threshold table: F1 at the global threshold -> at the per-class ones, per group."""
    rows = {r: e["aggregate"] for r, e in summary["rows"].items() if not math.isnan(e["aggregate"]["pc_micro_f1"]["mean"])}
    if not rows:
        return []
    head = ["row", "classes with their own threshold", "micro-F1", "macro-F1", "macro-F1 head", "macro-F1 medium",
            "macro-F1 tail"]
    lines = ["", "Per-class thresholds (each class's F1-optimal threshold on the validation split; classes with "
             "fewer than `min_val_positives` validation positives keep the global one): global -> per-class, "
             "mean over seeds.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, a in rows.items():
        cells = [LABELS[row], f"{a['pc_own']['mean']:.0f} of 90"]
        for g, pc in (("micro_f1", "pc_micro_f1"), ("macro_f1", "pc_macro_f1"), ("f1_head", "pc_f1_head"),
                      ("f1_medium", "pc_f1_medium"), ("f1_tail", "pc_f1_tail")):
            cells.append(f"{100 * a[g]['mean']:.2f} -> {100 * a[pc]['mean']:.2f} "
                         f"({100 * (a[pc]['mean'] - a[g]['mean']):+.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _features(summary: dict[str, Any]) -> str:
    kind, cap = summary.get("text_features", "sublinear"), summary.get("tfidf_max_features")
    vocab = "whole vocabulary" if cap is None else f"{cap:,} terms"
    desc = {"huang": "scikit-learn defaults, as Huang et al.'s SVM", "sublinear": "sublinear tf, min_df 2"}
    return f"{desc.get(kind, kind)}, {vocab}"


def update_benchmarks(path: Path, block: str, tag: str = "") -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    begin, end = markers(tag)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def f1_figure(summary: dict[str, Any]):
    from matplotlib.figure import Figure

    from dbloss.apps.plots import GROUP_COLORS

    rows = list(summary["rows"])
    labels = [LABELS[r].split(" ")[0] for r in rows]
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.25, 1])
    x, w = np.arange(len(rows)), 0.2
    series = [("macro_f1", "all classes", "#555555")] + [(f"f1_{g}", g, GROUP_COLORS[g]) for g in GROUPS]
    for k, (key, name, color) in enumerate(series):
        m = [100 * summary["rows"][r]["aggregate"][key]["mean"] for r in rows]
        s = [100 * summary["rows"][r]["aggregate"][key]["std"] for r in rows]
        ax1.bar(x + (k - 1.5) * w, m, w, yerr=s, capsize=2, label=name, color=color)
    ax1.set_xticks(x, labels)
    ax1.set_ylabel("test macro-F1 (x100)")
    ax1.set_title(f"Ours (TF-IDF + {summary.get('head', 'mlp')} head): macro-F1 per class group")
    ax1.legend(ncols=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax1.set_ylim(0, 100)
    pub_rows = [r for r in rows if r in PUBLISHED]
    xp = np.arange(len(pub_rows))
    for k, (idx, key, name) in enumerate(((0, "micro_f1", "micro-F1"), (1, "macro_f1", "macro-F1"))):
        ours = [100 * summary["rows"][r]["aggregate"][key]["mean"] for r in pub_rows]
        err = [100 * summary["rows"][r]["aggregate"][key]["std"] for r in pub_rows]
        theirs = [PUBLISHED[r][idx] for r in pub_rows]
        color = ("#4c72b0", "#c44e52")[k]
        ax2.bar(xp + (2 * k - 1.5) * 0.2, ours, 0.2, yerr=err, capsize=2, color=color, label=f"{name}, ours")
        ax2.bar(xp + (2 * k - 0.5) * 0.2, theirs, 0.2, color=color, alpha=0.4, hatch="//",
                label=f"{name}, Huang et al.")
    ax2.set_xticks(xp, [LABELS[r].split(" ")[0] for r in pub_rows])
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("test F1 (x100)")
    ax2.set_title("Ours vs Huang et al. (BERT; SVM on TF-IDF)")
    ax2.legend(ncols=2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    return fig


def table_figure(summary: dict[str, Any]):
    from matplotlib.figure import Figure

    header = ["row", "micro-F1", "macro-F1", "Huang\nmicro-F1", "Huang\nmacro-F1", "macro-F1\nhead",
              "macro-F1\nmedium", "macro-F1\ntail", "mAP"]
    rows = [r[:9] for r in _table_rows(summary)]
    fig = Figure(figsize=(13, 0.36 * (len(rows) + 2) + 0.4), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    tab = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.scale(1, 1.6)
    for (r, c), cell in tab.get_celld().items():
        if r == 0:
            cell.set_facecolor("#e8e8e8")
            cell.set_height(cell.get_height() * 1.5)
        if c in (3, 4) and r > 0:
            cell.set_facecolor("#f4f4f4")
    seeds = ", ".join(map(str, summary["seeds"]))
    ax.set_title(f"Reuters-21578 (ApteMod) test, x100; ours: TF-IDF + {summary.get('head', 'mlp')} head, "
                 f"mean ± std over seeds {seeds}; "
                 "Huang et al. (EMNLP 2021): BERT fine-tuned (SVM: TF-IDF)", fontsize=9)
    return fig


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(args: argparse.Namespace) -> int:
    import sklearn

    from dbloss.apps.plots import save_figure

    torch.set_num_threads(args.threads)
    # --reuse does not change the results (a run is reused only with an identical configuration)
    argv = [a for a in sys.argv[1:] if a != "--reuse"]
    command = " ".join(["python benchmarks/reuters.py", *argv])
    total = len(args.rows) * len(args.seeds)
    print(f"Reuters-21578 benchmark: {len(args.rows)} rows x {len(args.seeds)} seeds = {total} runs"
          f"{'' if args.no_svm else ' + SVM'}; data {args.data_root}; out {args.out}", flush=True)
    t0 = time.perf_counter()
    counter = [0]
    args.reused = []
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "seeds": list(args.seeds), "command": command, "reused": [],
        "environment": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                        "sklearn": sklearn.__version__, "threads": args.threads, "python": platform.python_version()},
        "published": {r: {"micro_f1": v[0] / 100, "macro_f1": v[1] / 100} for r, v in PUBLISHED.items()},
        "rows": {},
    }
    probe = _config(args.rows[0] if args.rows else "bce", args.seeds[0], args)
    summary.update(head=args.head, text_features=probe.data.text_features, tfidf_max_features=probe.data.tfidf_max_features,
                   patience=probe.eval.patience if probe.eval.keep_best else 0, choice=args.choice)
    split = None
    for row in args.rows:
        results = run_row(row, args.seeds, args, counter, total)
        split = results[0]["split"]
        for r in results:
            r.pop("split")
        summary["rows"][row] = {"recipe": f"reuters/{row}", "overrides": row_choice(args, row)[1], "runs": results,
                                "aggregate": aggregate(results)}
    if not args.no_svm:
        print("SVM (one-vs-rest LinearSVC on the same TF-IDF features, balanced and unweighted) ...", flush=True)
        svms, split_svm = run_svm(args)
        if split is not None and split_svm != split:
            raise RuntimeError("the SVM's head/medium/tail split differs from the runs' split")
        split = split_svm
        for key, svm in svms.items():
            print(f"{LABELS[key]}: micro-F1 {100 * svm['micro_f1']:.2f}  macro-F1 {100 * svm['macro_f1']:.2f}  "
                  f"mAP {100 * svm['map_total']:.2f}  {svm['seconds']:.0f} s", flush=True)
            summary["rows"][key] = {"recipe": None, "runs": [{"seed": None, **svm}], "aggregate": aggregate([svm])}
    summary["reused"] = args.reused
    summary["split_sizes"] = {g: len(split[g]) for g in GROUPS} if split else None
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    figure_dir = Path(os.path.relpath(Path(args.figures).resolve(), Path(args.benchmarks).resolve().parent)).as_posix()
    update_benchmarks(Path(args.benchmarks), markdown(summary, command, args.tag, not args.no_figures, figure_dir),
                      args.tag)
    written = [str(out / "summary.json"), args.benchmarks]
    if not args.no_figures:
        figs = Path(args.figures)
        f1_name, table_name = figure_names(args.tag)
        save_figure(f1_figure(summary), figs / f1_name)
        save_figure(table_figure(summary), figs / table_name, dpi=140)
        written += [str(figs / f1_name), str(figs / table_name)]
    print(f"done in {summary['total_seconds'] / 60:.1f} min: {', '.join(written)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
