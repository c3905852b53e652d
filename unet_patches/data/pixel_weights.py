"""Pixel weights that make a loss care about the thin gaps between touching objects: the U-Net
paper's weight map (Ronneberger et al. 2015, eq. 2),

    w(x) = 1 + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),

with d1 and d2 the distances from pixel x to the nearest and the second-nearest object. Pixels where
two objects nearly touch get up to ``1 + w0``; pixels far from any pair get 1. The paper's class
term is left to ``training.class_weights``, which the losses apply on top.

Objects are the instances of ``<folder>/instances/<mask file>`` where the folder has them (the nuclei
generator writes them), else the connected regions of each foreground class of the mask. A map is
computed once per mask and kept in the folder's decode cache (``.unet-patches-cache/``), keyed by
the mask file, the instance file and the settings. The datasets crop and flip it with the patch
(:mod:`.sampling`, :mod:`.patches`), and every loss takes it (:mod:`unet_patches.losses`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from unet_patches.atomic import write_atomically
from unet_patches.errors import UserError
from unet_patches.registry import Registry
from unet_patches.validate import require_number

from .cache import CACHE_DIR_NAME, ENTRY_SUFFIX, read_entry, write_entry
from .folders import Pair
from .imageio import read_raw
from .preprocess import Preprocess, resize_labels

__all__ = [
    "PIXEL_WEIGHTS",
    "PixelWeights",
    "instance_file",
    "instances_of",
    "objects_of",
    "unet_weight_map",
    "weight_maps",
]

log = logging.getLogger(__name__)

PIXEL_WEIGHTS: Registry[str] = Registry(
    "pixel weights",
    {
        "none": "every pixel weighs 1",
        "unet": "the U-Net paper's weight map: 1 + w0 exp(-(d1 + d2)^2 / (2 sigma^2)), d1 and d2 the distances to "
        "the nearest and second-nearest object",
    },
)
INSTANCES_DIR = "instances"


@dataclass(frozen=True)
class PixelWeights:
    """The weight map's settings: ``w0`` (the extra weight where two objects touch) and ``sigma``
    (pixels: how fast it falls off with the width of the gap)."""

    w0: float = 10.0
    sigma: float = 5.0

    def __post_init__(self) -> None:
        require_number("training.pixel_weight_w0", self.w0, 0.0)
        require_number("training.pixel_weight_sigma", self.sigma, 0.0, low_open=True)


def objects_of(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Instance labels (int32, 0 outside objects) of a class mask: the connected regions (8-connected)
    of each foreground class, numbered across the classes."""
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    for k in range(1, num_classes):
        regions, found = ndimage.label(mask == k, structure=np.ones((3, 3), bool))
        labels[regions > 0] = regions[regions > 0] + count
        count += found
    return labels


def unet_weight_map(instances: np.ndarray, settings: PixelWeights) -> np.ndarray:
    """The weight map (float32, >= 1) of instance labels ``(H, W)``: each object's distance transform
    is taken in a window around it (beyond ``4 sigma`` the term is below 3e-4 of ``w0``), and the two
    smallest distances per pixel are kept."""
    shape = instances.shape
    nearest = np.full(shape, np.inf, np.float32)
    second = np.full(shape, np.inf, np.float32)
    reach = int(np.ceil(4 * settings.sigma))
    for label, found in enumerate(ndimage.find_objects(instances), start=1):
        if found is None:
            continue
        rows = slice(max(found[0].start - reach, 0), min(found[0].stop + reach, shape[0]))
        cols = slice(max(found[1].start - reach, 0), min(found[1].stop + reach, shape[1]))
        distance = ndimage.distance_transform_edt(instances[rows, cols] != label).astype(np.float32)
        near, far = nearest[rows, cols], second[rows, cols]
        second[rows, cols] = np.minimum(far, np.maximum(near, distance))
        nearest[rows, cols] = np.minimum(near, distance)
    gap = nearest + second  # inf where fewer than two objects are within reach
    weights = 1.0 + settings.w0 * np.exp(-np.square(gap) / (2.0 * settings.sigma**2))
    return weights.astype(np.float32)


