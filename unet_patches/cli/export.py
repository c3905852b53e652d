"""``export``: one checkpoint's network as an ONNX or TorchScript file, with a sidecar JSON, or the
checkpoint as an MLflow model folder to serve."""

from __future__ import annotations

import argparse
from typing import Any

from ..export import EXPORT_FORMATS

__all__ = ["add_export"]


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
    from ..export import export_checkpoint, sidecar_path

    output = "logits" if args.logits else "probabilities"
    path = export_checkpoint(args.checkpoint, args.out, args.format, output=output, overwrite=args.overwrite)
    if args.format == "mlflow":
        print(f"wrote {path} (mlflow); serve it with: mlflow models serve -m {path} --env-manager local")
        return 0
    print(f"wrote {path} ({args.format}, {output}) and {sidecar_path(path)}")
    return 0
