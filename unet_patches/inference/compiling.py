"""Whether a prediction job runs its network through ``torch.compile`` (``inference.compile: auto``,
the default), decided once for the whole job before any image (:func:`decide_compile`).

``torch.compile`` costs a one-off warm-up per window shape and then runs the passes faster
(BENCHMARKS.md, tiled inference, has the figures). It repays itself only when the job's eager passes
would take several times the warm-up, so ``auto`` compiles when the planned work, timed on a trial
pass, comes to at least :data:`PAYBACK_SECONDS` of eager passes per window shape: for big images and
many files, never for one small image. Jobs under :data:`MIN_NETWORK_PIXELS` are not even timed.
``true`` and ``false`` decide without looking. A job therefore runs wholly compiled or wholly eager.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .tiling.blender import WindowBlender

__all__ = ["MIN_NETWORK_PIXELS", "PAYBACK_SECONDS", "PlannedWork", "decide_compile", "seconds_per_pixel"]

log = logging.getLogger(__name__)

MIN_NETWORK_PIXELS = 20_000_000
"""Network input pixels (windows x window area) below which a job is never compiled: a few seconds of
eager passes at the fastest rates measured."""

PAYBACK_SECONDS = 60.0
"""Eager seconds of passes per window shape from which compiling pays: about five warm-ups, as the
compiled passes save about a third of the eager time."""


@dataclass
class PlannedWork:
    """The windows a job's images take: per image size, the window shapes, network input pixels."""

    windows: Counter[tuple[int, int]] = field(default_factory=Counter)  # image size -> windows
    shapes: set[tuple[int, int]] = field(default_factory=set)  # window shapes, one compile each
    pixels: int = 0


def decide_compile(
    choice: bool | str,
    work: Callable[[], PlannedWork],
    trial: Callable[[tuple[int, int]], WindowBlender],
    channels: int,
) -> bool:
    """Whether a job compiles: ``choice`` if it is true or false; for ``auto``, whether the job's planned
    ``work()`` comes to :data:`PAYBACK_SECONDS` of eager passes per window shape, timed on ``trial``,
    an eager predictor for an image of a given size (the job's most common one), fed ``channels``."""
    if choice != "auto":
        return bool(choice)
    planned = work()
    if planned.pixels < MIN_NETWORK_PIXELS:
        return False
    predictor = trial(planned.windows.most_common(1)[0][0])
    eager = planned.pixels * seconds_per_pixel(predictor, channels)
    decision = eager >= PAYBACK_SECONDS * len(planned.shapes)
    log.info(
        "compile auto: %.0f Mpx of windows, about %.0f s of eager passes for %d window shape(s): %s",
        planned.pixels / 1e6,
        eager,
        len(planned.shapes),
        "compiling (a one-off warm-up per shape)" if decision else "not compiling",
    )
    return decision


def seconds_per_pixel(predictor: WindowBlender, channels: int) -> float:
    """Seconds per network input pixel of ``predictor``'s passes, from two timed passes of blank
    windows of ``channels`` after one untimed (which warms oneDNN's caches)."""
    h, w = predictor.window
    windows = np.zeros((predictor.windows_per_batch, channels, h, w), np.float32)
    predictor.forward_windows(windows)
    start = time.perf_counter()
    for _ in range(2):
        predictor.forward_windows(windows)
    return (time.perf_counter() - start) / (2 * windows.shape[0] * h * w)
