"""The decode cache: each image or mask file of a data folder decoded once, kept as a ``.npy`` file
that later runs load (memory-mapped for large files) instead of decoding the file again.

Entries live in ``<data folder>/.unet-patches-cache/``, one per file, named
``<key>-<size>-<mtime_ns>-<ctime_ns>-<inode>.npy`` where ``key`` hashes the file's resolved path and
how it is read (as a mask, the TIFF page, palettes by colour). A file whose size, times or inode
changed gets a new entry and its old one is removed. Entries are written through a temporary file
and renamed, so a killed run never leaves a half-written entry. A folder that cannot be written
(read-only media) is read without a cache, with one warning. Under ``torchrun`` only rank 0 writes
entries (the others decode what is missing and use what is there), so no two processes write one
entry. ``data.cache: false`` (``--no-cache``) turns the cache off; deleting the folder is safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import numpy as np

from unet_patches.atomic import write_atomically

from .imageio import read_raw

__all__ = ["CACHE_DIR_NAME", "DecodeCache"]

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
        entry = self.directory / f"{key}-{stamp}.npy"
        try:
            # Small files (patches) are read whole: mapping a tiny file costs more than reading it.
            array = np.load(entry, mmap_mode="r" if stat.st_size > MAP_ABOVE_BYTES else None, allow_pickle=False)
            self.hits += 1
            return array
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            log.warning("%s: cache entry unreadable, decoding %s again", entry, path)
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
            write_atomically(entry, lambda tmp: _save_npy(tmp, raw))
        except OSError as exc:
            if self.directory not in _WARNED:  # once per folder and process (inspection and loading both read)
                _WARNED.add(self.directory)
                log.warning("%s: cannot write the decode cache (%s); reading without it", self.directory, exc.strerror)
            self.directory = None


def _save_npy(path: Path, raw: np.ndarray) -> None:
    with open(path, "wb") as f:  # a path would get ".npy" appended by np.save
        np.save(f, np.ascontiguousarray(raw), allow_pickle=False)
