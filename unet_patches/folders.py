"""Data folders: pairing the files of ``images/`` and ``masks/`` (same stem, or the original's
``Img_N`` / ``Mask_N``) and loading the pairs into memory.

Every problem with the user's folder (a missing subfolder, no images, a repeated name, an image
without a mask, a mask of another size) raises :class:`~unet_patches.errors.UserError` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_patches.errors import UserError
from unet_patches.imageio import IMAGE_SUFFIXES, image_to_array, read_image, read_mask

__all__ = ["Pair", "Sample", "find_pairs", "load_pairs"]

_IMG_N = re.compile(r"^img[_-]?(\d+)$", re.IGNORECASE)
_MASK_N = re.compile(r"^mask[_-]?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """An image file and its mask file; ``name`` is the image's stem."""

    name: str
    image: Path
    mask: Path


@dataclass(frozen=True, eq=False)
class Sample:
    """A loaded pair: ``image`` float32 ``(C, H, W)`` in [0, 1], ``mask`` uint8 ``(H, W)``."""

    name: str
    image: np.ndarray
    mask: np.ndarray


def _natural_key(text: str) -> list[tuple[int, int, str]]:
    """Sort key that orders ``Img_2`` before ``Img_10``."""
    parts = re.split(r"(\d+)", text)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p]


def _image_files(folder: Path) -> list[Path]:
    return [
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]


def _by_key(files: list[Path], key, kind: str, folder: Path) -> dict:
    table: dict = {}
    for path in files:
        k = key(path)
        if k is None:
            continue
        if k in table:
            first, second = sorted([table[k].name, path.name])
            raise UserError(f"{folder}: {kind} files {first} and {second} have the same name; keep one of them")
        table[k] = path
    return table


def _listing(names: list[str], limit: int = 5) -> str:
    names = sorted(names, key=_natural_key)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def find_pairs(folder: str | Path) -> list[Pair]:
    """Pair the files of ``folder/images`` and ``folder/masks``, in natural order of their names.

    An image pairs with the mask of the same stem (``a.tif`` with ``a.png``), or, as in the
    original system, ``Img_N`` with ``Mask_N``. Files that are not images are ignored.

    Raises ``UserError`` when a subfolder is missing, no images are found, names repeat, or an
    image has no mask (or a mask no image).
    """
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    missing = [str(d) for d in (images_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise UserError(
            f"{folder}: missing {' and '.join(missing)}; a data folder needs images/ and masks/ "
            "subfolders holding matching files"
        )
    images, masks = _image_files(images_dir), _image_files(masks_dir)
    if not images:
        raise UserError(f"{images_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}); put the images there")

    mask_by_stem = _by_key(masks, lambda p: p.stem, "mask", masks_dir)
    image_by_stem = _by_key(images, lambda p: p.stem, "image", images_dir)

    def mask_number(p: Path) -> int | None:
        match = _MASK_N.match(p.stem)
        return int(match.group(1)) if match else None

    def image_number(p: Path) -> int | None:
        match = _IMG_N.match(p.stem)
        return int(match.group(1)) if match else None

    mask_by_number = _by_key(masks, mask_number, "mask", masks_dir)
    _by_key(images, image_number, "image", images_dir)  # reject Img_1 next to Img_01

    pairs, used_masks, lonely_images = [], set(), []
    for stem, image in image_by_stem.items():
        mask = mask_by_stem.get(stem)
        if mask is None and image_number(image) is not None:
            mask = mask_by_number.get(image_number(image))
        if mask is None or mask in used_masks:
            lonely_images.append(image.name)
            continue
        used_masks.add(mask)
        pairs.append(Pair(name=stem, image=image, mask=mask))

    lonely_masks = [m.name for m in masks if m not in used_masks]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image(s) without a mask: {_listing(lonely_images)}")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} mask(s) without an image: {_listing(lonely_masks)}")
        raise UserError(
            f"{folder}: {'; '.join(parts)}; give each image in images/ a mask in masks/ with the "
            "same name (or Mask_N for Img_N)"
        )
    return sorted(pairs, key=lambda pair: _natural_key(pair.name))


def load_pairs(folder: str | Path, in_channels: int, num_classes: int) -> list[Sample]:
    """Load every pair of ``folder`` (see :func:`find_pairs`) into memory.

    Each :class:`Sample` holds the image as float32 ``(in_channels, H, W)`` and the mask as uint8
    ``(H, W)``. Raises ``UserError`` for any bad file and when an image and its mask differ in size.
    """
    samples = []
    for pair in find_pairs(folder):
        image = image_to_array(read_image(pair.image), in_channels, name=str(pair.image))
        mask = read_mask(pair.mask, num_classes)
        if image.shape[1:] != mask.shape:
            raise UserError(
                f"{pair.image} is {image.shape[1]}x{image.shape[2]} (HxW) but its mask {pair.mask} "
                f"is {mask.shape[0]}x{mask.shape[1]}; image and mask must have the same size"
            )
        samples.append(Sample(name=pair.name, image=image, mask=mask))
    return samples
