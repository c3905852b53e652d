"""The merger: weighted window outputs summed over a band of rows, finished rows handed out as
labels (and probabilities)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Band", "BandAccumulator", "argmax_classes", "assemble"]


class BandAccumulator:
    """Weighted sums ``(K, rows, W)`` for the rows from ``start`` on that windows still touch.

    NumPy rather than torch: these are plain memory-bound adds, and torch would split each one
    over its thread pool, which costs a synchronisation per window on a busy machine.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.start = 0
        self.sums: np.ndarray | None = None

    def add(self, outputs: np.ndarray, positions: Sequence[tuple[int, int]]) -> None:
        """Add window outputs ``(n, K, h, w)`` at their ``(row, column)`` positions (padded coordinates)."""
        _, classes, h, w = outputs.shape
        needed = max(y for y, _ in positions) + h - self.start
        if self.sums is None or self.sums.shape[1] < needed:
            grown = np.zeros((classes, needed, self.width), dtype=np.float32)
            if self.sums is not None:
                grown[:, : self.sums.shape[1]] = self.sums
            self.sums = grown
        for output, (y, x) in zip(outputs, positions):
            self.sums[:, y - self.start : y - self.start + h, x : x + w] += output

    def finished(self, stop: int) -> np.ndarray:
        """View of rows ``start:stop``, which no window still to come touches. It may be changed in
        place; :meth:`drop` then reuses its memory."""
        assert self.sums is not None and 0 < stop - self.start <= self.sums.shape[1]
        return self.sums[:, : stop - self.start]

    def drop(self, stop: int) -> None:
        """Forget rows before ``stop``: shift the rest to the top of the buffer, in place."""
        assert self.sums is not None
        count = stop - self.start
        rest = self.sums.shape[1] - count
        # Copy in chunks of at most `count` rows: each source chunk lies wholly below its
        # destination, so nothing is overwritten before it is read and no temporary is needed.
        for top in range(0, rest, count):
            rows = min(count, rest - top)
            self.sums[:, top : top + rows] = self.sums[:, count + top : count + top + rows]
        self.sums[:, max(rest, 0) :] = 0.0
        self.start = stop


@dataclass
class Band:
    """Finished rows ``start:start + len(labels)`` of the image (original, unpadded coordinates).

    ``labels``: uint8 ``(rows, W)``; ``probs``: float32 ``(K, rows, W)`` blended probabilities
    (or blended raw outputs when the activation is None), present when asked for.
    """

    start: int
    labels: np.ndarray
    probs: np.ndarray | None


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """uint8 argmax over the class axis of ``(K, rows, W)``; ties go to the lowest class, as in
    ``numpy.argmax``. One comparison per class over contiguous planes: several times faster than
    ``argmax(axis=0)``, which walks the strided class axis."""
    best = scores[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, scores.shape[0]):
        higher = scores[k] > best
        labels[higher] = k
        np.maximum(best, scores[k], out=best)
    return labels


def assemble(bands: Iterable[Band], size: tuple[int, int], with_probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Whole-image uint8 labels ``size`` (and the float32 ``(K, *size)`` probabilities when
    ``with_probs``, from bands that carry them) from bands of rows."""
    labels = np.empty(size, dtype=np.uint8)
    probs: np.ndarray | None = None
    for band in bands:
        rows = slice(band.start, band.start + band.labels.shape[0])
        labels[rows] = band.labels
        if with_probs:
            assert band.probs is not None
            if probs is None:
                probs = np.empty((band.probs.shape[0], *size), dtype=np.float32)
            probs[:, rows] = band.probs
    return labels, probs
