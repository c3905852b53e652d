"""Bands of rows of any height regrouped into blocks of a fixed number of rows, for writers that must
write whole chunk rows (Zarr) or whole rows of tiles (TIFF)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["RowBlocks"]


class RowBlocks:
    """Rows ``0 .. total`` that come in bands of any height, handed out in blocks of ``block`` rows
    (the last one shorter). The rows run along ``axis``; they are copied into one buffer of ``dtype``
    that is reused from block to block, so a writer holds one block, not the bands (and the caller
    may reuse its arrays). Rows past ``total`` are dropped."""

    def __init__(self, total: int, block: int, axis: int = 0, dtype: np.dtype | type = np.uint8) -> None:
        self.total, self.block, self.axis, self.dtype = int(total), int(block), axis, np.dtype(dtype)
        self.buffer: np.ndarray | None = None
        self.filled = 0  # rows of the buffer that have come
        self.done = 0  # rows handed out in blocks

    def add(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """The next rows; yields ``(first row, block)`` for every block they complete. The block is
        the buffer itself: use it before asking for the next one."""
        rows = np.asarray(rows)
        count, taken = rows.shape[self.axis], 0
        while taken < count and self.done < self.total:
            size = min(self.block, self.total - self.done)
            if self.buffer is None or self.buffer.shape[self.axis] != size:
                shape = list(rows.shape)
                shape[self.axis] = size
                self.buffer = np.empty(shape, self.dtype)
            take = min(count - taken, size - self.filled)
            self._rows(self.buffer, self.filled, take)[...] = self._rows(rows, taken, take)
            taken, self.filled = taken + take, self.filled + take
            if self.filled == size:
                yield self.done, self.buffer
                self.done, self.filled = self.done + size, 0

    def release(self) -> None:
        """Drop the buffer (after the last block, or when the writing is given up)."""
        self.buffer, self.filled = None, 0

    def _rows(self, array: np.ndarray, first: int, count: int) -> np.ndarray:
        index = [slice(None)] * array.ndim
        index[self.axis] = slice(first, first + count)
        return array[tuple(index)]
