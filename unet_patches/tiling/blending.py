"""Blending weights: how much each pixel of a window counts where windows overlap.

Every mode is separable, ``w(y, x) = w_rows(y) * w_cols(x)``, so the sum of the weights over all the
windows (the denominator of the blend) is the outer product of two 1-D sums and never needs an
image-sized array. Weights are strictly positive, so every covered pixel has a positive total.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unet_patches.errors import UserError

__all__ = ["BLEND_MODES", "MIN_WEIGHT", "axis_weights", "blend_weights", "weight_sums"]

BLEND_MODES = ("mean", "gaussian", "hann")

# Floor for the 1-D profiles (their peak is 1): keeps border pixels of a window, and image corners
# covered by one window only, well away from float32 underflow even for a small sigma.
MIN_WEIGHT = 1e-3


def _check_mode(mode: str) -> None:
    if mode not in BLEND_MODES:
        raise UserError(f"blend={mode!r}: expected one of {', '.join(BLEND_MODES)}")


def axis_weights(size: int, mode: str, sigma_scale: float = 0.125) -> np.ndarray:
    """1-D weight profile of one window axis, float64, peak 1, symmetric about ``(size - 1) / 2``.

    ``mean``: all ones. ``gaussian``: ``exp(-(i - c)^2 / (2 sigma^2))`` with ``c = (size - 1) / 2``
    (the true centre, also for even sizes) and ``sigma = sigma_scale * size``. ``hann``:
    ``sin^2(pi (i + 0.5) / size)``, a raised cosine that is never exactly zero. Gaussian and Hann are
    floored at ``MIN_WEIGHT``.
    """
    _check_mode(mode)
    index = np.arange(size, dtype=np.float64)
    if mode == "mean":
        return np.ones(size, dtype=np.float64)
    if mode == "gaussian":
        if not sigma_scale > 0:
            raise UserError(f"sigma_scale={sigma_scale!r}: expected a number > 0 such as 0.125")
        sigma = sigma_scale * size
        profile = np.exp(-((index - (size - 1) / 2.0) ** 2) / (2.0 * sigma**2))
    else:
        # sin^2(pi (i + 0.5) / size) written through the distance to the centre, so that the
        # profile is exactly symmetric in floating point.
        profile = np.cos(np.pi * np.abs(index - (size - 1) / 2.0) / size) ** 2
    profile = profile / profile.max()
    return np.maximum(profile, MIN_WEIGHT)


def blend_weights(
    window: int | Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125
) -> torch.Tensor:
    """Weight map of one window, float32 tensor ``(h, w)``: the outer product of the axis profiles.

    Raises ``UserError`` for an unknown mode or a non-positive ``sigma_scale``.
    """
    if isinstance(window, (int, np.integer)):
        window = (int(window), int(window))
    h, w = (int(v) for v in window)
    rows = axis_weights(h, mode, sigma_scale)
    cols = axis_weights(w, mode, sigma_scale)
    return torch.from_numpy(np.outer(rows, cols).astype(np.float32))


def weight_sums(length: int, starts: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Sum of the 1-D profiles of windows at ``starts`` along an axis of ``length``: float64 ``(length,)``."""
    total = np.zeros(length, dtype=np.float64)
    for start in starts:
        total[start : start + profile.size] += profile
    return total
