"""``export``: one checkpoint's network as an ONNX or TorchScript file, with a sidecar JSON, or the
checkpoint as an MLflow model folder to serve. ``calibrate``: a copy of a checkpoint with its
temperature fitted on a labelled folder, or with the int8 windows an old one lacks."""

from __future__ import annotations

import argparse
from typing import Any

from unet_patches.deploy.export import EXPORT_FORMATS

from .inference import add_inference_arguments, inference_options

__all__ = ["add_calibrate", "add_export"]


def add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint's network to ONNX or TorchScript",
        description="Write the network of one checkpoint as an ONNX graph or a TorchScript module: float32 "
        "(N, C, H, W) input named 'image', already preprocessed, to (N, K, H, W) softmax probabilities "
        "(or logits), with dynamic batch, height and width (multiples of 2 ** depth). A sidecar "
        "<PATH>.json holds what inference needs: classes, input channels, patch size, the size "
        "multiple and the preprocessing (normalisation and its statistics, resize). --format mlflow writes "
        "an MLflow model folder instead, served by `mlflow models serve -m PATH --env-manager local`: "
        "encoded images in, label PNGs and per-class areas out (see unet_patches/serving.py).",
    )
    p.add_argument("checkpoint", help="a best.pt / last.pt written by training (one checkpoint, not an ensemble)")
    p.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS.names,
        help="onnx (needs unet-patches[onnx]), torchscript or mlflow (needs unet-patches[mlflow])",
    )
    p.add_argument(
        "-o", "--out", required=True, metavar="PATH", help="the file to write, e.g. model.onnx (mlflow: a new folder)"
    )
    p.add_argument("--logits", action="store_true", help="output logits instead of softmax probabilities")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export and its sidecar")
    p.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from unet_patches.deploy.export import export_checkpoint, sidecar_path

    output = "logits" if args.logits else "probabilities"
    path = export_checkpoint(args.checkpoint, args.out, args.format, output=output, overwrite=args.overwrite)
    if args.format == "mlflow":
        print(f"wrote {path} (mlflow); serve it with: mlflow models serve -m {path} --env-manager local")
        return 0
    print(f"wrote {path} ({args.format}, {output}) and {sidecar_path(path)}")
    return 0


def add_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a checkpoint's temperature on a labelled folder; add int8 windows to old checkpoints",
        description="Write a copy of CHECKPOINT with what calibrates it. With --folder LABELLED_DIR (images/ + "
        "masks/): the temperature that calibrates its probabilities, fitted by negative log-likelihood on the "
        "folder's images predicted whole, with the expected calibration error, NLL and Brier score before and "
        "after. And the network-input windows that --precision int8 quantizes from and checks against, for a "
        "checkpoint written before checkpoints kept them: from the run's training data with its own split and "
        "preprocessing (or --training-folder); without --folder they are what is added. CHECKPOINT itself is "
        "never rewritten.",
    )
    p.add_argument("checkpoint", help="a best.pt / last.pt written by training")
    p.add_argument("-o", "--out", required=True, metavar="PATH", help="the new checkpoint, e.g. best_calibrated.pt")
    p.add_argument("--folder", metavar="LABELLED_DIR", help="fit the temperature on this images/ + masks/ folder")
    p.add_argument(
        "--training-folder",
        metavar="DIR",
        help="the training data the int8 windows come from (default: the run's training.folder)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    add_inference_arguments(p)
    p.set_defaults(run=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from unet_patches.deploy.calibrate import calibrate_checkpoint

    options = {**inference_options(args), "device": args.device}
    done = calibrate_checkpoint(
        args.checkpoint,
        args.out,
        folder=args.folder,
        training_folder=args.training_folder,
        overwrite=args.overwrite,
        options=options,
        page=args.page,
    )
    parts = []
    record = done["calibration"]
    if record is not None:
        before, after = record["before"], record["after"]
        parts.append(
            f"temperature {record['temperature']:.3f} fitted on {record['pixels']} pixels of {args.folder} "
            f"(ECE {before['ece']:.4f} -> {after['ece']:.4f}, NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
            f"Brier {before['brier']:.4f} -> {after['brier']:.4f})"
        )
    windows = done["int8_windows"]
    if windows is not None:
        parts.append(
            f"{windows['calibration']} int8 calibration and {windows['held_back']} held-back windows "
            "(predict with --precision int8, or auto)"
        )
    print(f"wrote {args.out}: " + "; ".join(parts))
    return 0
