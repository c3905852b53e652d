"""Reading images and masks, class colours and overlays, PNG writing.

Conventions (see docs/DESIGN.md):

- images in memory are ``float32`` arrays ``(C, H, W)`` in ``[0, 1]`` (:func:`image_to_array`);
- masks in memory are ``uint8`` arrays ``(H, W)`` of class indices (:func:`read_mask`);
- masks on disk are single-channel class-index PNGs; the original system's RGB colour masks
  (black 0, red 1, green 2, blue 3) are read as well.

Every problem caused by the user's files raises :class:`~unet_patches.errors.UserError` with a
one-line message naming the file, what was expected and how to fix it. Arrays of the wrong shape or
dtype handed to :func:`colour_overlay` or :func:`write_png` by code raise ``ValueError`` instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from unet_patches.errors import UserError
from unet_patches.validate import is_int, require_int

__all__ = [
    "IMAGE_SUFFIXES",
    "PALETTE",
    "colour_mask",
    "colour_overlay",
    "image_to_array",
    "read_image",
    "read_mask",
    "write_png",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")

# Class colours: the original's black/red/green/blue first, then saturated colours that are easy to
# tell apart. After black, no entry has equal R, G and B (a mask whose three channels are all equal
# is read as an index mask), and none is a PASCAL VOC colour (those use 0/64/128/192 only), so VOC
# palette PNGs are not mistaken for colour masks.
PALETTE = np.array(
    [
        (0, 0, 0),  # 0 background
        (255, 0, 0),  # 1 red
        (0, 255, 0),  # 2 green
        (0, 0, 255),  # 3 blue
        (255, 255, 0),  # 4 yellow
        (255, 0, 255),  # 5 magenta
        (0, 255, 255),  # 6 cyan
        (255, 128, 0),  # 7 orange
        (128, 0, 255),  # 8 violet
        (0, 128, 255),  # 9 azure
        (128, 255, 0),  # 10 lime
        (255, 0, 128),  # 11 rose
        (0, 255, 128),  # 12 spring green
        (160, 82, 45),  # 13 sienna
        (255, 128, 128),  # 14 salmon
        (128, 255, 128),  # 15 light green
        (128, 128, 255),  # 16 light blue
        (255, 255, 128),  # 17 light yellow
        (255, 128, 255),  # 18 pink
        (128, 255, 255),  # 19 light cyan
    ],
    dtype=np.uint8,
)

# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise UserError(f"{path}: is not a file; give the path of an image file")


def _read_tiff(path: Path) -> np.ndarray:
    try:
        array = np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many types for broken files
        raise UserError(f"{path}: cannot read as a TIFF image ({_one_line(exc)}); re-save it as TIFF or PNG") from exc
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and array.shape[-1] > 4 and array.shape[0] <= 4:
        # Planar TIFFs come back channels-first.
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] > 4):
        raise UserError(
            f"{path}: TIFF of shape {array.shape} is not a single 2-D image (H,W) or (H,W,C<=4); "
            "save each plane of a stack as its own file"
        )
    return array


def _palette_mask(indices: np.ndarray, image: Image.Image) -> np.ndarray:
    """Indices of a palette PNG, unless its colours are the class colours (then decode by colour).

    Tools that re-save an RGB colour mask often make it a palette PNG with arbitrary index order;
    those are recognised by their colours. Other palette PNGs (PASCAL VOC style) are read by index.
    """
    palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(indices)
    if palette.size == 0 or used.max() >= len(palette):
        return indices
    colours = palette[used]
    class_colours = {tuple(c) for c in PALETTE.tolist()}
    if all(tuple(c) in class_colours for c in colours.tolist()):
        return palette[indices]
    return indices


def _pil_to_array(image: Image.Image, keep_palette: bool) -> np.ndarray:
    mode = image.mode
    if mode == "P" and keep_palette:
        return _palette_mask(np.asarray(image), image)
    if mode in ("1", "L", "LA", "RGB", "RGBA", "F", "I;16"):
        return np.asarray(image)
    if mode == "I":
        # 16-bit PNGs can open as 32-bit "I"; keep them 16-bit when the values fit.
        array = np.asarray(image)
        if array.size and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
            return array.astype(np.uint16)
        return array
    if mode.startswith("I;16"):
        return np.asarray(image.convert("I")).astype(np.uint16)
    has_alpha = mode in ("PA", "RGBa", "La") or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def _read_raw(path: str | Path, keep_palette: bool = False) -> np.ndarray:
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return _read_tiff(path)
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_array(image, keep_palette)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot read as an image ({_one_line(exc)}); expected one of {', '.join(IMAGE_SUFFIXES)}"
        ) from exc


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as stored: ``(H, W)`` or ``(H, W, C)`` in the file's dtype.

    TIFFs are read with tifffile, everything else with Pillow (palette images become RGB/RGBA).
    Raises ``UserError`` when the file is missing or cannot be read as a 2-D image.
    """
    return _read_raw(path)


