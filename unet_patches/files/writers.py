"""Writers that take an image a band of rows at a time, so the whole image never sits in memory.

Each writer writes to a temporary file next to the target and moves it into place only when every
row has arrived (``close``); an error on the way leaves no half-written output behind (``abort``).

- :class:`PngWriter`: 8-bit gray or RGB PNG, compressed as the rows come (zlib stream).
- :class:`TiffWriter`: a tiled, compressed TIFF written by tifffile's tiled writer as rows finish;
  optionally an OME-TIFF with a pyramid of sub-resolutions (``--format ome-tiff``). Pixel data over
  :data:`BIGTIFF_THRESHOLD_BYTES` makes it a BigTIFF (64-bit offsets), which a classic TIFF's 32-bit
  offsets cannot address.

The temporary file of ``<folder>/<name>`` is ``<folder>/.<name>.part`` (:func:`temporary_path`); a
killed process leaves it behind, and the next ``predict`` that takes the image's claim removes it
(:mod:`unet_patches.files.claims`, :func:`unet_patches.files.plan.remove_stale_parts`).
- :class:`ZarrWriter`: a Zarr store (a ``.zarr`` directory) of labels or probabilities, in chunks
  written as their rows finish.
- :class:`NpyWriter`: a ``(K, H, W)`` float32 ``.npy`` file (open it with ``numpy.load(path,
  mmap_mode="r")``), filled band by band.
"""

from __future__ import annotations

import os
import queue
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .row_blocks import RowBlocks
from .shared_zarr import ChunkRowFiller

__all__ = [
    "BIGTIFF_THRESHOLD_BYTES",
    "Band",
    "BandWriter",
    "NpyWriter",
    "PngWriter",
    "TiffWriter",
    "ZarrWriter",
    "pyramid_levels",
    "temporary_path",
]

# A classic TIFF addresses its file with 32-bit offsets (4 GiB). Pixel data above 4 GiB less 32 MiB
# (room for the header and tags) is written as BigTIFF: tifffile.imwrite's own rule. Below it the file
# stays classic, which every TIFF reader opens.
BIGTIFF_THRESHOLD_BYTES = 2**32 - 2**25


@dataclass
class Band:
    """Finished rows ``start:start + len(labels)`` of the image (original, unpadded coordinates).

    ``labels``: uint8 ``(rows, W)``; ``probs``: float32 ``(K, rows, W)`` blended probabilities
    (or blended raw outputs when the activation is None), present when asked for.
    """

    start: int
    labels: np.ndarray
    probs: np.ndarray | None


