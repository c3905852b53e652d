"""Padding an image axis shorter than the window: the modes by name and the index map that does it."""

from __future__ import annotations

import numpy as np

from unet_patches.files.sources import RowSource
from unet_patches.registry import Registry

__all__ = ["PADDING_MODES", "PaddedRows", "pad_indices"]

PADDING_MODES: Registry[str] = Registry(
    "padding mode",
    {
        "reflect": "mirror the image without repeating its edge pixels",
        "constant": "fill with a constant (0)",
        "replicate": "repeat the edge pixels",
    },
)
"""How an image axis shorter than the window is padded (see :func:`pad_indices`)."""


def pad_indices(length: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each position of an axis padded by ``before`` / ``after``; -1 means "fill".

    ``reflect`` mirrors without repeating the edge pixel (``numpy.pad(mode="reflect")``, also when
    the padding is longer than the axis), ``replicate`` repeats the edge, ``constant`` fills.
    """
    index = np.arange(-before, length + after, dtype=np.int64)
    if mode == "constant":
        return np.where((index >= 0) & (index < length), index, -1)
    if mode == "replicate" or length == 1:
        return np.clip(index, 0, length - 1)
    period = 2 * (length - 1)
    index = np.mod(index, period)
    return np.where(index >= length, period - index, index)


class PaddedRows:
    """Rows of ``source`` as they appear in the image padded to ``size = (H', W')``, the original
    placed at ``offset = (top, left)``; padding as ``mode`` says (``pad_value`` for ``constant``)."""

    def __init__(
        self, source: RowSource, size: tuple[int, int], offset: tuple[int, int], mode: str, pad_value: float
    ) -> None:
        self.source, self.pad_value = source, pad_value
        (hp, wp), (top, left) = size, offset
        self.width, self.padded_width = source.width, wp
        self.row_map = pad_indices(source.height, top, hp - source.height - top, mode)
        self.col_map = pad_indices(source.width, left, wp - source.width - left, mode)

    def rows(self, y: int, count: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """Padded rows ``y:y + count``, float32 ``(C, count, W')``; only the rows they need are read.
        ``columns = (first, end)`` in padded coordinates: only those columns (read alone when the
        columns need no padding, which is the case for any image wider than the window)."""
        direct = columns if self.padded_width == self.width else None
        rows = self.row_map[y : y + count]
        valid = rows >= 0
        if not valid.any():  # padding only (constant mode): nothing to read
            channels = self.source.read_rows(0, 1).shape[0]
            wide = self.padded_width if direct is None else direct[1] - direct[0]
            return np.full((channels, count, wide), self.pad_value, dtype=np.float32)
        lo, hi = int(rows[valid].min()), int(rows[valid].max()) + 1
        raw = self.source.read_rows(lo, hi, direct)
        if valid.all() and hi - lo == count and rows[0] == lo and np.all(np.diff(rows) == 1):
            band = raw
        else:
            band = np.full((raw.shape[0], count, raw.shape[2]), self.pad_value, dtype=np.float32)
            band[:, valid] = raw[:, rows[valid] - lo]
        if self.padded_width != self.width:
            valid_cols = self.col_map >= 0
            padded = np.full((band.shape[0], count, self.padded_width), self.pad_value, dtype=np.float32)
            padded[:, :, valid_cols] = band[:, :, self.col_map[valid_cols]]
            band = padded if columns is None else padded[:, :, columns[0] : columns[1]]
        return band
