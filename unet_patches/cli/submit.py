"""``submit``: a Kaggle run-length submission (``img,pixels``) of every test image."""

from __future__ import annotations

import argparse
from typing import Any

from .inference import CHECKPOINT_HELP, add_inference_arguments, inference_options, load_segmenter

__all__ = ["add_submit"]


def add_submit(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="write a Kaggle run-length submission CSV",
        description="Predict every image of TEST_DIR with sliding windows (at its own size, resized and "
        "normalised as the checkpoint's training run did) and write one CSV row per image: "
        "'img,pixels', the image id (its file name without extension) and the mask of one "
        "foreground class as 1-based, column-major 'start length' pairs (empty for an empty mask), "
        "rows sorted by id.",
    )
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("inputs", nargs="+", metavar="TEST_DIR", help="folder of test images (or image files, patterns)")
    p.add_argument("-o", "--out", required=True, help="the CSV file to write, e.g. submission.csv")
    p.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        help="the foreground class to encode (default: the only one of a two-class model)",
    )
    p.add_argument(
        "--min-area",
        type=int,
        default=0,
        metavar="N",
        help="write an empty mask where the predicted mask has fewer than N pixels (default: 0, keep all)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_inference_arguments(p)
    p.set_defaults(run=_submit)


def _submit(args: argparse.Namespace) -> int:
    from unet_patches.deploy.submission import write_submission
    from unet_patches.validate import require_int

    min_area = require_int("--min-area", args.min_area, 0)
    options = inference_options(args)
    segmenter = load_segmenter(args)
    summary = write_submission(
        segmenter,
        args.inputs,
        args.out,
        class_name=args.class_name,
        min_area=min_area,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **options,
    )
    dropped = f", {summary['dropped']} below --min-area" if min_area else ""
    print(
        f"wrote {summary['rows']} rows to {summary['path']} (class {summary['class']}: "
        f"{summary['empty']} empty masks{dropped})"
    )
    return 0
