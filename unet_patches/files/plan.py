"""Prediction files: expand inputs, plan and check the outputs, choose in-memory or streamed, write
labels/overlays/probabilities band by band (``api.predict_files`` puts these together).

Outputs for an input ``<stem>.<ext>`` in ``out_dir``:

- ``<stem>_labels.png`` (8-bit class indices), or ``<stem>_labels.tif`` (tiled, compressed) for an
  image larger than ``stream_threshold_px`` pixels; or as chosen (:data:`OUTPUT_FORMATS`):
  ``<stem>_labels.ome.tif`` (a pyramidal OME-TIFF), ``<stem>_labels.zarr`` (a Zarr store);
- ``<stem>_overlay.png``: class colours over the image (``overlay=True``);
- ``<stem>_probs.npy``: float32 ``(K, H, W)`` probabilities (``probs=True``); open it with
  ``numpy.load(path, mmap_mode="r")``; with the Zarr format ``<stem>_probs.zarr`` (uint8 ``round(255 p)``,
  or float16), with the OME-TIFF format ``<stem>_probs.ome.tif`` (one uint8 sample per class, a pyramid).

Every output is written band by band through a temporary file (``.<name>.part`` beside it), so even
the in-memory path never holds more than one copy of the image; large TIFFs are also read band by
band. A failure while writing leaves neither temporary files nor part of an image's outputs; the
temporary files a killed run leaves are removed by the next run that plans the same outputs.
"""

from __future__ import annotations

import glob
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_patches.data.imageio import IMAGE_SUFFIXES, colour_overlay, image_to_array, read_image
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError

from .slides import SLIDE_SUFFIXES
from .sources import (
    TIFF_SUFFIXES,
    ArraySource,
    NormalizedSource,
    RawSource,
    RowSource,
    image_size,
    is_zarr_store,
    open_lazily,
)
from .writers import (
    Band,
    BandWriter,
    NpyWriter,
    PngWriter,
    ProbabilityTiffWriter,
    TiffWriter,
    ZarrWriter,
    temporary_path,
)

__all__ = [
    "DEFAULT_STREAM_THRESHOLD_PX",
    "OUTPUT_FORMATS",
    "PROBS_DTYPES",
    "OutputPlan",
    "check_probs_dtype",
    "expand_inputs",
    "open_image",
    "output_paths",
    "plan_outputs",
    "read_whole",
    "remove_stale_parts",
    "write_outputs",
]

log = logging.getLogger(__name__)

# Above this many pixels an image is streamed (TIFF read by bands, labels written as TIFF).
DEFAULT_STREAM_THRESHOLD_PX = 4096 * 4096
_OUTPUT_TAGS = ("_labels", "_overlay", "_probs")

OUTPUT_FORMATS = {
    "auto": "png up to the streaming threshold, tiff above it",
    "png": "<stem>_labels.png, 8-bit class indices",
    "tiff": "<stem>_labels.tif, tiled and deflate-compressed (BigTIFF when large)",
    "ome-tiff": "<stem>_labels.ome.tif, a tiled OME-TIFF with a pyramid of sub-resolutions (QuPath, napari); "
    "probabilities too: <stem>_probs.ome.tif, a uint8 sample per class",
    "zarr": "<stem>_labels.zarr, a Zarr store in 512 x 512 chunks "
    "(probabilities too: <stem>_probs.zarr, uint8 or float16)",
}
"""``predict --format``: what the labels (and probabilities) of an image are written as."""
_LABEL_SUFFIXES = {"png": ".png", "tiff": ".tif", "ome-tiff": ".ome.tif", "zarr": ".zarr"}
_PROBS_SUFFIXES = {"ome-tiff": ".ome.tif", "zarr": ".zarr"}  # else float32 .npy
PROBS_DTYPES = ("uint8", "float16")
"""How a Zarr store keeps probabilities: ``round(255 p)`` or float16 (OME-TIFF: uint8 only)."""


def _is_image(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES + SLIDE_SUFFIXES) or is_zarr_store(path)


def _is_our_output(path: Path) -> bool:
    return path.stem.endswith(_OUTPUT_TAGS)


