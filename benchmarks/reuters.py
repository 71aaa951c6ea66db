"""Reuters-21578 benchmark: the loss rows of Huang et al. (EMNLP 2021) on TF-IDF features.

    python benchmarks/reuters.py [--data-root ../shared/data/reuters21578] [--out runs/reuters]
                                 [--rows bce focal cb_focal r_focal ntr_focal db_focal]
                                 [--seeds 0 1 2] [--threads 1] [--reuse] [--set key=value ...]

For every row (a shipped recipe ``reuters/<row>``) and seed it trains and evaluates through the
library (``dbloss.config.load_config`` + ``dbloss.engine.train``, the same code path as
``dbloss train reuters/<row> seed=<s> ...``), then fits the one-vs-rest linear SVM baseline of
Huang et al. (``OneVsRestClassifier(LinearSVC(C=1, max_iter=10000, random_state=123))``,
decision threshold 0, mAP from the decision scores) on the same TF-IDF features. It writes

* ``<out>/<row>/seed<s>/``: each run's directory (``metrics.json``, ``predictions.npz``, ...);
* ``<out>/summary.json``: per row, every seed's metrics and the mean / std (machine-readable);
* the results table between the ``reuters:begin`` / ``reuters:end`` markers of BENCHMARKS.md
  (``reuters-<tag>:begin`` / ``:end`` with ``--tag``, for a variant such as ``--set optimizer=adamw``),
  beside Huang et al.'s published micro-/macro-F1 (fine-tuned BERT);
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
import yaml

from dbloss.config import load_config, recipe_dir
from dbloss.engine import jsonable, train
from dbloss.metrics import f1_scores, summarize
from dbloss.pipeline import build_data
from dbloss.stats import GROUPS, LabelStats

REPO = Path(__file__).resolve().parents[1]
ROWS: tuple[str, ...] = ("bce", "focal", "cb_focal", "r_focal", "ntr_focal", "db_focal")
#: Row labels of Huang et al., Table 2.
LABELS: dict[str, str] = {"bce": "BCE", "focal": "FL", "cb_focal": "CB", "r_focal": "R-FL",
                          "ntr_focal": "NTR-FL", "db_focal": "DB", "svm": "SVM (one-vs-rest)"}
#: Huang et al. (EMNLP 2021), Reuters-21578, test micro-F1 / macro-F1 (x100); SVM on TF-IDF, others BERT fine-tuned.
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
           "map_tail", "threshold", "seconds")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "reuters21578"),
                   help="folder of the reut2-*.sgm files (default: ../shared/data/reuters21578)")
    p.add_argument("--out", default="runs/reuters", help="run directories and summary.json (default: runs/reuters)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, help="recipes reuters/<row> to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per row (default: 0 1 2)")
    p.add_argument("--no-svm", action="store_true", help="skip the linear SVM baseline")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a small shared CPU, more threads were slower)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe overrides for every row, e.g. epochs=1 (for quick checks)")
    p.add_argument("--reuse", action="store_true", help="keep finished runs whose saved configuration matches")
    p.add_argument("--benchmarks", default=str(REPO / "BENCHMARKS.md"), help="Markdown file to update")
    p.add_argument("--tag", default="", help="a variant's name (e.g. adamw): its own marker block "
                   "reuters-<tag>:begin/end in the Markdown file and its own figures reuters-<tag>_*.png")
    p.add_argument("--figures", default=str(REPO / "docs" / "figures"), help="folder of the figures")
    return p


# --------------------------------------------------------------------------- runs


def _config(row: str, seed: int, args: argparse.Namespace):
    return load_config(recipe_dir() / "reuters" / f"{row}.yaml",
                       [*args.set, f"seed={seed}", f"out_dir={Path(args.out) / row / f'seed{seed}'}"],
                       data_root=args.data_root)


def _reusable(cfg: Any) -> dict[str, Any] | None:
    out = Path(cfg.out_dir)
    metrics, saved, timing = out / "metrics.json", out / "config.yaml", out / "bench_time.json"
    if not (metrics.is_file() and saved.is_file() and timing.is_file()):
        return None
    if yaml.safe_load(saved.read_text()) != yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False)):
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
    return out


def run_row(row: str, seeds: Sequence[int], args: argparse.Namespace, counter: list[int], total: int) -> list[dict]:
    results = []
    for seed in seeds:
        counter[0] += 1
        cfg = _config(row, seed, args)
        tag = f"[{counter[0]}/{total}] {row} seed {seed}"
        res = _reusable(cfg) if args.reuse else None
        if res is not None:
            print(f"{tag}: reused {cfg.out_dir}", flush=True)
            args.reused.append(cfg.out_dir)
        else:
            print(f"{tag}: training ({cfg.epochs} epochs) -> {cfg.out_dir}", flush=True)
            t0 = time.perf_counter()
            res = train(cfg, progress=False)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            (Path(cfg.out_dir) / "bench_time.json").write_text(json.dumps({"seconds": res["seconds"]}))
        f = _flat(res)
        print(f"{tag}: micro-F1 {100 * f['micro_f1']:.2f}  macro-F1 {100 * f['macro_f1']:.2f}  "
              f"(head {100 * f['f1_head']:.1f} / medium {100 * f['f1_medium']:.1f} / tail {100 * f['f1_tail']:.1f})  "
              f"mAP {100 * f['map_total']:.2f}  threshold {f['threshold']:.2f}  {f['seconds']:.0f} s", flush=True)
        results.append({"seed": seed, **f, "split": res["split"]})
    return results


def run_svm(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Huang et al.'s one-vs-rest linear SVM on the training split's TF-IDF features (threshold 0)."""
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    cfg = _config("bce", 0, args)  # the features depend only on the data fields, shared by every recipe
    t0 = time.perf_counter()
    data = build_data(cfg)
    stats = LabelStats.from_labels(data.train_labels, data.class_names, head_min=cfg.head_min, tail_max=cfg.tail_max)
    clf = OneVsRestClassifier(LinearSVC(C=1.0, max_iter=10000, random_state=123))
    clf.fit(data.train.features, data.train_labels)
    decision = torch.as_tensor(clf.decision_function(data.test.features), dtype=torch.float64)
    # sigmoid is monotone: sigmoid(d) > 0.5 <=> d > 0 (Huang's rule), and AP is unchanged.
    scores, targets = torch.sigmoid(decision), data.test.targets
    res = summarize(scores, targets, stats.split, threshold=0.5)
    per_class = f1_scores(scores, targets, threshold=0.5)["per_class_f1"]
    res["macro_f1_groups"] = {g: _nanmean(per_class[idx]) for g, idx in stats.split.items()}
    res["threshold"] = 0.0  # on the decision function
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return _flat(res), stats.split


