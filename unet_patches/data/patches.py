"""Random patch extraction to disk: a patch folder and its ``manifest.json`` (read back by
:mod:`.patch_folder`).

A patch folder (docs/ORIGINAL.md 1.2) looks like::

    out_dir/images/p0.png ...   8-bit gray (or RGB when in_channels == 3); p0.tif (float32) for
                                deeper sources not stretched by percentile normalisation
                                (manifest ``image_suffix``)
    out_dir/masks/p0.png ...    single-channel class indices
    out_dir/weights/p0.npy ...  float16 pixel weights, when made with pixel weights (manifest
                                ``pixel_weights``: their settings)
    out_dir/manifest.json       settings, per-class pixel counts and one record per patch

Each record gives the patch ``name``, the ``source`` image name, the window's top-left ``y``, ``x``
in the (optionally resized) source image and its ``flip`` (``none``, ``lr``, ``ud`` or ``both``).
The stored patch is ``flip(source[:, y:y+s, x:x+s])`` with ``lr`` = reversed columns
(``np.flip(axis=-1)``) and ``ud`` = reversed rows (``np.flip(axis=-2)``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from skimage.transform import resize

from unet_patches.atomic import write_atomically
from unet_patches.errors import UserError
from unet_patches.validate import require_int

from .folders import find_pairs, load_pairs
from .imageio import write_png
from .patch_folder import MANIFEST_FORMAT, MANIFEST_NAME
from .pixel_weights import PixelWeights, weight_maps
from .preprocess import Preprocess

__all__ = ["FLIPS", "extract_patches", "flip"]

log = logging.getLogger(__name__)

FLIPS = ("none", "lr", "ud", "both")
_FLIP_AXES = {"none": (), "lr": (-1,), "ud": (-2,), "both": (-2, -1)}


def flip(array: np.ndarray, kind: str) -> np.ndarray:
    """Flip ``array`` ``(..., h, w)`` as named by ``kind``: one of ``FLIPS``."""
    axes = _FLIP_AXES[kind]
    return np.flip(array, axis=axes) if axes else array


def _resize_to_width(
    image: np.ndarray, mask: np.ndarray, weights: np.ndarray | None, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resize image ``(C, H, W)``, mask ``(H, W)`` and pixel weights (if any) to ``width`` columns,
    keeping aspect ratio."""
    height = max(1, int(round(mask.shape[0] * width / mask.shape[1])))
    if (height, width) == mask.shape:
        return image, mask, weights
    shrinking = width < mask.shape[1]
    image = resize(np.moveaxis(image, 0, -1), (height, width), order=1, anti_aliasing=shrinking, preserve_range=True)
    mask = resize(mask, (height, width), order=0, anti_aliasing=False, preserve_range=True)
    if weights is not None:
        weights = resize(weights, (height, width), order=1, preserve_range=True).astype(np.float32)
    return np.moveaxis(image, -1, 0).astype(np.float32), mask.astype(np.uint8), weights


def _write_image_patch(path: Path, image: np.ndarray) -> None:
    """float ``(C, h, w)`` -> 8-bit PNG (values in [0, 1], rounded) or float32 TIFF (as they are),
    by ``path``'s suffix; gray ``(h, w)`` or ``(h, w, C)``."""
    if path.suffix == ".tif":
        pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.ascontiguousarray(pixels, dtype=np.float32))
        return
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    write_png(path, pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))


def _image_suffix(dtypes: list[str], preprocess: Preprocess) -> str:
    """``.png`` (8-bit) for 8-bit sources or ``percentile`` (values then span [0, 1]); else ``.tif``
    (float32), so 16-bit scans using 0-3000 keep every level and floats (CT in Hounsfield units)
    keep their values, exactly as inference will see them."""
    deep = any(dtype not in ("uint8", "bool") for dtype in dtypes)
    return ".tif" if deep and not preprocess.mode.stretches else ".png"


