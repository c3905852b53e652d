"""Writers that take an image a band of rows at a time, so the whole image never sits in memory.

Each writer writes to a temporary file next to the target and moves it into place only when every
row has arrived (``close``); an error on the way leaves no half-written output behind (``abort``).

- :class:`PngWriter`: 8-bit gray or RGB PNG, compressed as the rows come (zlib stream).
- :class:`TiffWriter`: uncompressed single-page TIFF (tifffile writes the header, rows go in by
  positioned writes), so it can be memory-mapped or read by bands later. Pixel data over
  :data:`BIGTIFF_THRESHOLD_BYTES` makes it a BigTIFF (64-bit offsets), which a classic TIFF's 32-bit
  offsets cannot address.

The temporary file of ``<folder>/<name>`` is ``<folder>/.<name>.part`` (:func:`temporary_path`); a
killed process leaves it behind, and the next ``predict`` into that folder removes it
(:func:`unet_patches.tiling.files.plan_outputs`).
- :class:`NpyWriter`: a ``(K, H, W)`` float32 ``.npy`` file (open it with ``numpy.load(path,
  mmap_mode="r")``), filled band by band.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["BIGTIFF_THRESHOLD_BYTES", "BandWriter", "NpyWriter", "PngWriter", "TiffWriter", "temporary_path"]

# A classic TIFF addresses its file with 32-bit offsets (4 GiB). Pixel data above 4 GiB less 32 MiB
# (room for the header and tags) is written as BigTIFF: tifffile.imwrite's own rule. Below it the file
# stays classic, which every TIFF reader opens.
BIGTIFF_THRESHOLD_BYTES = 2**32 - 2**25


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
    """Uncompressed single-page TIFF of ``(rows, W)`` bands (labels: uint8).

    ``bigtiff``: None (the default) writes a BigTIFF when the pixel data exceeds
    :data:`BIGTIFF_THRESHOLD_BYTES` (a 66000 x 66000 uint8 image, for one) and a classic TIFF otherwise;
    True or False forces the choice. ``self.bigtiff`` says which was written.
    """

    def __init__(
        self, path: str | Path, height: int, width: int, dtype: np.dtype = np.uint8, bigtiff: bool | None = None
    ) -> None:
        super().__init__(path, height, width)
        self.dtype = np.dtype(dtype)
        self.fd: int | None = None
        data_bytes = self.height * self.width * self.dtype.itemsize
        self.bigtiff = data_bytes > BIGTIFF_THRESHOLD_BYTES if bigtiff is None else bool(bigtiff)
        try:
            # The pixel data is only reserved here (tifffile seeks past it), not written.
            with tifffile.TiffWriter(self.tmp, byteorder="<", bigtiff=self.bigtiff) as tif:
                offset, _ = tif.write(
                    None, shape=(self.height, self.width), dtype=self.dtype, photometric="minisblack", returnoffset=True
                )
            self.offset = offset
            self.fd = os.open(self.tmp, os.O_WRONLY)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"TIFF band {rows.shape}: expected (rows, {self.width})")
        start = self.rows_done
        self._advance(rows.shape[0])
        data = np.ascontiguousarray(rows, dtype=self.dtype.newbyteorder("<")).tobytes()
        assert self.fd is not None, f"{self.path}: written after close"
        _pwrite_all(self.fd, data, self.offset + start * self.width * self.dtype.itemsize)

    def _finish(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
