"""``dbloss features``: the sub-command of :func:`dbloss.apps.embed.extract_features` (registered by ``dbloss.cli``).

Kept apart from ``cli.py`` so that the command line there stays one line per sub-command; the
work is in :mod:`dbloss.apps.embed`, imported only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from dbloss.errors import UsageError

__all__ = ["add_features_command"]


def _cmd_features(args: argparse.Namespace) -> int:
    from dbloss.apps.embed import extract_demo_features, extract_features

    common: dict[str, Any] = dict(weights=None if args.weights.lower() == "none" else args.weights,
                                  image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                                  workers=args.workers, skip_bad=args.skip_bad, cache_dir=args.cache,
                                  use_cache=not args.no_cache, progress=not args.no_progress)
    if args.dataset == "demo":
        if args.inputs:
            raise UsageError("`dbloss features --dataset demo` reads the built-in demo data: give no INPUTS")
        results = extract_demo_features(args.backbone, args.out, data_root=args.data_root, **common)
    else:
        if not args.inputs:
            raise UsageError("`dbloss features BACKBONE INPUTS... --out FILE.npz` needs INPUTS (images, folders, a "
                             ".csv or a COCO .json) or --dataset demo")
        results = {"": extract_features(args.backbone, args.inputs, args.out, data_root=args.data_root,
                                        images_root=args.images, path_column=args.path_column,
                                        label_column=args.label_column, **common)}
    for res in results.values():
        print(f"{res.path}: {res.num_rows} x {res.dim} features ({res.computed} computed, {res.cached} cached"
              + (f", {len(res.skipped)} unreadable images left out: "
                 + ", ".join(s["path"] for s in res.skipped[:5]) + (", ..." if len(res.skipped) > 5 else "")
                 if res.skipped else "") + f"); details: {res.json_path}")
    return 0


def add_features_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``features`` to the sub-commands ``sub`` (``ArgumentParser.add_subparsers()``)."""
    f = sub.add_parser("features", help="pooled embeddings of images from a frozen backbone (torchvision, timm:NAME, "
                       "clip:ARCH[@TAG]) into a .npz that dataset=features trains on; batched, cached, resumable")
    f.add_argument("backbone", help="resnet50 (torchvision), small_cnn, timm:NAME (e.g. timm:convnext_tiny) or "
                   "clip:ARCH[@PRETRAINED] (open_clip, e.g. clip:ViT-B-16@openai)")
    f.add_argument("inputs", nargs="*", help="image files, folders (recursive), a CSV of image paths with 0/1 label "
                   "columns, or a COCO-format JSON")
    f.add_argument("--out", required=True, help="the .npz to write (with --dataset demo: a folder for train.npz and "
                   "test.npz)")
    f.add_argument("--dataset", choices=["demo"], help="the built-in demo data (generated in --data-root if needed)")
    f.add_argument("--data-root", default="demo_data",
                   help="the demo data folder, and where weights=demo-source are cached (default demo_data)")
    f.add_argument("--weights", default="DEFAULT", help="DEFAULT (the published weights), a local weights file, "
                   "demo-source (small_cnn pretrained on the built-in source set), an open_clip tag, or none "
                   "(random init, seeded). Default DEFAULT")
    f.add_argument("--image-size", type=int, help="input size (default: the backbone's own, e.g. 224)")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:1, ...")
    f.add_argument("--workers", type=int, default=0, help="image-reading worker processes (default 0)")
    f.add_argument("--skip-bad", action="store_true",
                   help="leave unreadable images out (named and counted) instead of stopping at the first")
    f.add_argument("--images", help="folder that CSV / COCO image paths are relative to (default: the file's folder)")
    f.add_argument("--path-column", default="image", help="CSV: the image path column (default image)")
    f.add_argument("--label-column", help="CSV: a column of space-separated class names (default: 0/1 columns)")
    f.add_argument("--cache", help="cache folder (default: .features-cache beside the output)")
    f.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_cmd_features)
    return f
