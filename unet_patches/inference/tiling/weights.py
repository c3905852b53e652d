"""Blending weights: how much each pixel of a window counts where windows overlap.

Every mode is separable, ``w(y, x) = w_rows(y) * w_cols(x)``, so the sum of the weights over all the
windows (the denominator of the blend) is the outer product of two 1-D sums and never needs an
image-sized array. Weights are strictly positive, so every covered pixel has a positive total.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from unet_patches.registry import Registry
from unet_patches.validate import is_int, require_number

__all__ = ["BLEND_MODES", "MIN_WEIGHT", "axis_weights", "blend_weights", "weight_sums"]

# Floor for the 1-D profiles (their peak is 1): keeps border pixels of a window, and image corners
# covered by one window only, well away from float32 underflow even for a small sigma.
MIN_WEIGHT = 1e-3


def _mean_profile(size: int, sigma_scale: float) -> np.ndarray:
    """All ones: a plain average of the overlapping windows."""
    return np.ones(size, dtype=np.float64)


def _gaussian_profile(size: int, sigma_scale: float) -> np.ndarray:
    """``exp(-(i - c)^2 / (2 sigma^2))`` with ``c = (size - 1) / 2`` and ``sigma = sigma_scale * size``."""
    sigma = require_number("sigma_scale", sigma_scale, 0, low_open=True) * size
    index = np.arange(size, dtype=np.float64)
    return np.exp(-((index - (size - 1) / 2.0) ** 2) / (2.0 * sigma**2))


def _hann_profile(size: int, sigma_scale: float) -> np.ndarray:
    """``sin^2(pi (i + 0.5) / size)``, a raised cosine that is never exactly zero."""
    index = np.arange(size, dtype=np.float64)
    # Written through the distance to the centre, so that the profile is exactly symmetric in
    # floating point.
    return np.cos(np.pi * np.abs(index - (size - 1) / 2.0) / size) ** 2


BLEND_MODES: Registry[Callable[[int, float], np.ndarray]] = Registry(
    "blend mode", {"mean": _mean_profile, "gaussian": _gaussian_profile, "hann": _hann_profile}
)
"""Blend mode -> its 1-D profile ``(size, sigma_scale) -> float64 (size,)``, before scaling and floor."""


def axis_weights(size: int, mode: str, sigma_scale: float = 0.125) -> np.ndarray:
    """1-D weight profile of one window axis, float64, peak 1, symmetric about ``(size - 1) / 2``.

    ``mean``: all ones. ``gaussian``: ``exp(-(i - c)^2 / (2 sigma^2))`` with ``c = (size - 1) / 2``
    (the true centre, also for even sizes) and ``sigma = sigma_scale * size``. ``hann``:
    ``sin^2(pi (i + 0.5) / size)``, a raised cosine that is never exactly zero. The profile of
    ``BLEND_MODES[mode]`` is scaled to a peak of 1 and floored at ``MIN_WEIGHT``.

    Raises ``UserError`` for an unknown mode or, for ``gaussian``, a ``sigma_scale`` that is not > 0.
    """
    profile = BLEND_MODES.lookup(mode, "blend")(size, sigma_scale)
    profile = profile / profile.max()
    return np.maximum(profile, MIN_WEIGHT)


def blend_weights(window: int | Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Weight map of one window, float32 ``(h, w)``: the outer product of the axis profiles.

    Raises ``UserError`` for an unknown mode or a non-positive ``sigma_scale``.
    """
    if is_int(window):
        window = (int(window), int(window))
    h, w = (int(v) for v in window)
    rows = axis_weights(h, mode, sigma_scale)
    cols = axis_weights(w, mode, sigma_scale)
    return np.outer(rows, cols).astype(np.float32)


def weight_sums(length: int, starts: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Sum of the 1-D profiles of windows at ``starts`` along an axis of ``length``: float64 ``(length,)``."""
    total = np.zeros(length, dtype=np.float64)
    for start in starts:
        total[start : start + profile.size] += profile
    return total
