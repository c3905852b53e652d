"""``predict`` (label, overlay and probability files) and ``evaluate`` (scores against masks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unet_patches.errors import UserError
from unet_patches.files.formats import FORMAT_CHOICES, PROBS_DTYPES
from unet_patches.inference.config import inference_settings
from unet_patches.inference.tiling.padding import PADDING_MODES
from unet_patches.inference.tiling.weights import BLEND_MODES
from unet_patches.runtime import PRECISIONS

from .flags import add_params, overrides_from, params_path, setting, switch

__all__ = ["add_evaluate", "add_predict", "inference_options"]

CHECKPOINT_HELP = (
    "a best.pt / last.pt written by training; several joined by commas, or a run folder (its snapshot_NN.pt "
    "files), are averaged as one ensemble; or a model.onnx from 'export' (with its model.onnx.json), run by "
    "ONNX Runtime on the CPU"
)


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    setting(
        p,
        "--window",
        key="inference.window",
        type=_window,
        help="window size in pixels, 'patch' (the training patch size) or 'auto' (sized for speed from the "
        "model and the image)",
    )
    setting(
        p,
        "--overlap",
        key="inference.overlap",
        type=_overlap,
        help="window overlap, a fraction in [0, 1), or 'auto' (chosen from the model for auto windows, else 0.5)",
    )
    setting(
        p,
        "--batch-size",
        key="inference.batch_size",
        type=int,
        help="windows of the training patch size per forward pass (larger windows go proportionally fewer)",
    )
    setting(p, "--blend", key="inference.blend", choices=BLEND_MODES.names, help="how overlapping windows are weighted")
    setting(
        p,
        "--padding",
        key="inference.padding",
        choices=PADDING_MODES.names,
        help="padding for images smaller than a window",
    )
    switch(
        p,
        "--tta",
        key="inference.tta",
        value=True,
        help="flip test-time augmentation (4 flips, batched together) (default: inference.tta)",
    )
    setting(
        p,
        "--precision",
        key="inference.precision",
        choices=PRECISIONS.names,
        help="autocast precision, or int8 (OpenVINO + NNCF, checked by an accuracy guard, cached in "
        "<checkpoint>.int8/; auto picks it on VNNI/AMX CPUs once cached)",
    )
    switch(
        p,
        "--compile",
        key="inference.compile",
        value=True,
        help="run the network through torch.compile: seconds to compile per window shape, then faster passes "
        "(default: inference.compile, auto: when the planned work repays it)",
    )
    switch(p, "--no-compile", key="inference.compile", value=False, help="never compile the network")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument(
        "--page",
        type=int,
        default=None,
        help="page of multi-page TIFFs, from 0 (default: the training run's data.page)",
    )
    add_params(p)


def _level(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a pyramid level 0, 1, 2, ... (0: full resolution)")
    return int(text)


def _window(text: str) -> int | str:
    """``--window``: ``auto``, ``patch`` or a whole number (its range is checked with the settings)."""
    if text in ("auto", "patch"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, patch or a size in pixels such as 256") from None


def _overlap(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or a fraction such as 0.5") from None


def inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``inference`` settings of the parameters file and the flags, as predictor options (the
    file's training sections are not read, so this needs no torch)."""
    overrides = overrides_from(args).get("inference")
    return inference_settings(params_path(args.params), overrides).predictor_options()


def load_segmenter(args: argparse.Namespace):
    """The checkpoint's (or ONNX export's) Segmenter, reading the TIFF page of ``--page`` when given.

    Called by every inference command before any work, so it first sets up the heap for tiled
    prediction: glibc fixes its arena limit when a thread first needs an arena, which the predictor
    itself would do too late (:func:`~unet_patches.runtime.keep_freed_memory`)."""
    from dataclasses import replace

    from unet_patches.runtime import keep_freed_memory

    keep_freed_memory()
    from unet_patches.inference.segmenter import Segmenter
    from unet_patches.validate import require_int

    segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device)
    if args.page is None:
        return segmenter
    require_int("--page", args.page, 0)
    return replace(segmenter, preprocess=replace(segmenter.preprocess, page=args.page))