def image_to_array(raw: np.ndarray, in_channels: int, name: str = "image") -> np.ndarray:
    """Turn a raw ``(H, W)`` or ``(H, W, C)`` image into float32 ``(in_channels, H, W)`` in [0, 1].

    uint8 is divided by 255, uint16 by 65535, bool becomes 0/1 and floats are kept as they are.
    Alpha (the last channel of RGBA or gray+alpha) is dropped; a colour image given to a 1-channel
    model is averaged over its colour channels and a gray image given to a 3-channel model is
    repeated. ``name`` (usually the file) starts the error messages.

    Raises ``UserError`` for an ``in_channels`` that is not an integer >= 1, other dtypes, NaN/inf
    values, or channel counts that do not fit.
    """
    raw = np.asarray(raw)
    require_int("in_channels", in_channels, 1)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    elif raw.ndim != 3:
        raise UserError(f"{name}: array of shape {raw.shape} is not an image; expected (H,W) or (H,W,C)")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise UserError(f"{name}: image of shape {raw.shape} is empty; give a non-empty image")

    if raw.dtype == np.uint8:
        array = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        array = raw.astype(np.float32) / 65535.0
    elif raw.dtype == np.bool_:
        array = raw.astype(np.float32)
    elif np.issubdtype(raw.dtype, np.floating):
        array = raw.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise UserError(f"{name}: float image contains NaN or infinite values; replace them before use")
    else:
        raise UserError(
            f"{name}: pixel type {raw.dtype} is not supported; "
            "expected uint8, uint16, bool or float (convert the image to 8- or 16-bit)"
        )

    channels = array.shape[-1]
    if channels != in_channels and channels in (2, 4):
        array = array[..., :-1]  # drop alpha
        channels -= 1
    if channels != in_channels:
        if in_channels == 1 and channels == 3:
            array = array.mean(axis=-1, keepdims=True)
        elif channels == 1:
            array = np.repeat(array, in_channels, axis=-1)
        else:
            raise UserError(
                f"{name}: image has {raw.shape[-1]} channel(s) but the model "
                f"takes in_channels={in_channels}; convert the image or change in_channels"
            )
    return np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32)


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    """One int32 per colour: 0xRRGGBB, for ``(..., 3)`` uint8."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _decode_colours(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Map an (H, W, 3) uint8 colour mask to class indices through ``PALETTE``."""
    codes = _colour_codes(rgb)
    palette_codes = _colour_codes(PALETTE)
    order = np.argsort(palette_codes)
    sorted_codes = palette_codes[order]
    position = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
    known = sorted_codes[position] == codes
    if not known.all():
        y, x = np.argwhere(~known)[0]
        colour = tuple(int(v) for v in rgb[y, x])
        raise UserError(
            f"{path}: colour {colour} at row {y}, column {x} is not a class colour "
            "(black=0, red=1, green=2, blue=3, ...); save masks as single-channel PNGs of class "
            "indices, or use exact colours in a lossless format (not JPEG)"
        )
    return order[position].astype(np.int64)


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Read a mask file as uint8 class indices ``(H, W)``.

    Accepted: a single-channel index image (8- or 16-bit, palette PNGs by their indices); a
    3-channel image whose channels are all equal (an index mask saved as RGB); an RGB colour mask
    in ``PALETTE`` colours (black 0, red 1, green 2, blue 3, ...). Alpha is ignored.

    Raises ``UserError`` for unreadable files, unknown colours, or values ``>= num_classes``.
    """
    path = Path(path)
    if not is_int(num_classes) or not 1 <= num_classes <= 256:
        raise UserError(f"num_classes = {num_classes!r}: expected an integer from 1 to 256 (masks are 8-bit)")
    raw = _read_raw(path, keep_palette=True)
    if raw.ndim == 3 and raw.shape[-1] in (2, 4):
        raw = raw[..., :-1]
    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]

    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8)
    elif np.issubdtype(raw.dtype, np.floating):
        if not (np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))):
            raise UserError(
                f"{path}: mask holds non-integer values; masks must hold class indices 0.."
                f"{num_classes - 1} (save them as an 8-bit PNG)"
            )
        raw = raw.astype(np.int64)
    elif not np.issubdtype(raw.dtype, np.integer):
        raise UserError(f"{path}: mask pixel type {raw.dtype} is not supported; save an 8-bit PNG")

    if raw.ndim == 3:
        if raw.shape[-1] != 3:
            raise UserError(f"{path}: mask has {raw.shape[-1]} channels; expected 1 (class indices) or 3 (colours)")
        if np.all(raw[..., 0] == raw[..., 1]) and np.all(raw[..., 0] == raw[..., 2]):
            labels = raw[..., 0].astype(np.int64)
        elif raw.dtype != np.uint8:
            raise UserError(f"{path}: colour masks must be 8-bit RGB; save the mask as an 8-bit PNG")
        else:
            labels = _decode_colours(raw, path)
    else:
        labels = raw.astype(np.int64)

    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max()) if labels.max() >= num_classes else int(labels.min())
        hint = (
            "masks must hold class indices, not 0/255 - map 255 to a class index (e.g. mask // 255)"
            if bad == 255
            else "fix the mask"
        )
        raise UserError(
            f"{path}: mask value {bad} is out of range for num_classes={num_classes} "
            f"(expected 0..{num_classes - 1}); {hint} or raise num_classes"
        )
    return labels.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Colours and writing
# --------------------------------------------------------------------------------------------------


def colour_mask(labels: np.ndarray) -> np.ndarray:
    """Colour a ``(H, W)`` label map with ``PALETTE``; returns uint8 ``(H, W, 3)``.

    Raises ``UserError`` for labels that have no palette colour (a ``num_classes`` above the palette
    size) and ``ValueError`` for labels that are not 2-D (a programming error).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels of shape {labels.shape}: expected a 2-D label map (H,W)")
    if labels.size and (labels.min() < 0 or labels.max() >= len(PALETTE)):
        raise UserError(
            f"label {int(labels.max())}: only labels 0..{len(PALETTE) - 1} have a colour; "
            "write such masks as index PNGs instead"
        )
    return PALETTE[labels.astype(np.intp)]


