"""How a raw image becomes network input, the same way in training, ``predict``, ``evaluate``, the
API: :class:`Preprocess`, written into every checkpoint (so that whatever predicts can repeat it).

The steps, in order:

1. **range**: uint8 / 255, uint16 / 65535, other integers by their maximum, float as is; colour
   averaged or gray repeated to the model's channels (:func:`~unet_patches.data.imageio.image_to_array`);
2. **resize** (``data.resize``: ``[H, W]`` or null): bilinear, anti-aliased when shrinking;
3. **normalise** (``data.normalize``): one of the modes of :mod:`.normalize` (``percentile``, the
   default, ``range`` or ``dataset``), which says what statistics it needs and applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .imageio import image_to_array, read_raw
from .masks import decode_mask, hex_colour, parse_colour
from .normalize import NORMALIZE_MODES, Normalization

__all__ = ["DatasetStatistics", "Preprocess", "resize_image", "resize_labels", "resize_probabilities"]


def _taps(size_in: int, size_out: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights ``(size_out, taps)`` of a linear (triangle) filter along one axis.

    Output pixel ``i`` is centred at ``c = (i + 0.5) * size_in / size_out`` in input coordinates; the
    filter's half-width is 1 input pixel, widened to the scale when shrinking with ``antialias`` (an
    area average). Weights are normalised over the taps inside the image, which clamps at the border:
    this is PyTorch's ``interpolate(mode="bilinear", align_corners=False)`` (and its ``antialias``),
    written in NumPy so that deployment needs no torch.
    """
    scale = size_in / size_out
    support = max(scale, 1.0) if antialias else 1.0
    centres = (np.arange(size_out, dtype=np.float64) + 0.5) * scale
    first = np.maximum((centres - support + 0.5).astype(np.int64), 0)
    last = np.minimum((centres + support + 0.5).astype(np.int64), size_in)
    count = int((last - first).max())
    index = first[:, None] + np.arange(count)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs(index + 0.5 - centres[:, None]) / support)
    weights[index >= last[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(index, size_in - 1), weights.astype(np.float32)


def _resample(array: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    """float32 ``(C, H, W)`` -> ``(C, *size)``, one axis at a time."""
    out = np.ascontiguousarray(array, dtype=np.float32)
    for axis, target in ((1, size[0]), (2, size[1])):
        if out.shape[axis] == target:
            continue
        index, weights = _taps(out.shape[axis], target, antialias)
        shape = [1, 1, 1]
        shape[axis] = target
        result = np.zeros([target if a == axis else n for a, n in enumerate(out.shape)], dtype=np.float32)
        for tap in range(index.shape[1]):
            result += np.take(out, index[:, tap], axis=axis) * weights[:, tap].reshape(shape)
        out = result
    return out


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``(C, H, W)`` -> ``(C, *size)``: bilinear, area-averaged (antialias) when shrinking."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[1] or size[1] < image.shape[2]
    return _resample(image, size, antialias=shrinking)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W)`` class indices -> ``size`` by nearest neighbour (no new values): output pixel
    ``i`` takes input pixel ``floor((i + 0.5) * H / h)``, in exact integer arithmetic."""
    if tuple(labels.shape) == tuple(size):
        return labels
    rows = (2 * np.arange(size[0]) + 1) * labels.shape[0] // (2 * size[0])
    cols = (2 * np.arange(size[1]) + 1) * labels.shape[1] // (2 * size[1])
    return labels[rows[:, None], cols[None, :]]


def resize_probabilities(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``(K, h, w)`` probabilities -> ``(K, *size)`` bilinearly (mapping a prediction on a
    resized image back to the original's size before the argmax)."""
    if tuple(probs.shape[1:]) == tuple(size):
        return probs
    return _resample(probs, size, antialias=False)


class DatasetStatistics:
    """Per-channel mean and standard deviation over many images, accumulated in float64."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.sums = np.zeros(channels, dtype=np.float64)
        self.squares = np.zeros(channels, dtype=np.float64)

    def add(self, image: np.ndarray) -> None:
        """Add a float ``(C, H, W)`` image (or band)."""
        flat = image.reshape(image.shape[0], -1).astype(np.float64)
        self.count += flat.shape[1]
        self.sums += flat.sum(axis=1)
        self.squares += np.square(flat).sum(axis=1)

    def result(self) -> tuple[list[float], list[float]]:
        if not self.count:
            raise ValueError("DatasetStatistics: no pixels were added")
        mean = self.sums / self.count
        variance = np.maximum(self.squares / self.count - np.square(mean), 0.0)
        std = np.maximum(np.sqrt(variance), 1e-6)
        return [float(m) for m in mean], [float(s) for s in std]


@dataclass(frozen=True)
class Preprocess:
    """Everything that turns a raw image into network input and a raw mask into class indices.

    ``mask_values`` / ``mask_colors`` are the mask tables of ``data`` (see
    :func:`~unet_patches.data.imageio.read_mask`); ``mean`` / ``std`` are set for ``dataset``
    normalisation once computed; ``page`` picks a page of multi-page TIFFs.
    """

    in_channels: int = 1
    num_classes: int = 3
    normalize: str = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.8)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: tuple[int, int] | None = None
    page: int | None = None
    mask_values: dict[int, int] | None = None
    mask_colors: dict[tuple[int, int, int], int] | None = None

    def __post_init__(self) -> None:
        NORMALIZE_MODES.check(self.normalize, "data.normalize")

    # --- checkpoint form ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON- and ``torch.load(weights_only=True)``-safe: lists and string-keyed dicts only."""
        values = asdict(self)
        values["percentiles"] = list(self.percentiles)
        for key in ("mean", "std", "resize"):
            values[key] = None if values[key] is None else list(values[key])
        if self.mask_values is not None:
            values["mask_values"] = {str(k): v for k, v in self.mask_values.items()}
        if self.mask_colors is not None:
            values["mask_colors"] = {hex_colour(k): v for k, v in self.mask_colors.items()}
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        values = dict(values)
        values["percentiles"] = tuple(values.get("percentiles", (1.0, 99.8)))
        for key in ("mean", "std", "resize"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if values.get("mask_values") is not None:
            values["mask_values"] = {int(k): int(v) for k, v in values["mask_values"].items()}
        if values.get("mask_colors") is not None:
            values["mask_colors"] = {parse_colour(k): int(v) for k, v in values["mask_colors"].items()}
        return cls(**values)

    def with_statistics(self, mean: list[float], std: list[float]) -> Preprocess:
        return replace(self, mean=tuple(mean), std=tuple(std))

    # --- images ---------------------------------------------------------------------------------

    def scaled(self, raw: np.ndarray, name: str = "image") -> np.ndarray:
        """Steps 1 and 2: the raw ``(H, W)`` / ``(H, W, C)`` image as float32 ``(C, H, W)``, resized."""
        image = image_to_array(raw, self.in_channels, name)
        return image if self.resize is None else resize_image(image, self.resize)

    @property
    def mode(self) -> Normalization:
        """The normalisation mode (:data:`~.normalize.NORMALIZE_MODES`) of ``normalize``."""
        return NORMALIZE_MODES[self.normalize]

    def bounds(self, bands: Callable[[], Iterable[np.ndarray]]) -> tuple[float, float] | None:
        """The per-image statistics the mode needs (None for modes that need none)."""
        return self.mode.statistics(self, bands)

    def normalized(self, image: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
        """Step 3 on a scaled image or band, given the image's :meth:`bounds`."""
        return self.mode.apply(image, self, bounds)

    def stored(self) -> Preprocess:
        """What patches on disk are made with: every step but statistics of the training set, which
        training computes over its share of the patches and applies as it reads them."""
        return replace(self, mean=None, std=None) if self.mode.training_set else self

    def finish(self, scaled: np.ndarray) -> np.ndarray:
        """Step 3 on a whole scaled image in memory."""
        return self.normalized(scaled, self.bounds(lambda: [scaled]))

    def image(self, raw: np.ndarray, name: str = "image") -> np.ndarray:
        """All three steps on an image in memory: float32 ``(in_channels, H', W')``."""
        return self.finish(self.scaled(raw, name))

    # --- masks ----------------------------------------------------------------------------------

    def mask(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        """A raw mask (``read_raw(..., mask=True)``) as uint8 class indices, by this run's mask tables."""
        return decode_mask(raw, path, self.num_classes, values=self.mask_values, colors=self.mask_colors)

    def mask_reading(self) -> dict[str, Any]:
        """Keyword arguments of ``read_raw`` / ``DecodeCache.read`` for this run's mask files."""
        return {"mask": True, "page": self.page, "mask_colours": self.mask_colors is not None}

    def read_mask(self, path: str | Path) -> np.ndarray:
        """A mask file as uint8 class indices, by this run's mask tables (and page)."""
        return self.mask(read_raw(path, **self.mask_reading()), path)

    def describe(self) -> str:
        text = self.mode.describe(self)
        if self.resize is not None:
            text += f", resized to {self.resize[0]}x{self.resize[1]}"
        return text
