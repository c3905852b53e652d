"""``export``: one checkpoint's network as an ONNX or TorchScript file, with a sidecar JSON, or the
checkpoint as an MLflow model folder to serve. ``calibrate``: a checkpoint written before checkpoints
kept int8 windows, given them."""

from __future__ import annotations

import argparse
from typing import Any

from unet_patches.deploy.export import EXPORT_FORMATS

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
        help="add int8 calibration windows to a checkpoint written before checkpoints kept them",
        description="Write a copy of CHECKPOINT with the network-input windows that --precision int8 "
        "quantizes from and checks against (up to 32 training windows to calibrate, up to 32 validation "
        "windows for the accuracy guard). Training stores them in every checkpoint it writes now; this "
        "command gives them to an older one. They are taken from the run's training data with the "
        "run's own split and preprocessing; with --folder, from that folder instead (per-dataset "
        "normalisation statistics are then those of that folder). CHECKPOINT itself is never rewritten.",
    )
    p.add_argument("checkpoint", help="a best.pt / last.pt written by training")
    p.add_argument("-o", "--out", required=True, metavar="PATH", help="the new checkpoint, e.g. best_int8.pt")
    p.add_argument("--folder", help="the training data (default: the run's training.folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(run=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from unet_patches.deploy.calibrate import add_int8_windows

    counts = add_int8_windows(args.checkpoint, args.out, args.folder, overwrite=args.overwrite)
    print(
        f"wrote {args.out}: {counts['calibration']} calibration and {counts['held_back']} held-back windows; "
        f"predict with it and --precision int8 (or auto)"
    )
    return 0
