"""Whole-slide images through OpenSlide (the ``openslide`` extra: ``openslide-python`` and the
``openslide-bin`` library wheel): Aperio ``.svs``, Hamamatsu ``.ndpi``, MIRAX ``.mrxs``, Leica ``.scn``,
Ventana ``.bif``, Hamamatsu ``.vms`` / ``.vmu``.

:class:`SlideSource` reads a level of a slide a row of 512-row blocks at a time (OpenSlide's
``read_region``), RGB, with the transparent area outside the scanned region made white, as slide
viewers show it. Without the extra, ``.svs``, ``.ndpi``, ``.scn`` and ``.bif`` files (TIFF inside) are
read by tifffile instead (:func:`open_slide`); the other formats need the extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unet_patches.data.imageio import image_to_array
from unet_patches.errors import UserError, one_line

from .rows import ChunkRows, StoredRows

__all__ = [
    "OPENSLIDE_INSTALL_HINT",
    "SLIDE_SUFFIXES",
    "TIFF_BASED",
    "SlideSource",
    "openslide_module",
    "reads_as_slide",
    "slide_size",
]

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu")
TIFF_BASED = (".svs", ".ndpi", ".scn", ".bif")  # tifffile reads these when OpenSlide is not installed
OPENSLIDE_INSTALL_HINT = "pip install 'unet-patches[openslide]'"
BLOCK_ROWS = 512


def openslide_module() -> Any | None:
    """The ``openslide`` module, or None when the extra is not installed (or its library is missing)."""
    try:
        import openslide  # noqa: PLC0415
    except (ImportError, OSError):  # OSError: openslide-python without the shared library
        return None
    return openslide


class _Region:
    """A slide level as an array of ``(H, W, 3)`` uint8 for :class:`ChunkRows`: rows come from
    ``read_region`` in full-width blocks of :data:`BLOCK_ROWS` rows, or a strip of columns alone."""

    def __init__(self, slide: Any, level: int) -> None:
        self.slide, self.level = slide, level
        self.width, self.height = (int(n) for n in slide.level_dimensions[level])
        self.downsample = float(slide.level_downsamples[level])
        self.chunks = (BLOCK_ROWS, self.width, 3)

    def __getitem__(self, index: slice | tuple[slice, slice]) -> np.ndarray:
        rows, columns = index if isinstance(index, tuple) else (index, slice(None))
        start, stop, _ = rows.indices(self.height)
        first, end, _ = columns.indices(self.width)
        # read_region takes its corner in level-0 pixels and its size in this level's pixels.
        corner = (int(round(first * self.downsample)), int(round(start * self.downsample)))
        rgba = np.asarray(self.slide.read_region(corner, self.level, (end - first, stop - start)))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255  # outside the scanned area: white, as viewers show it
        return rgb


class SlideSource(StoredRows):
    """A level of a whole-slide image read through OpenSlide, a block of rows at a time.

    Raises ``UserError``: the extra is missing, OpenSlide cannot open the file, or the level does not exist.
    """

    def __init__(self, path: str | Path, in_channels: int, level: int = 0) -> None:
        self.path, self.name, self.in_channels = Path(path), str(path), in_channels
        self.slide = _open(self.path, level)
        region = _Region(self.slide, level)
        self.height, self.width = region.height, region.width
        self.reader = ChunkRows(region, self.height)
        self.channels = image_to_array(self.raw_rows(0, 1), in_channels, self.name).shape[0]

    def raw_rows(self, start: int, stop: int, columns: tuple[int, int] | None = None) -> np.ndarray:
        """Rows ``start:stop`` as RGB uint8 ``(rows, W, 3)``."""
        try:
            return self.reader.rows(start, stop, columns)
        except Exception as exc:  # OpenSlide raises its own error for damaged tiles
            raise UserError(f"{self.path}: cannot read slide rows {start}..{stop} ({one_line(exc)})") from exc

    def close(self) -> None:
        self.reader.close()
        self.slide.close()


def _open(path: Path, level: int) -> Any:
    """The open slide, checked to have ``level``."""
    openslide = openslide_module()
    if openslide is None:
        raise UserError(f"{path}: reading this whole-slide format needs OpenSlide; {OPENSLIDE_INSTALL_HINT}")
    try:
        slide = openslide.OpenSlide(str(path))
    except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
        raise UserError(f"{path}: OpenSlide cannot read it ({one_line(exc)}); check the file") from exc
    if not 0 <= level < slide.level_count:
        sizes = ", ".join(f"{k}: {w} x {h}" for k, (w, h) in enumerate(slide.level_dimensions))
        slide.close()
        raise UserError(
            f"{path}: level {level} asked for (--level) but the slide has {slide.level_count} level(s) ({sizes})"
        )
    return slide


def slide_size(path: Path, level: int = 0) -> tuple[int, int]:
    """``(H, W)`` of a slide's ``level`` without reading pixels."""
    slide = _open(path, level)
    width, height = slide.level_dimensions[level]
    slide.close()
    return int(height), int(width)


def reads_as_slide(path: Path) -> bool:
    """Whether ``path`` goes through OpenSlide: a slide suffix, and OpenSlide installed or needed
    (a TIFF-based slide is read by tifffile when it is not installed)."""
    suffix = path.suffix.lower()
    return suffix in SLIDE_SUFFIXES and (suffix not in TIFF_BASED or openslide_module() is not None)
