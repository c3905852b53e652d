"""Row sources: an image read a band of rows at a time, normalised band by band.

The engine asks for rows in increasing order (bands overlap by the window overlap). A source returns
float32 ``(C, rows, W)`` normalised exactly as :func:`unet_patches.imageio.image_to_array` does,
because it calls that function on each band of raw rows. A file that cannot be read (broken,
truncated, not a 2-D image) raises ``UserError``; an in-memory array of the wrong shape, ``ValueError``.

- :class:`ArraySource`: an image already in memory, float32 ``(C, H, W)``.
- :class:`RawSource`: a raw ``(H, W)`` / ``(H, W, C)`` array in the file's dtype, normalised per band
  (a large 8-bit image then costs 1 byte per pixel in memory, not 4 per channel).
- :class:`TiffSource`: a TIFF on disk. Uncompressed contiguous data is read row by row with
  positioned reads; compressed or tiled files are decoded one strip/tile row at a time. Peak memory
  is a band, not the image. The header is checked against :data:`MAX_STREAM_PIXELS` and
  :data:`MAX_DECODE_BYTES` before any pixel is read (decompression bombs, damaged headers).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import tifffile

from unet_patches.errors import UserError, one_line
from unet_patches.imageio import image_to_array, read_image, tiff_page
from unet_patches.preprocess import Preprocess

__all__ = [
    "MAX_DECODE_BYTES",
    "MAX_STREAM_PIXELS",
    "ArraySource",
    "NormalizedSource",
    "RawSource",
    "RowSource",
    "TiffSource",
    "image_size",
]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")

# Limits of TiffSource, checked on the header before any pixel is read (see TiffSource). Streaming
# keeps memory flat whatever the image size, so the pixel count itself is bounded generously: 2**35
# pixels (34 gigapixels, 185000 x 185000) is above the largest whole-slide scans and bounds the time and
# output size a lying header can ask for. What is decoded at once -- a full-width row of strips or
# tiles, or the whole image for a layout that is not read by bands -- is bounded by bytes, in the
# spirit of Pillow's MAX_IMAGE_PIXELS (1 GiB of 32-bit pixels, refused at twice that): 1 GiB, 20 times
# the band of a 100000-pixel-wide 8-bit image. Python callers may raise either.
MAX_STREAM_PIXELS = 2**35
MAX_DECODE_BYTES = 2**30


def _human(nbytes: int) -> str:
    """``1.5 GiB``-style size for messages."""
    size = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class RowSource:
    """An image of ``channels x height x width`` read by bands of rows."""

    channels: int
    height: int
    width: int

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 ``(channels, stop - start, width)`` in [0, 1]."""
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
    :func:`~unet_patches.imageio.image_to_array` or a Python caller, so that is a programming error.
    """

    def __init__(self, image: np.ndarray) -> None:
        image = np.asarray(image)
        if image.ndim != 3 or 0 in image.shape:
            raise ValueError(f"image of shape {image.shape}: expected a non-empty (C,H,W) array")
        self.image = image if image.dtype == np.float32 else image.astype(np.float32)
        self.channels, self.height, self.width = self.image.shape

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.image[:, start:stop]


class RawSource(RowSource):
    """A raw image as stored in a file, ``(H, W)`` or ``(H, W, C)``, normalised per band."""

    def __init__(self, raw: np.ndarray, in_channels: int, name: str = "image") -> None:
        self.raw = np.asarray(raw)
        self.name = name
        self.in_channels = in_channels
        # Normalising one row validates dtype and channels up front, with the usual messages.
        first = image_to_array(self.raw[:1], in_channels, name)
        self.channels, self.height, self.width = first.shape[0], self.raw.shape[0], self.raw.shape[1]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return image_to_array(self.raw[start:stop], self.in_channels, self.name)


class NormalizedSource(RowSource):
    """Another source's bands normalised as ``preprocess`` says (its step 3).

    Per-image statistics (``percentile``) come from a streaming pass over the source's bands of
    ``band_rows`` rows, so a large file is never held whole; the numbers equal those of the image in
    memory (:func:`~unet_patches.preprocess.percentile_bounds`).
    """

    def __init__(self, source: RowSource, preprocess: Preprocess, band_rows: int = 512) -> None:
        self.source, self.preprocess, self.band_rows = source, preprocess, band_rows
        self.channels, self.height, self.width = source.channels, source.height, source.width
        self.bounds = preprocess.bounds(self._bands)

    def _bands(self):
        for start in range(0, self.height, self.band_rows):
            yield self.source.read_rows(start, min(start + self.band_rows, self.height))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.preprocess.normalized(self.source.read_rows(start, stop), self.bounds)

    def display_rows(self, start: int, stop: int) -> np.ndarray:
        return self.source.read_rows(start, stop)

    def close(self) -> None:
        self.source.close()


class _ContiguousReader:
    """Rows of uncompressed, contiguous, byte-aligned TIFF data, by positioned reads."""

    def __init__(self, path: Path, offset: int, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.offset = offset
        self.row_shape = row_shape
        self.dtype = dtype
        self.row_bytes = int(np.prod(row_shape)) * dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        size = (stop - start) * self.row_bytes
        data = os.pread(self.fd, size, self.offset + start * self.row_bytes)
        if len(data) != size:
            raise UserError(
                f"{self.path}: TIFF data ends early (rows {start}..{stop}); the file is truncated, re-save it"
            )
        array = np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.row_shape))
        return array.astype(self.dtype.newbyteorder("="), copy=False)

    def close(self) -> None:
        os.close(self.fd)


class _ChunkReader:
    """Rows of a stripped or tiled TIFF (any compression tifffile decodes), one chunk row at a time."""

    def __init__(self, tif: tifffile.TiffFile, page: tifffile.TiffPage) -> None:
        self.tif = tif
        self.page = page
        self.height, self.width = page.imagelength, page.imagewidth
        self.samples = page.samplesperpixel
        if page.is_tiled:
            self.chunk_rows, self.chunk_cols = page.tilelength, page.tilewidth
        else:
            self.chunk_rows, self.chunk_cols = page.rowsperstrip or self.height, self.width
        self.chunk_rows = min(self.chunk_rows, self.height)
        self.across = math.ceil(self.width / self.chunk_cols)
        chunks = self.across * math.ceil(self.height / self.chunk_rows)
        if min(len(page.dataoffsets), len(page.databytecounts)) < chunks:
            raise UserError(
                f"{tif.filehandle.path}: TIFF header lists {len(page.dataoffsets)} strip(s)/tile(s) where its size "
                f"needs {chunks}; the file is damaged, re-save it"
            )
        self.cache: dict[int, np.ndarray] = {}
        self.jpegtables = getattr(page, "jpegtables", None)

    def _chunk_row(self, index: int) -> np.ndarray:
        if index not in self.cache:
            top = index * self.chunk_rows
            rows = min(self.chunk_rows, self.height - top)
            out = np.zeros((rows, self.width, self.samples), dtype=self.page.dtype)
            fh = self.tif.filehandle
            for k in range(index * self.across, (index + 1) * self.across):
                offset, count = self.page.dataoffsets[k], self.page.databytecounts[k]
                try:
                    data = None
                    if count:
                        fh.seek(offset)
                        data = fh.read(count)
                    segment, position, _ = self.page.decode(data, k, jpegtables=self.jpegtables)
                except Exception as exc:  # codecs raise many types for truncated or damaged data
                    raise UserError(
                        f"{fh.path}: cannot decode TIFF data at rows {top}..{top + rows} "
                        f"({one_line(exc)}); the file is truncated or damaged, re-save it"
                    ) from exc
                if segment is None:
                    continue
                segment = segment.reshape(segment.shape[-3:])  # (length, width, samples)
                y, x = position[-3] - top, position[-2]
                h = min(segment.shape[0], rows - y)
                w = min(segment.shape[1], self.width - x)
                out[y : y + h, x : x + w] = segment[:h, :w]
            self.cache[index] = out
        return self.cache[index]

    def rows(self, start: int, stop: int) -> np.ndarray:
        first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
        for index in [i for i in self.cache if i < first]:
            del self.cache[index]  # rows are requested in increasing order
        parts = [self._chunk_row(i) for i in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        offset = first * self.chunk_rows
        block = block[start - offset : stop - offset]
        return block[..., 0] if self.samples == 1 else block

    def close(self) -> None:
        self.cache.clear()


class TiffSource(RowSource):
    """The first image of a TIFF, read a band of rows at a time without loading the whole file.

    The header is checked before any pixel is read or any buffer allocated, so that a small file
    whose header claims a huge image (a decompression bomb, or a damaged header) is refused instead of
    asking for gigabytes:

    - the image may have at most :data:`MAX_STREAM_PIXELS` pixels (height x width);
    - uncompressed pixel data cannot be larger than the file that holds it: a header claiming more
      bytes than the file's size is damaged or truncated;
    - what one read decodes at once -- a full-width row of strips or tiles (a single-strip file: the
      whole image), or the whole image for a layout that is not read by bands (planar, subsampled) --
      may be at most :data:`MAX_DECODE_BYTES`. Uncompressed contiguous data is read by positioned reads
      of the rows asked for, so it has no such limit.

    Compressed data is not held to the file size (flat or sparse tiles compress a thousandfold and
    more); the limits above bound the memory it can ask for. Raises ``UserError``, one line naming
    the file, when the file cannot be read as a single 2-D image, breaks one of these limits, or
    tifffile fails on it (corrupt or truncated data), when opened or later in :meth:`read_rows`.
    """

    def __init__(self, path: str | Path, in_channels: int, page: int | None = None) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.in_channels = in_channels
        self.reader: _ContiguousReader | _ChunkReader | _WholeReader | None = None
        try:
            self.tif = tifffile.TiffFile(self.path)
        except Exception as exc:  # tifffile raises many types for broken files
            raise self._unreadable(exc) from exc
        try:
            self._open(page)
        except BaseException as exc:
            self.close()
            if isinstance(exc, UserError) or not isinstance(exc, Exception):
                raise
            raise self._unreadable(exc) from exc  # a damaged page table or data

    def _unreadable(self, exc: BaseException) -> UserError:
        return UserError(f"{self.path}: cannot read as a TIFF image ({one_line(exc)}); re-save it as TIFF or PNG")

    def _open(self, page: int | None) -> None:
        chosen = self.tif.pages[tiff_page(self.tif, page, self.path)]
        series_shape = tuple(chosen.shape)
        squeezed = tuple(s for s in series_shape if s != 1)
        if len(squeezed) > 3 or (len(squeezed) == 3 and min(squeezed) > 4):
            raise UserError(
                f"{self.path}: TIFF of shape {series_shape} is not a single 2-D image (H,W) or "
                "(H,W,C<=4); save each plane of a stack as its own file"
            )
        self.page = chosen
        self.height, self.width = int(chosen.imagelength), int(chosen.imagewidth)
        self._check_size()
        self.reader = self._make_reader()
        first = image_to_array(self.reader.rows(0, 1), self.in_channels, self.name)
        self.channels = first.shape[0]

    def _pixel_bytes(self) -> int:
        """Bytes of one decoded pixel (all its samples)."""
        page = self.page
        itemsize = np.dtype(page.dtype).itemsize if page.dtype is not None else math.ceil(page.bitspersample / 8)
        return max(1, itemsize) * max(1, int(page.samplesperpixel))

    def _claim(self) -> str:
        page = self.page
        kind = np.dtype(page.dtype).name if page.dtype is not None else f"{page.bitspersample}-bit"
        samples = int(page.samplesperpixel)
        return f"{self.width} x {self.height} pixels of {f'{samples} x ' if samples > 1 else ''}{kind}"

    def _check_size(self) -> None:
        """The pixel and file-size rules of the class docstring, on the header alone."""
        pixels = self.height * self.width
        if pixels > MAX_STREAM_PIXELS:
            raise UserError(
                f"{self.path}: TIFF header claims {self._claim()} ({pixels / 1e9:.1f} gigapixels), above the limit of "
                f"{MAX_STREAM_PIXELS / 1e9:.1f} gigapixels; if the image is real, cut it into parts "
                "(or raise unet_patches.tiling.sources.MAX_STREAM_PIXELS from Python)"
            )
        if self.page.compression == 1:
            nbytes = pixels * self._pixel_bytes()
            file_size = self.path.stat().st_size
            if nbytes > file_size:
                raise UserError(
                    f"{self.path}: TIFF header claims {self._claim()} ({_human(nbytes)} uncompressed) but the file "
                    f"holds only {_human(file_size)}; the file is truncated or its header is damaged, re-save it"
                )

    def _check_decode(self, rows: int, what: str) -> None:
        """Refuse to decode ``rows`` full-width rows at once above :data:`MAX_DECODE_BYTES`."""
        nbytes = rows * self.width * self._pixel_bytes()
        if nbytes > MAX_DECODE_BYTES:
            raise UserError(
                f"{self.path}: TIFF header claims {self._claim()} stored {what}, so reading it decodes "
                f"{_human(nbytes)} at once, above the limit of {_human(MAX_DECODE_BYTES)}; if the image is real, "
                "re-save it tiled (e.g. tifffile.imwrite(out, image, tile=(512, 512), compression='zlib')) or "
                "uncompressed (or raise unet_patches.tiling.sources.MAX_DECODE_BYTES from Python)"
            )

    def _make_reader(self) -> _ContiguousReader | _ChunkReader | _WholeReader:
        page = self.page
        samples = page.samplesperpixel
        separate = samples > 1 and page.planarconfig == 2
        byte_aligned = page.bitspersample in (8, 16, 32, 64) and page.dtype is not None
        plain = page.compression == 1 and page.fillorder == 1 and not separate and byte_aligned
        if plain and page.is_contiguous:
            row_shape = (self.width,) if samples == 1 else (self.width, samples)
            dtype = np.dtype(page.dtype).newbyteorder(self.tif.byteorder)
            expected = self.height * int(np.prod(row_shape)) * dtype.itemsize
            if sum(page.databytecounts) >= expected:
                return _ContiguousReader(self.path, page.dataoffsets[0], row_shape, dtype)
        if not separate and page.dataoffsets and not page.is_subsampled:
            if page.is_tiled:
                self._check_decode(min(page.tilelength, self.height), f"in tiles {page.tilelength} rows high")
            else:
                rows = min(page.rowsperstrip or self.height, self.height)
                self._check_decode(rows, f"in strips of {rows} rows")
            return _ChunkReader(self.tif, page)
        self._check_decode(self.height, "in a layout that is read whole (planar or subsampled)")
        log.warning("%s: this TIFF layout is read whole into memory (no band-wise reading)", self.path)
        return _WholeReader(read_image(self.path, page=self.page.index))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        assert self.reader is not None, f"{self.path}: read after close"
        try:
            raw = self.reader.rows(start, stop)
        except UserError:
            raise
        except Exception as exc:  # tifffile, codecs and the OS raise many types for damaged files
            raise UserError(
                f"{self.path}: cannot read TIFF rows {start}..{stop} ({one_line(exc)}); "
                "the file is truncated or damaged, re-save it"
            ) from exc
        return image_to_array(raw, self.in_channels, self.name)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.tif.close()


class _WholeReader:
    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.raw[start:stop]

    def close(self) -> None:
        self.raw = None


def image_size(path: str | Path, page: int | None = None) -> tuple[int, int]:
    """``(H, W)`` of an image file (of its ``page`` for a TIFF) without decoding its pixels.

    Raises ``UserError`` if unreadable, or for a TIFF stack without ``page``.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                chosen = tif.pages[tiff_page(tif, page, path)]
                return int(chosen.imagelength), int(chosen.imagewidth)
        from PIL import Image

        with Image.open(path) as image:
            return int(image.height), int(image.width)
    except UserError:
        raise
    except Exception as exc:  # Pillow and tifffile raise many types for broken files
        raise UserError(
            f"{path}: cannot read as an image ({one_line(exc)}); expected a readable PNG, TIFF, JPEG or BMP file"
        ) from exc
