"""A prediction job's files: inputs expanded, outputs planned and checked before anything is written,
images opened as row sources (in memory or streamed), and predicted bands written to an image's
files (:class:`~unet_patches.inference.job.PredictionJob` puts these together).

Outputs for an input ``<stem>.<ext>`` in ``out_dir``:

- ``<stem>_labels.png`` (8-bit class indices), or ``<stem>_labels.tif`` (tiled, compressed) for an
  image larger than ``stream_threshold_px`` pixels; or in the format chosen
  (:data:`~.formats.OUTPUT_FORMATS`): ``<stem>_labels.ome.tif`` (a pyramidal OME-TIFF),
  ``<stem>_labels.zarr`` (a Zarr store);
- ``<stem>_overlay.png``: class colours over the image (``overlay=True``);
- ``<stem>_probs.npy``: float32 ``(K, H, W)`` probabilities (``probs=True``); open it with
  ``numpy.load(path, mmap_mode="r")``; with the Zarr format ``<stem>_probs.zarr`` (uint8 ``round(255 p)``,
  or float16), with the OME-TIFF format ``<stem>_probs.ome.tif`` (one uint8 sample per class, a pyramid).

Every output is written band by band through a temporary file (``.<name>.part`` beside it), so even
the in-memory path never holds more than one copy of the image; large TIFFs are also read band by
band. A failure while writing leaves neither temporary files nor part of an image's outputs. The
files of one image are written under its claim (:mod:`.claims`), so predictions sharing an output
folder never write the same image at once; the temporary files a killed run leaves are removed by
the next run that takes the image's claim.
"""

from __future__ import annotations

import glob
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_patches.atomic import named
from unet_patches.data.imageio import IMAGE_SUFFIXES, colour_overlay, image_to_array, read_image
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError
from unet_patches.metrics.uncertainty import REVIEW_THRESHOLD, UncertaintyTally, normalised_entropy, to_uint8

from .formats import OutputFormat, chosen
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
from .writers import Band, BandWriter, PngWriter, temporary_path

__all__ = [
    "DEFAULT_STREAM_THRESHOLD_PX",
    "OutputPlan",
    "expand_inputs",
    "open_array",
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
_OUTPUT_TAGS = ("_labels", "_overlay", "_probs", "_uncertainty")


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
    image: Path, out_dir: Path, fmt: OutputFormat, *, overlay: bool, probs: bool, uncertainty: bool = False
) -> dict[str, Path]:
    """The files a prediction of ``image`` writes in the format ``fmt``: keys ``labels``, ``overlay``
    (always a PNG), ``probs``, ``uncertainty`` (a uint8 map in the labels' format)."""
    stem = image.stem
    paths = {"labels": out_dir / f"{stem}_labels{fmt.labels_suffix}"}
    if overlay:
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    if probs:
        paths["probs"] = out_dir / f"{stem}_probs{fmt.probs_suffix}"
    if uncertainty:
        paths["uncertainty"] = out_dir / f"{stem}_uncertainty{fmt.labels_suffix}"
    return paths


@dataclass(frozen=True)
class OutputPlan:
    """One input image and the files its prediction goes to (keys of :func:`output_paths`), in ``format``."""

    image: Path
    size: tuple[int, int]
    large: bool  # streamed: TIFF read by bands, labels written as TIFF under format auto
    format: OutputFormat
    outputs: dict[str, Path]
    existing: frozenset[Path] = frozenset()  # outputs there when planned, replaced as asked (overwrite)


