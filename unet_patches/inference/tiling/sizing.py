"""Window sizes for an image: the training patch (``window: patch``, the original's behaviour), an
explicit size, or one chosen for speed (``window: auto``, the default).

A window of the training patch with overlap 0.5 sends every pixel through the network about four
times, in small passes that keep a CPU's matrix units half idle. ``auto`` uses windows of about
:data:`AUTO_WINDOW` pixels (at least the training patch; the whole axis if it is shorter; fitted so
that the windows of an axis cover it with no window to spare; on the model's grid) with a fixed
overlap in pixels chosen from the model: half the training patch, and at least two cells of its
coarsest level (:func:`auto_overlap`). Each pixel then keeps at least the margin from a window's
border that ``patch`` gave it, and goes through the network about 1.3 times instead of 4.
BENCHMARKS.md (window auto) records the full-image mIoU of every registered model with ``auto``
against ``patch``.

``inference.batch_size`` counts windows of the training patch: larger windows go proportionally
fewer per pass (:func:`windows_per_pass`), so a pass needs about the same memory whatever the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unet_patches.errors import UserError
from unet_patches.validate import is_int, is_number

from .placement import pair

__all__ = [
    "AUTO_WINDOW",
    "WINDOW_CHOICES",
    "Window",
    "WindowPlan",
    "auto_overlap",
    "check_window",
    "describe",
    "plan_window",
    "windows_per_pass",
]

AUTO_WINDOW = 320
"""Smallest side of an ``auto`` window in pixels (on an axis longer than it; before fitting to the
axis and rounding to the model's grid): large enough that the passes run near the CPU's peak, small
enough for any image (BENCHMARKS.md, tiled inference, compares the sizes)."""

WINDOW_CHOICES = ("auto", "patch")

Window = int | str | Sequence[int]


@dataclass(frozen=True)
class WindowPlan:
    """The window of an image: its size ``(h, w)``, the overlap (pixels, or a fraction, per axis) and
    the windows per forward pass."""

    window: tuple[int, int]
    overlap: tuple[float | int, float | int]
    batch_size: int


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _fitted(length: int, side: int, overlap: int, grid: int) -> int:
    """The window for an axis of ``length``: the axis itself (on the grid) if it is no longer than
    ``side``; else the smallest window on the grid, at least ``side``, whose count of windows with
    ``overlap`` covers the axis with no window to spare (2048 pixels: 7 windows of 336, not 8 of
    320)."""
    if length <= side:
        return _round_up(length, grid)
    count = max(1, (length - overlap) // (side - overlap))
    return _round_up(-(-(length + (count - 1) * overlap) // count), grid)


def auto_overlap(patch: int, grid: int) -> int:
    """Overlap in pixels of ``auto`` windows: half the training patch (the margin ``patch`` windows
    at overlap 0.5 gave each pixel), and at least two cells of the coarsest level (``grid`` pixels
    each: ``2 ** poolings``), whose features reach furthest."""
    return max(patch // 2, 2 * grid)


def windows_per_pass(batch_size: int, patch: int, window: tuple[int, int]) -> int:
    """Windows of size ``window`` per pass for ``batch_size`` windows of the training patch."""
    return max(1, (batch_size * patch * patch) // (window[0] * window[1]))


def check_window(window: object, name: str = "window") -> Window:
    """``window`` if it is ``auto``, ``patch``, a positive whole number or a pair of them."""
    if isinstance(window, str):
        if window not in WINDOW_CHOICES:
            raise UserError(f"{name} = {window!r}: expected auto, patch or a size in pixels such as 256")
        return window
    for size in pair(window, name):
        if not is_int(size) or size < 1:
            raise UserError(f"{name} = {window!r}: expected auto, patch or a positive whole number of pixels")
    return window  # type: ignore[return-value]


def plan_window(
    size: tuple[int, int],
    *,
    window: Window = "auto",
    overlap: float | str = "auto",
    batch_size: int = 32,
    patch: int,
    grid: int,
    large: bool = True,
) -> WindowPlan:
    """The window for an image of ``size`` ``(H, W)`` (after any resize).

    Args:
        window: ``auto`` (see the module), ``patch`` (the training patch), or a size (one int or ``(h, w)``).
        overlap: ``auto`` (:func:`auto_overlap` pixels for ``auto`` windows, 0.5 otherwise) or a fraction.
        batch_size: windows of the training patch per pass (:func:`windows_per_pass`).
        patch: the training patch size; ``grid``: what window sizes are rounded to (``2 ** poolings``,
            at least the model's input size multiple); ``large``: whether the model predicts as well
            in windows larger than the patch (else ``auto`` means ``patch``).
    """
    check_window(window)
    if not (overlap == "auto" or (is_number(overlap) and not isinstance(overlap, bool))):
        raise UserError(f"overlap = {overlap!r}: expected auto or a fraction in [0, 1)")
    if window == "auto" and not large:
        window = "patch"
    if window == "auto":
        margin = auto_overlap(patch, grid)
        side = _round_up(max(AUTO_WINDOW, patch, 2 * margin), grid)  # a window twice its overlap at least
        shape = tuple(max(_round_up(patch, grid), _fitted(int(n), side, margin, grid)) for n in size)
        overlaps: tuple = (margin, margin) if overlap == "auto" else (overlap, overlap)
        # An overlap must stay below its window (a window of the patch, for tiny images).
        overlaps = tuple(min(o, w // 2) if is_int(o) else o for o, w in zip(overlaps, shape))
    else:
        shape = (patch, patch) if window == "patch" else tuple(int(v) for v in pair(window, "window"))
        overlaps = (0.5, 0.5) if overlap == "auto" else (overlap, overlap)
    shape = (int(shape[0]), int(shape[1]))
    return WindowPlan(shape, overlaps, windows_per_pass(batch_size, patch, shape))


def describe(plan: WindowPlan) -> str:
    """``256x256 windows, overlap 48 px, 4 per pass`` (for logs)."""
    o = plan.overlap[0]
    overlap = f"{o} px" if is_int(o) else f"{o:g}"
    return f"{plan.window[0]}x{plan.window[1]} windows, overlap {overlap}, {plan.batch_size} per pass"
