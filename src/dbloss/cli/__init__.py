"""The ``dbloss`` command: ``train``, ``evaluate``, ``predict``, ``export``, ``features``, ``demo``, ``reproduce``, ``pretrain``,
``report``, ``analyze``, ``data``, ``recipes``, ``kernel``.

Each sub-command is a small function taking the parsed arguments; the work lives in the
library modules. ``python -m dbloss`` is the same command (what ``torchrun -m dbloss`` runs).
Bad input (:class:`dbloss.errors.UsageError` or any ``ValueError``, ``OSError``) and a
run that diverged or collapsed (:class:`dbloss.errors.TrainingFailedError`) are reported as ``dbloss CMD: error: ...`` with exit code 2 (``-v``: with the
traceback); any other exception is a bug and surfaces as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from dbloss.cli.features import add_features_command
from dbloss.cli.predict import add_export_command, add_predict_command
from dbloss.distributed import shutdown_distributed
from dbloss.errors import TrainingFailedError, UsageError

__all__ = ["main", "get_args_parser"]


class _IntermixedParser(argparse.ArgumentParser):
    """A sub-command's parser whose positionals (``key=value`` overrides, inputs) may come before, between or
    after its options: ``dbloss train RECIPE --out DIR epochs=2`` as well as ``dbloss train RECIPE epochs=2 --out
    DIR``.

    ``parse_intermixed_args`` refuses parsers that have sub-commands, so the top-level parser (and ``dbloss
    data``) parse as usual and hand the rest to this class, the ``parser_class`` of their sub-commands: each
    sub-command parses its own strings intermixed. Unknown options are still returned as extras, which the
    top-level ``parse_args`` reports (exit 2).
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._subparsers is not None or self._intermixing:  # a parser of sub-commands, or the two passes below
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls parse_known_args twice: options, positionals
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _cmd_train(args: argparse.Namespace) -> int:
    from dbloss.config import load_config
    from dbloss.training.engine import train
    from dbloss.tables import results_table

    overrides = list(args.overrides)
    cfg = load_config(args.recipe, overrides)
    if args.out:
        cfg.run.out_dir = args.out
    elif not any(o.startswith(("out_dir=", "run.out_dir=")) for o in overrides) and cfg.run.out_dir == "runs/run":
        cfg.run.out_dir = str(Path("runs") / Path(str(args.recipe)).with_suffix("").as_posix().replace("/", "_"))
    if args.print_config:  # what the run would save as config.yaml: the recipe over its bases, then the overrides
        print(cfg.to_yaml(), end="")
        return 0
    resume: bool | str = False if args.resume is None else (True if args.resume == "" else args.resume)
    res = train(cfg, resume=resume, overwrite=args.overwrite, progress=not args.no_progress)
    if res is not None:
        print(results_table([res]))
        print(f"results: {Path(cfg.run.out_dir) / 'metrics.json'}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from dbloss.tables import results_table
    from dbloss.training.tune import tune

    out = args.out or str(Path("runs") / ("tune_" + Path(str(args.recipe)).with_suffix("").as_posix().replace("/", "_")))
    res = tune(args.recipe, list(args.overrides), trials=args.trials, out=out, storage=args.storage,
               study_name=args.study, timeout=args.timeout, search_only=args.search_only,
               progress=not args.no_progress)
    best = res["best_trial"]
    if best is not None:
        print(f"best trial {best['number']}: validation mAP {best['val_mAP']:.4f} at epoch {best['best_epoch']}")
    if res["metrics"] is not None:
        print(results_table([res["metrics"]]))
        print(f"results: {Path(out) / 'metrics.json'}\nchosen recipe: {res['config']}\nstudy: {Path(out) / 'tune.json'}")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from dbloss.config import load_config
    from dbloss.apps.linear_baseline import train_logistic_regression
    from dbloss.tables import results_table

    overrides = list(args.overrides)
    cfg = load_config(args.recipe, overrides)
    if not any(o.startswith("name=") for o in overrides):
        cfg.run.name = "logreg"  # the row's name in tables, as in comparisons
    if args.out:
        cfg.run.out_dir = args.out
    elif not any(o.startswith(("out_dir=", "run.out_dir=")) for o in overrides) and cfg.run.out_dir == "runs/run":
        cfg.run.out_dir = str(Path("runs") / (Path(str(args.recipe)).with_suffix("").as_posix().replace("/", "_")
                                          + "_logreg"))
    res = train_logistic_regression(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    print(results_table([res]))
    print(f"results: {Path(cfg.run.out_dir) / 'metrics.json'} (choice: {Path(cfg.run.out_dir) / 'logreg.json'})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dbloss.training.engine import evaluate_checkpoint
    from dbloss.tables import results_table

    res = evaluate_checkpoint(args.checkpoint, args.out, list(args.overrides), progress=not args.no_progress)
    print(results_table([res]))
    print(f"results: {Path(args.out) / 'metrics.json'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dbloss.apps.compare import run_demo

    run_demo(args.out, recipes=args.recipes, seeds=args.seeds, setting=args.setting, epochs=args.epochs,
             progress=not args.no_progress, overrides=args.set, readme=args.readme, figures=args.figures,
             reuse=not args.fresh)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from dbloss.apps.compare import reproduce

    reproduce(args.benchmark, rows=args.rows, seeds=args.seeds, out=args.out, overrides=args.set,
              progress=not args.no_progress, reuse=not args.fresh)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from dbloss.models.pretrain import PretrainConfig, builtin_weights, pretrain

    settings = dict(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers, device=args.device)
    if args.data == "builtin":
        path = builtin_weights(args.cache, per_class=args.per_class, progress=not args.no_progress, **settings)
        record = json.loads(path.with_suffix(".json").read_text())
    else:
        if not args.out:
            raise UsageError("`dbloss pretrain FOLDER` needs --out WEIGHTS.pth")
        path = Path(args.out)
        record = pretrain(args.data, path, PretrainConfig(**settings), progress=not args.no_progress)
    acc = record.get("val_accuracy")
    print(f"{path}: {record['config']['backbone']} pretrained on {len(record['classes'])} classes "
          f"(validation top-1 {'n/a' if acc is None else f'{100 * acc:.1f}%'}); fine-tune with weights={path}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from dbloss.config import list_recipes, recipe_dir

    print(f"shipped recipes ({recipe_dir()}):")
    for name in list_recipes():
        print(f"  {name}")
    return 0


def _read_label_csv(path: str):
    from dbloss.data.custom import read_csv

    return read_csv(path, path_column=None, id_column="image_id")


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "stats":
        table = _read_label_csv(args.labels)
        stats = table.stats()
        split = stats.split
        print(f"{stats.num_samples} samples, {stats.num_classes} classes, "
              f"{table.labels.sum(1).mean():.2f} labels per sample")
        print("head/medium/tail: " + " / ".join(str(len(split[g])) for g in ("head", "medium", "tail")))
        print(f"class counts: max {stats.class_freq.max()}, min {stats.class_freq.min()}")
        if args.out:
            stats.save(args.out)
            print(f"wrote {args.out}")
    elif args.data_cmd == "longtail":
        from dbloss.data.longtail import make_longtail_subset

        table = _read_label_csv(args.labels)
        idx = make_longtail_subset(table.labels, max_count=args.max_count, seed=args.seed)
        sub = table.subset(idx)
        stats = sub.stats()
        Path(args.out).write_text("".join(f"{i}\n" for i in sub.ids))
        split = stats.split
        print(f"{len(sub)} images; largest class {stats.class_freq.max()}, smallest {stats.class_freq.min()}; "
              f"head/medium/tail {len(split['head'])}/{len(split['medium'])}/{len(split['tail'])}; ids -> {args.out}")
    elif args.data_cmd == "fetch-subset":
        from dbloss.data.published import fetch_published_subset, load_id_list

        path = fetch_published_subset(args.name, args.dest, source=args.source)
        print(f"{path}: {len(load_id_list(path))} ids (checksum verified)")
    elif args.data_cmd == "download":
        from dbloss.data.published import download_with_subset

        root = download_with_subset(args.name, args.dest, mirror=args.mirror, keep_archives=args.keep_archives,
                                    subset=not args.no_subset, progress=not args.no_progress)
        print(f"{args.name}: ready under {root}")
    elif args.data_cmd == "make-demo":
        from dbloss.data.synthetic import generate_demo_dataset

        paths = generate_demo_dataset(args.out, seed=args.seed)
        print(json.dumps({k: str(v) for k, v in vars(paths).items()}, indent=1))
    elif args.data_cmd == "synth-features":
        from dbloss.data.synthetic_features import MANIFEST, write_longtail_features

        given = {"num_train": args.train, "num_test": args.test, "num_classes": args.classes, "dim": args.dim,
                 "seed": args.seed, "noise": args.noise}
        train_path, test_path = write_longtail_features(args.out, force=args.force,
                                                        **{k: v for k, v in given.items() if v is not None})
        s = json.loads((Path(args.out) / MANIFEST).read_text())["summary"]
        print(f"train: {train_path}\ntest: {test_path}")
        print(f"{s['items']} training items, {s['classes']} classes, head/medium/tail "
              f"{s['head']}/{s['medium']}/{s['tail']}, {s['labels_per_item']:.2f} labels per item, class counts "
              f"{s['max_count']} down to {s['min_count']}")
    else:  # pragma: no cover - argparse enforces the choices
        raise ValueError(args.data_cmd)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dbloss.apps.report import write_report

    paths = write_report(args.runs, args.out, baseline=args.baseline, compare=args.compare)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dbloss.apps import analysis

    out = Path(args.out)
    table = _read_label_csv(args.labels) if args.labels else None
    if args.what == "gradients":
        res = analysis.run_gradient_analysis(out, labels=None if table is None else table.labels,
                                             class_names=None if table is None else table.class_names)
    else:
        if table is None:
            raise UsageError(f"`dbloss analyze {args.what}` needs --labels CSV (image_id + one 0/1 column per class)")
        if args.what == "resampling":
            res = analysis.run_resampling_analysis(table.labels, table.class_names, out, seed=args.seed)
        else:
            res = analysis.run_weight_analysis(table.labels, table.class_names, out)
    for k, v in res.items():
        if isinstance(v, (str, Path)):
            print(f"{k}: {v}")
    return 0


def _cmd_kernel(args: argparse.Namespace) -> int:
    import torch

    from dbloss.losses import fast, fused

    try:
        fused.build(verbose=True)
        diffs = fast.self_check()
    except fused.KernelBuildError as e:
        print(f"dbloss kernel: the fused DB kernel cannot be built here; the DB losses use the torch path.\n{e}",
              file=sys.stderr)
        return 1
    print(f"fused DB kernel: built for {torch.backends.cpu.get_cpu_capability()}, cached in "
          f"{fused.kernel_directory()}")
    print(f"kernel vs torch path (float64, 64 x 50): max |loss diff| {diffs['max_abs_loss_diff']:.1e}, "
          f"max |grad diff| {diffs['max_abs_grad_diff']:.1e}")
    return 0 if max(diffs.values()) < 1e-8 else 1


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dbloss", description="Distribution-Balanced loss for long-tailed multi-label "
                                "classification: train, evaluate, report.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # each sub-command parses its positionals (overrides, inputs) intermixed with its options
    sub = p.add_subparsers(dest="command", required=True, parser_class=_IntermixedParser)

    t = sub.add_parser("train", help="train and evaluate a recipe")
    t.add_argument("recipe", help="a recipe YAML file or a shipped recipe name (see `dbloss recipes`)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=2 loss_args.mu=0.2")
    t.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue from RUN_DIR/checkpoint.pt (or the given checkpoint)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run that --out already holds (without it, or --resume, such a folder is refused)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (YAML, as saved beside the run) and exit without training")
    t.set_defaults(func=_cmd_train)

    tn = sub.add_parser("tune", help="choose a recipe's settings on a validation split (Optuna), retrain on all "
                        "training data, test once")
    tn.add_argument("recipe", help="a recipe YAML file or a shipped recipe name (see `dbloss recipes`)")
    tn.add_argument("overrides", nargs="*", help="key=value settings applied before the search (data paths, ...)")
    tn.add_argument("--trials", type=int, default=20, help="finished trials the study should have (default 20; a "
                    "resumed study runs only the missing ones)")
    tn.add_argument("--out", help="run folder (default: runs/tune_<recipe name>): the final run, tuned.yaml, "
                    "tune.json, trials.csv, study.db, trials/")
    tn.add_argument("--storage", help="Optuna storage URL shared by several workers (default: sqlite:///OUT/study.db)")
    tn.add_argument("--study", help="study name in the storage (default: the recipe's name)")
    tn.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    tn.add_argument("--search-only", action="store_true",
                    help="an extra worker of a shared study: run trials, no final run")
    tn.add_argument("--no-progress", action="store_true", help="no progress bar")
    tn.set_defaults(func=_cmd_tune)

    b = sub.add_parser("baseline", help="one logistic regression per class on a feature recipe's data (C and "
                       "class_weight chosen on validation): the scikit-learn baseline beside the recipe's rows")
    b.add_argument("recipe", help="a recipe reading features (dataset features / reuters / text-csv): file or name")
    b.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train_ann=train.npz test_ann=test.npz")
    b.add_argument("--out", help="run directory (default: runs/<recipe name>_logreg)")
    b.add_argument("--overwrite", action="store_true", help="replace the run that --out already holds")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_baseline)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint (on its recipe's test set or overridden data)")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the saved configuration (e.g. data_root=...)")
    e.add_argument("--out", required=True, help="where metrics.json / metrics.md go")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_evaluate)
    add_features_command(sub)
    add_predict_command(sub)
    add_export_command(sub)

    d = sub.add_parser("demo", help="the main job: built-in data, pretrained backbone fine-tuned with ERM / RS / "
                       "DB-Focal over 3 seeds, table and figures")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--recipes", nargs="+", default=None,
                   help="demo recipes to run (default: erm rs db_focal; `all`: every row of the paper's comparison)")
    d.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per recipe (default: 0 1 2)")
    d.add_argument("--setting", choices=["pretrained", "scratch"], default="pretrained",
                   help="pretrained (default): fine-tune a backbone pretrained on the built-in balanced source set, "
                   "the paper's regime; scratch: the same network from random initialisation")
    d.add_argument("--epochs", type=int, default=None, help="override the demo recipes' epochs")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every recipe")
    d.add_argument("--readme", help="also write the table into this Markdown file's demo block (README.md; "
                   "docs/demo.md for --setting scratch)")
    d.add_argument("--figures", help="with --readme: folder for the figures (default: docs/figures)")
    d.add_argument("--fresh", action="store_true", help="retrain finished runs instead of reusing them")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)

    rp = sub.add_parser("reproduce", help="the paper's comparison on one benchmark: every row over seeds, the report "
                        "with the published numbers beside ours")
    rp.add_argument("benchmark", choices=["voc-mlt", "coco-mlt", "demo", "reuters", "features"],
                    help="voc-mlt / coco-mlt read data/ (see `dbloss data download`); demo: the built-in data; "
                    "reuters: Reuters-21578 (data_root); features: your feature files (--set train_ann=... "
                    "test_ann=...); reuters / features add the `logreg` row")
    rp.add_argument("--rows", nargs="+", default=None,
                    help="recipe names (default: every row of the paper's comparison; `all`: also ASL)")
    rp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per row (default: 0 1 2)")
    rp.add_argument("--out", default=None, help="default: runs/<benchmark>")
    rp.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    rp.add_argument("--fresh", action="store_true", help="retrain finished runs instead of reusing them")
    rp.add_argument("--no-progress", action="store_true")
    rp.set_defaults(func=_cmd_reproduce)

    pt = sub.add_parser("pretrain", help="pretrain a backbone on a balanced single-label image folder (or the "
                        "built-in source set) and write weights that `weights=PATH` loads")
    pt.add_argument("data", help="an ImageFolder tree ROOT/<class>/<image>, or `builtin` (the built-in source set)")
    pt.add_argument("--out", help="weights file to write (.pth); for `builtin`: see --cache")
    pt.add_argument("--cache", default="demo_data/pretrained",
                    help="for `builtin`: where the source set and the weights are cached (default: demo_data/pretrained)")
    pt.add_argument("--backbone", default="small_cnn", help="small_cnn or a torchvision model name (default small_cnn)")
    pt.add_argument("--image-size", type=int, default=32)
    pt.add_argument("--epochs", type=int, default=6)
    pt.add_argument("--batch-size", type=int, default=64)
    pt.add_argument("--lr", type=float, default=0.1)
    pt.add_argument("--per-class", type=int, default=300, help="for `builtin`: source images per class")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--workers", type=int, default=0)
    pt.add_argument("--device", default="auto")
    pt.add_argument("--no-progress", action="store_true")
    pt.set_defaults(func=_cmd_pretrain)

    r = sub.add_parser("report", help="gather finished runs into a Markdown + HTML report")
    r.add_argument("runs", nargs="+", help="run directories (each with metrics.json), or a row's folder whose "
                   "seed<k>/ runs it shows as mean ± sd over the seeds (e.g. runs/demo/rs)")
    r.add_argument("--out", required=True)
    r.add_argument("--baseline", help="run name the increment figure compares against (default: rs)")
    r.add_argument("--compare", help="run name whose increment is shown (default: the db-focal run)")
    r.set_defaults(func=_cmd_report)

    a = sub.add_parser("analyze", help="the paper's analyses: loss gradients, re-sampling, re-balancing weights")
    a.add_argument("what", choices=["gradients", "resampling", "weights"])
    a.add_argument("--labels", help="label CSV (image_id + one 0/1 column per class)")
    a.add_argument("--out", required=True)
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=_cmd_analyze)

    dt = sub.add_parser("data", help="data utilities")
    dsub = dt.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("stats", help="label statistics and head/medium/tail split of a label CSV")
    s.add_argument("labels")
    s.add_argument("--out", help="write LabelStats JSON here")
    lt = dsub.add_parser("longtail", help="build a long-tailed subset (the paper's construction) from a label CSV")
    lt.add_argument("labels")
    lt.add_argument("--max-count", type=int, default=800, help="800 for VOC, 1200 for COCO")
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--out", required=True, help="id list to write")
    fs = dsub.add_parser("fetch-subset", help="download (or copy) a published VOC-MLT/COCO-MLT id list, checksummed")
    fs.add_argument("name", help="voc-mlt or coco-mlt")
    fs.add_argument("--dest", default="data/published")
    fs.add_argument("--source", help="a local copy to verify and copy instead of downloading")
    dl = dsub.add_parser("download", help="download and unpack VOC 2007 / VOC 2012 / COCO 2017 (resumable, "
                         "checksummed) with the published VOC-MLT / COCO-MLT id lists")
    dl.add_argument("name", choices=["voc-mlt", "coco-mlt", "voc2007", "voc2012", "coco2017"],
                    help="a benchmark's data (voc-mlt: VOC 2012 trainval + VOC 2007 + the VOC-MLT list; coco-mlt: "
                    "COCO 2017 + the COCO-MLT list) or one data set")
    dl.add_argument("--dest", default="data", help="the data folder the recipes read (default: data)")
    dl.add_argument("--mirror", default=None, help="a URL prefix serving the same file names (default: $DBLOSS_MIRROR, "
                    "else the official hosts)")
    dl.add_argument("--keep-archives", action="store_true", help="keep the archives after extraction")
    dl.add_argument("--no-subset", action="store_true", help="do not fetch the published id list")
    dl.add_argument("--no-progress", action="store_true")
    md = dsub.add_parser("make-demo", help="generate the built-in demo dataset")
    md.add_argument("out")
    md.add_argument("--seed", type=int, default=0)
    sf = dsub.add_parser("synth-features", help="generate a long-tailed multi-label feature set at scale "
                         "(train.npz / test.npz for dataset=features)")
    sf.add_argument("--out", required=True, help="output folder (matching files there are reused)")
    sf.add_argument("--train", type=int, help="training items (default 25000)")
    sf.add_argument("--test", type=int, help="test items (default 6000)")
    sf.add_argument("--classes", type=int, help="classes (default 500)")
    sf.add_argument("--dim", type=int, help="feature dimension (default 256)")
    sf.add_argument("--seed", type=int, help="random seed (default 0)")
    sf.add_argument("--noise", type=float, help="latent noise level: sets the difficulty (default 2.25)")
    sf.add_argument("--force", action="store_true", help="regenerate even if matching files exist")
    dt.set_defaults(func=_cmd_data)

    rc = sub.add_parser("recipes", help="list the shipped recipes")
    rc.set_defaults(func=_cmd_recipes)

    kn = sub.add_parser("kernel", help="build the fused CPU kernel of the DB losses now and check it")
    kn.set_defaults(func=_cmd_kernel)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, TrainingFailedError) as e:  # bad input (UsageError is a ValueError), files, a
        # run that diverged or collapsed (dbloss.training.health); bugs surface
        if args.verbose:
            raise
        print(f"dbloss {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()  # under torchrun: the process group ends with the command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
