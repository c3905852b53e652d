"""The merger: weighted window outputs summed one window row at a time, each window's finished pixels
handed out at once as labels (or sums, for probabilities); whole bands of rows put together."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from unet_patches.files.writers import Band

__all__ = ["RowMerger", "argmax_classes", "assemble"]


class RowMerger:
    """Weighted sums of the windows of one window row after the other, each window's finished
    pixels handed on as soon as it comes.

    Windows come row by row, left to right, at column starts ``xs`` (every window of a row, in
    order; all ``window`` sized). A window's own output array holds the running sums of its pixels:
    when it comes, the sums of the window to its left (over their shared columns) and those the row
    above left (``carry``, over the shared rows) are added into it. A pixel's sum is then complete
    in the last window that covers it, and each pixel gets the same additions in the same order as
    on a zeroed image - the same float32 sums bit for bit. The pixels a window is the last to cover
    (rows before the next window row, columns before the next window) are finished: their argmax
    (``sums=False``) or their sums (``sums=True``) go into the band of the row at once, while the
    window is still in the cache; the rows the next window row shares go to ``carry``.

    So no full-width band of sums is written, and nothing is copied into one; between window rows the
    merger holds only ``carry`` (the shared rows), which is what a waiting column strip keeps.

    NumPy rather than torch: these are memory-bound copies and adds, and torch would split each one
    over its thread pool, which costs a synchronisation per window on a busy machine.
    """

    def __init__(self, xs: Sequence[int], window: tuple[int, int], sums: bool = False) -> None:
        self.xs = [int(x) for x in xs]
        self.height, self.width = window
        self.columns = self.xs[-1] + self.width
        self.keep_sums = sums
        self.carry: np.ndarray | None = None  # (K, rows, columns): the row above's sums of the shared rows
        self.carried = 0  # rows of `carry` that the current window row adds
        self.row = self.stop = 0  # the current window row's first row, and the end of its finished rows
        self.band: np.ndarray | None = None  # the current row's finished rows: labels, or sums
        self.left: np.ndarray | None = None  # the last window's sums
        self.next = 0  # index in xs of the window that comes next
        self._labels = np.empty(window, np.uint8)  # a window's labels, before its finished columns are kept

    def begin_row(self, y: int, stop: int) -> None:
        """A window row at rows ``y:y + height`` whose windows finish the rows ``y:stop``; the
        rows it shares with the row before (if that was the row right above) are added to it."""
        assert self.next == 0, "the window row before is not complete"
        self.carried = self.row + self.height - y if self.carry is not None and self.stop == y else 0
        self.row, self.stop = y, stop
        self.band = None

    def add(self, outputs: np.ndarray) -> None:
        """The next windows of the current row, float32 ``(n, K, height, width)``; their sums are
        made in place in ``outputs``, which must be the caller's own."""
        classes = outputs.shape[1]
        if classes > 256:
            raise ValueError(f"the network returns {classes} classes; labels are uint8 (at most 256)")
        finished = self.stop - self.row
        if self.band is None:
            shape = (classes, finished, self.columns) if self.keep_sums else (finished, self.columns)
            self.band = np.empty(shape, np.float32 if self.keep_sums else np.uint8)
        below = self.height - finished  # rows the next window row shares
        if below > 0 and (self.carry is None or self.carry.shape[1] < below):
            grown = np.empty((classes, below, self.columns), np.float32)
            if self.carry is not None:
                grown[:, : self.carry.shape[1]] = self.carry
            self.carry = grown
        for sums in outputs:
            x, i = self.xs[self.next], self.next
            shared = self.xs[i - 1] + self.width - x if i > 0 else 0  # columns the left window covers too
            if shared > 0:
                assert self.left is not None
                sums[:, :, :shared] += self.left[:, :, x - self.xs[i - 1] :]
            if self.carried > 0:
                assert self.carry is not None
                sums[:, : self.carried, shared:] += self.carry[:, : self.carried, x + shared : x + self.width]
            last = self.xs[i + 1] - x if i + 1 < len(self.xs) else self.width  # columns it finishes
            if self.keep_sums:
                self.band[:, :, x : x + last] = sums[:, :finished, :last]
            else:
                # Whole rows of the window: each class plane is one contiguous run, one NumPy loop,
                # where the finished columns alone (a strided view) cost a loop per row.
                labels = argmax_classes(sums[:, :finished], out=self._labels[:finished])
                self.band[:, x : x + last] = labels[:, :last]
            if below > 0:
                assert self.carry is not None
                self.carry[:, :below, x : x + last] = sums[:, finished:, :last]
            self.left = sums
            self.next = i + 1
        if self.next == len(self.xs):  # the row is complete
            self.next, self.left = 0, None

    def finished(self) -> np.ndarray:
        """The current row's finished rows ``row:stop`` over all columns, once its last window came:
        uint8 labels ``(rows, columns)``, or float32 sums ``(K, rows, columns)`` with ``sums=True``.
        A new array for every row, which the caller may keep or change."""
        assert self.band is not None and self.next == 0, "the window row is not complete"
        return self.band


def argmax_classes(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 argmax over the class axis of ``(K, rows, W)``, into ``out`` (uint8 ``(rows, W)``, any
    strides) if given; ties go to the lowest class, as in ``numpy.argmax``. One comparison per
    class over contiguous planes: several times faster than ``argmax(axis=0)``, which walks the
    strided class axis. The first comparison is the labels themselves (written as bools over the
    same bytes), and the last class needs no running maximum: half the time of starting from zeros
    for two or three classes."""
    labels = np.empty(scores.shape[1:], dtype=np.uint8) if out is None else out
    if scores.shape[0] == 1:
        labels[...] = 0
        return labels
    np.greater(scores[1], scores[0], out=labels.view(np.bool_))
    if scores.shape[0] == 2:
        return labels
    best = np.maximum(scores[0], scores[1])
    higher = np.empty(labels.shape, np.bool_)
    for k in range(2, scores.shape[0]):
        # The labels so far are below k, so the larger of them and k where class k is higher is the
        # new label: an element-wise maximum, which does not branch per pixel as putmask does.
        np.greater(scores[k], best, out=higher)
        marks = higher.view(np.uint8)
        np.maximum(labels, np.multiply(marks, k, out=marks), out=labels)
        if k + 1 < scores.shape[0]:
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
