"""Row sources: an image read a band of rows at a time, normalised band by band.

The engine asks for rows in increasing order (bands overlap by the window overlap). A source returns
float32 ``(C, rows, W)`` normalised exactly as :func:`unet_patches.data.imageio.image_to_array` does,
because it calls that function on each band of raw rows. A file that cannot be read (broken,
truncated, not a 2-D image) raises ``UserError``; an in-memory array of the wrong shape, ``ValueError``.

- :class:`ArraySource`, :class:`RawSource`, :class:`NormalizedSource` (images in memory, and the
  normalising wrapper) live in :mod:`.rows` and are re-exported here.
- :class:`TiffSource`: a TIFF on disk (a page, and a level of its pyramid). Uncompressed contiguous
  data is read row by row with positioned reads; anything else (strips or tiles, compressed, planar,
  subsampled) through tifffile's Zarr store, a full-width row of chunks at a time. Peak memory is a
  band, not the image. The header is checked against :data:`MAX_STREAM_PIXELS` and
  :data:`MAX_DECODE_BYTES` before any pixel is read (decompression bombs, damaged headers).
- :class:`ZarrSource`: a Zarr store (``.zarr`` directory; a level of a multiscale group), likewise.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import tifffile

from unet_patches.data.imageio import image_to_array, tiff_page
from unet_patches.errors import UserError, one_line

from .rows import ArraySource, ChunkRows, NormalizedSource, RawSource, RowSource, StoredRows, column_slice
from .slides import TIFF_BASED, SlideSource, reads_as_slide, slide_size

__all__ = [
    "MAX_DECODE_BYTES",
    "MAX_STREAM_PIXELS",
    "ArraySource",
    "NormalizedSource",
    "RawSource",
    "RowSource",
    "TiffSource",
    "ZarrSource",
    "image_size",
    "is_zarr_store",
    "open_lazily",
]

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


class _ContiguousReader:
    """Rows of uncompressed, contiguous, byte-aligned TIFF data, by positioned reads."""

    def __init__(self, path: Path, offset: int, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.offset = offset
        self.row_shape = row_shape
        self.dtype = dtype
        self.row_bytes = int(np.prod(row_shape)) * dtype.itemsize

    def rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        size = (stop - start) * self.row_bytes
        data = os.pread(self.fd, size, self.offset + start * self.row_bytes)
        if len(data) != size:
            raise UserError(
                f"{self.path}: TIFF data ends early (rows {start}..{stop}); the file is truncated, re-save it"
            )
        array = np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.row_shape))[:, column_slice(columns)]
        return array.astype(self.dtype.newbyteorder("="), copy=False)

    def close(self) -> None:
        os.close(self.fd)


class TiffSource(StoredRows):
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

    def __init__(self, path: str | Path, in_channels: int, page: int | None = None, level: int = 0) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.in_channels = in_channels
        self.reader: _ContiguousReader | ChunkRows | None = None
        try:
            self.tif = tifffile.TiffFile(self.path)
        except Exception as exc:  # tifffile raises many types for broken files
            raise self._unreadable(exc) from exc
        try:
            self._open(page, level)
        except BaseException as exc:
            self.close()
            if isinstance(exc, UserError) or not isinstance(exc, Exception):
                raise
            raise self._unreadable(exc) from exc  # a damaged page table or data

    def _unreadable(self, exc: BaseException) -> UserError:
        return UserError(f"{self.path}: cannot read as a TIFF image ({one_line(exc)}); re-save it as TIFF or PNG")

    def _open(self, page: int | None, level: int) -> None:
        chosen = tiff_level(self.tif, _page_index(self.tif, page, self.path), level, self.path)
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
                "(or raise unet_patches.files.sources.MAX_STREAM_PIXELS from Python)"
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
                "uncompressed (or raise unet_patches.files.sources.MAX_DECODE_BYTES from Python)"
            )

    def _make_reader(self) -> _ContiguousReader | ChunkRows:
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
        if page.is_tiled:
            chunk_rows, what = page.tilelength, f"in tiles {page.tilelength} rows high"
        else:
            chunk_rows = page.rowsperstrip or self.height
            what = f"in strips of {min(chunk_rows, self.height)} rows"
        chunks = math.ceil(self.height / chunk_rows) * math.ceil(self.width / (page.tilewidth or self.width))
        if min(len(page.dataoffsets), len(page.databytecounts)) < chunks * (samples if separate else 1):
            raise UserError(
                f"{self.path}: TIFF header lists {len(page.dataoffsets)} strip(s)/tile(s) where its size "
                f"needs {chunks}; the file is damaged, re-save it"
            )
        self._check_decode(min(chunk_rows, self.height), what)
        import zarr  # noqa: PLC0415 (loaded only for chunked TIFFs and Zarr stores)

        # tifffile's Zarr store decodes the strips or tiles a read touches (with their JPEG tables,
        # predictors, planar layout, subsampling), so nothing here depends on its internals.
        return ChunkRows(zarr.open_array(page.aszarr(), mode="r"), self.height, channels_first=separate)

    def raw_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """Rows ``start:stop`` as stored: ``(rows, W)`` or ``(rows, W, C)`` in the file's dtype."""
        assert self.reader is not None, f"{self.path}: read after close"
        try:
            raw = self.reader.rows(start, stop, columns)
        except UserError:
            raise
        except Exception as exc:  # tifffile, codecs and the OS raise many types for damaged files
            raise UserError(
                f"{self.path}: cannot read TIFF rows {start}..{stop} ({one_line(exc)}); "
                "the file is truncated or damaged, re-save it"
            ) from exc
        return raw

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.tif.close()