def _nanmean(v: torch.Tensor) -> float | None:
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else None


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


def markdown(summary: dict[str, Any], command: str, tag: str = "") -> str:
    env = summary["environment"]
    begin, end = markers(tag)
    lines = [begin, "", f"Generated by `{command}` on {summary['date']} "
             f"({env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} with {env['threads']} thread(s), "
             f"scikit-learn {env['sklearn']}). Seeds: {', '.join(map(str, summary['seeds']))}; "
             "mean ± sample standard deviation over seeds (the SVM is deterministic: one fit). "
             "Test set: the 3,019 ApteMod test documents; groups by training frequency on Huang et al.'s 6,769 "
             "training documents (head 30 / medium 31 / tail 29 classes). Ours: TF-IDF + one-hidden-layer head; "
             "Huang et al.: fine-tuned BERT (SVM row: their one-vs-rest linear SVM on TF-IDF).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(summary)]
    lines += [""]
    for key, name in (("macro_f1", "macro-F1"), ("micro_f1", "micro-F1")):
        ours, theirs = _ranking(summary, key, True), _ranking(summary, key, False)
        short = lambda rows: " > ".join(LABELS[r].split(" ")[0] for r in rows)  # noqa: E731
        lines.append(f"- {name} ranking, ours: {short(ours)}; Huang et al.: {short(theirs)} "
                     f"(Kendall tau {_kendall_tau(ours, theirs):+.2f}).")
    times = {row: e["aggregate"]["seconds"]["mean"] for row, e in summary["rows"].items()}
    lines.append("- Wall time per run (data + TF-IDF + training + evaluation), mean over seeds: "
                 + ", ".join(f"{LABELS[r].split(' ')[0]} {t:.0f} s" for r, t in times.items()) + ".")
    if summary["reused"]:
        lines.append(f"- {len(summary['reused'])} of the runs were read back from earlier invocations of this script "
                     "with identical configurations (`--reuse`); their times were measured by those invocations.")
    lines += ["", f"![Reuters-21578: macro-F1 per group, and ours vs Huang et al.](docs/figures/{figure_names(tag)[0]})",
              "", end]
    return "\n".join(lines)


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

    from dbloss.plots import GROUP_COLORS

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
    ax1.set_title("Ours (TF-IDF + MLP head): macro-F1 per class group")
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
    ax.set_title(f"Reuters-21578 (ApteMod) test, x100; ours: TF-IDF + MLP head, mean ± std over seeds {seeds}; "
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

    from dbloss.plots import save_figure

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
    split = None
    for row in args.rows:
        results = run_row(row, args.seeds, args, counter, total)
        split = results[0]["split"]
        for r in results:
            r.pop("split")
        summary["rows"][row] = {"recipe": f"reuters/{row}", "runs": results, "aggregate": aggregate(results)}
    if not args.no_svm:
        print("SVM (one-vs-rest LinearSVC on the same TF-IDF features) ...", flush=True)
        svm, split_svm = run_svm(args)
        if split is not None and split_svm != split:
            raise RuntimeError("the SVM's head/medium/tail split differs from the runs' split")
        split = split_svm
        print(f"SVM: micro-F1 {100 * svm['micro_f1']:.2f}  macro-F1 {100 * svm['macro_f1']:.2f}  "
              f"mAP {100 * svm['map_total']:.2f}  {svm['seconds']:.0f} s", flush=True)
        summary["rows"]["svm"] = {"recipe": None, "runs": [{"seed": None, **svm}], "aggregate": aggregate([svm])}
    summary["reused"] = args.reused
    summary["split_sizes"] = {g: len(split[g]) for g in GROUPS} if split else None
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=1, allow_nan=False))
    update_benchmarks(Path(args.benchmarks), markdown(summary, command, args.tag), args.tag)
    figs = Path(args.figures)
    f1_name, table_name = figure_names(args.tag)
    save_figure(f1_figure(summary), figs / f1_name)
    save_figure(table_figure(summary), figs / table_name, dpi=140)
    print(f"done in {summary['total_seconds'] / 60:.1f} min: {out / 'summary.json'}, {args.benchmarks}, "
          f"{figs / f1_name}, {figs / table_name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