def temporary_path(path: str | Path) -> Path:
    """The temporary file a writer fills before moving it to ``path``: ``.<name>.part`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.part")


class BandWriter:
    """Rows in order from the top; ``close`` checks every row came and puts the file in place."""

    def __init__(self, path: str | Path, height: int, width: int) -> None:
        self.path = Path(path)
        self.height, self.width = int(height), int(width)
        self.rows_done = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.path)

    def write(self, rows: np.ndarray) -> None:
        """Append the next band: ``(rows, W)`` or ``(rows, W, channels)`` / ``(K, rows, W)`` for probs."""
        raise NotImplementedError

    def _advance(self, count: int) -> None:
        if self.rows_done + count > self.height:
            raise ValueError(f"{self.path}: {self.rows_done + count} rows written to an image of {self.height}")
        self.rows_done += count

    def _finish(self) -> None:
        raise NotImplementedError

    def close(self) -> Path:
        if self.rows_done != self.height:
            self.abort()
            raise ValueError(f"{self.path}: only {self.rows_done} of {self.height} rows were written")
        self._finish()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (after an error)."""
        try:
            self._finish()
        except Exception:  # the file is being thrown away; its state does not matter
            pass
        self.tmp.unlink(missing_ok=True)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` until every byte is written (one call may write less, e.g. above 2 GiB on Linux)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngWriter(BandWriter):
    """8-bit PNG, gray ``(rows, W)`` or RGB ``(rows, W, 3)`` bands, deflated as they arrive."""

    def __init__(self, path: str | Path, height: int, width: int, channels: int = 1, level: int = 6) -> None:
        super().__init__(path, height, width)
        if channels not in (1, 3):
            raise ValueError(f"PNG channels={channels}: expected 1 (gray) or 3 (RGB)")
        self.channels = channels
        self.file = open(self.tmp, "wb")
        self.compressor = zlib.compressobj(level)
        colour_type = 0 if channels == 1 else 2
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, colour_type, 0, 0, 0)
        self.file.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header))

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        expected = (self.width,) if self.channels == 1 else (self.width, 3)
        if rows.dtype != np.uint8 or rows.shape[1:] != expected:
            raise ValueError(f"PNG band {rows.shape} {rows.dtype}: expected uint8 (rows, {expected})")
        self._advance(rows.shape[0])
        # Each scanline starts with filter type 0 (none).
        lines = np.zeros((rows.shape[0], 1 + self.width * self.channels), dtype=np.uint8)
        lines[:, 1:] = rows.reshape(rows.shape[0], -1)
        data = self.compressor.compress(lines.tobytes())
        if data:
            self.file.write(_png_chunk(b"IDAT", data))

    def _finish(self) -> None:
        if self.file.closed:
            return
        try:
            if self.rows_done == self.height:
                self.file.write(_png_chunk(b"IDAT", self.compressor.flush()))
                self.file.write(_png_chunk(b"IEND", b""))
        finally:
            self.file.close()


class TiffWriter(BandWriter):
    """A tiled, deflate-compressed TIFF of uint8 ``(rows, W)`` bands (labels; ``(rows, W, samples)`` with
    ``samples``, e.g. probabilities as ``round(255 p)`` per class), written by tifffile's own
    tiled writer: tiles go to it as soon as their rows are final, in a helper thread that pulls them
    from a short queue, so memory holds a row of tiles, not the image.

    ``ome``: an OME-TIFF (OME-XML in the first page; name it ``.ome.tif``). ``pyramid``: sub-resolutions
    as SubIFDs, each half the size of the one before (nearest: every other row and column, so labels
    stay class indices) until the smaller side fits one tile; QuPath and napari open them as an image
    pyramid. They are collected on disk (a temporary raw file per level in the system's temporary folder)
    while the full resolution streams, and written after it.

    ``bigtiff``: None (the default) writes a BigTIFF when the pixel data of every level together
    exceeds :data:`BIGTIFF_THRESHOLD_BYTES` (a 66000 x 66000 image, for one), which a classic TIFF's
    32-bit offsets cannot address even compressed; True or False forces it. ``self.bigtiff`` says which.
    """

    def __init__(
        self,
        path: str | Path,
        height: int,
        width: int,
        *,
        tile: int = 256,
        ome: bool = False,
        pyramid: bool = False,
        bigtiff: bool | None = None,
        samples: int = 1,
    ) -> None:
        super().__init__(path, height, width)
        self.tile, self.ome, self.samples = int(tile), bool(ome), int(samples)
        self.levels = pyramid_levels(self.height, self.width, self.tile) if pyramid else 0
        data_bytes = self.height * self.width * self.samples * (4 if pyramid else 3) // 3
        self.bigtiff = data_bytes > BIGTIFF_THRESHOLD_BYTES if bigtiff is None else bool(bigtiff)
        self.pixel = (self.samples,) if self.samples > 1 else ()  # a pixel's shape
        self.tile_rows = RowBlocks(self.height, self.tile)  # rows waiting for a whole row of tiles
        self.lower = [_LevelFile(self.height, self.width, 2**k, self.pixel) for k in range(1, self.levels + 1)]
        self.tiles: queue.Queue = queue.Queue(maxsize=-(-self.width // self.tile))  # a row of tiles
        self.error: BaseException | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name=f"tiff writer {self.path.name}", daemon=True)
        self.thread.start()

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.shape[1:] != (self.width, *self.pixel) or rows.dtype != np.uint8:
            raise ValueError(f"TIFF band {rows.shape} {rows.dtype}: expected uint8 (rows, {self.width}, *{self.pixel})")
        start = self.rows_done
        self._advance(rows.shape[0])
        for level in self.lower:
            level.add(rows, start)
        for _, block in self.tile_rows.add(rows):
            self._put_tile_row(block)

    def _put_tile_row(self, rows: np.ndarray) -> None:
        t = self.tile
        for x in range(0, self.width, t):
            tile = rows[:, x : x + t]
            if tile.shape[:2] != (t, t):  # the image's last row or column of tiles: padded with zeros
                tile = np.pad(tile, ((0, t - tile.shape[0]), (0, t - tile.shape[1])) + ((0, 0),) * len(self.pixel))
            else:
                tile = tile.copy()
            while True:  # a bounded queue; the thread may have failed meanwhile
                if self.error is not None:
                    raise self.error
                try:
                    self.tiles.put(tile, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _run(self) -> None:
        def tiles(source) -> Iterator[np.ndarray]:
            while True:
                tile = source.get()
                if tile is None:
                    if self.stopped:  # an abort: stop tifffile now, rather than let it pad the image
                        raise _Aborted
                    return
                yield tile

        options = {"tile": (self.tile, self.tile), "compression": "zlib", "photometric": "minisblack"}
        if self.pixel:  # samples interleaved in each pixel, not planes
            options["planarconfig"] = "contig"
        try:
            with tifffile.TiffWriter(self.tmp, bigtiff=self.bigtiff, ome=self.ome) as tif:
                metadata = {"axes": "YXS" if self.pixel else "YX"} if self.ome else None
                shape, dtype = (self.height, self.width, *self.pixel), np.uint8
                tif.write(
                    tiles(self.tiles), shape=shape, dtype=dtype, subifds=self.levels, metadata=metadata, **options
                )
                if self.stopped:
                    return
                for level in self.lower:
                    tif.write(level.tiles(self.tile), shape=level.shape, dtype=dtype, subfiletype=1, **options)
        except _Aborted:  # the end marker was taken: nothing more comes
            return
        except BaseException as exc:  # handed to the writing thread, which raises it
            self.error = exc
            while self.tiles.get() is not None:  # let a producer blocked on a full queue go on
                pass

    def _finish(self) -> None:
        self.tile_rows.release()
        if self.thread.is_alive():
            self.stopped = self.rows_done != self.height  # an abort: no pyramid after the tiles
            self.tiles.put(None)
            self.thread.join()
        for level in self.lower:
            level.close()
        self.lower = []
        if self.error is not None and not self.stopped:
            raise self.error


class ProbabilityTiffWriter(TiffWriter):
    """Probabilities ``(K, rows, W)`` as a TIFF / OME-TIFF of ``K`` samples per pixel, uint8
    ``round(255 p)`` (``--format ome-tiff --probs``; a pyramid by nearest downsampling too)."""

    def __init__(self, path: str | Path, classes: int, height: int, width: int, **options: Any) -> None:
        super().__init__(path, height, width, samples=classes, **options)

    def write(self, rows: np.ndarray) -> None:
        scaled = np.rint(np.clip(np.moveaxis(np.asarray(rows), 0, -1), 0.0, 1.0) * 255.0)
        super().write(scaled.astype(np.uint8))


class _Aborted(Exception):
    """Raised inside tifffile's tile loop when a writer is aborted."""


def pyramid_levels(height: int, width: int, tile: int) -> int:
    """How many halvings a pyramid of an image of ``height`` x ``width`` gets: until its smaller side
    fits in one ``tile``."""
    levels = 0
    while min(height, width) > tile:
        height, width, levels = -(-height // 2), -(-width // 2), levels + 1
    return levels


class _LevelFile:
    """One sub-resolution of a pyramid (every ``step``-th row and column of the image), filled as bands
    arrive and kept in a temporary raw file until it is written. Plain positioned reads and writes, not
    a memory map, so its pages do not count towards the process's memory."""

    def __init__(self, height: int, width: int, step: int, pixel: tuple[int, ...] = ()) -> None:
        self.step, self.pixel = step, pixel
        self.shape = (-(-height // step), -(-width // step), *pixel)
        self.fd, name = tempfile.mkstemp(prefix="unet-patches-level-", suffix=".raw")
        self.path = Path(name)
        self.row_bytes = self.shape[1] * int(np.prod(pixel, dtype=np.int64))
        os.ftruncate(self.fd, self.shape[0] * self.row_bytes)

    def add(self, rows: np.ndarray, start: int) -> None:
        first = -start % self.step  # the band's first row that falls on the grid
        picked = np.ascontiguousarray(rows[first :: self.step, :: self.step])
        if picked.size:
            _pwrite_all(self.fd, picked.tobytes(), (start + first) // self.step * self.row_bytes)

    def tiles(self, tile: int) -> Iterator[np.ndarray]:
        height, width = self.shape[:2]
        for y in range(0, height, tile):
            rows = min(tile, height - y)
            data = os.pread(self.fd, rows * self.row_bytes, y * self.row_bytes)
            assert len(data) == rows * self.row_bytes, f"{self.path}: short read"
            band = np.zeros((tile, -(-width // tile) * tile, *self.pixel), np.uint8)
            band[:rows, :width] = np.frombuffer(data, np.uint8).reshape(rows, width, *self.pixel)
            for x in range(0, width, tile):
                yield band[:, x : x + tile].copy()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


class NpyWriter(BandWriter):
    """``(K, H, W)`` float32 ``.npy`` filled by ``(K, rows, W)`` bands."""

    def __init__(self, path: str | Path, classes: int, height: int, width: int) -> None:
        super().__init__(path, height, width)
        self.classes = int(classes)
        self.fd: int | None = None
        try:
            with open(self.tmp, "wb") as file:
                header = {"descr": "<f4", "fortran_order": False, "shape": (self.classes, self.height, self.width)}
                np.lib.format.write_array_header_1_0(file, header)
                self.offset = file.tell()
                file.truncate(self.offset + self.classes * self.height * self.width * 4)
            self.fd = os.open(self.tmp, os.O_WRONLY)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 3 or rows.shape[0] != self.classes or rows.shape[2] != self.width:
            raise ValueError(f"probability band {rows.shape}: expected ({self.classes}, rows, {self.width})")
        start = self.rows_done
        self._advance(rows.shape[1])
        plane = self.height * self.width
        assert self.fd is not None, f"{self.path}: written after close"
        for k in range(self.classes):
            data = np.ascontiguousarray(rows[k], dtype="<f4").tobytes()
            _pwrite_all(self.fd, data, self.offset + 4 * (k * plane + start * self.width))

    def _finish(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ZarrWriter(BandWriter):
    """A Zarr (v3) store of labels, uint8 ``(H, W)`` from ``(rows, W)`` bands, or of probabilities,
    ``(K, H, W)`` from ``(K, rows, W)`` bands (``classes``), stored as float16 or as uint8 (``round(255 p)``).
    Chunks are ``chunk`` x ``chunk`` pixels (all classes in one); a row of chunks is written as soon as
    its rows are final, so memory holds one row of chunks. The store is filled in the directory
    ``.<name>.part`` and renamed into place whole (a store the run replaces with ``overwrite`` is
    removed first).
    """

    def __init__(
        self,
        path: str | Path,
        height: int,
        width: int,
        *,
        classes: int | None = None,
        dtype: str = "uint8",
        chunk: int = 512,
    ) -> None:
        import zarr  # noqa: PLC0415 (loaded when a store is written)

        super().__init__(path, height, width)
        if dtype not in ("uint8", "float16"):
            raise ValueError(f"Zarr dtype {dtype!r}: expected uint8 or float16")
        self.classes, self.dtype, self.chunk = classes, np.dtype(dtype), int(chunk)
        lead = () if classes is None else (int(classes),)
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp)  # left by a killed run: our own temporary name
        self.array = zarr.create_array(
            store=str(self.tmp),
            shape=(*lead, self.height, self.width),
            chunks=(*lead, self.chunk, self.chunk),
            dtype=self.dtype,
            fill_value=0,
        )
        self.filler = ChunkRowFiller(self.array, 0, self.height, probabilities=classes is not None)

    @property
    def written(self) -> int:
        """Rows in the store (whole chunk rows, and the last rows once they have all come)."""
        return self.filler.written

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        expected = (self.width,) if self.classes is None else (self.classes, self.width)
        shape = rows.shape[1:] if self.classes is None else (rows.shape[0], rows.shape[2])
        if rows.ndim != len(expected) + 1 or shape != expected:
            raise ValueError(f"Zarr band {rows.shape}: expected rows of {expected}")
        self._advance(rows.shape[0] if self.classes is None else rows.shape[1])
        self.filler.add(rows)

    def _finish(self) -> None:
        self.filler.release()

    def close(self) -> Path:
        if self.rows_done == self.height and self.path.is_dir() and (self.path / "zarr.json").is_file():
            shutil.rmtree(self.path)  # a store of an earlier run, replaced as asked (overwrite)
        return super().close()

    def abort(self) -> None:
        self.filler.release()
        shutil.rmtree(self.tmp, ignore_errors=True)