def _page_index(tif: tifffile.TiffFile, page: int | None, path: Path) -> int:
    """The page to read: ``page``, else the only full-resolution page; for a whole-slide TIFF (SVS,
    NDPI, ...) read by tifffile, the first page of its main image (they also hold label and macro images)."""
    if page is None and path.suffix.lower() in TIFF_BASED:
        return int(tif.series[0].keyframe.index)
    return tiff_page(tif, page, path)


def tiff_level(tif: tifffile.TiffFile, index: int, level: int, path: Path) -> tifffile.TiffPage:
    """Page ``index`` of an open TIFF at pyramid ``level`` (0: the page itself; N: the N-th reduced
    resolution of its series, OME SubIFDs or pages marked reduced, as tifffile lists them).

    Raises ``UserError`` naming the levels the file has when ``level`` is not one of them.
    """
    page = tif.pages[index]
    if level == 0:
        return page
    series = next((s for s in tif.series if s.pages and getattr(s.pages[0], "index", None) == index), None)
    levels = list(series.levels) if series is not None else []
    if not 0 <= level < len(levels):
        sizes = ", ".join(f"{k}: {lv.keyframe.imagewidth} x {lv.keyframe.imagelength}" for k, lv in enumerate(levels))
        raise UserError(
            f"{path}: level {level} asked for (--level) but the image has {max(len(levels), 1)} level(s)"
            f"{f' ({sizes})' if sizes else ' (no pyramid)'}; pick one of them"
        )
    return levels[level].keyframe


def is_zarr_store(path: Path) -> bool:
    """Whether ``path`` is a Zarr store (v3 ``zarr.json`` or v2 ``.zarray`` / ``.zgroup``), read as one image."""
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))


class _PlaneOf:
    """One image plane of an array: the leading axes that ``prefix`` gives an index (OME-Zarr's
    ``t, z`` of length 1) are fixed, those it gives a slice (channels) are kept; indexed like a plain
    array of the kept axes."""

    def __init__(self, array, prefix: tuple[int | slice, ...]) -> None:  # noqa: ANN001 (a zarr.Array)
        self.array, self.prefix = array, prefix
        kept = [k for k, p in enumerate(prefix) if isinstance(p, slice)] + list(range(len(prefix), array.ndim))
        self.shape = tuple(int(array.shape[k]) for k in kept)
        self.chunks = tuple(int(array.chunks[k]) for k in kept)

    def __getitem__(self, key: object) -> np.ndarray:
        rest = iter(key if isinstance(key, tuple) else (key,))
        full = [next(rest, slice(None)) if isinstance(p, slice) else p for p in self.prefix]
        return np.asarray(self.array[(*full, *rest)])


def _zarr_level(path: Path, level: int):  # noqa: ANN202 (a zarr.Array)
    """The array of a Zarr store: the store itself, or level ``level`` of a multiscale group
    (OME-Zarr ``multiscales``, else arrays named ``0``, ``1``, ...)."""
    import zarr  # noqa: PLC0415

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        if level:
            raise UserError(f"{path}: level {level} asked for (--level) but the store is one array (level 0 only)")
        return node
    attrs = dict(node.attrs)
    scales = attrs.get("multiscales") or dict(attrs.get("ome") or {}).get("multiscales")
    if scales:
        names = [str(d["path"]) for d in scales[0]["datasets"]]
    else:
        names = sorted((k for k in node.array_keys() if k.isdigit()), key=int)
    if not 0 <= level < len(names):
        have = f"levels 0..{len(names) - 1}" if names else "no arrays named 0, 1, ... and no multiscales"
        raise UserError(f"{path}: level {level} asked for (--level) but the Zarr group has {have}; pick one of them")
    return node[names[level]]