def _prepare_output(out_dir: Path, source: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; pick another output folder")
    out, src = out_dir.resolve(), source.resolve()
    if out == src:
        raise UserError(f"{out_dir}: is also the source folder; write the patches to another folder")
    if src.is_relative_to(out) or out.is_relative_to(src):
        # Replacing patches clears OUT/images and OUT/masks, which may be the source's own files.
        inside = f"inside the output folder {out_dir}" if src.is_relative_to(out) else f"around {out_dir}"
        raise UserError(
            f"{source}: the source folder lies {inside}; write the patches to a folder outside the source data"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"{out_dir}: folder is not empty; pass --overwrite to replace its patches, or pick another folder"
        )


def _clear_output(out_dir: Path) -> None:
    # Only what extract_patches writes is removed; other files in the folder stay.
    for sub in ("images", "masks", "weights"):
        target = out_dir / sub
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def _check_settings(
    patch_size: int, per_image: int, seed: int, resize_width: int | None, preprocess: Preprocess
) -> None:
    require_int("patch_size", patch_size, 1)
    require_int("per_image", per_image, 1)
    require_int("seed", seed, 0)
    if resize_width is not None:
        require_int("resize_width", resize_width, 1)
        if preprocess.resize is not None:
            raise UserError(
                f"patches.resize_width = {resize_width} and data.resize = {list(preprocess.resize)} both resize; "
                "set one of them to null"
            )
    if preprocess.in_channels not in (1, 3):
        raise UserError(f"in_channels = {preprocess.in_channels!r}: patches are written as gray (1) or RGB (3)")


def _load_resized(
    source: Path,
    preprocess: Preprocess,
    resize_width: int | None,
    patch_size: int,
    cache: bool,
    pixel_weights: PixelWeights | None,
) -> list[tuple[str, str, np.ndarray, np.ndarray, str, np.ndarray | None]]:
    """``(name, group, image, mask, dtype, weights)`` of every pair, normalised per image and resized to
    ``resize_width`` if given, with its pixel weights (None without ``pixel_weights``); every image is
    checked to hold a patch before anything is written."""
    prepared = []
    samples = load_pairs(source, preprocess, cache=cache)
    maps: list = [None] * len(samples)
    if pixel_weights is not None:
        masks = [sample.mask for sample in samples]
        maps = weight_maps(source, find_pairs(source), masks, preprocess, pixel_weights, cache=cache)
    for sample, weights in zip(samples, maps):
        image, mask = sample.image, sample.mask
        if preprocess.mode.per_image:
            image = preprocess.finish(image)
        if resize_width is not None:
            image, mask, weights = _resize_to_width(image, mask, weights, resize_width)
        height, width = mask.shape
        if height < patch_size or width < patch_size:
            raise UserError(
                f"{source}: image {sample.name} is {height}x{width} (HxW"
                f"{' after resizing' if resize_width else ''}) but patches are {patch_size}x"
                f"{patch_size}; choose a smaller patch size or a larger resize width"
            )
        prepared.append((sample.name, sample.group, image, mask, sample.dtype, weights))
    return prepared


def _draw_windows(
    rng: np.random.Generator, mask: np.ndarray, patch_size: int, count: int, foreground_only: bool
) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` random windows fully inside ``mask``; with ``foreground_only``
    those without a pixel of class > 0 are dropped (after drawing, so the stream of draws is the same)."""
    height, width = mask.shape
    corners = []
    for _ in range(count):
        y = int(rng.integers(0, height - patch_size + 1))
        x = int(rng.integers(0, width - patch_size + 1))
        if not foreground_only or mask[y : y + patch_size, x : x + patch_size].any():
            corners.append((y, x))
    return corners


def _write_patches(
    prepared: list[tuple[str, str, np.ndarray, np.ndarray, str, np.ndarray | None]],
    out_dir: Path,
    rng: np.random.Generator,
    patch_size: int,
    per_image: int,
    foreground_only: bool,
    variants: tuple[str, ...],
    num_classes: int,
    suffix: str,
) -> tuple[list[dict], np.ndarray, int]:
    """Write the patches of every image (and of its pixel weights, as float16 ``weights/pN.npy``);
    returns the manifest records, the class pixel counts of everything written, and the windows kept."""
    records: list[dict] = []
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    windows_kept = 0
    for name, _, image, mask, _, weights in prepared:
        for y, x in _draw_windows(rng, mask, patch_size, per_image, foreground_only):
            windows_kept += 1
            mask_patch = mask[y : y + patch_size, x : x + patch_size]
            class_pixels += len(variants) * np.bincount(mask_patch.ravel(), minlength=num_classes)
            image_patch = image[:, y : y + patch_size, x : x + patch_size]
            for kind in variants:
                patch = f"p{len(records)}"
                _write_image_patch(out_dir / "images" / f"{patch}{suffix}", flip(image_patch, kind))
                write_png(out_dir / "masks" / f"{patch}.png", np.ascontiguousarray(flip(mask_patch, kind)))
                if weights is not None:
                    patch_weights = flip(weights[y : y + patch_size, x : x + patch_size], kind).astype(np.float16)
                    (out_dir / "weights").mkdir(exist_ok=True)
                    np.save(out_dir / "weights" / f"{patch}.npy", np.ascontiguousarray(patch_weights))
                records.append({"name": patch, "source": name, "y": y, "x": x, "flip": kind})
    return records, class_pixels, windows_kept


def extract_patches(
    source: str | Path,
    out_dir: str | Path,
    patch_size: int = 96,
    per_image: int = 20,
    foreground_only: bool = True,
    flips: bool = True,
    resize_width: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    preprocess: Preprocess | None = None,
    cache: bool = True,
    pixel_weights: PixelWeights | None = None,
) -> dict:
    """Cut random ``patch_size`` squares from every pair in ``source`` and write a patch folder.

    ``source`` is a data folder (``folders.find_pairs``), read and normalised as ``preprocess`` says
    (default: ``Preprocess()``); ``dataset`` statistics are left to training. Each image is then
    resized to ``resize_width`` columns if given (image bilinear, anti-aliased when shrinking; mask
    nearest). Then ``per_image`` windows are drawn uniformly among those fully inside the image;
    with ``foreground_only`` a window is kept only if its mask has a pixel of class > 0 (so fewer
    than ``per_image`` may remain). With ``flips`` each kept window is written 4 times (none, lr,
    ud, both). Patches are named ``p0``, ``p1``, ... in order; ``manifest.json`` is written last.
    With ``pixel_weights`` each patch's pixel weights (:mod:`.pixel_weights`, of the whole image, cut
    and flipped with it) are written too, and the manifest records their settings.

    Returns a summary: ``out_dir``, ``sources``, ``windows_drawn``, ``windows_kept``, ``patches``
    and ``class_pixels``. Raises ``UserError`` for bad arguments or data, an image smaller than
    the patch, or a non-empty ``out_dir`` without ``overwrite`` (with it, only ``images/``,
    ``masks/`` and ``manifest.json`` there are replaced).
    """
    source, out_dir = Path(source), Path(out_dir)
    preprocess = (preprocess or Preprocess()).stored()
    _check_settings(patch_size, per_image, seed, resize_width, preprocess)
    _prepare_output(out_dir, source, overwrite)
    prepared = _load_resized(source, preprocess, resize_width, patch_size, cache, pixel_weights)
    if overwrite:
        _clear_output(out_dir)
    variants = FLIPS if flips else FLIPS[:1]
    rng = np.random.default_rng(seed)
    suffix = _image_suffix([dtype for *_, dtype, _ in prepared], preprocess)
    records, class_pixels, windows_kept = _write_patches(
        prepared, out_dir, rng, patch_size, per_image, foreground_only, variants, preprocess.num_classes, suffix
    )
    if not records:
        raise UserError(
            f"{source}: no patch kept from {len(prepared)} image(s); the masks have no foreground "
            "in any drawn window - check the masks, draw more windows or disable foreground_only"
        )
    settings = {"patch_size": patch_size, "seed": seed, "per_image": per_image, "foreground_only": foreground_only}
    settings.update(flips=flips, resize_width=resize_width, pixel_weights=pixel_weights and asdict(pixel_weights))
    manifest = _manifest(source, preprocess, suffix, prepared, records, class_pixels, settings)
    _write_json(out_dir / MANIFEST_NAME, manifest)
    windows_drawn = per_image * len(prepared)
    log.debug("kept %d of %d windows, wrote %d patches to %s", windows_kept, windows_drawn, len(records), out_dir)
    return {
        "out_dir": str(out_dir),
        "sources": len(prepared),
        "windows_drawn": windows_drawn,
        "windows_kept": windows_kept,
        "patches": len(records),
        "class_pixels": class_pixels.tolist(),
    }


def _manifest(
    source: Path,
    preprocess: Preprocess,
    suffix: str,
    prepared: list,
    records: list[dict],
    class_pixels: np.ndarray,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """What ``manifest.json`` holds: the settings the patches were cut with, their preprocessing, the
    source images (size, group), the class pixel counts and one record per patch."""
    sources = {name: {"height": m.shape[0], "width": m.shape[1], "group": group} for name, group, _, m, *_ in prepared}
    return {
        "format": MANIFEST_FORMAT,
        "patch_size": settings["patch_size"],
        "num_classes": preprocess.num_classes,
        "in_channels": preprocess.in_channels,
        "seed": settings["seed"],
        "source": str(source),
        **{key: settings[key] for key in ("per_image", "foreground_only", "flips", "resize_width", "pixel_weights")},
        "preprocess": preprocess.to_dict(),
        "image_suffix": suffix,
        "class_pixels": class_pixels.tolist(),
        "sources": sources,
        "patches": records,
    }
