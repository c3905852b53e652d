"""Zarr arrays filled a chunk row at a time (:class:`ChunkRowFiller`, under both Zarr writers), and one
Zarr store written by several processes at once, each its own block of chunk rows.

A huge image split between processes (:func:`unet_patches.files.shards.open_row_block`) writes one
labels store (and one probabilities store): process ``i`` writes only the chunk rows of its block, so
no two processes ever write the same chunk and no lock is needed. Every process writes the store's
metadata (``zarr.json``) the same way, by renaming a complete file into place, so it does not matter
which one comes first. A chunk row is marked finished (an empty file
``<out>/.shards/<store name>.rows/<k>``) only after its chunks are written; a rerun recomputes only
the chunk rows without a mark. The marks belong to one job (``<store name>.job.json``: the image,
the model, the settings): a store begun by another job is refused unless the caller replaces it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unet_patches.atomic import write_atomically
from unet_patches.errors import UserError

from .row_blocks import RowBlocks

__all__ = ["CHUNK", "ChunkRowFiller", "SharedZarrRows", "marks_folder"]

CHUNK = 512  # pixels per chunk side, as the single-process Zarr writer


class ChunkRowFiller:
    """Bands of rows into a Zarr array from row ``start`` to ``stop``, written a whole chunk row at a
    time (the last one may be short), so that no chunk is written twice and memory holds one chunk row.

    Labels come as ``(n, W)``; with ``probabilities``, ``(K, n, W)`` bands of values in [0, 1], stored
    as ``round(255 p)`` in a uint8 array or as they are in a float16 one. ``on_chunk_row(k)`` is told
    each chunk row ``k`` once its rows are in the array.
    """

    def __init__(
        self,
        array: Any,
        start: int,
        stop: int,
        *,
        probabilities: bool = False,
        on_chunk_row: Callable[[int], None] | None = None,
    ) -> None:
        self.array, self.start = array, int(start)
        self.chunk = int(array.chunks[-2])
        self.scale = probabilities and array.dtype == np.uint8
        self.on_chunk_row = on_chunk_row
        self.blocks = RowBlocks(int(stop) - self.start, self.chunk, axis=-2, dtype=array.dtype)

    @property
    def written(self) -> int:
        """Rows in the array."""
        return self.start + self.blocks.done

    def add(self, rows: np.ndarray) -> None:
        """The next rows; each chunk row is written once all its rows have come."""
        rows = np.asarray(rows)
        if self.scale:
            rows = np.rint(np.clip(rows, 0.0, 1.0) * 255.0)
        for first, block in self.blocks.add(rows):
            row = self.start + first
            self.array[..., row : row + block.shape[-2], :] = block
            if self.on_chunk_row is not None:
                self.on_chunk_row(row // self.chunk)

    def release(self) -> None:
        """Forget rows that have not made a whole chunk row (the writing was given up)."""
        self.blocks.release()


def marks_folder(store: Path) -> Path:
    """Where the finished chunk rows of ``store`` are marked: ``<out>/.shards/<store name>.rows``."""
    return store.parent / ".shards" / f"{store.name}.rows"


class SharedZarrRows:
    """Rows ``rows = (start, stop)`` of a Zarr store shared with other processes.

    ``start`` must be a multiple of ``chunk`` (``stop`` too, unless it is the height). Labels are
    uint8 ``(H, W)`` from ``(n, W)`` bands; with ``classes`` probabilities ``(K, H, W)`` from
    ``(K, n, W)`` bands, as uint8 ``round(255 p)`` or (``dtype``) float16. ``job`` identifies the
    work (compared with the store's job file); ``replace`` forgets this block's marks and rewrites
    it, and accepts a store that another job began.

    Raises:
        UserError: the store exists but was begun by another job (or not by a sharded job at all),
            and ``replace`` is not set.
    """

    def __init__(
        self,
        path: Path,
        height: int,
        width: int,
        rows: tuple[int, int],
        job: Mapping[str, Any],
        *,
        classes: int | None = None,
        dtype: str = "uint8",
        chunk: int = CHUNK,
        replace: bool = False,
    ) -> None:
        import zarr  # noqa: PLC0415

        self.path, self.height, self.width, self.chunk = Path(path), int(height), int(width), int(chunk)
        self.start, self.stop = int(rows[0]), int(rows[1])
        if self.start % self.chunk or (self.stop % self.chunk and self.stop != self.height):
            raise ValueError(f"rows {rows}: a block of whole chunk rows of {self.chunk} expected")
        self.dtype = np.dtype(dtype)
        self.marks = marks_folder(self.path)
        job_file = self.marks.with_name(f"{self.path.name}.job.json")
        wanted = json.dumps(dict(job), sort_keys=True)
        begun = job_file.read_text() if job_file.is_file() else None
        if self.path.exists() and begun != wanted and not replace:
            why = "by another job (other image, model or settings)" if begun else "not by a sharded job"
            raise UserError(
                f"{self.path}: already exists, begun {why}; pass --overwrite (overwrite=True) to replace it, "
                "or choose another output folder"
            )
        self.marks.mkdir(parents=True, exist_ok=True)
        if replace:
            for k in self.chunk_rows():
                (self.marks / str(k)).unlink(missing_ok=True)
        if begun != wanted:
            write_atomically(job_file, lambda tmp: Path(tmp).write_text(wanted))
        lead = () if classes is None else (int(classes),)
        self._write_metadata(zarr, lead)
        self.array = zarr.open_array(str(self.path), mode="r+", config={"write_empty_chunks": True})
        if tuple(self.array.shape) != (*lead, self.height, self.width):
            raise UserError(
                f"{self.path}: a store of shape {tuple(self.array.shape)} is in the way of this job's "
                f"{(*lead, self.height, self.width)}; pass --overwrite on every shard, or choose another output folder"
            )
        self.filler = self._filler(self.start)

    def _filler(self, row: int) -> ChunkRowFiller:
        """Rows from ``row`` to the block's end into the store, each chunk row marked once written."""
        return ChunkRowFiller(self.array, row, self.stop, probabilities=self.array.ndim == 3, on_chunk_row=self._mark)

    def _mark(self, chunk_row: int) -> None:
        (self.marks / str(chunk_row)).touch()

    def _write_metadata(self, zarr: Any, lead: tuple[int, ...]) -> None:
        """``zarr.json`` of the array, made in a private folder and renamed into the store."""
        self.path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.path.parent, prefix=f".{self.path.name}.meta-") as tmp:
            zarr.create_array(
                store=tmp,
                shape=(*lead, self.height, self.width),
                chunks=(*lead, self.chunk, self.chunk),
                dtype=self.dtype,
                fill_value=0,
            )
            os.replace(Path(tmp) / "zarr.json", self.path / "zarr.json")

    def chunk_rows(self) -> range:
        """The chunk rows of this block."""
        return range(self.start // self.chunk, -(-self.stop // self.chunk))

    def missing(self) -> tuple[int, int] | None:
        """Rows ``(first, stop)`` from the first to the last chunk row of this block without a mark
        (None when all are finished): what a rerun computes."""
        todo = [k for k in self.chunk_rows() if not (self.marks / str(k)).exists()]
        if not todo:
            return None
        return todo[0] * self.chunk, min((todo[-1] + 1) * self.chunk, self.stop)

    def begin_at(self, row: int) -> None:
        """Start writing at ``row`` (a chunk row's first row within the block) instead of the block's start."""
        assert row % self.chunk == 0 and self.start <= row < self.stop
        self.filler = self._filler(row)

    def write(self, rows: np.ndarray) -> None:
        """The next rows (labels ``(n, W)`` or probabilities ``(K, n, W)``); each chunk row is written
        and marked once all its rows have come."""
        self.filler.add(rows)

    def close(self) -> Path:
        """Check that every chunk row of the block is finished (now or by an earlier run); returns the
        store's path."""
        if self.missing() is not None:
            raise ValueError(f"{self.path}: rows {self.missing()} of the block {self.start}..{self.stop} not written")
        return self.path

    def abort(self) -> None:
        """Nothing to remove: unmarked chunk rows are recomputed by the next run."""
        self.filler.release()