def _zarr_plane(path: Path, level: int) -> tuple[_PlaneOf, bool]:
    """The image plane of a Zarr store at ``level``, and whether its channels come first."""
    try:
        array = _zarr_level(path, level)
    except UserError:
        raise
    except Exception as exc:  # zarr raises many types for broken stores
        raise UserError(f"{path}: cannot read as a Zarr store ({one_line(exc)}); check the path") from exc
    shape = tuple(int(n) for n in array.shape)
    if len(shape) == 3 and shape[-1] <= 4 < shape[0]:  # (H, W, C)
        return _PlaneOf(array, ()), False
    lead = shape[:-2]
    channels = [n for n in lead if n != 1]
    if len(shape) < 2 or len(channels) > 1 or (channels and channels[0] > 4):
        raise UserError(
            f"{path}: Zarr array of shape {shape} is not a single 2-D image (H,W), (H,W,C<=4) or "
            "(C<=4,H,W) (axes of length 1 before them allowed); write each plane as its own store"
        )
    plane = _PlaneOf(array, tuple(0 if n == 1 else slice(None) for n in lead))
    channels_first = bool(channels)
    return plane, channels_first


class ZarrSource(StoredRows):
    """An image stored as a Zarr array (a ``.zarr`` directory, or level ``level`` of a multiscale
    group), read a row of chunks at a time: ``(H, W)``, ``(H, W, C<=4)`` or ``(C<=4, H, W)``, with
    any leading axes of length 1 (OME-Zarr) dropped. The same pixel and decode limits as
    :class:`TiffSource`. Raises ``UserError``, one line naming the store, when it cannot be read as
    one 2-D image."""

    def __init__(self, path: str | Path, in_channels: int, level: int = 0) -> None:
        self.path, self.name, self.in_channels = Path(path), str(path), in_channels
        plane, channels_first = _zarr_plane(self.path, level)
        rest = plane.shape
        self.height, self.width = (rest[1], rest[2]) if channels_first else (rest[0], rest[1])
        samples = rest[0] if channels_first else (rest[2] if len(rest) == 3 else 1)
        self.reader = ChunkRows(plane, self.height, channels_first=channels_first)
        nbytes = self.reader.chunk_rows * self.width * samples * np.dtype(plane.array.dtype).itemsize
        if nbytes > MAX_DECODE_BYTES:
            raise UserError(
                f"{self.path}: Zarr chunks {self.reader.chunk_rows} rows high make a row of chunks "
                f"{_human(nbytes)}, above the limit of {_human(MAX_DECODE_BYTES)}; rechunk the store"
            )
        self.channels = image_to_array(self.reader.rows(0, 1), in_channels, self.name).shape[0]

    def raw_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """Rows ``start:stop`` as stored: ``(rows, W)`` or ``(rows, W, C)`` in the store's dtype."""
        try:
            return self.reader.rows(start, stop, columns)
        except Exception as exc:  # codecs and the OS raise many types for damaged chunks
            raise UserError(
                f"{self.path}: cannot read Zarr rows {start}..{stop} ({one_line(exc)}); the store is damaged"
            ) from exc

    def close(self) -> None:
        self.reader.close()


def open_lazily(
    path: Path, in_channels: int, page: int | None = None, level: int = 0
) -> TiffSource | ZarrSource | SlideSource:
    """A row source that reads ``path`` lazily: a Zarr store, a whole slide through OpenSlide
    (:mod:`.slides`), or a TIFF (page ``page``, level ``level``)."""
    if is_zarr_store(path):
        return ZarrSource(path, in_channels, level)
    if reads_as_slide(path):
        return SlideSource(path, in_channels, level)
    return TiffSource(path, in_channels, page, level)


def image_size(path: str | Path, page: int | None = None, level: int = 0) -> tuple[int, int]:
    """``(H, W)`` of an image file (of its ``page`` and pyramid ``level`` for a TIFF; of a Zarr
    store's array) without decoding its pixels.

    Raises ``UserError`` if unreadable, for a TIFF stack without ``page``, or a level the file lacks.
    """
    path = Path(path)
    try:
        if is_zarr_store(path):
            plane, channels_first = _zarr_plane(path, level)
            return plane.shape[1:3] if channels_first else plane.shape[:2]
        if reads_as_slide(path):
            return slide_size(path, level)
        if path.suffix.lower() in TIFF_SUFFIXES + TIFF_BASED:
            with tifffile.TiffFile(path) as tif:
                chosen = tiff_level(tif, _page_index(tif, page, path), level, path)
                return int(chosen.imagelength), int(chosen.imagewidth)
        if level:
            raise UserError(f"{path}: level {level} asked for (--level) but only TIFF and Zarr files have levels")
        from PIL import Image

        with Image.open(path) as image:
            return int(image.height), int(image.width)
    except UserError:
        raise
    except Exception as exc:  # Pillow and tifffile raise many types for broken files
        raise UserError(
            f"{path}: cannot read as an image ({one_line(exc)}); expected a readable PNG, TIFF, JPEG or BMP file"
        ) from exc
