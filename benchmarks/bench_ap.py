"""Per-class average precision: ours vs torchmetrics vs scikit-learn, timed in the same run.

    python benchmarks/bench_ap.py [--repeats 7] [--device cpu|cuda] [--json out.json]

Issue 10 asks to keep the hand-written AP (:func:`dbloss.metrics.average_precision`) only where
it is faster than torchmetrics' ``multilabel_average_precision`` at the same values. For each
case (N x C, scores with or without ties, with or without ignored entries) this times, in turn
within every repeat (so that a busy machine slows all three alike):

- ``ours``: ``dbloss.metrics.average_precision(scores, targets)``;
- ``torchmetrics``: ``multilabel_average_precision(scores, targets, num_labels=C, average=None,
  thresholds=None, ignore_index=-1)`` (exact, not binned; input validation on, its default);
- ``sklearn``: ``average_precision_score`` per class over the entries that are not ignored;

checks that the three give the same values on the classes with a positive (max abs. difference
to scikit-learn), shows what each returns for a class without a positive (ours: NaN and a
warning naming it; torchmetrics: 0 with a warning, and counted as 0 in its macro average), and
prints the time ratios. The scores are float32 probabilities (what ``summarize`` receives); a
last line shows that torchmetrics on logits (it applies a float32 sigmoid to scores outside
[0, 1]) gives other values, where ours depends only on the order of the scores.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from sklearn.metrics import average_precision_score

try:
    from torchmetrics.functional.classification import multilabel_average_precision
except ImportError:  # a benchmark-only dependency: dbloss itself does not need it
    raise SystemExit("bench_ap.py compares with torchmetrics: pip install torchmetrics") from None

from bench_core import interleaved_medians
from dbloss.files import write_json
from dbloss.metrics import average_precision

# (label, N, C, ties, ignored fraction)
CASES = [
    ("VOC-MLT test scale", 5_000, 20, True, 0.02),
    ("VOC-MLT test scale", 5_000, 20, False, 0.0),
    ("COCO-MLT test scale", 40_000, 80, True, 0.02),
    ("COCO-MLT test scale", 40_000, 80, False, 0.0),
    ("wide", 10_000, 1_000, True, 0.02),
    ("wide", 10_000, 1_000, False, 0.0),
]


def make_case(n: int, c: int, ties: bool, ignore_frac: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Long-tailed targets (prevalence 0.3 down to 0.002), the last class without a positive;
    float32 probabilities that rank positives higher; ``ties``: rounded to 3 decimals."""
    rng = np.random.default_rng(seed)
    prevalence = 0.3 * (0.002 / 0.3) ** np.linspace(0, 1, c)
    targets = (rng.random((n, c)) < prevalence).astype(np.int64)
    targets[0, :] = 1  # every class has a positive ...
    targets[:, -1] = 0  # ... but the last
    scores = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 1.5 * targets)))
    if ties:
        scores = np.round(scores, 3)
    targets[rng.random((n, c)) < ignore_frac] = -1
    targets[0, :-1] = 1
    return torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(targets)


def sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        keep = targets[:, k] != -1
        y = targets[keep, k]
        if (y == 1).any():
            out[k] = average_precision_score(y, scores[keep, k])
    return out


def torchmetrics_ap(s: torch.Tensor, t: torch.Tensor, validate_args: bool = True) -> torch.Tensor:
    return multilabel_average_precision(s, t, num_labels=s.shape[1], average=None, thresholds=None,
                                        ignore_index=-1, validate_args=validate_args)