def colour_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an image; returns uint8 ``(H, W, 3)``.

    ``image`` is float ``(C, H, W)`` in [0, 1] (1 channel shown as gray, 3 as RGB, others averaged);
    ``labels`` is ``(H, W)``. Background (class 0) pixels show the image unchanged; other pixels
    are ``(1 - alpha) * image + alpha * colour``.

    Raises ``ValueError`` (a programming error, not bad user input) on shape mismatch or an
    ``alpha`` outside [0, 1]; ``UserError`` for labels beyond the palette (see :func:`colour_mask`).
    """
    image = np.asarray(image, dtype=np.float32)
    labels = np.asarray(labels)
    if image.ndim != 3:
        raise ValueError(f"image of shape {image.shape}: expected (C,H,W)")
    if image.shape[1:] != labels.shape:
        raise ValueError(f"image {image.shape[1:]} and labels {labels.shape} differ in size; give matching arrays")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha = {alpha!r}: expected a value in [0, 1]")
    if image.shape[0] == 3:
        rgb = np.moveaxis(image, 0, -1)
    else:
        rgb = np.repeat(image.mean(axis=0)[..., None], 3, axis=-1)
    rgb = np.clip(rgb, 0.0, 1.0) * 255.0
    colours = colour_mask(labels).astype(np.float32)
    foreground = (labels > 0)[..., None]
    blended = np.where(foreground, (1.0 - alpha) * rgb + alpha * colours, rgb)
    return np.round(blended).astype(np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 ``(H, W)`` / ``(H, W, 3)`` / ``(H, W, 4)`` or uint16 ``(H, W)`` as PNG.

    Parent folders are created. Raises ``ValueError`` for other dtypes or shapes: the arrays
    written are made by the code, so a wrong one is a programming error.
    """
    path = Path(path)
    array = np.asarray(array)
    ok_uint8 = array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)))
    ok_uint16 = array.dtype == np.uint16 and array.ndim == 2
    if not (ok_uint8 or ok_uint16):
        raise ValueError(
            f"{path}: cannot write {array.dtype} array of shape {array.shape} as PNG; "
            "expected uint8 (H,W), (H,W,3), (H,W,4) or uint16 (H,W)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
