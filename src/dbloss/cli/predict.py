"""``dbloss predict`` and ``dbloss export``: the sub-commands of :mod:`dbloss.apps.predict` and
:mod:`dbloss.apps.export` (registered by ``dbloss.cli``).

Kept apart from ``cli.py`` as ``dbloss features`` is (:mod:`dbloss.cli.features`); the work is in
the library modules, imported only when a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_export_command", "add_predict_command"]


def _names(items: list[dict[str, str]], limit: int = 5) -> str:
    return ", ".join(s["path"] for s in items[:limit]) + (", ..." if len(items) > limit else "")


def _cmd_predict(args: argparse.Namespace) -> int:
    from dbloss.apps.predict import Predictor, predict_inputs, write_predictions

    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, backbone=args.backbone,
                                          backbone_weights=None if str(args.backbone_weights).lower() == "none"
                                          else args.backbone_weights,
                                          backbone_image_size=args.backbone_image_size, data_root=args.data_root)
    table = predict_inputs(predictor, args.inputs, threshold=args.threshold, top_k=args.top_k,
                           batch_size=args.batch_size, skip_bad=args.skip_bad, images_root=args.images,
                           path_column=args.path_column, id_column=args.id_column, workers=args.workers,
                           progress=not args.no_progress)
    written = write_predictions(table, args.out, args.format)
    print(f"{written['predictions']}: {len(table)} of {table.num_inputs} inputs predicted ({predictor.checkpoint}, "
          f"{len(table.class_names)} classes, labels by {table.decision})")
    if table.skipped:
        print(f"{len(table.skipped)} unreadable inputs left out: {_names(table.skipped)} "
              f"(all of them, with the reasons: {written['skipped']})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dbloss.apps.export import export_model

    res = export_model(args.checkpoint, args.format, args.out, atol=args.atol, opset=args.opset)
    check = "not checked (onnxruntime not installed)" if res.max_abs_diff is None else \
        f"checked against the checkpoint: max |score diff| {res.max_abs_diff:.1e}"
    print(f"{res.path}: {res.format}, preprocessed inputs -> sigmoid scores, dynamic batch; {check}; "
          f"classes, thresholds and preprocessing: {res.sidecar}")
    return 0


def add_predict_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``predict`` to the sub-commands ``sub`` (``ArgumentParser.add_subparsers()``)."""
    p = sub.add_parser("predict", help="scores and labels for new images (or .npz features) from a trained run: "
                       "CSV or JSON lines, one row per input")
    p.add_argument("checkpoint", help="a run folder (best.pt if present, else checkpoint.pt) or a checkpoint file")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive, sorted), a CSV of image paths, a "
                   "COCO-format JSON, or .npz features (feature models)")
    p.add_argument("--out", required=True, help="the predictions file (.csv or .jsonl)")
    p.add_argument("--format", choices=["csv", "jsonl"], help="default: from the --out file's ending")
    decide = p.add_mutually_exclusive_group()
    decide.add_argument("--threshold", type=float,
                        help="one threshold for every class (default: the run's per-class thresholds when it chose "
                        "them on validation, else its global one)")
    decide.add_argument("--top-k", type=int, help="predict the k highest-scoring classes of each input")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="image-reading worker processes (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable inputs out (named, counted and listed "
                   "in <out>.skipped.txt) instead of stopping at the first")
    p.add_argument("--images", help="folder that CSV / COCO image paths are relative to (default: the file's folder)")
    p.add_argument("--path-column", default="image", help="CSV: the image path column (default image)")
    p.add_argument("--id-column", help="CSV: the id column (default: the image path)")
    p.add_argument("--backbone", help="feature models: the backbone that embeds the images (the one the training "
                   "features came from, e.g. small_cnn, timm:NAME, clip:ARCH@TAG)")
    p.add_argument("--backbone-weights", default="DEFAULT",
                   help="its weights: DEFAULT, a local file, demo-source or none (default DEFAULT)")
    p.add_argument("--backbone-image-size", type=int,
                   help="its input size (default: as recorded in the training features, else the backbone's own)")
    p.add_argument("--data-root", default="demo_data", help="where demo-source weights are cached (default demo_data)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_predict)
    return p


def add_export_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``export`` to the sub-commands ``sub``."""
    e = sub.add_parser("export", help="a run's model as TorchScript or ONNX (preprocessed inputs -> sigmoid "
                       "scores, dynamic batch) with a JSON sidecar of classes, thresholds and preprocessing")
    e.add_argument("checkpoint", help="a run folder (best.pt if present, else checkpoint.pt) or a checkpoint file")
    e.add_argument("--format", choices=["torchscript", "onnx"], default="onnx", help="default onnx")
    e.add_argument("--out", help="the file to write (default: model.onnx / model.torchscript.pt in the run folder); "
                   "the sidecar is <out>.json")
    e.add_argument("--atol", type=float, default=1e-5,
                   help="largest score difference from the checkpoint the check after export accepts (default 1e-5)")
    e.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    e.set_defaults(func=_cmd_export)
    return e
