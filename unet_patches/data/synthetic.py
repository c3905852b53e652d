"""Seeded generator of gray images: lines (class 1) and ellipses (class 2) on a noisy background.

Reproduces the original system's data (docs/ORIGINAL.md 1.1) without its defects: every draw
comes from an explicit ``numpy.random.Generator``; the numbers of lines and of ellipses are drawn
independently; shapes that cross an edge are clipped there instead of wrapping round to the
opposite edge; and an existing output folder is only touched with ``overwrite=True``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from skimage.draw import ellipse, line
from skimage.morphology import disk

from unet_patches.errors import UserError
from unet_patches.validate import require_int, require_number, require_pair

from .imageio import write_png

__all__ = [
    "CLASS_NAMES",
    "SyntheticSpec",
    "generate_dataset",
    "generate_kaggle_layout",
    "generate_sample",
    "prepare_output",
]

log = logging.getLogger(__name__)

CLASS_NAMES = ("background", "line", "ellipse")
BACKGROUND, LINE, ELLIPSE = 0, 1, 2
SPLITS = ("train", "test")


@dataclass(frozen=True)
class SyntheticSpec:
    """What one synthetic image looks like. Integer ranges ``(low, high)`` include both ends.

    Sizes are in pixels, grays in [0, 1]. ``ellipse_radius`` is the first semi-axis; the second is
    that times a factor drawn from ``ellipse_aspect``. Lines are drawn 1 px wide and then thickened
    by a disk of radius drawn from ``line_dilation``.
    """

    height: int = 400
    width: int = 200
    lines: tuple[int, int] = (1, 9)
    ellipses: tuple[int, int] = (1, 9)
    ellipse_radius: tuple[int, int] = (5, 19)
    ellipse_aspect: tuple[float, float] = (0.5, 2.0)
    line_length: tuple[int, int] = (20, 199)
    line_dilation: tuple[int, int] = (1, 2)
    shape_gray: tuple[float, float] = (0.0, 0.7)
    background_mean: tuple[float, float] = (0.7, 0.9)
    noise_std: float = 0.1
    background_clip: tuple[float, float] = (0.6, 1.0)

    def validate(self) -> SyntheticSpec:
        """Return ``self`` if every field makes sense; else raise ``UserError`` naming the field."""
        for name in ("height", "width"):
            require_int(name, getattr(self, name), 1)
        require_pair("lines", self.lines, integer=True, low=0)
        require_pair("ellipses", self.ellipses, integer=True, low=0)
        require_pair("ellipse_radius", self.ellipse_radius, integer=True, low=1)
        require_pair("ellipse_aspect", self.ellipse_aspect, integer=False, low=0, low_open=True)
        require_pair("line_length", self.line_length, integer=True, low=1)
        require_pair("line_dilation", self.line_dilation, integer=True, low=0)
        for name in ("shape_gray", "background_mean", "background_clip"):
            require_pair(name, getattr(self, name), integer=False, low=0, high=1)
        require_number("noise_std", self.noise_std, 0)
        return self


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _draw_ellipse(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    centre_r = rng.uniform(0, spec.height)
    centre_c = rng.uniform(0, spec.width)
    radius = _integer(rng, spec.ellipse_radius)
    other_radius = radius * _uniform(rng, spec.ellipse_aspect)
    angle = np.deg2rad(rng.uniform(0.0, 180.0))
    # shape= clips the ellipse at the image border (the original wrapped it round).
    return ellipse(centre_r, centre_c, radius, other_radius, shape=(spec.height, spec.width), rotation=angle)


def _draw_line(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    centre_r = rng.uniform(0, spec.height)
    centre_c = rng.uniform(0, spec.width)
    angle = np.deg2rad(rng.uniform(0.0, 180.0))
    half = _integer(rng, spec.line_length) / 2.0
    dilation = _integer(rng, spec.line_dilation)
    dr, dc = half * np.sin(angle), half * np.cos(angle)
    rr, cc = line(
        int(round(centre_r - dr)), int(round(centre_c - dc)), int(round(centre_r + dr)), int(round(centre_c + dc))
    )
    # Dilation by a disk = stamping the disk on every pixel of the 1 px line. Doing it on the
    # unclipped line keeps strokes that pass just outside the image; clipping comes last so that
    # no negative index wraps round.
    footprint_r, footprint_c = np.nonzero(disk(dilation))
    rr = (rr[:, None] + footprint_r[None, :] - dilation).ravel()
    cc = (cc[:, None] + footprint_c[None, :] - dilation).ravel()
    inside = (rr >= 0) & (rr < spec.height) & (cc >= 0) & (cc < spec.width)
    return rr[inside], cc[inside]


def generate_sample(rng: np.random.Generator, spec: SyntheticSpec = SyntheticSpec()) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its mask.

    Returns ``(image, mask)``: image float32 ``(height, width)`` in [0, 1], mask uint8
    ``(height, width)`` with 0 background, 1 line, 2 ellipse. Ellipses are drawn first and lines
    over them, each shape in one constant gray. Raises ``UserError`` for an invalid ``spec``.
    """
    spec.validate()
    shape = (spec.height, spec.width)
    mean = _uniform(rng, spec.background_mean)
    image = rng.normal(mean, spec.noise_std, size=shape)
    image = np.clip(image, *spec.background_clip)
    mask = np.zeros(shape, dtype=np.uint8)

    n_ellipses = _integer(rng, spec.ellipses)
    n_lines = _integer(rng, spec.lines)
    for _ in range(n_ellipses):
        rr, cc = _draw_ellipse(rng, spec)
        image[rr, cc] = _uniform(rng, spec.shape_gray)
        mask[rr, cc] = ELLIPSE
    for _ in range(n_lines):
        rr, cc = _draw_line(rng, spec)
        image[rr, cc] = _uniform(rng, spec.shape_gray)
        mask[rr, cc] = LINE
    return image.astype(np.float32), mask


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir`` without ``overwrite``; with it, remove its ``train/`` and ``test/``
    (only those: anything else there stays)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; pick another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"{out_dir}: folder is not empty; pass --overwrite to replace its train/ and test/ "
                "subfolders, or pick another folder"
            )
        # Only the subfolders this function writes are replaced; anything else stays.
        for split in SPLITS:
            target = out_dir / split
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()


