"""Data folders: pairing images with masks (``images/`` + ``masks/`` by stem or the original's
``Img_N`` / ``Mask_N``; or the Kaggle ultrasound-nerve layout ``<subject>_<n>.tif`` +
``<subject>_<n>_mask.tif``), the group of each image for splitting, and loading pairs into memory.

Every problem with the user's folder (a missing subfolder, no images, a repeated name, an image
without a mask, a mask of another size) raises :class:`~unet_patches.errors.UserError` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_patches.errors import UserError

from .cache import DecodeCache
from .imageio import IMAGE_SUFFIXES
from .preprocess import Preprocess, resize_labels

__all__ = [
    "split_by_group",
    "validation_count",
    "Matching",
    "Pair",
    "Sample",
    "find_pairs",
    "group_of",
    "is_data_folder",
    "load_pair",
    "load_pairs",
    "match_pairs",
    "read_pair",
]

_IMG_N = re.compile(r"^img[_-]?(\d+)$", re.IGNORECASE)
_MASK_N = re.compile(r"^mask[_-]?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """An image file and its mask file; ``name`` is the image's stem."""

    name: str
    image: Path
    mask: Path
    group: str = ""  # images of one group (a subject) stay on one side of a split


@dataclass(frozen=True, eq=False)
class Sample:
    """A loaded pair: ``image`` float32 ``(C, H, W)`` (scaled, see :func:`load_pair`), ``mask`` uint8 ``(H, W)``."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    group: str = ""
    dtype: str = "uint8"  # the file's pixel type


def _natural_key(text: str) -> list[tuple[int, int, str]]:
    """Sort key that orders ``Img_2`` before ``Img_10``."""
    parts = re.split(r"(\d+)", text)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p]


def _image_files(folder: Path) -> list[Path]:
    return [
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]


def _drop_duplicates(files: list[Path], keys: list, kind: str, folder: Path, problems: list[str]) -> list[Path]:
    """``files`` in natural order without the repeats: of files that share a key (any of ``keys``;
    a key of None is no key), the first is kept and each other one adds a problem naming both."""
    files = sorted(files, key=lambda p: (_natural_key(p.name), p.name))
    dropped: set[Path] = set()
    for key in keys:
        first: dict = {}
        for path in files:
            k = None if path in dropped else key(path)
            if k is None:
                continue
            if k in first:
                problems.append(
                    f"{folder}: {kind} files {first[k].name} and {path.name} have the same name; keep one of them"
                )
                dropped.add(path)
            else:
                first[k] = path
    return [p for p in files if p not in dropped]


def _listing(names: list[str], limit: int = 5) -> str:
    names = sorted(names, key=_natural_key)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


KAGGLE_NAME = re.compile(r"^(\d+)_(\d+)$")
MASK_SUFFIX = "_mask"
# Suffixes that mask files of public sets add to their image's name (ISIC: X_segmentation.png).
MASK_NAME_SUFFIXES = ("_mask", "_masks", "_segmentation", "_seg", "_label", "_labels", "_gt", "-mask")


def _layout(folder: Path) -> tuple[str, Path, Path]:
    """``(layout, images folder, masks folder)``: ``images-masks`` (``images/`` + ``masks/``) or
    ``kaggle`` (``X.tif`` next to ``X_mask.tif``, in ``folder`` or its ``train/``)."""
    if (folder / "images").is_dir() or (folder / "masks").is_dir():
        return "images-masks", folder / "images", folder / "masks"
    for candidate in (folder, folder / "train"):
        if candidate.is_dir() and any(p.stem.endswith(MASK_SUFFIX) for p in _image_files(candidate)):
            return "kaggle", candidate, candidate
    return "images-masks", folder / "images", folder / "masks"


def is_data_folder(folder: str | Path) -> bool:
    """Whether ``folder`` looks like a data folder: ``images/`` or ``masks/`` in it, or the Kaggle layout."""
    folder = Path(folder)
    return folder.is_dir() and (
        _layout(folder)[0] == "kaggle" or (folder / "images").is_dir() or (folder / "masks").is_dir()
    )


def group_of(name: str, by_subject: bool) -> str:
    """The group an image belongs to for splitting: with ``by_subject``, the subject of a
    ``<subject>_<n>`` name (Kaggle naming), else (or for another name) the image itself."""
    match = KAGGLE_NAME.match(name) if by_subject else None
    return match.group(1) if match else name


@dataclass
class Matching:
    """What :func:`match_pairs` found: the pairs and every problem, so all can be reported at once."""

    folder: Path
    layout: str
    images_dir: Path
    masks_dir: Path
    pairs: list[Pair]
    lonely_images: list[str]
    lonely_masks: list[str]
    problems: list[str]  # missing folders, no images, repeated names (the later file is left out)


def match_pairs(folder: str | Path) -> Matching:
    """Pair the image files of a data folder with their masks, collecting problems instead of raising.

    Layouts: ``images/`` + ``masks/`` (an image pairs with the mask of the same stem, or of its stem
    plus a usual suffix such as ``_mask`` or ``_segmentation`` (ISIC), or, as in the original system,
    ``Img_N`` with ``Mask_N``), or the Kaggle ultrasound-nerve layout
    (``<subject>_<n>.tif`` with ``<subject>_<n>_mask.tif`` in the folder or its ``train/``).

    Of files with the same name (``a.png`` next to ``a.tif``) the first in natural order is paired
    and each other one is a problem, left out of the pairs and the unmatched files. Images are
    grouped by subject in the Kaggle layout, and in ``images/`` + ``masks/`` when every paired
    image is named ``<subject>_<n>``; otherwise each image is its own group.
    """
    folder = Path(folder)
    layout, images_dir, masks_dir = _layout(folder)
    matching = Matching(folder, layout, images_dir, masks_dir, [], [], [], [])
    missing = [str(d) for d in dict.fromkeys((images_dir, masks_dir)) if not d.is_dir()]
    if missing:
        matching.problems.append(
            f"{folder}: missing {' and '.join(missing)}; a data folder needs images/ and masks/ subfolders "
            "holding matching files (or the Kaggle layout: X.tif next to X_mask.tif)"
        )
        return matching
    files = _image_files(images_dir)
    if layout == "kaggle":
        images = [p for p in files if not p.stem.endswith(MASK_SUFFIX)]
        masks = [p for p in files if p.stem.endswith(MASK_SUFFIX)]
    else:
        images, masks = files, _image_files(masks_dir)
    if not images:
        matching.problems.append(
            f"{images_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}); put the images there"
        )
        return matching
    _pair_up(matching, images, masks)
    matching.pairs.sort(key=lambda pair: _natural_key(pair.name))
    matching.lonely_images.sort(key=_natural_key)
    matching.lonely_masks.sort(key=_natural_key)
    return matching


def _pair_up(matching: Matching, images: list[Path], masks: list[Path]) -> None:
    kaggle = matching.layout == "kaggle"

    def mask_key(p: Path) -> str:
        return p.stem[: -len(MASK_SUFFIX)] if kaggle else p.stem

    def number(pattern: re.Pattern, p: Path) -> int | None:
        match = pattern.match(p.stem)
        return int(match.group(1)) if match else None

    def base(p: Path) -> str | None:
        # "a_segmentation" -> "a", for masks named after their image plus a usual suffix.
        lower = p.stem.lower()
        return next((p.stem[: -len(s)] for s in MASK_NAME_SUFFIXES if lower.endswith(s) and len(lower) > len(s)), None)

    mask_keys = [mask_key] + ([] if kaggle else [base]) + [lambda p: number(_MASK_N, p)]
    masks = _drop_duplicates(masks, mask_keys, "mask", matching.masks_dir, matching.problems)
    # The Img_N key rejects Img_1 next to Img_01.
    image_keys = [lambda p: p.stem, lambda p: number(_IMG_N, p)]
    images = _drop_duplicates(images, image_keys, "image", matching.images_dir, matching.problems)
    mask_by_stem = {mask_key(m): m for m in masks}
    mask_by_base = {} if kaggle else {b: m for m in masks if (b := base(m)) is not None}
    mask_by_number = {n: m for m in masks if (n := number(_MASK_N, m)) is not None}
    found: list[tuple[str, Path, Path]] = []
    used: set[Path] = set()
    for image in images:
        mask = mask_by_stem.get(image.stem) or mask_by_base.get(image.stem)
        if mask is None and number(_IMG_N, image) is not None:
            mask = mask_by_number.get(number(_IMG_N, image))
        if mask is None or mask in used:
            matching.lonely_images.append(image.name)
            continue
        used.add(mask)
        found.append((image.stem, image, mask))
    # Kaggle names (<subject>_<n>) in images/ + masks/ too: a subject's images stay on one side.
    # Kaggle-style names elsewhere group by subject too, unless that would leave one group only
    # (names such as 2021_001, 2021_002 are dates or runs, not subjects).
    subjects = {group_of(stem, True) for stem, _, _ in found}
    named = all(KAGGLE_NAME.match(stem) for stem, _, _ in found) and len(subjects) > 1
    by_subject = kaggle or named
    matching.pairs.extend(Pair(stem, image, mask, group_of(stem, by_subject)) for stem, image, mask in found)
    matching.lonely_masks.extend(m.name for m in masks if m not in used)


def find_pairs(folder: str | Path) -> list[Pair]:
    """The pairs of a data folder (see :func:`match_pairs`), in natural order of their names.

    Raises ``UserError`` when a subfolder is missing, no images are found, names repeat, or an
    image has no mask (or a mask no image).
    """
    matching = match_pairs(folder)
    if matching.problems:
        raise UserError(matching.problems[0])
    if matching.lonely_images or matching.lonely_masks:
        parts = []
        if matching.lonely_images:
            parts.append(f"{len(matching.lonely_images)} image(s) without a mask: {_listing(matching.lonely_images)}")
        if matching.lonely_masks:
            parts.append(f"{len(matching.lonely_masks)} mask(s) without an image: {_listing(matching.lonely_masks)}")
        naming = (
            "X_mask for X"
            if matching.layout == "kaggle"
            else "the same name in masks/ (or name_mask, or Mask_N for Img_N)"
        )
        raise UserError(f"{matching.folder}: {'; '.join(parts)}; give each image a mask with {naming}")
    return matching.pairs


def read_pair(pair: Pair, preprocess: Preprocess, cache: DecodeCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw image as stored and its mask decoded by ``preprocess``'s tables, both at the file's size.

    Raises ``UserError`` for a bad file and when the image and its mask differ in size.
    """
    cache = cache or DecodeCache(None)
    raw = cache.read(pair.image, page=preprocess.page)
    mask = preprocess.mask(cache.read(pair.mask, **preprocess.mask_reading()), pair.mask)
    if raw.shape[:2] != mask.shape:
        raise UserError(
            f"{pair.image} is {raw.shape[0]}x{raw.shape[1]} (HxW) but its mask {pair.mask} "
            f"is {mask.shape[0]}x{mask.shape[1]}; image and mask must have the same size"
        )
    return raw, mask


