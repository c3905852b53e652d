"""Random patch extraction to disk, the patch folder's ``manifest.json``, and a dataset over it.

A patch folder (docs/ORIGINAL.md 1.2) looks like::

    out_dir/images/p0.png ...   8-bit gray (or RGB when in_channels == 3); p0.tif (float32) for
                                deeper sources not stretched by percentile normalisation
                                (manifest ``image_suffix``)
    out_dir/masks/p0.png ...    single-channel class indices
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
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from skimage.transform import resize
from torch.utils.data import Dataset

from unet_patches.atomic import write_atomically
from unet_patches.errors import UserError, one_line
from unet_patches.validate import require_int, require_number

from .cache import DecodeCache
from .folders import load_pairs, validation_count
from .imageio import image_to_array, write_png
from .masks import decode_mask
from .preprocess import Preprocess

__all__ = [
    "FLIPS",
    "MANIFEST_NAME",
    "PatchFolder",
    "extract_patches",
    "flip",
    "manifest_preprocess",
    "read_manifest",
    "split_by_source",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
FLIPS = ("none", "lr", "ud", "both")
_FLIP_AXES = {"none": (), "lr": (-1,), "ud": (-2,), "both": (-2, -1)}


def flip(array: np.ndarray, kind: str) -> np.ndarray:
    """Flip ``array`` ``(..., h, w)`` as named by ``kind``: one of ``FLIPS``."""
    axes = _FLIP_AXES[kind]
    return np.flip(array, axis=axes) if axes else array


def _resize_to_width(image: np.ndarray, mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize image ``(C, H, W)`` and mask ``(H, W)`` to ``width`` columns, keeping aspect ratio."""
    height = max(1, int(round(mask.shape[0] * width / mask.shape[1])))
    if (height, width) == mask.shape:
        return image, mask
    shrinking = width < mask.shape[1]
    image = resize(np.moveaxis(image, 0, -1), (height, width), order=1, anti_aliasing=shrinking, preserve_range=True)
    mask = resize(mask, (height, width), order=0, anti_aliasing=False, preserve_range=True)
    return np.moveaxis(image, -1, 0).astype(np.float32), mask.astype(np.uint8)


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
    for sub in ("images", "masks"):
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
    source: Path, preprocess: Preprocess, resize_width: int | None, patch_size: int, cache: bool
) -> list[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """``(name, group, image, mask)`` of every pair, normalised per image (``percentile``) and resized
    to ``resize_width`` if given; every image is checked to hold a patch before anything is written."""
    prepared = []
    for sample in load_pairs(source, preprocess, cache=cache):
        image, mask = sample.image, sample.mask
        if preprocess.mode.per_image:
            image = preprocess.finish(image)
        if resize_width is not None:
            image, mask = _resize_to_width(image, mask, resize_width)
        height, width = mask.shape
        if height < patch_size or width < patch_size:
            raise UserError(
                f"{source}: image {sample.name} is {height}x{width} (HxW"
                f"{' after resizing' if resize_width else ''}) but patches are {patch_size}x"
                f"{patch_size}; choose a smaller patch size or a larger resize width"
            )
        prepared.append((sample.name, sample.group, image, mask, sample.dtype))
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
    prepared: list[tuple[str, str, np.ndarray, np.ndarray, str]],
    out_dir: Path,
    rng: np.random.Generator,
    patch_size: int,
    per_image: int,
    foreground_only: bool,
    variants: tuple[str, ...],
    num_classes: int,
    suffix: str,
) -> tuple[list[dict], np.ndarray, int]:
    """Write the patches of every image; returns the manifest records, the class pixel counts of
    everything written, and the number of windows kept."""
    records: list[dict] = []
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    windows_kept = 0
    for name, _, image, mask, _ in prepared:
        for y, x in _draw_windows(rng, mask, patch_size, per_image, foreground_only):
            windows_kept += 1
            mask_patch = mask[y : y + patch_size, x : x + patch_size]
            class_pixels += len(variants) * np.bincount(mask_patch.ravel(), minlength=num_classes)
            image_patch = image[:, y : y + patch_size, x : x + patch_size]
            for kind in variants:
                patch = f"p{len(records)}"
                _write_image_patch(out_dir / "images" / f"{patch}{suffix}", flip(image_patch, kind))
                write_png(out_dir / "masks" / f"{patch}.png", np.ascontiguousarray(flip(mask_patch, kind)))
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
) -> dict:
    """Cut random ``patch_size`` squares from every pair in ``source`` and write a patch folder.

    ``source`` is a data folder (``folders.find_pairs``), read and normalised as ``preprocess`` says
    (default: ``Preprocess()``); ``dataset`` statistics are left to training. Each image is then
    resized to ``resize_width`` columns if given (image bilinear, anti-aliased when shrinking; mask
    nearest). Then ``per_image`` windows are drawn uniformly among those fully inside the image;
    with ``foreground_only`` a window is kept only if its mask has a pixel of class > 0 (so fewer
    than ``per_image`` may remain). With ``flips`` each kept window is written 4 times (none, lr,
    ud, both). Patches are named ``p0``, ``p1``, ... in order; ``manifest.json`` is written last.

    Returns a summary: ``out_dir``, ``sources``, ``windows_drawn``, ``windows_kept``, ``patches``
    and ``class_pixels``. Raises ``UserError`` for bad arguments or data, an image smaller than
    the patch, or a non-empty ``out_dir`` without ``overwrite`` (with it, only ``images/``,
    ``masks/`` and ``manifest.json`` there are replaced).
    """
    source, out_dir = Path(source), Path(out_dir)
    preprocess = (preprocess or Preprocess()).stored()
    _check_settings(patch_size, per_image, seed, resize_width, preprocess)
    _prepare_output(out_dir, source, overwrite)
    prepared = _load_resized(source, preprocess, resize_width, patch_size, cache)
    if overwrite:
        _clear_output(out_dir)
    variants = FLIPS if flips else FLIPS[:1]
    rng = np.random.default_rng(seed)
    suffix = _image_suffix([dtype for *_, dtype in prepared], preprocess)
    records, class_pixels, windows_kept = _write_patches(
        prepared, out_dir, rng, patch_size, per_image, foreground_only, variants, preprocess.num_classes, suffix
    )
    if not records:
        raise UserError(
            f"{source}: no patch kept from {len(prepared)} image(s); the masks have no foreground "
            "in any drawn window - check the masks, draw more windows or disable foreground_only"
        )
    settings = {"patch_size": patch_size, "seed": seed, "per_image": per_image, "foreground_only": foreground_only}
    settings.update(flips=flips, resize_width=resize_width)
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
    sources = {name: {"height": m.shape[0], "width": m.shape[1], "group": group} for name, group, _, m, _ in prepared}
    return {
        "format": MANIFEST_FORMAT,
        "patch_size": settings["patch_size"],
        "num_classes": preprocess.num_classes,
        "in_channels": preprocess.in_channels,
        "seed": settings["seed"],
        "source": str(source),
        **{key: settings[key] for key in ("per_image", "foreground_only", "flips", "resize_width")},
        "preprocess": preprocess.to_dict(),
        "image_suffix": suffix,
        "class_pixels": class_pixels.tolist(),
        "sources": sources,
        "patches": records,
    }