def instance_file(folder: Path, pair: Pair) -> Path | None:
    """The instance mask of a pair: ``<folder>/instances/`` holding a file of the mask's name."""
    candidate = Path(folder) / INSTANCES_DIR / pair.mask.name
    return candidate if candidate.is_file() else None


def weight_maps(
    folder: str | Path,
    pairs: Sequence[Pair],
    masks: Sequence[np.ndarray],
    preprocess: Preprocess,
    settings: PixelWeights,
    *,
    cache: bool = True,
) -> list[np.ndarray]:
    """The weight map of each pair of ``folder`` whose mask (decoded and resized as training has it)
    is in ``masks``: from its instance file where there is one, else from the mask's regions; read
    from the folder's cache when computed before.

    Raises:
        UserError: no mask holds a foreground object, so the weights would all be 1.
    """
    folder = Path(folder)
    maps, objects = [], 0
    for pair, mask in zip(pairs, masks):
        source = instance_file(folder, pair)
        entry = _entry(folder, pair, source, settings, preprocess) if cache else None
        if entry is not None and entry.is_file():
            try:
                stored = read_entry(entry, mapped=False)
                if stored.shape != mask.shape or stored.dtype != np.float32:
                    raise ValueError(f"{stored.dtype} {stored.shape}, not float32 {mask.shape}")
                maps.append(stored)
                objects += 1
                continue
            except (OSError, ValueError) as exc:
                log.warning("%s: cache entry damaged (%s), computing the weights of %s again", entry, exc, pair.mask)
        instances = instances_of(source, mask, preprocess)
        objects += int(instances.max() > 0)
        weights = unet_weight_map(instances, settings)
        maps.append(weights)
        if entry is not None:
            _store(entry, weights)
    if pairs and not objects:
        raise UserError(
            f"{folder}: training.pixel_weights = unet, but no mask holds a foreground object, so every weight "
            "would be 1; set training.pixel_weights to none, or check the masks and data.mask_values"
        )
    return maps


def instances_of(source: Path | None, mask: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Instance labels at the mask's size: the instance file (resized as the mask was), else the
    mask's regions."""
    if source is None:
        return objects_of(mask, preprocess.num_classes)
    labels = np.asarray(read_raw(source, mask=True)).astype(np.int32)
    if labels.ndim != 2:
        raise UserError(f"{source}: an instance mask must be one channel of labels (0 background); got {labels.shape}")
    labels = resize_labels(labels, mask.shape)
    if labels.shape != mask.shape:
        raise UserError(f"{source}: {labels.shape} but its mask is {mask.shape}; instance masks match their masks")
    return labels


def _entry(folder: Path, pair: Pair, source: Path | None, settings: PixelWeights, pre: Preprocess) -> Path | None:
    """The cache file of a pair's weights: named by the mask's and the instance file's path and
    stamps, the settings and the resize, so that a changed file or setting gets a new entry."""
    parts = [settings.w0, settings.sigma, pre.resize, pre.num_classes]
    for path in (pair.mask, source):
        if path is not None:
            stat = path.stat()
            parts += [os.fsdecode(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino]
    key = hashlib.sha1(repr(parts).encode()).hexdigest()[:24]
    return folder / CACHE_DIR_NAME / f"weights-{key}{ENTRY_SUFFIX}"


def _store(entry: Path, weights: np.ndarray) -> None:
    """Keep ``weights`` in the cache (rank 0 alone under torchrun); a folder that cannot be written is
    left without (the maps are computed again next time)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    try:
        entry.parent.mkdir(exist_ok=True)

        write_atomically(entry, lambda tmp: write_entry(tmp, weights))
    except OSError:
        pass