def _is_mask_beside_its_image(path: Path) -> bool:
    """``X_mask.tif`` next to ``X.tif`` (the Kaggle layout's masks, found through a folder)."""
    stem = path.stem
    return stem.endswith("_mask") and any(path.with_name(stem[:-5] + s).is_file() for s in (path.suffix, ".tif"))


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their images, not recursive) and glob patterns -> image files, in order, once.

    Files found through a folder or pattern whose stem ends in ``_labels`` / ``_overlay`` /
    ``_probs`` are skipped (they are this tool's outputs), and so are ``X_mask`` files found through a
    folder that holds ``X`` too (a Kaggle-layout ``train/`` folder). Raises ``UserError`` for a missing file, a
    folder without images, or a pattern that matches no image.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if is_zarr_store(path):
            matches = [path]  # a Zarr store is one image
        elif path.is_dir():
            matches = sorted(
                p for p in path.iterdir() if _is_image(p) and not _is_our_output(p) and not _is_mask_beside_its_image(p)
            )
            if not matches:
                raise UserError(
                    f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}, .zarr stores); "
                    "give another folder or files"
                )
        elif path.exists():
            if not path.is_file():
                raise UserError(f"{path}: is not a file or folder; give image files, folders or patterns")
            matches = [path]
        elif glob.has_magic(text):
            matches = sorted(p for p in map(Path, glob.glob(text)) if _is_image(p) and not _is_our_output(p))
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
    image: Path, out_dir: Path, *, large: bool, overlay: bool, probs: bool, output_format: str = "auto"
) -> dict[str, Path]:
    """The files a prediction of ``image`` writes: keys ``labels``, ``overlay``, ``probs``.
    ``output_format`` is a key of :data:`OUTPUT_FORMATS` (``auto``: tiff when ``large``, else png)."""
    if output_format not in OUTPUT_FORMATS:
        raise UserError(f"output format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    chosen = ("tiff" if large else "png") if output_format == "auto" else output_format
    stem = image.stem
    paths = {"labels": out_dir / f"{stem}_labels{_LABEL_SUFFIXES[chosen]}"}
    if overlay:
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    if probs:
        paths["probs"] = out_dir / f"{stem}_probs{_PROBS_SUFFIXES.get(chosen, '.npy')}"
    return paths


@dataclass(frozen=True)
class OutputPlan:
    """One input image and the files its prediction goes to (keys of :func:`output_paths`)."""

    image: Path
    size: tuple[int, int]
    large: bool  # streamed: TIFF read by bands, labels written as TIFF
    outputs: dict[str, Path]


def plan_outputs(
    files: Sequence[Path],
    out_dir: str | Path,
    *,
    overlay: bool,
    probs: bool,
    overwrite: bool,
    stream_threshold_px: int = DEFAULT_STREAM_THRESHOLD_PX,
    page: int | None = None,
    level: int = 0,
    output_format: str = "auto",
    skip_finished: bool = False,
) -> list[OutputPlan]:
    """Open every input (its header only) and check every output path before anything is written.

    ``skip_finished`` leaves out the inputs whose outputs all exist (a sharded job run again).
    When every check passes, the temporary files of the planned outputs that an interrupted run left
    behind (``.<output name>.part``, see :func:`remove_stale_parts`) are removed.

    Raises ``UserError`` for an unreadable input (a TIFF stack without ``page`` included), an output
    folder that is a file, two inputs that would write the same file, or an existing output without
    ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; pick another output folder")
    plans = []
    for path in files:
        size = image_size(path, page, level)
        large = size[0] * size[1] > stream_threshold_px
        plans.append(
            OutputPlan(
                path,
                size,
                large,
                output_paths(path, out_dir, large=large, overlay=overlay, probs=probs, output_format=output_format),
            )
        )
    if skip_finished:  # each output is put in place only when complete: all there means done
        plans = [plan for plan in plans if not all(p.exists() for p in plan.outputs.values())]
    every_output = [p for plan in plans for p in plan.outputs.values()]
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
    remove_stale_parts(every_output)
    return plans


def remove_stale_parts(outputs: Iterable[Path]) -> list[Path]:
    """Remove the temporary files of ``outputs`` left by a run that was killed while writing them.

    Only the exact names the writers use (``.<name>.part`` beside each output,
    :func:`~unet_patches.files.writers.temporary_path`) are touched, and only regular files; one log
    line names what was removed. Returns the removed paths.
    """
    removed = []
    for output in outputs:
        part = temporary_path(output)
        if part.is_file() and not part.is_symlink():
            part.unlink(missing_ok=True)
            removed.append(part)
        elif part.is_dir() and not part.is_symlink() and (part / "zarr.json").is_file():  # a Zarr store's
            shutil.rmtree(part)
            removed.append(part)
    if removed:
        log.info(
            "removed %d temporary file(s) left by an interrupted prediction: %s",
            len(removed),
            ", ".join(str(p) for p in removed),
        )
    return removed


def open_image(path: Path, preprocess: Preprocess, large: bool, level: int = 0) -> RowSource:
    """A row source of network input for an image file (without ``preprocess.resize``, which needs
    the image whole: see ``api.Segmenter.bands``): a Zarr store, a level other than 0 or a large TIFF
    is read lazily, a row of chunks at a time (:func:`~.sources.open_lazily`); another large image is
    kept in its stored dtype and converted band by band, a small one is converted whole.
    Normalisation statistics come from a streaming pass (:class:`NormalizedSource`)."""
    channels, page = preprocess.in_channels, preprocess.page
    if _lazy(path, level) or (large and path.suffix.lower() in TIFF_SUFFIXES):
        source: RowSource = open_lazily(path, channels, page, level)
    elif large:
        source = RawSource(read_image(path, page), channels, str(path))
    else:
        source = ArraySource(image_to_array(read_image(path, page), channels, str(path)))
    return NormalizedSource(source, preprocess)


def _lazy(path: Path, level: int) -> bool:
    """Whether ``path`` is read through :func:`~.sources.open_lazily` whatever its size."""
    return bool(level) or is_zarr_store(path) or path.suffix.lower() in SLIDE_SUFFIXES


def read_whole(path: Path, page: int | None = None, level: int = 0) -> np.ndarray:
    """The raw pixels of an image file as stored (:func:`~unet_patches.data.imageio.read_image`), of a
    Zarr store or of a TIFF's pyramid ``level`` too."""
    if _lazy(path, level):
        with open_lazily(path, 1, page, level) as source:
            return source.raw_rows(0, source.height)
    return read_image(path, page)


def write_outputs(
    bands: Iterable[Band], source: RowSource, outs: dict[str, Path], probs_dtype: str = "uint8"
) -> list[Path]:
    """Write predicted ``bands`` of ``source`` (top to bottom, as ``TiledPredictor.bands`` yields
    them) into the files ``outs`` names; returns the written paths.

    Each file goes through a temporary file that is removed if anything fails; outputs already moved
    into place when a later one fails are removed too, so a failure leaves none of this image's files.
    """
    height, width = source.height, source.width
    writers: dict[str, BandWriter] = {}
    placed: list[Path] = []
    try:
        writers["labels"] = _label_writer(outs["labels"], height, width)
        if "overlay" in outs:
            writers["overlay"] = PngWriter(outs["overlay"], height, width, channels=3)
        for band in bands:
            stop = band.start + band.labels.shape[0]
            writers["labels"].write(band.labels)
            if "overlay" in writers:
                writers["overlay"].write(colour_overlay(source.display_rows(band.start, stop), band.labels))
            if "probs" in outs:
                assert band.probs is not None
                if "probs" not in writers:
                    classes = band.probs.shape[0]
                    writers["probs"] = _probability_writer(outs["probs"], classes, height, width, probs_dtype)
                writers["probs"].write(band.probs)
        for writer in writers.values():
            placed.append(writer.close())
        return placed
    except BaseException:
        for writer in writers.values():
            writer.abort()
        for path in placed:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        raise


def _label_writer(path: Path, height: int, width: int) -> BandWriter:
    """The writer of a labels file, by its name (:func:`output_paths`)."""
    name = path.name.lower()
    if name.endswith(".zarr"):
        return ZarrWriter(path, height, width)
    if name.endswith(".ome.tif"):
        return TiffWriter(path, height, width, ome=True, pyramid=True)
    if name.endswith(".tif"):
        return TiffWriter(path, height, width)
    return PngWriter(path, height, width)


def _probability_writer(path: Path, classes: int, height: int, width: int, dtype: str) -> BandWriter:
    name = path.name.lower()
    if name.endswith(".zarr"):
        return ZarrWriter(path, height, width, classes=classes, dtype=dtype)
    if name.endswith(".ome.tif"):
        return ProbabilityTiffWriter(path, classes, height, width, ome=True, pyramid=True)
    return NpyWriter(path, classes, height, width)


def check_probs_dtype(probs_dtype: str, output_format: str) -> None:
    """Refuse a probabilities dtype the output format cannot keep (``UserError``)."""
    if probs_dtype not in PROBS_DTYPES:
        raise UserError(f"probabilities dtype {probs_dtype!r}: expected one of {', '.join(PROBS_DTYPES)}")
    if probs_dtype != "uint8" and output_format != "zarr":
        raise UserError(
            f"--probs-dtype {probs_dtype} is for --format zarr (OME-TIFF keeps uint8, .npy float32); add --format zarr"
        )