def load_pair(pair: Pair, preprocess: Preprocess, cache: DecodeCache | None = None) -> Sample:
    """One pair as a :class:`Sample` (:func:`read_pair`): the image through steps 1-2 of
    ``preprocess`` (range and resize, not yet normalised), the mask resized by nearest neighbour."""
    raw, mask = read_pair(pair, preprocess, cache)
    image = preprocess.scaled(raw, str(pair.image))
    if preprocess.resize is not None:
        mask = resize_labels(mask, preprocess.resize)
    return Sample(name=pair.name, image=image, mask=mask, group=pair.group, dtype=str(raw.dtype))


def load_pairs(folder: str | Path, preprocess: Preprocess, *, cache: bool = True) -> list[Sample]:
    """Every pair of ``folder`` (see :func:`find_pairs`) loaded by :func:`load_pair`, through the
    folder's decode cache unless ``cache`` is False."""
    pairs = find_pairs(folder)
    reader = DecodeCache(Path(folder) if cache else None)
    return [load_pair(pair, preprocess, reader) for pair in pairs]


def validation_count(n_sources: int, val_fraction: float) -> int:
    """How many of ``n_sources`` images to hold back: ``round(val_fraction * n)``, at least one when
    ``val_fraction > 0`` and there are >= 2, and never all of them (training needs one)."""
    n_val = int(round(val_fraction * n_sources))
    if val_fraction > 0 and n_sources >= 2:
        n_val = max(n_val, 1)
    return min(n_val, max(n_sources - 1, 0))


def split_by_group(groups: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)`` of images, whole groups (subjects) on one side.

    ``validation_count`` of the groups are held back, drawn by a generator seeded with ``seed``.
    When every image is its own group, this is the per-image split the toolkit has always used.
    """
    names = list(dict.fromkeys(groups))  # first-seen order, which the seeded permutation indexes
    order = np.random.default_rng([seed, 7]).permutation(len(names))
    held_back = {names[i] for i in order[: validation_count(len(names), val_fraction)]}
    train = [i for i, g in enumerate(groups) if g not in held_back]
    val = [i for i, g in enumerate(groups) if g in held_back]
    return train, val
