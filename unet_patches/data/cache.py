"""The decode cache: each image or mask file of a data folder decoded once, kept as a ``.npy`` file
that later runs load (memory-mapped for large files) instead of decoding the file again.

Entries live in ``<data folder>/.unet-patches-cache/``, one per file, named
``<key>-<size>-<mtime_ns>-<ctime_ns>-<inode>.c1.npy`` where ``key`` hashes the file's resolved path and
how it is read (as a mask, the TIFF page, palettes by colour). A file whose size, times or inode
changed gets a new entry and its old one is removed. Entries are written through a temporary file
and renamed, so a killed run never leaves a half-written entry; each ends with the CRC-32 of what
precedes it, checked on every read, so an entry cut short or altered on disk is decoded again and
replaced (with one warning), never used. A folder that cannot be written
(read-only media) is read without a cache, with one warning. Under ``torchrun`` only rank 0 writes
entries (the others decode what is missing and use what is there), so no two processes write one
entry. ``data.cache: false`` (``--no-cache``) turns the cache off; deleting the folder is safe.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from unet_patches.atomic import write_atomically

from .imageio import read_raw

__all__ = ["CACHE_DIR_NAME", "ENTRY_SUFFIX", "DecodeCache", "read_entry", "write_entry"]

log = logging.getLogger(__name__)

CACHE_DIR_NAME = ".unet-patches-cache"
_WARNED: set[Path] = set()
MAP_ABOVE_BYTES = 1 << 20  # source files above this are memory-mapped from the cache, smaller ones read


class DecodeCache:
    """Reads image files through a cache folder under ``folder`` (no cache when ``folder`` is None)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.directory = None if folder is None else Path(folder) / CACHE_DIR_NAME
        self.hits = 0
        self.misses = 0
        self._keys: dict[tuple, str] = {}

    def read(
        self, path: str | Path, *, mask: bool = False, page: int | None = None, mask_colours: bool = False
    ) -> np.ndarray:
        """The file's raw array (as :func:`~unet_patches.data.imageio.read_raw` returns it), from the cache
        when the entry is current: memory-mapped read-only for files over ``MAP_ABOVE_BYTES``."""
        options = {"mask": mask, "page": page, "mask_colours": mask_colours}
        if self.directory is None:
            return read_raw(path, **options)
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return read_raw(path, **options)  # raises its usual "not found" message
        key = self._key(path, mask, page, mask_colours)
        # Size, modification and change times, and the inode: a file replaced by another one
        # (a rename, an archive unpacked again) gets a new entry even with the same size and mtime.
        stamp = f"{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ctime_ns}-{stat.st_ino}"
        entry = self.directory / f"{key}-{stamp}{ENTRY_SUFFIX}"
        try:
            # Small files (patches) are read whole: mapping a tiny file costs more than reading it.
            array = read_entry(entry, mapped=stat.st_size > MAP_ABOVE_BYTES)
            self.hits += 1
            return array
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("%s: cache entry damaged (%s), decoding %s again", entry, exc, path)
        raw = read_raw(path, **options)
        self.misses += 1
        torch = sys.modules.get("torch")  # no torch loaded: not a torchrun worker either
        if torch is None or not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            self._store(key, entry, raw)
        return raw

    def _key(self, path: Path, mask: bool, page: int | None, mask_colours: bool) -> str:
        """The entry's name for a file and how it is read (computed once per file and reader)."""
        how = (path, mask, page, mask_colours)
        if how not in self._keys:
            text = os.fsencode(path.resolve()) + f"|{int(mask)}|{page}|{int(mask_colours)}".encode()
            self._keys[how] = hashlib.sha1(text).hexdigest()[:24]
        return self._keys[how]

    def _store(self, key: str, entry: Path, raw: np.ndarray) -> None:
        assert self.directory is not None
        try:
            self.directory.mkdir(exist_ok=True)
            for stale in self.directory.glob(f"{key}-*.npy"):
                stale.unlink(missing_ok=True)
            write_atomically(entry, lambda tmp: write_entry(tmp, raw))
        except OSError as exc:
            if self.directory not in _WARNED:  # once per folder and process (inspection and loading both read)
                _WARNED.add(self.directory)
                log.warning("%s: cannot write the decode cache (%s); reading without it", self.directory, exc.strerror)
            self.directory = None


ENTRY_SUFFIX = ".c1.npy"
"""An entry: an ``.npy`` file and its trailer (entries of other layouts are misses, then replaced)."""
_TRAILER = b"unet-crc"  # then the CRC-32 of the bytes before the trailer, 4 bytes big-endian
_TRAILER_SIZE = len(_TRAILER) + 4


class _Checksummed:
    """A file written through, with the CRC-32 of what went in."""

    def __init__(self, file: Any) -> None:
        self.file, self.crc = file, 0

    def write(self, data: Any) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.file.write(data)


def write_entry(path: Path, raw: np.ndarray) -> None:
    """``raw`` as an ``.npy`` file at ``path``, followed by its checksum trailer (see :func:`read_entry`)."""
    with open(path, "wb") as f:  # a path would get ".npy" appended by np.save
        out = _Checksummed(f)
        np.save(out, np.ascontiguousarray(raw), allow_pickle=False)
        f.write(_TRAILER + out.crc.to_bytes(4, "big"))


def read_entry(entry: Path, mapped: bool) -> np.ndarray:
    """An entry's array (read-only memory-mapped when ``mapped``), once its trailer's CRC matches
    (entries of this cache and of the pixel weights, :mod:`.pixel_weights`).

    Raises:
        FileNotFoundError: no such entry.
        ValueError: the entry is cut short or altered.
    """
    with open(entry, "rb") as f:
        size = os.fstat(f.fileno()).st_size - _TRAILER_SIZE
        if size <= 0:
            raise ValueError("too short")
        crc, left, blocks = 0, size, []
        while left:
            block = f.read(min(left, 1 << 22))
            if not block:
                raise ValueError("cut short")
            crc, left = zlib.crc32(block, crc), left - len(block)
            if not mapped:
                blocks.append(block)
        trailer = f.read(_TRAILER_SIZE)
    if trailer != _TRAILER + crc.to_bytes(4, "big"):
        raise ValueError("checksum mismatch")
    if mapped:
        return np.load(entry, mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(b"".join(blocks)), allow_pickle=False)
