"""A data folder's fingerprint: what a training recipe should be planned from.

:func:`fingerprint_folder` reads every image and mask of an image folder once (through the decode
cache) and sums up what matters to the choice of network, patch, augmentation and normalisation:

- how many images, their sizes, channels, pixel type and the share of the type's range they use;
- how differently the images are exposed: the spread (standard deviation) of the logarithm of each
  image's contrast, its 99.8th minus its 1st percentile (0 when every image is stored alike; 0.7
  when contrast varies about twofold from image to image);
- the share of each class among the mask pixels;
- the objects: connected regions of each foreground class, or the instances of
  ``<folder>/instances/`` where the folder has them (as for pixel weights); their typical size (the
  median and 90th percentile of the diameter of a disc of the same area), each class's typical
  thickness (twice the median of the regions' largest inner distance), and how crowded they are (the
  share of objects with another object of the same class within ``TOUCHING_GAP`` pixels: touching
  nuclei split by a thin boundary line, cells in a confluent layer).

The folder is checked first (:func:`~unet_patches.data.inspection.check_folder`), so a folder
that cannot be trained stops with ``inspect``'s one-line summary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unet_patches.errors import UserError

from .cache import DecodeCache
from .config import DataConfig
from .folders import find_pairs, is_data_folder, read_pair
from .inspection import check_folder
from .pixel_weights import _instances, instance_file

__all__ = [
    "THIN",
    "TOUCHING_GAP",
    "Fingerprint",
    "fingerprint_folder",
    "image_statistics",
    "object_statistics",
    "region_thickness",
]

TOUCHING_GAP = 3  # pixels: objects of one class this close are counted as touching
THIN = 3.0  # pixels: a class whose regions are at most this thick is a line or boundary, not objects
SAMPLED_IMAGES = 200  # the object statistics of a large folder come from this many images, evenly spread


@dataclass
class Fingerprint:
    """What :func:`fingerprint_folder` found (sizes in pixels; ``None`` where there was nothing to measure)."""

    folder: str
    images: int
    height: list[int]  # min, median, max
    width: list[int]
    channels: int
    dtype: str
    range_share: float | None  # of an integer type's range, over all images
    exposure_spread: float  # std of log(contrast) over images
    class_shares: dict[str, float]
    objects: int  # over the images measured
    object_diameter: float | None  # median equivalent diameter
    object_diameter_p90: float | None
    thickness: dict[str, float | None] = field(default_factory=dict)  # per foreground class
    touching_share: float = 0.0
    instances: bool = False  # objects from instance masks

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for key in ("range_share", "exposure_spread", "object_diameter", "object_diameter_p90", "touching_share"):
            if values[key] is not None:
                values[key] = round(float(values[key]), 4)
        values["class_shares"] = {k: round(v, 4) for k, v in self.class_shares.items()}
        values["thickness"] = {k: None if v is None else round(v, 2) for k, v in self.thickness.items()}
        return values


def image_statistics(raw: np.ndarray) -> tuple[float, float]:
    """The 1st and 99.8th percentile of an image's values (all channels)."""
    values = np.asarray(raw, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 0.0
    low, high = np.percentile(values, (1.0, 99.8))
    return float(low), float(high)


def region_thickness(labels: np.ndarray) -> list[float]:
    """Twice the largest inner distance of each region of an instance-label map: a disc of radius r
    gives 2r, a line w pixels wide about w + 1."""
    present = np.flatnonzero(np.bincount(labels.ravel())[1:]) + 1
    if not present.size:
        return []
    inner = ndimage.distance_transform_edt(labels > 0)
    return [2.0 * float(d) for d in np.atleast_1d(ndimage.maximum(inner, labels, index=present))]


def object_statistics(objects: list[np.ndarray]) -> tuple[list[float], int, int]:
    """The objects' equivalent diameters, how many touch another object of the same map, and how
    many there are, over instance-label maps ``objects``."""
    diameters: list[float] = []
    touching = total = 0
    for labels in objects:
        areas = np.bincount(labels.ravel())[1:]
        present = areas[areas > 0]
        diameters += [float(d) for d in np.sqrt(4.0 * present / np.pi)]
        total += int(present.size)
        touching += _touching(labels)
    return diameters, touching, total


def _touching(labels: np.ndarray) -> int:
    """How many objects have another object of the same map within ``TOUCHING_GAP`` pixels."""
    if labels.max() == 0:
        return 0
    size = 2 * TOUCHING_GAP + 1
    big = np.iinfo(np.int32).max
    highest = ndimage.maximum_filter(labels, size=size)
    lowest = ndimage.minimum_filter(np.where(labels > 0, labels, big).astype(np.int32), size=size)
    near = (labels > 0) & (lowest != big) & (highest != lowest)
    return int(np.unique(labels[near]).size)


def fingerprint_folder(folder: str | Path, data: DataConfig, *, patch_size: int, val_fraction: float, seed: int) -> Fingerprint:
    """The fingerprint of the image folder ``folder`` read with the ``data`` settings.

    Raises:
        UserError: ``folder`` is not an image folder (a patch folder cannot be planned for: plan on
            the folder its patches came from), or it has a problem training would stop on (the
            message is ``inspect``'s summary).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found; check the path")
    if not is_data_folder(folder):
        raise UserError(
            f"{folder}: not an image folder (images/ + masks/, or X.tif + X_mask.tif); a recipe is planned from the "
            "full images, so point it at the folder the patches were cut from"
        )
    check_folder(folder, data, patch_size=min(patch_size, 16), val_fraction=val_fraction, seed=seed)
    preprocess = data.preprocess()
    pairs = find_pairs(folder)
    reader = DecodeCache(folder if data.cache else None)
    measured = set(np.linspace(0, len(pairs) - 1, min(len(pairs), SAMPLED_IMAGES)).round().astype(int).tolist())
    heights, widths, contrasts, dtypes = [], [], [], Counter()
    class_pixels = np.zeros(data.num_classes, np.int64)
    low_value, high_value = np.inf, -np.inf
    foreground = range(1, data.num_classes)
    thickness: dict[int, list[float]] = {k: [] for k in foreground}
    by_class: dict[int, list] = {k: [[], 0, 0] for k in foreground}  # diameters, touching, objects
    by_instance: list = [[], 0, 0]
    with_instances = False
    for i, pair in enumerate(pairs):
        raw, mask = read_pair(pair, preprocess, reader)
        heights.append(mask.shape[0])
        widths.append(mask.shape[1])
        dtypes[str(raw.dtype)] += 1
        low, high = image_statistics(raw)
        contrasts.append(max(high - low, 1e-12))
        finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        if finite.size:
            low_value, high_value = min(low_value, float(finite.min())), max(high_value, float(finite.max()))
        class_pixels += np.bincount(mask.ravel(), minlength=data.num_classes)[: data.num_classes]
        if i not in measured:
            continue
        for k in foreground:
            regions = ndimage.label(mask == k, structure=np.ones((3, 3), bool))[0]
            thickness[k] += region_thickness(regions)
            _add(by_class[k], object_statistics([regions]))
        source = instance_file(folder, pair)
        if source is not None:
            with_instances = True
            _add(by_instance, object_statistics([_instances(source, mask, preprocess)]))
    names = data.names()
    typical = {k: float(np.median(values)) if values else None for k, values in thickness.items()}
    if with_instances:
        diameters, touching, objects = by_instance
    else:  # objects are the regions of the classes that are not thin lines (boundaries)
        solid = [k for k in foreground if typical[k] is not None and typical[k] > THIN] or list(foreground)
        diameters = [d for k in solid for d in by_class[k][0]]
        touching, objects = sum(by_class[k][1] for k in solid), sum(by_class[k][2] for k in solid)
    dtype = dtypes.most_common(1)[0][0]
    shares = class_pixels / max(int(class_pixels.sum()), 1)
    return Fingerprint(
        folder=str(folder),
        images=len(pairs),
        height=[int(min(heights)), int(np.median(heights)), int(max(heights))],
        width=[int(min(widths)), int(np.median(widths)), int(max(widths))],
        channels=data.in_channels,
        dtype=dtype,
        range_share=_range_share(dtype, low_value, high_value),
        exposure_spread=float(np.std(np.log(contrasts))) if len(contrasts) > 1 else 0.0,
        class_shares={name: float(s) for name, s in zip(names, shares)},
        objects=objects,
        object_diameter=float(np.median(diameters)) if diameters else None,
        object_diameter_p90=float(np.percentile(diameters, 90)) if diameters else None,
        thickness={names[k]: typical[k] for k in foreground},
        touching_share=touching / objects if objects else 0.0,
        instances=with_instances,
    )


def _add(total: list, part: tuple[list[float], int, int]) -> None:
    total[0] += part[0]
    total[1] += part[1]
    total[2] += part[2]


def _range_share(dtype: str, low: float, high: float) -> float | None:
    kind = np.dtype(dtype)
    if not np.issubdtype(kind, np.integer) or not np.isfinite(low):
        return None
    info = np.iinfo(kind)
    return float((high - low) / (info.max - info.min))
