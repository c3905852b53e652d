"""Images read a band of rows at a time: the :class:`RowSource` interface, sources in memory, the
normalising wrapper, and :class:`ChunkRows` (a chunked array read a row of chunks at a time, under the
file sources of :mod:`.sources`)."""

from __future__ import annotations

import numpy as np

from unet_patches.data.imageio import image_to_array
from unet_patches.data.preprocess import Preprocess

__all__ = [
    "STATS_BAND_PIXELS",
    "ArraySource",
    "ChunkRows",
    "NormalizedSource",
    "RawSource",
    "RowSource",
    "StoredRows",
    "column_slice",
]

STATS_BAND_PIXELS = 2**18
"""Values per band of the statistics pass: its temporaries (float64 histogram bins) come to about 40
bytes a value, so about 10 MiB whatever the image's width (bands of whole rows grow with it)."""


class RowSource:
    """An image of ``channels x height x width`` read by bands of rows."""

    channels: int
    height: int
    width: int

    def read_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """Rows ``start:stop`` as float32 ``(channels, stop - start, width)`` in [0, 1]; only the
        columns ``columns = (first, end)`` when given (a strip of a wide image)."""
        raise NotImplementedError

    def display_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows to show under an overlay: as :meth:`read_rows`, before any normalisation."""
        return self.read_rows(start, stop)

    def close(self) -> None:
        """Release files; the source cannot be read afterwards."""

    def __enter__(self) -> RowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArraySource(RowSource):
    """A float image ``(C, H, W)`` already in memory; bands are views, not copies.

    Raises ``ValueError`` for an array that is not a non-empty ``(C, H, W)`` image: arrays come from
    :func:`~unet_patches.data.imageio.image_to_array` or a Python caller, so that is a programming error.
    """

    def __init__(self, image: np.ndarray) -> None:
        image = np.asarray(image)
        if image.ndim != 3 or 0 in image.shape:
            raise ValueError(f"image of shape {image.shape}: expected a non-empty (C,H,W) array")
        self.image = image if image.dtype == np.float32 else image.astype(np.float32)
        self.channels, self.height, self.width = self.image.shape

    def read_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        return self.image[:, start:stop, column_slice(columns)]


class StoredRows(RowSource):
    """A source whose rows come as stored (``raw_rows``: ``(rows, W)`` or ``(rows, W, C)`` in the
    stored dtype) and are turned into network input as they are read (``in_channels``, ``name``)."""

    in_channels: int
    name: str

    def raw_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """Rows ``start:stop`` as stored (only ``columns``, when given)."""
        raise NotImplementedError

    def read_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        # The columns are cut from the stored rows, so only they are converted to float32.
        return image_to_array(self.raw_rows(start, stop, columns), self.in_channels, self.name)


class RawSource(StoredRows):
    """A raw image as stored in a file, ``(H, W)`` or ``(H, W, C)``, normalised per band."""

    def __init__(self, raw: np.ndarray, in_channels: int, name: str = "image") -> None:
        self.raw = np.asarray(raw)
        self.name = name
        self.in_channels = in_channels
        # Normalising one row validates dtype and channels up front, with the usual messages.
        first = image_to_array(self.raw[:1], in_channels, name)
        self.channels, self.height, self.width = first.shape[0], self.raw.shape[0], self.raw.shape[1]

    def raw_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        return self.raw[start:stop, column_slice(columns)]


class NormalizedSource(RowSource):
    """Another source's bands normalised as ``preprocess`` says (its step 3).

    Per-image statistics (``percentile``) come from a streaming pass over the source's bands of about
    ``band_pixels`` values, so neither a large file nor a wide band of it is held whole; the numbers
    equal those of the image in memory (:func:`~unet_patches.data.normalize.percentile_bounds`).
    """

    def __init__(self, source: RowSource, preprocess: Preprocess, band_pixels: int = STATS_BAND_PIXELS) -> None:
        self.source, self.preprocess = source, preprocess
        self.band_rows = max(1, band_pixels // max(1, source.width * source.channels))
        self.channels, self.height, self.width = source.channels, source.height, source.width
        self.bounds = preprocess.bounds(self._bands)

    def _bands(self):
        for start in range(0, self.height, self.band_rows):
            yield self.source.read_rows(start, min(start + self.band_rows, self.height))

    def read_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        return self.preprocess.normalized(self.source.read_rows(start, stop, columns), self.bounds)

    def display_rows(self, start: int, stop: int) -> np.ndarray:
        return self.source.read_rows(start, stop)

    def close(self) -> None:
        self.source.close()


def column_slice(columns: tuple[int, int] | None) -> slice:
    """The slice of ``columns = (first, end)``; every column for None."""
    return slice(None) if columns is None else slice(int(columns[0]), int(columns[1]))


class ChunkRows:
    """Rows of a chunked array: a TIFF page through tifffile's Zarr store (strips or tiles, any
    compression tifffile decodes) or a Zarr array on disk. ``channels_first``: the array is
    ``(S, H, W)`` (planar TIFF, OME-Zarr ``CYX``); rows come back ``(rows, W, S)``.

    Whole rows are read a full-width row of chunks at a time, kept until rows below are asked for.
    A strip of columns is read alone and not kept: the strips of a wide image take their turns
    across the whole width, so keeping rows of chunks would hold full-width rows again; a chunk is
    decoded about twice as often instead, which costs little beside the passes.
    """

    def __init__(self, array, height: int, channels_first: bool = False) -> None:  # noqa: ANN001 (a zarr.Array)
        self.array, self.height, self.channels_first = array, height, channels_first
        self.chunk_rows = min(int(array.chunks[1 if channels_first else 0]), height)
        self.cache: dict[int, np.ndarray] = {}

    def _read(self, rows: slice, columns: slice) -> np.ndarray:
        if self.channels_first:
            return np.moveaxis(np.asarray(self.array[:, rows, columns]), 0, -1)
        return np.asarray(self.array[rows, columns])

    def _chunk_row(self, index: int) -> np.ndarray:
        if index not in self.cache:
            rows = slice(index * self.chunk_rows, min((index + 1) * self.chunk_rows, self.height))
            self.cache[index] = self._read(rows, slice(None))
        return self.cache[index]

    def rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """Rows ``start:stop`` (of ``columns`` only, when given) as stored."""
        if columns is not None:
            self.cache.clear()  # rows read whole before (the first row, the statistics pass)
            block = self._read(slice(start, stop), column_slice(columns))
        else:
            first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
            for index in [i for i in self.cache if i < first]:
                del self.cache[index]  # rows are requested in increasing order
            parts = [self._chunk_row(i) for i in range(first, last + 1)]
            block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            block = block[start - first * self.chunk_rows : stop - first * self.chunk_rows]
        return block[..., 0] if block.ndim == 3 and block.shape[-1] == 1 else block

    def close(self) -> None:
        self.cache.clear()
