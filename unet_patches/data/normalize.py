"""Normalisation modes (``data.normalize``): each one a row of :data:`NORMALIZE_MODES`, saying what
statistics it needs, when they are computed, how it applies and how it describes itself. Everything
that normalises (:class:`~unet_patches.data.preprocess.Preprocess`, patches on disk, the training
datasets, streamed sources, ``inspect``) asks the row; adding a mode is adding a row.

The modes:

- ``percentile`` (the default): per image, the low and high percentiles (``data.percentiles``,
  1 and 99.8) of all its pixels map to 0 and 1, clipped to [0, 1]. A 16-bit scan that uses 0-3000
  of 0-65535 then looks like an 8-bit image that uses its whole range, and images of one set taken
  with different exposure look alike;
- ``range``: nothing beyond the scaling by pixel type that every image gets (uint8 / 255,
  uint16 / 65535), the original system's behaviour, for data whose absolute level means something;
- ``dataset``: per channel, minus the mean and divided by the standard deviation of all training
  pixels (computed once by training, :class:`~unet_patches.data.preprocess.DatasetStatistics`, and
  stored in the checkpoint).

Percentiles come from histograms built band by band (:func:`percentile_bounds`: 65536 bins between
the image's minimum and maximum, then the bins that matter 65536 times finer), so an image streamed
from disk gets exactly the numbers it would get in memory, and they agree with ``numpy.percentile``
to far below one 16-bit step, hot pixels included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

from unet_patches.registry import Registry

__all__ = ["HISTOGRAM_BINS", "NORMALIZE_MODES", "Normalization", "percentile_bounds"]

Bands = Callable[[], Iterable[np.ndarray]]
"""An image as bands of rows, produced afresh on each call (a streamed file is read again)."""


class Settings(Protocol):
    """What the modes read of :class:`~unet_patches.data.preprocess.Preprocess`."""

    percentiles: tuple[float, float]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


class Normalization:
    """A normalisation mode.

    ``per_image``: it needs statistics of each image itself (:meth:`statistics`, a pass over its
    bands), so patches are stored already normalised and streamed files get a statistics pass.
    ``training_set``: it needs statistics of the training images (``Preprocess.mean`` / ``std``),
    which training computes and the checkpoint stores, so patches are stored without them and
    training applies them as it reads. ``stretches``: every image comes out spanning [0, 1] whatever
    part of its pixel type it used, so 8-bit patch files keep its levels and a narrow range is harmless.
    """

    name = ""
    summary = ""
    per_image = False
    training_set = False
    stretches = False

    def statistics(self, preprocess: Settings, bands: Bands) -> tuple[float, float] | None:
        """The per-image statistics of the image given as ``bands`` (None: the mode needs none)."""
        return None

    def apply(self, image: np.ndarray, preprocess: Settings, statistics: tuple[float, float] | None) -> np.ndarray:
        """A scaled float32 image or band ``(C, h, w)``, normalised given its image's :meth:`statistics`."""
        return image

    def describe(self, preprocess: Settings) -> str:
        """The mode and its parameters in words (logs, checkpoints, reports)."""
        raise NotImplementedError


class Percentile(Normalization):
    name = "percentile"
    summary = "per image: low/high percentiles -> 0/1, clipped"
    per_image = True
    stretches = True

    def statistics(self, preprocess: Settings, bands: Bands) -> tuple[float, float]:
        return percentile_bounds(bands, preprocess.percentiles)

    def apply(self, image: np.ndarray, preprocess: Settings, statistics: tuple[float, float] | None) -> np.ndarray:
        if statistics is None:
            raise ValueError("percentile normalisation needs the image's bounds")
        low, high = statistics
        scale = 1.0 / (high - low) if high > low else 1.0
        out = np.subtract(image, np.float32(low), dtype=np.float32)  # one new array, changed in place
        out *= np.float32(scale)
        return np.clip(out, 0.0, 1.0, out=out)

    def describe(self, preprocess: Settings) -> str:
        low, high = preprocess.percentiles
        return f"percentile {low:g}-{high:g} per image"