def plan_outputs(
    files: Sequence[Path],
    out_dir: str | Path,
    *,
    overlay: bool,
    probs: bool,
    overwrite: bool,
    uncertainty: bool = False,
    stream_threshold_px: int = DEFAULT_STREAM_THRESHOLD_PX,
    page: int | None = None,
    level: int = 0,
    output_format: str = "auto",
    skip_finished: bool = False,
) -> list[OutputPlan]:
    """Open every input (its header only) and check every output path before anything is written.

    ``skip_finished`` leaves out the inputs whose outputs all exist (a sharded job run again). Each
    plan records which of its outputs exist now (``existing``): one that appears later was written
    by another process. Nothing is written or removed here: the temporary files of an interrupted run
    are removed when the image's claim is taken (:func:`remove_stale_parts`).

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
        fmt = chosen(output_format, large)
        outputs = output_paths(path, out_dir, fmt, overlay=overlay, probs=probs, uncertainty=uncertainty)
        existing = frozenset(p for p in outputs.values() if p.exists())
        plans.append(OutputPlan(path, size, large, fmt, outputs, existing))
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
    existing = [p for plan in plans for p in plan.outputs.values() if p in plan.existing]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UserError(
            f"{existing[0]} already exists{more}; pass --overwrite (overwrite=True) to replace, "
            "or choose another output folder"
        )
    return plans


def remove_stale_parts(outputs: Iterable[Path]) -> list[Path]:
    """Remove the temporary files of ``outputs`` left by a run that was killed while writing them
    (called by the holder of the image's claim, :mod:`.claims`: nobody else is writing them).

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


def open_array(image: np.ndarray, preprocess: Preprocess, name: str = "image") -> RowSource:
    """A raw ``(H, W)`` / ``(H, W, C)`` image in memory, as read from a file, opened as
    :func:`open_image` opens a small file: network input (normalised whole), or, with
    ``preprocess.resize``, scaled but not resized or normalised yet (the job resizes it whole).

    Raises:
        UserError: not an array, or an array of a shape or pixel type that is not an image.
    """
    if not isinstance(image, np.ndarray):
        raise UserError(f"{name} of type {type(image).__name__}: expected a numpy array (H, W) or (H, W, C)")
    if preprocess.resize is not None:
        return ArraySource(image_to_array(image, preprocess.in_channels, name))
    return ArraySource(preprocess.image(image, name))


def open_image(path: Path, preprocess: Preprocess, large: bool, level: int = 0) -> RowSource:
    """A row source of network input for an image file: a Zarr store, a level other than 0 or a large
    TIFF is read lazily, a row of chunks at a time (:func:`~.sources.open_lazily`); another large image
    is kept in its stored dtype and converted band by band, a small one is converted whole; all are
    normalised band by band, per-image statistics coming from a streaming pass (:class:`NormalizedSource`).
    With ``preprocess.resize`` the image is read whole, scaled but not yet resized or normalised (the
    job resizes it whole, :meth:`~unet_patches.inference.job.PredictionJob.bands`); its rows are what
    overlays show in either case."""
    channels, page = preprocess.in_channels, preprocess.page
    if preprocess.resize is not None:
        return ArraySource(image_to_array(read_whole(path, page, level), channels, str(path)))
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
    bands: Iterable[Band],
    source: RowSource,
    outs: dict[str, Path],
    fmt: OutputFormat,
    probs_dtype: str = "uint8",
    tally: UncertaintyTally | None = None,
) -> list[Path]:
    """Write predicted ``bands`` of ``source`` (top to bottom, as ``TiledPredictor.bands`` yields
    them) into the files ``outs`` names, in the format ``fmt``; returns the written paths. An
    ``uncertainty`` output is the normalised entropy of the bands' probabilities
    (:mod:`unet_patches.metrics.uncertainty`), also summed into ``tally`` when given; the overlay
    then washes out the uncertain pixels (above ``REVIEW_THRESHOLD``: half white).

    Each file goes through a temporary file that is removed if anything fails; outputs already moved
    into place when a later one fails are removed too, so a failure leaves none of this image's files.
    """
    height, width = source.height, source.width
    writers: dict[str, BandWriter] = {}
    placed: list[Path] = []
    current = "labels"  # the output being written: the one a failed write names
    try:
        writers["labels"] = fmt.label_writer(outs["labels"], height, width)
        if "overlay" in outs:
            writers["overlay"] = PngWriter(outs["overlay"], height, width, channels=3)
        for band in bands:
            uncertain = normalised_entropy(band.probs) if "uncertainty" in outs else None
            current = "labels"
            writers["labels"].write(band.labels)
            if "overlay" in writers:
                current = "overlay"
                marked = None if uncertain is None else uncertain > REVIEW_THRESHOLD
                write_overlay(writers["overlay"], source, band.start, band.labels, marked)
            if "probs" in outs:
                assert band.probs is not None
                current = "probs"
                if "probs" not in writers:
                    classes = band.probs.shape[0]
                    writers["probs"] = fmt.probability_writer(outs["probs"], classes, height, width, probs_dtype)
                writers["probs"].write(band.probs)
            if uncertain is not None:
                current = "uncertainty"
                if "uncertainty" not in writers:
                    writers["uncertainty"] = fmt.label_writer(outs["uncertainty"], height, width)
                writers["uncertainty"].write(to_uint8(uncertain))
                if tally is not None:
                    tally.update(band.start, uncertain, band.labels)
        for key, writer in writers.items():
            current = key
            placed.append(writer.close())
        return placed
    except BaseException as exc:
        for writer in writers.values():
            writer.abort()
        for path in placed:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and _is_write_failure(exc, outs[current]):
            raise named(exc, outs[current]) from None
        raise


UNCERTAIN_COLOUR = np.array([255, 255, 255], dtype=np.uint16)
"""What an overlay blends its uncertain pixels with (half and half): white, which no class colour is, so
they look washed out."""
OVERLAY_BLOCK_PX = 1 << 20
"""Pixels of overlay blended at a time: a band of a wide image is many megapixels, and blending it
whole takes several float copies of it (memory that would grow with the image's width)."""


def write_overlay(
    writer: BandWriter, source: RowSource, start: int, labels: np.ndarray, uncertain: np.ndarray | None = None
) -> None:
    """The overlay rows of ``labels`` (rows ``start:`` of ``source``) into ``writer``, a block of at
    most :data:`OVERLAY_BLOCK_PX` pixels at a time (the image's rows read again for each block).
    Pixels where ``uncertain`` (bool, the labels' shape) is set are blended half with white."""
    step = max(1, OVERLAY_BLOCK_PX // max(1, labels.shape[1]))
    for top in range(0, labels.shape[0], step):
        bottom = min(labels.shape[0], top + step)
        block = colour_overlay(source.display_rows(start + top, start + bottom), labels[top:bottom])
        if uncertain is not None:
            marked = uncertain[top:bottom]
            block[marked] = ((block[marked].astype(np.uint16) + UNCERTAIN_COLOUR) // 2).astype(np.uint8)
        writer.write(block)


def _is_write_failure(exc: OSError, output: Path) -> bool:
    """A failed write of ``output`` (its temporary file, or no file named), not a failed read of the input."""
    return exc.filename is None or Path(str(exc.filename)).parent == output.parent
