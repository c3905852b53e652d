"""Masks: raw mask arrays decoded into class indices, through the mask tables of ``parameters.json``
(``data.mask_values`` for gray levels, ``data.mask_colors`` for colours) or the defaults (class
indices; 0/255 for two classes; the original's black/red/green/blue colours, :data:`PALETTE`).

Every problem caused by the user's files raises :class:`~unet_patches.errors.UserError` with a
one-line message naming the file, what was expected and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unet_patches.errors import UserError
from unet_patches.validate import is_int

from .imageio import PALETTE, read_raw

__all__ = ["AUTO_BINARY_VALUES", "decode_mask", "hex_colour", "mask_tables", "parse_colour", "read_mask"]

# The mask table used for 2-class masks when data.mask_values is not given: 0/255 masks (the usual
# binary masks of medical and Kaggle sets) read as background/foreground, as do 0/1 masks.
AUTO_BINARY_VALUES = {0: 0, 1: 1, 255: 1}


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    """One int32 per colour: 0xRRGGBB, for ``(..., 3)`` uint8."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _decode_colours(rgb: np.ndarray, path: Path, table: dict[tuple[int, int, int], int] | None) -> np.ndarray:
    """Map an (H, W, 3) uint8 colour mask to class indices through ``table`` (default ``PALETTE``)."""
    if table is None:
        table = {tuple(int(v) for v in colour): index for index, colour in enumerate(PALETTE.tolist())}
    codes = _colour_codes(rgb)
    table_codes = _colour_codes(np.array(list(table), dtype=np.uint8).reshape(-1, 3))
    classes = np.array(list(table.values()), dtype=np.int64)
    order = np.argsort(table_codes)
    sorted_codes = table_codes[order]
    position = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
    known = sorted_codes[position] == codes
    if not known.all():
        y, x = np.argwhere(~known)[0]
        colour = hex_colour(rgb[y, x])
        listed = ", ".join(f"{hex_colour(c)}={k}" for c, k in list(table.items())[:6])
        raise UserError(
            f"{path}: colour {colour} at row {y}, column {x} is not a class colour ({listed}, ...); "
            "add it to data.mask_colors, or use exact colours in a lossless format (not JPEG)"
        )
    return classes[order[position]]


def hex_colour(rgb) -> str:
    """``(r, g, b)`` -> ``"#rrggbb"``."""
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def parse_colour(text: str, where: str = "data.mask_colors") -> tuple[int, int, int]:
    """``"#rrggbb"`` or ``"r,g,b"`` -> ``(r, g, b)``; raises ``UserError`` naming ``where`` and the text."""
    value = str(text).strip()
    try:
        if value.startswith("#") and len(value) == 7:
            rgb = tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(part) for part in value.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise UserError(f'{where} key {text!r}: expected a colour "#rrggbb" or "r,g,b" with values 0-255')
    return rgb  # type: ignore[return-value]


def _decode_values(gray: np.ndarray, path: Path, table: dict[int, int]) -> np.ndarray:
    """Map gray levels to classes through ``table``; every level found must be in it."""
    found = np.unique(gray)
    missing = [int(v) for v in found if int(v) not in table]
    if missing:
        raise UserError(
            f"{path}: mask value(s) {', '.join(map(str, missing[:8]))} not in data.mask_values "
            f"({', '.join(f'{k}->{v}' for k, v in table.items())}); add them to the table"
        )
    lookup = np.zeros(int(found.max()) + 1 if found.size else 1, dtype=np.int64)
    for value in found:
        lookup[int(value)] = table[int(value)]
    return lookup[gray]


def read_mask(
    path: str | Path,
    num_classes: int,
    *,
    values: dict[int, int] | None = None,
    colors: dict[tuple[int, int, int], int] | None = None,
    page: int | None = None,
) -> np.ndarray:
    """Read a mask file as uint8 class indices ``(H, W)`` (see :func:`decode_mask`)."""
    raw = read_raw(path, mask=True, page=page, mask_colours=colors is not None)
    return decode_mask(raw, path, num_classes, values=values, colors=colors)


