"""Serving a checkpoint over HTTP as an MLflow pyfunc model (``unet-patches export CKPT --format mlflow -o DIR``,
then ``mlflow models serve -m DIR --env-manager local``). Needs ``pip install unet-patches[mlflow]``;
nothing else in the package imports this module, so the toolkit works without MLflow.

The model folder holds the checkpoint as an artifact; the server rebuilds it on the CPU with
:meth:`~unet_patches.inference.segmenter.Segmenter.from_checkpoint` and segments each request with the tiling engine
(one :class:`~unet_patches.inference.job.PredictionJob` for all requests), so any image size up to
:data:`MAX_PIXELS` works.

Input: a table with a column ``image`` of encoded image files (PNG, TIFF, JPEG, BMP: whatever
:func:`~unet_patches.data.imageio.read_image` reads), raw bytes from Python or base64 strings in JSON::

    POST /invocations  {"dataframe_split": {"columns": ["image"], "data": [["iVBORw0KGgo..."]]}}

Output: one row per image with ``labels`` (a base64 PNG of the uint8 ``(H, W)`` class indices),
``height``, ``width`` and, always, ``area_<class>``: the number of pixels of each class::

    {"predictions": [{"labels": "iVBORw0KGgo...", "height": 64, "width": 80, "area_background": 4012, ...}]}

An image that cannot be decoded, or one over :data:`MAX_PIXELS` (checked from the file's header,
before decoding), raises ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which the scoring
server answers with HTTP 400 and the message; the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unet_patches.data.imageio import read_image
from unet_patches.errors import UserError
from unet_patches.inference.job import PredictionJob
from unet_patches.inference.segmenter import Segmenter

# SegmenterModel (an MLflow PythonModel) is also here, made on first access: `serving.SegmenterModel`.
__all__ = [
    "IMAGE_COLUMN",
    "MAX_PIXELS",
    "decode_image",
    "encode_png",
    "export_mlflow",
    "require_mlflow",
    "segment_table",
]

IMAGE_COLUMN = "image"
# Larger images would take minutes and gigabytes per request; split them or use `unet-patches predict`.
MAX_PIXELS = 50_000_000
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def require_mlflow() -> Any:
    """The ``mlflow`` module, or ``UserError`` saying how to install it."""
    try:
        import mlflow
        import mlflow.pyfunc
    except ImportError as exc:
        raise UserError(f"the mlflow export format needs MLflow ({exc}); pip install 'unet-patches[mlflow]'") from exc
    return mlflow


def decode_image(data: bytes | str, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An encoded image file (bytes, or a base64 string) as the array :func:`read_image` gives for the file.

    The bytes go through a temporary file so that requests are decoded exactly as ``predict`` reads files.

    Raises:
        UserError: not an image (or not base64), or more than ``max_pixels`` pixels.
    """
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UserError(f"{name}: not valid base64 ({exc}); send the file's bytes base64-encoded") from exc
    if not isinstance(data, (bytes, bytearray)):
        raise UserError(f"{name}: got {type(data).__name__}; expected the bytes of an image file (base64 in JSON)")
    if not data:
        raise UserError(f"{name}: empty; expected the bytes of an image file")
    _check_size(bytes(data), name, max_pixels)
    suffix = ".tif" if bytes(data[:4]) in _TIFF_MAGIC else ".img"  # read_image picks tifffile by suffix
    handle, tmp = tempfile.mkstemp(prefix="unet-patches-request-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        try:
            raw = read_image(tmp)
        except UserError as exc:  # name the request, not the temporary file
            raise UserError(str(exc).replace(tmp, name)) from exc
    finally:
        os.unlink(tmp)
    if raw.shape[0] * raw.shape[1] > max_pixels:
        raise UserError(_too_large(name, raw.shape[1], raw.shape[0], max_pixels))
    return raw


def _check_size(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse an image whose header claims more than ``max_pixels`` pixels, before decoding it.
    Headers that Pillow cannot read are left to :func:`read_image` (TIFFs it does not know, broken files)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise UserError(f"{name}: too large to decode ({exc}); at most {max_pixels} pixels per request") from exc
    except Exception:  # noqa: BLE001 - any failure here is reported by the real decoder below
        return
    if width * height > max_pixels:
        raise UserError(_too_large(name, width, height, max_pixels))


def _too_large(name: str, width: int, height: int, max_pixels: int) -> str:
    return (
        f"{name}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} per request; "
        "split the image or segment it with `unet-patches predict`"
    )


def _column_name(class_name: str) -> str:
    return "area_" + re.sub(r"\W+", "_", class_name).strip("_")


def encode_png(labels: np.ndarray) -> str:
    """uint8 ``(H, W)`` labels as a base64 PNG string."""
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def segment_table(job: PredictionJob, table: Any, max_pixels: int = MAX_PIXELS) -> Any:
    """One output row (``labels``, ``height``, ``width``, ``area_<class>``) per ``image`` of ``table``
    (a pandas DataFrame, see the module docstring), predicted by ``job``.

    Raises:
        UserError: no ``image`` column, or a row that is not an image or is too large (naming the row).
    """
    import pandas as pd

    if not isinstance(table, pd.DataFrame) or IMAGE_COLUMN not in table.columns:
        got = list(table.columns) if isinstance(table, pd.DataFrame) else type(table).__name__
        raise UserError(f"input {got}: expected a table with a column {IMAGE_COLUMN!r} of encoded images")
    rows = []
    for i, data in enumerate(table[IMAGE_COLUMN]):
        raw = decode_image(data, f"row {i}", max_pixels)
        labels = job.labels(raw, name=f"row {i}")
        counts = np.bincount(labels.ravel(), minlength=job.segmenter.num_classes)
        row: dict[str, Any] = {"labels": encode_png(labels), "height": labels.shape[0], "width": labels.shape[1]}
        row.update({_column_name(c): int(n) for c, n in zip(job.segmenter.class_names, counts)})
        rows.append(row)
    return pd.DataFrame(rows)


def _model_class() -> type:
    """``SegmenterModel``, built once on first use so that importing this module needs no MLflow."""
    if "SegmenterModel" in globals():
        return globals()["SegmenterModel"]
    mlflow = require_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class SegmenterModel(mlflow.pyfunc.PythonModel):
        """A checkpoint served by MLflow: ``predict`` is :func:`segment_table`; user errors become HTTP 400."""

        def load_context(self, context: Any) -> None:
            # One job for every request: its settings are decided once (int8 only when cached, never
            # compiled), its predictors kept per window shape.
            segmenter = Segmenter.from_checkpoint(context.artifacts["checkpoint"], device="cpu")
            self.job = PredictionJob(segmenter, compile=False)

        def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
            try:
                return segment_table(self.job, model_input)
            except UserError as exc:
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc

    SegmenterModel.__module__ = __name__
    SegmenterModel.__qualname__ = "SegmenterModel"
    globals()["SegmenterModel"] = SegmenterModel
    return SegmenterModel


def __getattr__(name: str) -> Any:
    # The pickled model names its class by reference (unet_patches.deploy.serving.SegmenterModel): make it on demand.
    if name == "SegmenterModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def export_mlflow(checkpoint_path: str | Path, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write an MLflow pyfunc model folder serving one checkpoint (see the module docstring); returns ``path``.

    The folder is written beside ``path`` and renamed into place. ``overwrite`` replaces an existing
    MLflow model folder (one holding an ``MLmodel`` file), never another folder.

    Raises:
        UserError: MLflow missing, the checkpoint missing or unreadable, or ``path`` exists (without
            ``overwrite``, or not an MLflow model folder).
    """
    mlflow = require_mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    Segmenter.from_checkpoint(checkpoint_path, device="cpu")  # refuse a bad checkpoint before writing anything
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise UserError(f"{path} exists; choose another output folder or pass --overwrite")
        if not (path / "MLmodel").is_file():
            raise UserError(f"{path} exists and is not an MLflow model folder; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    signature = ModelSignature(inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]))
    try:
        mlflow.pyfunc.save_model(
            path=staging / "model",
            python_model=_model_class()(),
            artifacts={"checkpoint": str(checkpoint_path)},
            signature=signature,
            pip_requirements=["unet-patches", "mlflow"],
        )
        if path.exists():
            path.rename(staging / "old")
        (staging / "model").rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