def read_manifest(folder: str | Path) -> dict:
    """Load and check ``folder/manifest.json``.

    Raises ``UserError`` when it is missing, not JSON, or lacks the fields a patch folder needs.
    """
    path = Path(folder) / MANIFEST_NAME
    fix = "run `unet-patches patches` first to create a patch folder"
    if not path.is_file():
        raise UserError(f"{path}: not found, so {folder} is not a patch folder; {fix}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = one_line(exc)
        raise UserError(f"{path}: not a readable JSON file ({reason}); {fix}") from exc
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object; {fix}")
    required = ("patch_size", "num_classes", "in_channels", "patches")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise UserError(f"{path}: missing field(s) {', '.join(missing)}; {fix}")
    patches = manifest["patches"]
    if not isinstance(patches, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("source"), str) for p in patches
    ):
        raise UserError(f"{path}: 'patches' must be a list of records with name and source; {fix}")
    return manifest


def split_by_source(manifest: dict, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split patch names into ``(train_names, val_names)`` by whole group of source images.

    A group is a source image, or a subject for sources in the Kaggle layout (the manifest's
    ``sources[name]["group"]``). All patches of one group (its windows and their flips) go to the
    same side, so no near-copy leaks into validation. ``round(val_fraction * n_groups)`` groups go to
    validation, at least one when ``val_fraction > 0`` and there are >= 2 groups, and never all of
    them (one group: validation is empty). Names keep manifest order. Deterministic for a given ``seed``.
    Raises ``UserError`` unless ``0 <= val_fraction < 1`` and ``seed`` is an integer >= 0.
    """
    require_number("val_fraction", val_fraction, 0, 1, high_open=True)
    require_int("seed", seed, 0)
    patches = manifest["patches"]
    info = manifest.get("sources") if isinstance(manifest.get("sources"), dict) else {}
    group = {p["source"]: str((info.get(p["source"]) or {}).get("group") or p["source"]) for p in patches}
    groups = sorted(set(group.values()))
    n_val = validation_count(len(groups), val_fraction)
    order = np.random.default_rng(seed).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    train = [p["name"] for p in patches if group[p["source"]] not in val_groups]
    val = [p["name"] for p in patches if group[p["source"]] in val_groups]
    return train, val


def manifest_preprocess(manifest: dict) -> Preprocess:
    """How the manifest's patches were normalised before storing (``range`` for older folders)."""
    if isinstance(manifest.get("preprocess"), dict):
        return Preprocess.from_dict(manifest["preprocess"])
    return Preprocess(
        in_channels=int(manifest["in_channels"]), num_classes=int(manifest["num_classes"]), normalize="range"
    )


class PatchFolder(Dataset):
    """The patches of a folder written by :func:`extract_patches`.

    ``names`` picks patches (default: all, in manifest order), e.g. one side of
    :func:`split_by_source`. Items are ``(image, mask)``: float32 tensor ``(in_channels, h, w)`` in
    [0, 1] (float32 TIFF patches: as stored) and int64 tensor ``(h, w)``. Files are read lazily in
    ``__getitem__``, through the decode cache (a ``.npy`` per patch under the folder, unless
    ``cache`` is False), so DataLoader workers share no large arrays. Raises ``UserError`` for a
    missing or broken manifest, and ``ValueError`` for ``names`` not in the manifest (they come
    from the caller, e.g. :func:`split_by_source` of the same manifest, so an unknown one is a
    programming error).
    """

    def __init__(
        self,
        folder: str | Path,
        names: list[str] | None = None,
        in_channels: int = 1,
        *,
        normalize: Preprocess | None = None,
        cache: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.in_channels = in_channels
        self.normalize = normalize
        self.reader = DecodeCache(self.folder if cache else None)
        self.num_classes = int(self.manifest["num_classes"])
        known = [p["name"] for p in self.manifest["patches"]]
        if names is None:
            self.names = known
        else:
            unknown = sorted(set(names) - set(known))
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise ValueError(
                    f"{self.folder}: {len(unknown)} patch name(s) not in its manifest ({shown}); "
                    "use names from that folder's manifest.json"
                )
            self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        image_path = self.folder / "images" / f"{name}{self.manifest.get('image_suffix', '.png')}"
        image = image_to_array(self.reader.read(image_path), self.in_channels, name=str(image_path))
        if self.normalize is not None:  # dataset statistics (``normalize``'s step 3; no per-image bounds)
            image = self.normalize.normalized(image, None)
        mask_path = self.folder / "masks" / f"{name}.png"
        mask = decode_mask(self.reader.read(mask_path, mask=True), mask_path, self.num_classes)
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))