def bench_case(n: int, c: int, ties: bool, ignore_frac: float, repeats: int, device: str) -> dict:
    s, t = make_case(n, c, ties, ignore_frac)
    s_np, t_np = s.numpy().astype(np.float64), t.numpy()
    s, t = s.to(device), t.to(device)

    def sync(x: torch.Tensor) -> torch.Tensor:
        if device == "cuda":
            torch.cuda.synchronize()
        return x

    fns = {
        "ours": lambda: sync(average_precision(s, t)),
        "torchmetrics": lambda: sync(torchmetrics_ap(s, t)),
        "torchmetrics_no_validation": lambda: sync(torchmetrics_ap(s, t, validate_args=False)),
        "sklearn": lambda: sklearn_ap(s_np, t_np),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the class without a positive warns at every call
        med = interleaved_medians(fns, repeats, warmup=1)
        ours, tm, ref = average_precision(s, t).cpu().numpy(), torchmetrics_ap(s, t).cpu().numpy(), sklearn_ap(s_np, t_np)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tm_macro = float(multilabel_average_precision(s, t, num_labels=c, average="macro", ignore_index=-1))
    has_pos = ~np.isnan(ref)
    return {
        "n": n, "classes": c, "ties": ties, "ignored_fraction": ignore_frac,
        **{f"{k}_ms": 1e3 * v for k, v in med.items()},
        "torchmetrics_over_ours": med["torchmetrics"] / med["ours"],
        "torchmetrics_no_validation_over_ours": med["torchmetrics_no_validation"] / med["ours"],
        "sklearn_over_ours": med["sklearn"] / med["ours"],
        "ours_max_abs_diff_vs_sklearn": float(np.max(np.abs(ours[has_pos] - ref[has_pos]))),
        "torchmetrics_max_abs_diff_vs_sklearn": float(np.max(np.abs(tm[has_pos] - ref[has_pos]))),
        "no_positive_class": {"ours": float(ours[-1]), "torchmetrics": float(tm[-1]),
                              "torchmetrics_warned": bool(caught)},
        "macro": {"ours (NaN left out)": float(np.nanmean(ours)), "torchmetrics": tm_macro,
                  "sklearn (NaN left out)": float(np.nanmean(ref))},
    }


def logits_check(device: str) -> dict:
    """torchmetrics on logits vs on probabilities: its float32 sigmoid saturates (ties appear)."""
    s, t = make_case(5_000, 20, False, 0.0, seed=1)
    logits = (torch.logit(s.double()) * 10).float().to(device)  # a confident model: |logits| up to ~100
    t = t.to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = average_precision(logits, t)[:-1].cpu()
        tm = torchmetrics_ap(logits, t)[:-1].cpu().double()
    ref = torch.from_numpy(sklearn_ap(logits.cpu().double().numpy(), t.cpu().numpy())[:-1])
    return {"ours_max_abs_diff_vs_sklearn": float((ours - ref).abs().max()),
            "torchmetrics_max_abs_diff_vs_sklearn": float((tm - ref).abs().max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    import torchmetrics

    res = {"device": args.device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "torchmetrics": torchmetrics.__version__, "repeats": args.repeats, "cases": []}
    print(f"{args.device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, torchmetrics "
          f"{torchmetrics.__version__}; median of {args.repeats} interleaved repeats; ratio > 1: ours is faster")
    print(f"{'case':21s} {'N x C':>13s} {'ties':>4s} {'ign':>4s} | {'ours ms':>8s} {'tm ms':>8s} {'sk ms':>8s} | "
          f"{'tm/ours':>7s} {'tm(novalid)/ours':>16s} {'sk/ours':>7s} | {'|ours-sk|':>9s} {'|tm-sk|':>9s}")
    for label, n, c, ties, ign in CASES:
        r = bench_case(n, c, ties, ign, args.repeats, args.device)
        res["cases"].append({"case": label, **r})
        print(f"{label:21s} {f'{n:,} x {c:,}':>13s} {'yes' if ties else 'no':>4s} {ign:4.2f} | {r['ours_ms']:8.1f} "
              f"{r['torchmetrics_ms']:8.1f} {r['sklearn_ms']:8.1f} | {r['torchmetrics_over_ours']:7.2f} "
              f"{r['torchmetrics_no_validation_over_ours']:16.2f} {r['sklearn_over_ours']:7.2f} | "
              f"{r['ours_max_abs_diff_vs_sklearn']:9.1e} {r['torchmetrics_max_abs_diff_vs_sklearn']:9.1e}", flush=True)
    last = res["cases"][-1]
    print(f"class without a positive: ours {last['no_positive_class']['ours']} (warned, left out of means); "
          f"torchmetrics {last['no_positive_class']['torchmetrics']} (warned: "
          f"{last['no_positive_class']['torchmetrics_warned']}), macro mAP {last['macro']['torchmetrics']:.4f} "
          f"vs {last['macro']['sklearn (NaN left out)']:.4f} with it left out")
    res["logits"] = logits_check(args.device)
    print(f"on logits (|z| up to ~100, no ties): max |AP - sklearn| ours {res['logits']['ours_max_abs_diff_vs_sklearn']:.1e}, "
          f"torchmetrics {res['logits']['torchmetrics_max_abs_diff_vs_sklearn']:.1e} (its float32 sigmoid makes ties)")
    slower = [f"{r['case']} {r['n']:,} x {r['classes']:,}" for r in res["cases"] if r["torchmetrics_over_ours"] < 1]
    res["decision"] = ("keep the hand-written AP: faster than torchmetrics at every size measured" if not slower else
                       f"torchmetrics is faster at: {', '.join(slower)}")
    print("decision:", res["decision"])
    if args.json:
        write_json(args.json, res)


if __name__ == "__main__":
    main()
