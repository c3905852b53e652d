"""Reading images and masks, class colours and overlays, PNG writing.

Conventions (see docs/DESIGN.md):

- images in memory are ``float32`` arrays ``(C, H, W)`` in ``[0, 1]`` (:func:`image_to_array`);
- masks in memory are ``uint8`` arrays ``(H, W)`` of class indices (decoded by
  :mod:`unet_patches.data.masks`).

Every problem caused by the user's files raises :class:`~unet_patches.errors.UserError` with a
one-line message naming the file, what was expected and how to fix it. Arrays of the wrong shape or
dtype handed to :func:`colour_overlay` or :func:`write_png` by code raise ``ValueError`` instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from unet_patches.errors import UserError, one_line
from unet_patches.validate import require_int

__all__ = [
    "IMAGE_SUFFIXES",
    "PALETTE",
    "colour_mask",
    "colour_overlay",
    "image_to_array",
    "read_image",
    "read_raw",
    "tiff_page",
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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise UserError(f"{path}: is not a file; give the path of an image file")


def tiff_page(tif: tifffile.TiffFile, page: int | None, path: Path, *, single_page_ok: bool = False) -> int:
    """The index of the page to read from an open TIFF.

    A file with more than one full-resolution page (a stack) needs ``page``; reduced-resolution
    pages of a pyramid do not count. With ``single_page_ok`` (masks) a one-page file is read whatever
    ``page`` says. Raises ``UserError`` naming the file otherwise.
    """
    full = [i for i, p in enumerate(tif.pages) if not getattr(p, "is_reduced", False)]
    if page is None or (single_page_ok and len(full) == 1):
        if len(full) > 1:
            raise UserError(
                f"{path}: TIFF holds {len(full)} pages (a stack); choose one with data.page or --page N "
                "(counted from 0), or save each page as its own file"
            )
        return full[0] if full else 0
    if not 0 <= page < len(tif.pages):
        count = len(tif.pages)
        raise UserError(f"{path}: page {page} asked for (data.page) but the TIFF has {count} page(s), 0..{count - 1}")
    return page


def _read_tiff(path: Path, page: int | None = None, single_page_ok: bool = False) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            array = np.asarray(tif.pages[tiff_page(tif, page, path, single_page_ok=single_page_ok)].asarray())
    except UserError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise UserError(f"{path}: cannot read as a TIFF image ({one_line(exc)}); re-save it as TIFF or PNG") from exc
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


def read_raw(
    path: str | Path, *, mask: bool = False, page: int | None = None, mask_colours: bool = False
) -> np.ndarray:
    """Decode an image file as stored: ``(H, W)`` or ``(H, W, C)`` in the file's dtype.

    The one function that opens image files for training, ``predict`` and ``evaluate`` (the decode
    cache, :mod:`unet_patches.data.cache`, stores what it returns). TIFFs are read with tifffile (any
    compression, through imagecodecs; a multi-page TIFF needs ``page``), 16-bit colour PNGs with
    imagecodecs (Pillow keeps only their top 8 bits), everything else with Pillow. Palette images
    become RGB/RGBA, except for masks (``mask=True``), whose palette indices are kept unless the
    palette holds class colours or the run decodes masks by colour (``mask_colours``, from
    ``data.mask_colors``). Raises ``UserError`` when the file is missing or cannot be read as a 2-D
    image.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return _read_tiff(path, page, single_page_ok=mask)
    try:
        with open(path, "rb") as f:  # opened once: the header says whether Pillow can decode it
            if _is_deep_colour_png(f.read(26)):
                return _decode_deep_png(f, path)
            f.seek(0)
            with Image.open(f) as image:
                image.load()
                return _pil_to_array(image, keep_palette=mask and not mask_colours)
    except UserError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot read as an image ({one_line(exc)}); expected one of {', '.join(IMAGE_SUFFIXES)}"
        ) from exc


def _is_deep_colour_png(header: bytes) -> bool:
    """A PNG of 16 bits per sample with colour or alpha (IHDR bit depth 16, colour type 2, 4 or 6):
    Pillow keeps only the top 8 bits of those."""
    return len(header) == 26 and header[:8] == b"\x89PNG\r\n\x1a\n" and header[24] == 16 and header[25] in (2, 4, 6)


def _decode_deep_png(f, path: Path) -> np.ndarray:
    import imagecodecs

    f.seek(0)
    try:
        return np.asarray(imagecodecs.png_decode(f.read()))
    except Exception as exc:  # imagecodecs raises its own error types for broken data
        raise UserError(f"{path}: cannot read as a 16-bit PNG ({one_line(exc)}); re-save it") from exc


def read_image(path: str | Path, page: int | None = None) -> np.ndarray:
    """Read an image file as stored: ``(H, W)`` or ``(H, W, C)`` in the file's dtype (see :func:`read_raw`)."""
    return read_raw(path, page=page)


def image_to_array(raw: np.ndarray, in_channels: int, name: str = "image") -> np.ndarray:
    """Turn a raw ``(H, W)`` or ``(H, W, C)`` image into float32 ``(in_channels, H, W)`` in [0, 1].

    uint8 is divided by 255, uint16 by 65535, other integers (int16 CT slices, ...) by their type's
    maximum, bool becomes 0/1 and floats are kept as they are.
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
    elif np.issubdtype(raw.dtype, np.integer) and raw.dtype.itemsize <= 4:
        # Signed 16-bit CT slices and the like: by the type's maximum, sign kept.
        array = (raw.astype(np.float64) / np.iinfo(raw.dtype).max).astype(np.float32)
    elif np.issubdtype(raw.dtype, np.floating):
        array = raw.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise UserError(f"{name}: float image contains NaN or infinite values; replace them before use")
    else:
        raise UserError(
            f"{name}: pixel type {raw.dtype} is not supported; "
            "expected an integer type of up to 32 bits, bool or float (convert the image to 8- or 16-bit)"
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