def add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images of any size with sliding windows",
        description="Segment image files, folders or glob patterns with overlapping windows whose "
        "softmax probabilities are blended, then argmax. Writes <name>_labels.png (or .tif "
        "for very large images; --format ome-tiff or zarr for viewers), <name>_overlay.png and, "
        "with --probs, one probability map per class. Large TIFFs are streamed band by band with bounded memory.",
    )
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--probs", action="store_true", help="also write per-class probability maps")
    p.add_argument(
        "--format",
        dest="output_format",
        choices=FORMAT_CHOICES,
        default="auto",
        help="labels as png, tiff (tiled, compressed), ome-tiff (tiled, with a pyramid: QuPath, napari) or zarr "
        "(probabilities too); auto: png, or tiff above 16 Mpx",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="predict only shard I of N of the files (I from 0; sorted by path, every N-th), skipping images "
        "already predicted; one image is split by rows instead, every shard filling in its chunk rows of one "
        "Zarr store. torchrun's RANK/WORLD_SIZE or a SLURM array set it by themselves. "
        "Then: unet-patches merge-report OUT (under torchrun rank 0 writes the report itself)",
    )
    p.add_argument(
        "--probs-dtype",
        choices=PROBS_DTYPES,
        default="uint8",
        help="with --format zarr --probs: probabilities as uint8 (round(255 p), the default) or float16",
    )
    p.add_argument(
        "--level",
        type=_level,
        default=0,
        metavar="N",
        help="pyramid level of TIFF / OME-TIFF / Zarr inputs to predict (0: full resolution, the default)",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write <name>_uncertainty (in the labels' format): the entropy of the calibrated probabilities, "
        "0 (sure) to 255 (all classes alike), and OUT/report.json with each image's mean uncertainty, share of "
        "uncertain pixels, classes involved and most uncertain 512 x 512 regions",
    )
    p.add_argument(
        "--review",
        type=int,
        default=0,
        metavar="N",
        help="with --uncertainty: list the N images most worth a human look, and in each the N most uncertain "
        "regions (up to 10)",
    )
    p.add_argument("--no-overlay", action="store_true", help="do not write colour overlays")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_inference_arguments(p)
    p.set_defaults(run=_predict)


def _predict(args: argparse.Namespace) -> int:
    from unet_patches.files.shards import shard_from
    from unet_patches.inference.predict import predict_files

    shard = shard_from(args.shard)
    if args.review < 0 or (args.review and not args.uncertainty):
        raise UserError(f"--review {args.review}: expected a count >= 1 of images to list, with --uncertainty")
    options = inference_options(args)
    segmenter = load_segmenter(args)
    written = predict_files(
        segmenter,
        args.inputs,
        args.out,
        probs=args.probs,
        overlay=not args.no_overlay,
        overwrite=args.overwrite,
        output_format=args.output_format,
        shard=shard,
        level=args.level,
        probs_dtype=args.probs_dtype,
        progress=not args.no_progress,
        uncertainty=args.uncertainty,
        **options,
    )
    print(f"wrote {len(written)} files to {args.out}" + (f" ({shard.describe()})" if shard else ""))
    if args.review:
        _print_review(written.uncertainty, args.review)
    if written.busy:
        names = ", ".join(str(p) for p in written.busy)
        print(f"left {len(written.busy)} image(s) to another prediction writing into {args.out}: {names}")
    return 0


def _print_review(summaries: dict[str, Any], count: int) -> None:
    from unet_patches.metrics.uncertainty import review_order

    ranked = review_order(summaries, count)
    print(f"review first ({len(ranked)} of {len(summaries)} images, most uncertain first):")
    for entry in ranked:
        classes = ", ".join(entry["uncertain_classes"]) or "none"
        print(
            f"  {entry['image']}: mean uncertainty {entry['mean_uncertainty']:.3f}, "
            f"{100 * entry['uncertain_share']:.1f} % of pixels above {entry['threshold']:g} (classes: {classes})"
        )
        regions = entry["regions"]
        if len(regions) > 1:
            for region in regions[:count]:
                print(
                    f"    region x {region['x']}, y {region['y']} ({region['width']} x {region['height']}): "
                    f"{region['mean_uncertainty']:.3f}"
                )


def add_merge_report(sub: Any) -> None:
    p = sub.add_parser(
        "merge-report",
        help="join the reports of a sharded predict into OUT/report.json",
        description="After predict --shard I/N (or under torchrun or a SLURM array) into OUT, join the "
        "shards' reports (OUT/.shards/) into OUT/report.json: files written, images skipped, shards missing.",
    )
    p.add_argument("out", help="the output folder of the sharded predict")
    p.set_defaults(run=_merge_report)


def _merge_report(args: argparse.Namespace) -> int:
    from unet_patches.files.shards import merge_report

    merged = merge_report(args.out)
    missing = f"; shards still missing: {merged['missing']}" if merged["missing"] else ""
    print(
        f"{args.out}/report.json: {len(merged['finished'])} of {merged['shards']} shards, "
        f"{len(merged['written'])} files written, {len(merged['skipped'])} images skipped"
        + (f", {len(merged['busy'])} left to another prediction" if merged["busy"] else "")
        + missing
    )
    return 0


def add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score full-image predictions against masks",
        description="Predict every image of DATA_DIR/images with sliding windows and score against "
        "DATA_DIR/masks: per-class IoU and Dice and their means from one confusion matrix "
        "over the whole folder. Classes absent from truth and prediction are left out. Also how far the "
        "probabilities can be believed, over every pixel: expected calibration error (15 bins, and per "
        "class), NLL and Brier score, calibrated by the checkpoint's temperature and uncalibrated.",
    )
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("data_dir", help="folder with images/ and masks/")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (miou, iou, dice, ece, nll, brier, ece_uncalibrated, ...)",
    )
    p.add_argument(
        "--report",
        metavar="PATH.json",
        help="also write the scores as JSON to PATH.json, and a reliability diagram beside it (PATH_reliability.png)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --report and its diagram")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_inference_arguments(p)
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from unet_patches.inference.predict import evaluate_folder

    report = _report_paths(args.report, args.overwrite) if args.report else None
    options = inference_options(args)
    segmenter = load_segmenter(args)
    progress = not args.no_progress and not args.json
    scores = evaluate_folder(segmenter, args.data_dir, progress=progress, calibration=True, **options)
    if report is not None:
        _write_report(scores, *report)
    if args.json:
        print(json.dumps(scores))
        return 0
    print(f"{scores['images']} images, window {options['window']}, overlap {options['overlap']}")
    print(f"{'class':<14}{'IoU':>8}{'Dice':>8}{'ECE':>8}")
    for name in scores["iou"]:
        iou, dice, ece = scores["iou"][name], scores["dice"][name], scores["ece_per_class"][name]
        print(f"{name:<14}{_fmt(iou):>8}{_fmt(dice):>8}{ece:>8.4f}")
    print(f"{'mean':<14}{scores['miou']:>8.4f}{scores['mean_dice']:>8.4f}")
    print(
        f"probabilities (temperature {scores['temperature']:.3f}): ECE {scores['ece']:.4f}, NLL {scores['nll']:.4f}, "
        f"Brier {scores['brier']:.4f}; uncalibrated: ECE {scores['ece_uncalibrated']:.4f}, "
        f"NLL {scores['nll_uncalibrated']:.4f}, Brier {scores['brier_uncalibrated']:.4f}"
    )
    if report is not None:
        print(f"wrote {report[0]} and {report[1]}")
    return 0