def generate_dataset(
    out_dir: str | Path,
    n_train: int = 100,
    n_test: int = 10,
    seed: int = 0,
    spec: SyntheticSpec = SyntheticSpec(),
    overwrite: bool = False,
    bit_depth: int = 8,
    max_value: int | None = None,
) -> dict:
    """Write ``n_train`` + ``n_test`` synthetic pairs under ``out_dir``.

    Layout: ``out_dir/{train,test}/images/NNNN.png`` (8-bit gray, or 16-bit with ``bit_depth=16``)
    and ``out_dir/{train,test}/masks/NNNN.png`` (single-channel class indices), numbered from 0000.
    Gray values in [0, 1] are stored as ``round(value * max_value)`` (default: the type's maximum;
    e.g. 3000 for a 16-bit scan that uses a small part of its range).
    Train and test come from independent streams ``default_rng([seed, 0])`` and
    ``default_rng([seed, 1])``, so changing ``n_train`` does not change the test images.

    Returns a summary: ``out_dir``, ``seed``, ``counts`` per split, ``class_names``,
    ``class_pixels`` and ``class_shares`` (over all written masks), and the ``spec``.
    Raises ``UserError`` for bad arguments, or when ``out_dir`` is not empty and ``overwrite`` is
    False; with ``overwrite=True`` only ``out_dir/train`` and ``out_dir/test`` are replaced.
    """
    out_dir = Path(out_dir)
    spec.validate()
    require_int("n_train", n_train, 0)
    require_int("n_test", n_test, 0)
    if n_train + n_test == 0:
        raise UserError("n_train = 0 and n_test = 0: nothing to generate; ask for at least one image")
    require_int("seed", seed, 0)
    encode = _encoder(bit_depth, max_value)
    prepare_output(out_dir, overwrite)

    class_pixels = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    counts = {}
    for split_index, (split, count) in enumerate(zip(SPLITS, (n_train, n_test))):
        counts[split] = count
        if count == 0:
            continue
        rng = np.random.default_rng([seed, split_index])
        digits = max(4, len(str(count - 1)))
        for index in range(count):
            image, mask = generate_sample(rng, spec)
            name = f"{index:0{digits}d}.png"
            write_png(out_dir / split / "images" / name, encode(image))
            write_png(out_dir / split / "masks" / name, mask)
            class_pixels += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
        log.info("wrote %d %s pairs to %s", count, split, out_dir / split)

    total = int(class_pixels.sum())
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "counts": counts,
        "class_names": list(CLASS_NAMES),
        "class_pixels": class_pixels.tolist(),
        "class_shares": (class_pixels / total).tolist(),
        "spec": asdict(spec),
    }