def decode_mask(
    raw: np.ndarray,
    path: str | Path,
    num_classes: int,
    *,
    values: dict[int, int] | None = None,
    colors: dict[tuple[int, int, int], int] | None = None,
) -> np.ndarray:
    """A raw mask (from :func:`read_raw` with ``mask=True``) as uint8 class indices ``(H, W)``.

    Accepted: a single-channel image of class indices (8- or 16-bit, palette PNGs by their
    indices), or of gray levels mapped by ``values`` (``data.mask_values``, e.g. ``{0: 0, 255: 1}``);
    with 2 classes and no table, 0/255 masks work as they are (``AUTO_BINARY_VALUES``); a 3-channel
    image whose channels are all equal (a gray mask saved as RGB); an RGB colour mask, decoded by
    ``colors`` (``data.mask_colors``) or else by ``PALETTE`` (black 0, red 1, green 2, blue 3, ...).
    Alpha is ignored. ``path`` names the file in messages.

    Raises ``UserError`` for unknown colours or values, or class indices ``>= num_classes``.
    """
    path = Path(path)
    if not is_int(num_classes) or not 1 <= num_classes <= 256:
        raise UserError(f"num_classes = {num_classes!r}: expected an integer from 1 to 256 (masks are 8-bit)")
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
        if np.all(raw[..., 0] == raw[..., 1]) and np.all(raw[..., 0] == raw[..., 2]) and colors is None:
            raw = raw[..., 0]
        elif raw.dtype != np.uint8:
            raise UserError(f"{path}: colour masks must be 8-bit RGB; save the mask as an 8-bit PNG")
        else:
            return _checked(_decode_colours(raw, path, colors), path, num_classes)
    if values is None and num_classes == 2:
        values = AUTO_BINARY_VALUES if raw.size and int(raw.max()) == 255 else None
    labels = _decode_values(raw, path, values) if values is not None else raw.astype(np.int64)
    return _checked(labels, path, num_classes)


def _checked(labels: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max()) if labels.max() >= num_classes else int(labels.min())
        hint = (
            'map gray levels to classes with data.mask_values (e.g. {"0": 0, "255": 1})'
            if bad == 255
            else "fix the mask"
        )
        raise UserError(
            f"{path}: mask value {bad} is out of range for num_classes={num_classes} "
            f"(expected 0..{num_classes - 1}); {hint} or raise num_classes"
        )
    return labels.astype(np.uint8)


def mask_tables(
    mask_values: dict[str, int] | None, mask_colors: dict[str, int] | None, num_classes: int
) -> tuple[dict[int, int] | None, dict[tuple[int, int, int], int] | None]:
    """The settings ``data.mask_values`` / ``data.mask_colors`` (JSON: string keys) as the tables
    :func:`decode_mask` takes; with two classes and neither, ``AUTO_BINARY_VALUES`` (written into
    checkpoints as a table). Raises ``UserError`` naming the setting for an empty table, a key that is
    not a gray level or colour, or a class outside ``0 .. num_classes - 1``."""
    for name, table in (("mask_values", mask_values), ("mask_colors", mask_colors)):
        if table == {}:
            raise UserError(f"data.{name} is empty; give one entry per value found in the masks, or null")
    values = None
    if mask_values is not None:
        values = {}
        for key, index in mask_values.items():
            if not (key.strip().isascii() and key.strip().isdecimal()):
                raise UserError(f'data.mask_values key {key!r}: expected a gray level such as "255"')
            values[int(key)] = index
    colors = None if mask_colors is None else {parse_colour(key): index for key, index in mask_colors.items()}
    if values is None and colors is None and num_classes == 2:
        values = dict(AUTO_BINARY_VALUES)  # 0/255 (or 0/1) masks
    for table, name in ((values, "mask_values"), (colors, "mask_colors")):
        for index in (table or {}).values():
            if not 0 <= index < num_classes:
                raise UserError(f"data.{name} maps to class {index}, outside 0..{num_classes - 1} (data.num_classes)")
    return values, colors
