"""Where a prediction is unsure: the per-pixel uncertainty map ``predict --uncertainty`` writes, and the
figures a review order is made from.

The map is the predictive entropy of the blended (calibrated) probabilities, normalised by ``log K``
so that 0 is certain and 1 is all classes equally likely: ``u = -sum_k p_k log p_k / log K``. It is
stored as uint8, ``round(255 u)``. It is computed band by band from the bands the tiled engine
yields, so it is as streamed as the labels (memory flat in the image size).

:class:`UncertaintyTally` sums what a review needs over the bands of one image: the mean uncertainty,
the share of pixels above a threshold, how many uncertain pixels each predicted class has, and the
mean uncertainty of each tile of ``tile x tile`` pixels (the regions of a large image worth a look).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "REVIEW_REGIONS",
    "REVIEW_THRESHOLD",
    "REVIEW_TILE",
    "UncertaintyTally",
    "normalised_entropy",
    "review_order",
    "review_section",
    "to_uint8",
]

REVIEW_THRESHOLD = 0.5
"""Normalised entropy above which a pixel counts as uncertain (half the entropy of a uniform guess)."""
REVIEW_TILE = 512
"""Side of the square regions of an image ranked for review."""
BLOCK_PX = 1 << 18
"""Pixels of a map computed at a time (a few float32 temporaries of this size)."""
REVIEW_REGIONS = 10
"""Regions of an image kept in its summary, most uncertain first."""


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of ``probs`` ``(K, ...)`` over its first axis divided by ``log K``: float32 ``(...)`` in [0, 1]
    (0 for one class; probabilities of 0 add nothing). Worked :data:`BLOCK_PX` pixels at a time, in
    place, so that a wide band needs only a few small temporaries."""
    classes = probs.shape[0]
    out = np.zeros(probs.shape[1:], dtype=np.float32)
    if classes < 2 or out.size == 0:
        return out
    flat_probs, flat_out = probs.reshape(classes, -1), out.reshape(-1)
    scale = np.float32(-1.0 / math.log(classes))
    for start in range(0, flat_out.size, BLOCK_PX):
        block = slice(start, start + BLOCK_PX)
        total = flat_out[block]
        for k in range(classes):
            plane = np.asarray(flat_probs[k, block], dtype=np.float32)
            term = np.log(np.maximum(plane, np.float32(1e-30)))  # p log p -> 0 as p -> 0
            term *= plane
            total += term
        total *= scale
        np.clip(total, 0.0, 1.0, out=total)
    return out


def to_uint8(uncertainty: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as stored: ``round(255 u)`` uint8 (worked :data:`BLOCK_PX` pixels at a time)."""
    values = np.ascontiguousarray(uncertainty)
    out = np.empty(values.shape, dtype=np.uint8)
    flat, flat_out = values.reshape(-1), out.reshape(-1)
    for start in range(0, flat.size, BLOCK_PX):
        part = np.clip(flat[start : start + BLOCK_PX], 0.0, 1.0) * np.float32(255.0)
        flat_out[start : start + BLOCK_PX] = np.rint(part)
    return out


class UncertaintyTally:
    """What a review order needs of one image's uncertainty map, summed band by band.

    ``update(start, uncertainty, labels)``: rows ``start:`` of the map (float in [0, 1]) and of the labels.
    """

    def __init__(
        self,
        height: int,
        width: int,
        class_names: list[str],
        threshold: float = REVIEW_THRESHOLD,
        tile: int = REVIEW_TILE,
    ) -> None:
        self.height, self.width, self.tile, self.threshold = int(height), int(width), int(tile), float(threshold)
        self.class_names = list(class_names)
        self.total = 0.0
        self.pixels = 0
        self.uncertain = 0
        self.uncertain_by_class = np.zeros(len(class_names), dtype=np.int64)
        self.tile_sums = np.zeros((-(-self.height // self.tile), -(-self.width // self.tile)))
        self.tile_pixels = np.zeros_like(self.tile_sums)

    def update(self, start: int, uncertainty: np.ndarray, labels: np.ndarray) -> None:
        rows = uncertainty.shape[0]
        self.total += float(uncertainty.sum(dtype=np.float64))
        self.pixels += uncertainty.size
        above = uncertainty > self.threshold
        self.uncertain += int(above.sum())
        self.uncertain_by_class += np.bincount(labels[above].ravel(), minlength=len(self.class_names))[
            : len(self.class_names)
        ]
        for row_tile in range(start // self.tile, (start + rows - 1) // self.tile + 1):  # a band spans a few
            top, bottom = (
                max(start, row_tile * self.tile) - start,
                min(start + rows, (row_tile + 1) * self.tile) - start,
            )
            band = uncertainty[top:bottom]
            for column, left in enumerate(range(0, self.width, self.tile)):
                part = band[:, left : left + self.tile]
                self.tile_sums[row_tile, column] += float(part.sum(dtype=np.float64))
                self.tile_pixels[row_tile, column] += part.size

    def summary(self, regions: int = REVIEW_REGIONS) -> dict[str, Any]:
        """``mean_uncertainty``, ``uncertain_share`` (above the threshold), ``uncertain_classes``
        (uncertain pixels by predicted class, most first, only those with any), and the ``regions`` tiles
        of highest mean uncertainty as ``{"x", "y", "width", "height", "mean_uncertainty"}``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(self.tile_pixels > 0, self.tile_sums / np.maximum(self.tile_pixels, 1), -1.0)
        order = np.argsort(-means, axis=None, kind="stable")[:regions]
        tiles = []
        for index in order:
            ty, tx = divmod(int(index), means.shape[1])
            y, x = ty * self.tile, tx * self.tile
            tiles.append(
                {
                    "x": x,
                    "y": y,
                    "width": min(self.tile, self.width - x),
                    "height": min(self.tile, self.height - y),
                    "mean_uncertainty": round(float(means[ty, tx]), 6),
                }
            )
        by_class = sorted(
            ((name, int(n)) for name, n in zip(self.class_names, self.uncertain_by_class) if n), key=lambda kv: -kv[1]
        )
        return {
            "mean_uncertainty": round(self.total / self.pixels, 6) if self.pixels else 0.0,
            "uncertain_share": round(self.uncertain / self.pixels, 6) if self.pixels else 0.0,
            "threshold": self.threshold,
            "uncertain_classes": dict(by_class),
            "regions": tiles,
        }


def review_order(images: dict[str, dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The ``count`` images of ``{image: summary}`` most worth a human look: highest mean uncertainty
    first (ties: larger uncertain share, then the name), each with its summary."""
    ranked = sorted(images.items(), key=lambda kv: (-kv[1]["mean_uncertainty"], -kv[1]["uncertain_share"], kv[0]))
    return [{"image": name, **summary} for name, summary in ranked[:count]]


def review_section(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a prediction report says of its uncertainty maps: ``uncertainty`` (each image's summary,
    by image, sorted) and ``review`` (the images in :func:`review_order`); empty without summaries."""
    if not summaries:
        return {}
    return {
        "uncertainty": dict(sorted(summaries.items())),
        "review": [entry["image"] for entry in review_order(summaries, len(summaries))],
    }
