"""How a prediction job runs its network, decided once before any image: compiled or not
(``inference.compile: auto``, the default) and, with ``precision: auto``, int8 or not
(:func:`settle_job`; the int8 rule is :func:`unet_patches.inference.int8.int8_for_job`).

``torch.compile`` costs a one-off warm-up per window shape (5 to 30 s; 12 s for the demo U-Net on
our 2-core CPU) and then runs the passes 1.2 to 1.5x faster (BENCHMARKS.md, tiled inference). It
repays itself only when the job's eager passes would take several times the warm-up, so ``auto``
compiles when the planned work, timed on a trial pass, comes to at least :data:`PAYBACK_SECONDS` of
eager passes per window shape: for big images and many files, never for one small image. Jobs under
:data:`MIN_NETWORK_PIXELS` are not even timed. ``true`` and ``false`` decide without looking; the
choice is made once per job, before any image is predicted, so a job runs wholly compiled or wholly
eager.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from .config import check_compile
from .int8 import int8_for_job
from .onnx import OnnxNetwork
from .tiling.placement import place_windows
from .tiling.sizing import Window

__all__ = ["MIN_NETWORK_PIXELS", "PAYBACK_SECONDS", "PlannedWork", "compile_for_job", "planned_work", "settle_job"]

log = logging.getLogger(__name__)

MIN_NETWORK_PIXELS = 20_000_000
"""Network input pixels (windows x window area) below which a job is never compiled: at the fastest
eager rate we measured (about 10 Mpx/s, demo U-Net, bf16 with AMX) that is 2 s of passes."""

PAYBACK_SECONDS = 60.0
"""Eager seconds of passes per window shape from which compiling pays: about five warm-ups, as the
compiled passes save a third of the eager time."""


@dataclass
class PlannedWork:
    """The windows a job's images take: per image size, the window shapes, network input pixels."""

    windows: Counter[tuple[int, int]] = field(default_factory=Counter)  # image size -> windows
    shapes: set[tuple[int, int]] = field(default_factory=set)  # window shapes, one compile each
    pixels: int = 0


def planned_work(
    segmenter: Any, sizes: Sequence[tuple[int, int]], window: Window, overlap: Any, batch: int
) -> PlannedWork:
    """The :class:`PlannedWork` of images of ``sizes`` (as read; resized as the segmenter says)."""
    work = PlannedWork()
    for size in sizes:
        seen = segmenter.network_size(size)
        plan = segmenter.plan(seen, window, overlap, batch)
        rows, columns = place_windows(seen, plan.window, plan.overlap)
        count = len(rows) * len(columns)
        work.windows[size] += count
        work.shapes.add(plan.window)
        work.pixels += count * plan.window[0] * plan.window[1]
    return work


def settle_job(
    segmenter: Any, sizes: Sequence[tuple[int, int]], window: Window = "auto", **options: Any
) -> dict[str, Any]:
    """``options`` with ``precision`` and ``compile`` decided for a whole job of images of ``sizes``,
    before any image is predicted: ``precision: auto`` becomes ``int8`` where
    :func:`~unet_patches.inference.int8.int8_for_job` says so (int8 networks are never compiled by torch),
    and ``compile: auto`` becomes true or false (:func:`compile_for_job`)."""
    options = {"precision": "auto", **options}
    overlap, batch = options.get("overlap", "auto"), options.get("batch_size", 32)
    work = cache(lambda: planned_work(segmenter, sizes, window, overlap, batch))  # planned once, if asked
    if options["precision"] == "auto" and sizes and not isinstance(segmenter.network, OnnxNetwork):
        if int8_for_job(segmenter, lambda: work().pixels, options.get("device")):
            options["precision"] = "int8"
    if options.get("precision") == "int8":
        options["compile"] = False
        return options
    options["compile"] = compile_for_job(segmenter, sizes, window, planned=work, **options)
    return options


def compile_for_job(
    segmenter: Any,
    sizes: Sequence[tuple[int, int]],
    window: Window = "auto",
    *,
    planned: Callable[[], PlannedWork] | None = None,
    **options: Any,
) -> bool:
    """Whether the job of images of ``sizes`` (as read; resized as the segmenter says) compiles.
    ``segmenter`` is a :class:`~unet_patches.inference.segmenter.Segmenter`.

    ``options`` are those of :meth:`~unet_patches.inference.segmenter.Segmenter.predictor_for`; their ``compile``
    (default ``auto``) decides: ``True``/``False`` as given, ``auto`` as the module says. An ONNX
    network is never compiled. ``planned`` gives the job's :class:`PlannedWork` when the caller has it.
    """
    choice = check_compile(options.pop("compile", "auto"), "compile")
    if choice != "auto" or isinstance(segmenter.network, OnnxNetwork) or not sizes:
        return bool(choice) and not isinstance(segmenter.network, OnnxNetwork)
    overlap, batch = options.get("overlap", "auto"), options.get("batch_size", 32)
    work = planned() if planned is not None else planned_work(segmenter, sizes, window, overlap, batch)
    if work.pixels < MIN_NETWORK_PIXELS:
        return False
    trial = segmenter.predictor_for(work.windows.most_common(1)[0][0], window, **{**options, "compile": False})
    eager = work.pixels * _seconds_per_pixel(trial, segmenter.in_channels)
    decision = eager >= PAYBACK_SECONDS * len(work.shapes)
    log.info(
        "compile auto: %.0f Mpx of windows, about %.0f s of eager passes for %d window shape(s): %s",
        work.pixels / 1e6,
        eager,
        len(work.shapes),
        "compiling (a one-off warm-up per shape)" if decision else "not compiling",
    )
    return decision


def _seconds_per_pixel(predictor: Any, channels: int) -> float:
    """Seconds per network input pixel of ``predictor``'s passes, from two timed passes of blank
    windows after one untimed (which warms oneDNN's caches)."""
    h, w = predictor.window
    windows = np.zeros((predictor.windows_per_batch, channels, h, w), np.float32)
    predictor.forward_windows(windows)
    start = time.perf_counter()
    for _ in range(2):
        predictor.forward_windows(windows)
    return (time.perf_counter() - start) / (2 * windows.shape[0] * h * w)