def _encoder(bit_depth: int, max_value: int | None):
    """float [0, 1] -> stored integers: ``round(value * max_value)`` as uint8 or uint16."""
    if bit_depth not in (8, 16):
        raise UserError(f"bit depth {bit_depth!r}: expected 8 or 16")
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    top = int(np.iinfo(dtype).max)
    scale = top if max_value is None else max_value
    require_int("max_value", scale, 1)
    if scale > top:
        raise UserError(f"max value {scale}: a {bit_depth}-bit image holds at most {top}")
    return lambda image: np.round(image * scale).astype(dtype)


def generate_kaggle_layout(
    out_dir: str | Path,
    subjects: int = 5,
    per_subject: int = 4,
    n_test: int = 4,
    seed: int = 0,
    spec: SyntheticSpec = SyntheticSpec(height=420, width=580),
    overwrite: bool = False,
) -> dict:
    """Write a two-class synthetic set in the Kaggle ultrasound-nerve layout.

    ``out_dir/train/<subject>_<n>.tif`` (8-bit gray) with ``out_dir/train/<subject>_<n>_mask.tif``
    (0 background, 255 foreground: every shape) for subjects 1.. and images 1.., and
    ``out_dir/test/<id>.tif`` for ids 1..``n_test``. Each subject has its own background brightness
    (drawn once per subject inside ``spec.background_mean``), so images of one subject look alike
    and a split that mixes subjects would flatter the validation score.
    """
    out_dir = Path(out_dir)
    spec.validate()
    require_int("subjects", subjects, 1)
    require_int("per_subject", per_subject, 1)
    require_int("n_test", n_test, 0)
    prepare_output(out_dir, overwrite)
    import tifffile

    rng = np.random.default_rng([seed, 2])
    foreground = 0
    for subject in range(1, subjects + 1):
        level = _uniform(rng, spec.background_mean)
        subject_spec = replace(spec, background_mean=(level, level))
        for n in range(1, per_subject + 1):
            image, mask = generate_sample(rng, subject_spec)
            binary = np.where(mask > 0, 255, 0).astype(np.uint8)
            foreground += int((mask > 0).sum())
            (out_dir / "train").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(out_dir / "train" / f"{subject}_{n}.tif", np.round(image * 255).astype(np.uint8))
            tifffile.imwrite(out_dir / "train" / f"{subject}_{n}_mask.tif", binary)
    for index in range(1, n_test + 1):
        image, _ = generate_sample(rng, spec)
        (out_dir / "test").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out_dir / "test" / f"{index}.tif", np.round(image * 255).astype(np.uint8))
    total = subjects * per_subject * spec.height * spec.width
    return {
        "out_dir": str(out_dir),
        "subjects": subjects,
        "train": subjects * per_subject,
        "test": n_test,
        "foreground_share": foreground / total,
    }
