"""Predict image files: expand inputs, choose in-memory or streamed, write labels/overlays/probabilities.

Outputs for an input ``<stem>.<ext>`` in ``out_dir``:

- ``<stem>_labels.png`` (8-bit class indices), or ``<stem>_labels.tif`` for an image larger than
  ``stream_threshold_px`` pixels;
- ``<stem>_overlay.png``: class colours over the image (``overlay=True``);
- ``<stem>_probs.npy``: float32 ``(K, H, W)`` probabilities (``probs=True``); open it with
  ``numpy.load(path, mmap_mode="r")``.

Every output is written band by band through a temporary file, so even the in-memory path never
holds more than one copy of the image; large TIFFs are also read band by band.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from unet_patches.errors import UserError
from unet_patches.imageio import IMAGE_SUFFIXES, colour_overlay, image_to_array, read_image

from .engine import TiledPredictor
from .sources import TIFF_SUFFIXES, ArraySource, RawSource, RowSource, TiffSource, image_size
from .writers import BandWriter, NpyWriter, PngWriter, TiffWriter

__all__ = ["DEFAULT_STREAM_THRESHOLD_PX", "expand_inputs", "output_paths", "predict_files"]

log = logging.getLogger(__name__)

# Above this many pixels an image is streamed (TIFF read by bands, labels written as TIFF).
DEFAULT_STREAM_THRESHOLD_PX = 4096 * 4096
_OUTPUT_TAGS = ("_labels", "_overlay", "_probs")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _is_our_output(path: Path) -> bool:
    return path.stem.endswith(_OUTPUT_TAGS)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their images, not recursive) and glob patterns -> image files, in order, once.

    Files found through a folder or pattern whose stem ends in ``_labels`` / ``_overlay`` /
    ``_probs`` are skipped (they are this tool's outputs). Raises ``UserError`` for a missing file, a
    folder without images, or a pattern that matches no image.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if _is_image(p) and not _is_our_output(p))
            if not matches:
                raise UserError(
                    f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}); give another folder or files"
                )
        elif path.exists():
            if not path.is_file():
                raise UserError(f"{path}: is not a file or folder; give image files, folders or patterns")
            matches = [path]
        elif glob.has_magic(text):
            matches = sorted(
                p for p in map(Path, glob.glob(text)) if _is_image(p) and not _is_our_output(p)
            )
            if not matches:
                raise UserError(f"{text}: pattern matches no image files; check the pattern (quote it in the shell)")
        else:
            raise UserError(f"{path}: file not found; check the path")
        found.extend(matches)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise UserError("no input images given; pass image files, folders or patterns")
    return unique


def output_paths(
    image: Path, out_dir: Path, *, large: bool, overlay: bool, probs: bool
) -> dict[str, Path]:
    """The files :func:`predict_files` writes for ``image``: keys ``labels``, ``overlay``, ``probs``."""
    stem = image.stem
    paths = {"labels": out_dir / f"{stem}_labels{'.tif' if large else '.png'}"}
    if overlay:
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    if probs:
        paths["probs"] = out_dir / f"{stem}_probs.npy"
    return paths


def predict_files(
    model: nn.Module | TiledPredictor,
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    window: int | Sequence[int] = 96,
    in_channels: int | None = None,
    probs: bool = False,
    overlay: bool = True,
    overwrite: bool = False,
    stream_threshold_px: int = DEFAULT_STREAM_THRESHOLD_PX,
    progress: bool = True,
    **options: Any,
) -> list[Path]:
    """Segment image files and write their outputs to ``out_dir``; returns the written paths.

    ``model`` is a network (logits out) or a ready :class:`TiledPredictor` (then ``window`` and
    ``options`` are ignored). ``options`` are :class:`TiledPredictor`'s keyword arguments (overlap,
    batch_size, blend, padding, tta, precision, compile, device, ...). ``in_channels`` defaults to the model's
    ``in_channels`` or ``config.in_channels`` attribute, else 1.

    Before anything is written, every input is opened (its header read) and every output path is checked
    to be free: an existing output raises ``UserError`` unless ``overwrite``. Images above
    ``stream_threshold_px`` pixels are streamed: TIFFs are read by bands of rows and labels are
    written as TIFF; peak memory then does not grow with the image size.
    """
    files = expand_inputs(inputs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; pick another output folder")
    if in_channels is None:
        network = model._eager if isinstance(model, TiledPredictor) else model
        config = getattr(network, "config", None)
        in_channels = int(getattr(network, "in_channels", getattr(config, "in_channels", 1)))

    plans: list[tuple[Path, tuple[int, int], bool, dict[str, Path]]] = []
    for path in files:
        size = image_size(path)
        large = size[0] * size[1] > stream_threshold_px
        plans.append((path, size, large, output_paths(path, out_dir, large=large, overlay=overlay, probs=probs)))
    every_output = [p for *_, outs in plans for p in outs.values()]
    if len(set(every_output)) != len(every_output):
        seen: set[Path] = set()
        clash = next(p for p in every_output if p in seen or seen.add(p))  # type: ignore[func-returns-value]
        raise UserError(
            f"two inputs would both write {clash} (same file name in different folders); "
            "predict them into different output folders"
        )
    existing = [p for p in every_output if p.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UserError(
            f"{existing[0]} already exists{more}; pass --overwrite (overwrite=True) to replace, "
            "or choose another output folder"
        )

    predictor = (
        model
        if isinstance(model, TiledPredictor)
        else TiledPredictor(model, window, **options)
    )
    written: list[Path] = []
    for path, size, large, outs in tqdm(plans, unit="image", desc="predict", disable=not progress or len(plans) < 2):
        source: RowSource
        if large and path.suffix.lower() in TIFF_SUFFIXES:
            source = TiffSource(path, in_channels)
        elif large:
            source = RawSource(read_image(path), in_channels, str(path))
        else:
            source = ArraySource(image_to_array(read_image(path), in_channels, str(path)))
        with source:
            windows_bar = progress and (large or predictor.count_windows(size) >= 1024)
            written.extend(_predict_one(predictor, source, outs, large, windows_bar))
        log.info("%s -> %s", path, ", ".join(str(p) for p in outs.values()))
    return written


def _predict_one(
    predictor: TiledPredictor, source: RowSource, outs: dict[str, Path], large: bool, progress: bool
) -> list[Path]:
    height, width = source.height, source.width
    writers: dict[str, BandWriter] = {}
    try:
        writers["labels"] = (TiffWriter if large else PngWriter)(outs["labels"], height, width)
        if "overlay" in outs:
            writers["overlay"] = PngWriter(outs["overlay"], height, width, channels=3)
        for band in predictor.bands(source, probs="probs" in outs, progress=progress):
            stop = band.start + band.labels.shape[0]
            writers["labels"].write(band.labels)
            if "overlay" in writers:
                writers["overlay"].write(colour_overlay(source.read_rows(band.start, stop), band.labels))
            if "probs" in outs:
                assert band.probs is not None
                if "probs" not in writers:
                    writers["probs"] = NpyWriter(outs["probs"], band.probs.shape[0], height, width)
                writers["probs"].write(band.probs)
        return [writer.close() for writer in writers.values()]
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
