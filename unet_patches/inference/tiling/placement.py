"""Where the windows go: evenly spread starts per axis, the last window ending at the border.

MONAI steps by a fixed stride and pulls the last window back to the edge, which can make the last
two windows nearly coincide; here the ``n`` windows of an axis are spread evenly instead
(nnU-Net's rule): ``n = ceil((L - w) / stride_max) + 1`` and ``starts = round(linspace(0, L - w, n))``.
The actual stride is never larger than ``stride_max``, so the overlap is never smaller than asked.

Window and overlap settings come from the user and raise ``UserError``; windows the code placed
itself that fail :func:`check_coverage`, or an image size that is not two positive integers, are
programming errors and raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unet_patches.errors import UserError
from unet_patches.validate import is_int, is_number

__all__ = ["axis_starts", "check_coverage", "column_strips", "padded_size", "place_windows", "pair", "stride_for"]

Overlap = float | int | Sequence[float | int]


def pair(value: object, name: str) -> tuple:
    """``value`` as a per-axis ``(rows, columns)`` pair (a scalar is used for both axes)."""
    if isinstance(value, (str, bytes)):
        raise UserError(f"{name} = {value!r}: expected a number or a (rows, columns) pair")
    if isinstance(value, Sequence) or isinstance(value, np.ndarray):
        values = tuple(value)
        if len(values) != 2:
            raise UserError(f"{name} = {value!r}: expected one value or two (rows, columns)")
        return values
    return (value, value)


def _window_pair(window: int | Sequence[int]) -> tuple[int, int]:
    sizes = pair(window, "window")
    for size in sizes:
        if not is_int(size) or size < 1:
            raise UserError(f"window = {window!r}: expected a positive whole number of pixels per axis")
    return int(sizes[0]), int(sizes[1])


def stride_for(window: int, overlap: float | int) -> int:
    """Largest stride for one axis: overlap as a fraction in [0, 1) or as whole pixels in [0, window).

    A fraction gives ``floor(window * (1 - overlap))`` (at least 1), MONAI's rule, so both tools agree
    on the stride for the same settings. Raises ``UserError`` for an overlap outside those ranges.
    """
    if is_int(overlap):
        if not 0 <= overlap < window:
            raise UserError(
                f"overlap = {overlap} pixels with a window of {window}: expected 0 <= overlap < window "
                "(or a fraction such as 0.5)"
            )
        return window - int(overlap)
    if is_number(overlap) and 0.0 <= overlap < 1.0:
        return max(1, int(window * (1.0 - float(overlap))))
    raise UserError(
        f"overlap = {overlap!r}: expected a fraction in [0, 1) such as 0.5, or whole pixels below the window"
    )


def axis_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Window starts along one axis of ``length`` pixels (``length >= window``), spread evenly.

    Returns int64 starts, strictly increasing, the first 0 and the last ``length - window``.
    """
    if length < window:
        raise ValueError(f"axis of {length} pixels is shorter than the window ({window}); pad it first")
    if length == window:
        return np.zeros(1, dtype=np.int64)
    count = math.ceil((length - window) / stride) + 1
    # floor(x + 0.5) rather than numpy's round-half-to-even keeps the starts strictly increasing.
    starts = np.floor(np.linspace(0.0, length - window, count) + 0.5).astype(np.int64)
    check_coverage(starts, window, length)
    return starts


def check_coverage(starts: Sequence[int] | np.ndarray, window: int, length: int) -> None:
    """Raise ``ValueError`` unless windows at ``starts`` cover every pixel of the axis exactly once or more.

    Also rejects windows that run past the border or repeat a start (wasted work). The starts are
    placed by the code (:func:`axis_starts`), so a failure is a programming error, not bad user input.
    """
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size == 0:
        raise ValueError(f"no windows for an axis of {length} pixels; expected at least one")
    if starts[0] != 0:
        raise ValueError(f"pixels 0..{starts[0] - 1} are not covered by any window; the first window must start at 0")
    if starts[-1] + window != length:
        raise ValueError(
            f"the last window ends at {starts[-1] + window}, not at the border ({length}); "
            "windows must end exactly at the border"
        )
    steps = np.diff(starts)
    if np.any(steps <= 0):
        raise ValueError(f"window starts {starts.tolist()} repeat or go backwards; expected increasing starts")
    gaps = np.nonzero(steps > window)[0]
    if gaps.size:
        first = int(starts[gaps[0]] + window)
        raise ValueError(
            f"pixels {first}..{int(starts[gaps[0] + 1]) - 1} are not covered by any window "
            f"(step {int(steps[gaps[0]])} > window {window}); lower the stride or raise the overlap"
        )


def padded_size(size: Sequence[int], window: int | Sequence[int]) -> tuple[int, int]:
    """Image size after padding each axis up to the window where it is smaller."""
    wh, ww = _window_pair(window)
    return max(int(size[0]), wh), max(int(size[1]), ww)


def place_windows(
    size: Sequence[int], window: int | Sequence[int], overlap: Overlap = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Window starts ``(row_starts, column_starts)`` for an image of ``size = (H, W)``.

    ``window`` and ``overlap`` take one value for both axes or a ``(rows, columns)`` pair; overlap is a
    fraction in [0, 1) or whole pixels. An axis shorter than its window gets a single start at 0 of the
    padded axis (see :func:`padded_size`): padding and cropping back are the runner's job.
    Raises ``UserError`` for invalid windows or overlaps (user settings) and ``ValueError`` for an
    invalid ``size`` (it is taken from an image that was already checked).
    """
    wh, ww = _window_pair(window)
    oh, ow = pair(overlap, "overlap")
    if len(size) != 2 or not all(is_int(s) and s >= 1 for s in size):
        raise ValueError(f"image size {tuple(size)!r}: expected two positive whole numbers (H, W)")
    hp, wp = padded_size(size, (wh, ww))
    return axis_starts(hp, wh, stride_for(wh, oh)), axis_starts(wp, ww, stride_for(ww, ow))


def column_strips(starts: np.ndarray, window: int, per_strip: int) -> list[tuple[int, int, int, int]]:
    """Split the columns of an axis with windows at ``starts`` into strips that ``per_strip``
    windows each touch (the last strip fewer).

    Returns ``(first window, end window, first column, end column)`` per strip. The strips tile
    ``0 .. starts[-1] + window``; a strip's windows are all those that touch its columns, so each
    column gets exactly the windows it gets in the whole row. A strip ends where the next window
    starts, which leaves one window shared by two neighbours for any overlap of at most half a window.
    """
    ends = np.asarray(starts) + window
    if per_strip < 1:
        raise ValueError(f"per_strip={per_strip}: expected at least one window per strip")
    strips, column = [], 0
    while True:
        first = int(np.searchsorted(ends, column, "right"))  # the first window ending after `column`
        end = first + per_strip
        if end >= len(starts):
            strips.append((first, len(starts), column, int(ends[-1])))
            return strips
        if int(starts[end]) <= column:
            raise ValueError(f"per_strip={per_strip} windows do not reach past column {column}")
        strips.append((first, end, column, int(starts[end])))
        column = int(starts[end])