class Range(Normalization):
    name = "range"
    summary = "by pixel type only: uint8 / 255, uint16 / 65535, other integers by their maximum, float as is"

    def describe(self, preprocess: Settings) -> str:
        return "by pixel type (uint8 / 255, uint16 / 65535)"


class Dataset(Normalization):
    name = "dataset"
    summary = "per channel: minus the training mean, divided by the training standard deviation"
    training_set = True

    def apply(self, image: np.ndarray, preprocess: Settings, statistics: tuple[float, float] | None) -> np.ndarray:
        if preprocess.mean is None or preprocess.std is None:
            raise ValueError("dataset normalisation used before its statistics were computed")
        mean = np.asarray(preprocess.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(preprocess.std, dtype=np.float32)[:, None, None]
        return ((image - mean) / std).astype(np.float32, copy=False)

    def describe(self, preprocess: Settings) -> str:
        return "dataset mean/std"


HISTOGRAM_BINS = 65536


def _bins(values: np.ndarray, low: float, width: float) -> np.ndarray:
    """The histogram bin of each value: ``HISTOGRAM_BINS`` bins of ``width`` from ``low`` (the last one
    also holds the maximum)."""
    scaled = values.astype(np.float64).ravel()  # in place from here: two arrays, not five
    scaled -= low
    scaled /= width
    index = scaled.astype(np.int64)
    return np.clip(index, 0, HISTOGRAM_BINS - 1, out=index)


def percentile_bounds(
    bands: Callable[[], Iterable[np.ndarray]], percentiles: tuple[float, float]
) -> tuple[float, float]:
    """The ``(low, high)`` percentiles of every value of an image given as bands of rows.

    ``bands`` is called three times, each time yielding float arrays whose values together are the
    image's: a min/max pass, a histogram pass (65536 bins between them), and a pass that histograms
    again, 65536 times finer, the few bins that hold the ranks asked for. As ``numpy.percentile``, the
    result interpolates between the values ranked just below and above ``q (N - 1)``. It is within
    1/65536 of a coarse bin of numpy's, even when one hot pixel stretches the image's range.
    """
    low = high = None
    for band in bands():
        if band.size:
            low = float(band.min()) if low is None else min(low, float(band.min()))
            high = float(band.max()) if high is None else max(high, float(band.max()))
    if low is None or high is None:
        raise ValueError("percentile_bounds: the image has no pixels")
    if high <= low:
        return low, high
    width = (high - low) / HISTOGRAM_BINS
    counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    for band in bands():
        counts += np.bincount(_bins(band, low, width), minlength=HISTOGRAM_BINS)
    cumulative = np.cumsum(counts)
    last = int(cumulative[-1]) - 1
    ranks = [q / 100.0 * last for q in percentiles]
    wanted = sorted({k for r in ranks for k in (int(np.floor(r)), min(int(np.floor(r)) + 1, last))})
    bin_of = {k: int(np.searchsorted(cumulative, k + 1, side="left")) for k in wanted}
    fine = {b: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for b in set(bin_of.values())}
    for band in bands():
        flat, index = band.ravel(), _bins(band, low, width)
        for b, sub in fine.items():
            sub += np.bincount(
                _bins(flat[index == b], low + b * width, width / HISTOGRAM_BINS), minlength=HISTOGRAM_BINS
            )

    def kth(k: int) -> float:
        # The k-th smallest value (from 0): its bin, its sub-bin, and its place among the sub-bin's values.
        if k in (0, last):
            return low if k == 0 else high
        b = bin_of[k]
        rank = k - (cumulative[b - 1] if b else 0)
        sub_cumulative = np.cumsum(fine[b])
        s = int(np.searchsorted(sub_cumulative, rank + 1, side="left"))
        inside = (rank - (sub_cumulative[s - 1] if s else 0) + 0.5) / fine[b][s]
        return low + b * width + (s + inside) * width / HISTOGRAM_BINS

    bounds = []
    for rank in ranks:
        below = int(np.floor(rank))
        above = min(below + 1, last)
        bounds.append(kth(below) + (rank - below) * (kth(above) - kth(below)))
    return bounds[0], bounds[1]


NORMALIZE_MODES: Registry[Normalization] = Registry(
    "normalize mode", {mode.name: mode for mode in (Percentile(), Range(), Dataset())}
)
