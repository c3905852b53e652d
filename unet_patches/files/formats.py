"""Output formats of ``predict`` (``--format``): each one a row of :data:`OUTPUT_FORMATS`, saying what
its files are called, which writers fill them band by band, what it keeps probabilities as, and
whether several processes can fill one of its stores together (one image split by rows). Planning
(:mod:`.plan`), writing and row-block prediction ask the row; adding a format is adding a row.

``auto`` is not a format but a choice between two (:func:`chosen`): ``png`` up to the streaming
threshold, ``tiff`` above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unet_patches.errors import UserError
from unet_patches.registry import Registry

from .shared_zarr import CHUNK, SharedZarrRows
from .writers import BandWriter, NpyWriter, PngWriter, ProbabilityTiffWriter, TiffWriter, ZarrWriter

__all__ = ["FORMAT_CHOICES", "OUTPUT_FORMATS", "PROBS_DTYPES", "OutputFormat", "check_probs_dtype", "chosen"]

PROBS_DTYPES = ("uint8", "float16")
"""``--probs-dtype``: probabilities as ``round(255 p)`` (the default) or float16, where a format keeps either."""


class OutputFormat:
    """An output format. ``labels_suffix`` / ``probs_suffix`` end ``<stem>_labels`` / ``<stem>_probs``;
    ``probs_dtypes`` are the ``--probs-dtype`` values it keeps (formats whose probabilities are float32
    ``.npy`` files take the default and ignore it); ``shared``: several processes can fill one store,
    each its own blocks of ``block_rows`` rows (:meth:`shared_store`)."""

    name = ""
    summary = ""
    labels_suffix = ""
    probs_suffix = ".npy"
    probs_dtypes: tuple[str, ...] = ("uint8",)
    shared = False
    block_rows = 0

    def label_writer(self, path: Path, height: int, width: int) -> BandWriter:
        raise NotImplementedError

    def probability_writer(self, path: Path, classes: int, height: int, width: int, dtype: str) -> BandWriter:
        """float32 ``(K, H, W)`` probabilities; a ``.npy`` file unless the format keeps them itself."""
        return NpyWriter(path, classes, height, width)

    def shared_store(
        self, path: Path, height: int, width: int, rows: tuple[int, int], job: Mapping[str, Any], **options: Any
    ) -> SharedZarrRows:
        """The store of an image that several processes fill, this one ``rows`` (a shared format only)."""
        raise NotImplementedError(f"{self.name} outputs cannot be filled by several processes")


class Png(OutputFormat):
    name = "png"
    summary = "<stem>_labels.png, 8-bit class indices"
    labels_suffix = ".png"

    def label_writer(self, path: Path, height: int, width: int) -> BandWriter:
        return PngWriter(path, height, width)


class Tiff(OutputFormat):
    name = "tiff"
    summary = "<stem>_labels.tif, tiled and deflate-compressed (BigTIFF when large)"
    labels_suffix = ".tif"

    def label_writer(self, path: Path, height: int, width: int) -> BandWriter:
        return TiffWriter(path, height, width)


class OmeTiff(OutputFormat):
    name = "ome-tiff"
    summary = (
        "<stem>_labels.ome.tif, a tiled OME-TIFF with a pyramid of sub-resolutions (QuPath, napari); "
        "probabilities too: <stem>_probs.ome.tif, a uint8 sample per class"
    )
    labels_suffix = probs_suffix = ".ome.tif"

    def label_writer(self, path: Path, height: int, width: int) -> BandWriter:
        return TiffWriter(path, height, width, ome=True, pyramid=True)

    def probability_writer(self, path: Path, classes: int, height: int, width: int, dtype: str) -> BandWriter:
        return ProbabilityTiffWriter(path, classes, height, width, ome=True, pyramid=True)


class Zarr(OutputFormat):
    name = "zarr"
    summary = (
        "<stem>_labels.zarr, a Zarr store in 512 x 512 chunks (probabilities too: <stem>_probs.zarr, uint8 or float16)"
    )
    labels_suffix = probs_suffix = ".zarr"
    probs_dtypes = PROBS_DTYPES
    shared = True
    block_rows = CHUNK  # a chunk row

    def label_writer(self, path: Path, height: int, width: int) -> BandWriter:
        return ZarrWriter(path, height, width)

    def probability_writer(self, path: Path, classes: int, height: int, width: int, dtype: str) -> BandWriter:
        return ZarrWriter(path, height, width, classes=classes, dtype=dtype)

    def shared_store(
        self, path: Path, height: int, width: int, rows: tuple[int, int], job: Mapping[str, Any], **options: Any
    ) -> SharedZarrRows:
        return SharedZarrRows(path, height, width, rows, job, chunk=self.block_rows, **options)


OUTPUT_FORMATS: Registry[OutputFormat] = Registry(
    "output format", {fmt.name: fmt for fmt in (Png(), Tiff(), OmeTiff(), Zarr())}
)
FORMAT_CHOICES = ("auto", *OUTPUT_FORMATS.names)
"""``--format``: ``auto`` or a format."""


def chosen(name: str, large: bool) -> OutputFormat:
    """The format ``name`` (a key of :data:`FORMAT_CHOICES`) stands for, for an image streamed
    (``large``) or not: ``auto`` is ``tiff`` for a large image, else ``png``."""
    if name == "auto":
        return OUTPUT_FORMATS["tiff" if large else "png"]
    return OUTPUT_FORMATS.lookup(name, "output format")


def check_probs_dtype(probs_dtype: str, output_format: str) -> None:
    """Refuse a probabilities dtype that the output format (a :data:`FORMAT_CHOICES` name) cannot keep."""
    if probs_dtype not in PROBS_DTYPES:
        raise UserError(f"probabilities dtype {probs_dtype!r}: expected one of {', '.join(PROBS_DTYPES)}")
    fmt = OUTPUT_FORMATS.get(output_format, OUTPUT_FORMATS["png"])  # auto: png or tiff, alike here
    if probs_dtype not in fmt.probs_dtypes:
        takers = [other.name for other in OUTPUT_FORMATS.values() if probs_dtype in other.probs_dtypes]
        kept = "float32 .npy files" if fmt.probs_suffix == ".npy" else " or ".join(fmt.probs_dtypes)
        raise UserError(
            f"--probs-dtype {probs_dtype} is for --format {' or '.join(takers)} (--format {output_format}: "
            f"{kept}); add --format {takers[0]}"
        )
