"""A data folder's fingerprint: what a training recipe should be planned from.

:func:`fingerprint_folder` takes ``inspect``'s report of an image folder (which reads every pair
once, through the decode cache), reads up to ``SAMPLED_IMAGES`` pairs again from the cache, and sums up
what matters to the choice of network, patch, augmentation and normalisation:

- how many images, their sizes, channels, pixel type and the share of the type's range they use;
- how differently the images are exposed: the spread (standard deviation) of the logarithm of each
  image's contrast, its 99.8th minus its 1st percentile (0 when every image is stored alike; 0.7
  when contrast varies about twofold from image to image);
- the share of each class among the mask pixels (the report's);
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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unet_patches.errors import UserError

from .cache import DecodeCache
from .config import DataConfig
from .folders import find_pairs, is_data_folder, read_pair
from .inspection import Report, check_folder
from .pixel_weights import instance_file, instances_of

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
SAMPLED_IMAGES = 200  # exposure and objects of a large folder come from this many images, evenly spread


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


def fingerprint_folder(
    folder: str | Path, data: DataConfig, *, patch_size: int, val_fraction: float, seed: int
) -> Fingerprint:
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
    report = check_folder(folder, data, patch_size=min(patch_size, 16), val_fraction=val_fraction, seed=seed)
    preprocess = data.preprocess()
    pairs = find_pairs(folder)
    reader = DecodeCache(folder if data.cache else None)
    measured = sorted(set(np.linspace(0, len(pairs) - 1, min(len(pairs), SAMPLED_IMAGES)).round().astype(int)))
    scan = _Scan(data.num_classes)
    for i in measured:
        raw, mask = read_pair(pairs[i], preprocess, reader)
        source = instance_file(folder, pairs[i])
        scan.add(raw, mask, None if source is None else instances_of(source, mask, preprocess))
    return scan.result(report, len(pairs), data)


@dataclass
class _Scan:
    """What the pass over the sampled pairs adds up (the rest comes from ``inspect``'s report)."""

    num_classes: int
    contrasts: list[float] = field(default_factory=list)
    thickness: dict[int, list[float]] = field(default_factory=dict)  # per foreground class
    by_class: dict[int, list] = field(default_factory=dict)  # per foreground class: diameters, touching, count
    by_instance: list = field(default_factory=lambda: [[], 0, 0])
    instances: bool = False

    def add(self, raw: np.ndarray, mask: np.ndarray, instances: np.ndarray | None) -> None:
        """An image's contrast; the regions of each foreground class of its mask, and its ``instances``
        where given."""
        low, high = image_statistics(raw)
        self.contrasts.append(max(high - low, 1e-12))
        for k in range(1, self.num_classes):
            regions = ndimage.label(mask == k, structure=np.ones((3, 3), bool))[0]
            self.thickness.setdefault(k, []).extend(region_thickness(regions))
            _add(self.by_class.setdefault(k, [[], 0, 0]), object_statistics([regions]))
        if instances is not None:
            self.instances = True
            _add(self.by_instance, object_statistics([instances]))

    def result(self, report: Report, images: int, data: DataConfig) -> Fingerprint:
        names = data.names()
        foreground = range(1, self.num_classes)
        typical = {k: float(np.median(v)) if v else None for k in foreground for v in [self.thickness.get(k, [])]}
        if self.instances:
            diameters, touching, objects = self.by_instance
        else:  # objects are the regions of the classes that are not thin lines (boundaries)
            solid = [k for k in foreground if typical[k] is not None and typical[k] > THIN] or list(foreground)
            parts = [self.by_class.get(k, [[], 0, 0]) for k in solid]
            diameters = [d for part in parts for d in part[0]]
            touching, objects = sum(part[1] for part in parts), sum(part[2] for part in parts)
        dtype = max(report.dtypes, key=report.dtypes.get)
        return Fingerprint(
            folder=report.folder,
            images=images,
            height=report.sizes["height"],
            width=report.sizes["width"],
            channels=data.in_channels,
            dtype=dtype,
            range_share=report.range_share.get(dtype),
            exposure_spread=float(np.std(np.log(self.contrasts))) if len(self.contrasts) > 1 else 0.0,
            class_shares=report.class_shares or {name: 0.0 for name in names},
            objects=objects,
            object_diameter=float(np.median(diameters)) if diameters else None,
            object_diameter_p90=float(np.percentile(diameters, 90)) if diameters else None,
            thickness={names[k]: typical[k] for k in foreground},
            touching_share=touching / objects if objects else 0.0,
            instances=self.instances,
        )


def _add(total: list, part: tuple[list[float], int, int]) -> None:
    total[0] += part[0]
    total[1] += part[1]
    total[2] += part[2]