def _report_paths(report: str, overwrite: bool) -> tuple[Path, Path]:
    """``--report``'s JSON path and its reliability diagram's, checked before any work."""
    path = Path(report)
    if path.suffix.lower() != ".json":
        raise UserError(f"--report {report}: expected a .json path (the diagram goes beside it as _reliability.png)")
    diagram = path.with_name(f"{path.stem}_reliability.png")
    for target in (path, diagram):
        if target.exists() and not overwrite:
            raise UserError(f"{target}: already exists; pass --overwrite to replace it, or choose another --report")
        if target.is_dir():
            raise UserError(f"{target}: is a folder; --report names a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{path.parent}: is a file; --report needs a folder there")
    return path, diagram


def _write_report(scores: dict[str, Any], path: Path, diagram: Path) -> None:
    from unet_patches.atomic import write_atomically
    from unet_patches.metrics.calibration import reliability_diagram

    path.parent.mkdir(parents=True, exist_ok=True)
    bins = scores["reliability"]
    title = f"ECE {scores['ece']:.4f} (uncalibrated {scores['ece_uncalibrated']:.4f}), T = {scores['temperature']:.3f}"
    write_atomically(diagram, lambda tmp: reliability_diagram(tmp, bins["calibrated"], bins["uncalibrated"], title))
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(scores, indent=2) + "\n"))


def _fmt(value: float | None) -> str:
    return "absent" if value is None else f"{value:.4f}"
