"""A seeded generator of images that behave like fluorescence micrographs of nuclei: touching and
overlapping star-convex objects of varied size and density, blurred by the optics, lit unevenly,
counted as photons with read noise, and stored as 16-bit images that use a small part of their range.

The masks have three classes, as used to separate touching nuclei: background (0), interior (1) and
boundary (2): the pixels of an object within ``boundary_width`` of another object or of the
background. Each object is an instance (``instances`` masks, uint16, 0 the background), drawn behind
the objects already there: an object overlapping earlier ones keeps only its free pixels in the masks,
while its light adds to theirs in the image, as out-of-focus overlap does.

Everything comes from an explicit ``numpy.random.Generator``; hundreds of 256 x 256 images take seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import polygon
from skimage.segmentation import find_boundaries

from unet_patches.errors import UserError
from unet_patches.validate import require_int, require_number, require_pair

from .imageio import write_png

__all__ = ["NUCLEI_CLASS_NAMES", "NucleiSpec", "generate_nuclei", "nuclei_sample"]

NUCLEI_CLASS_NAMES = ("background", "interior", "boundary")
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
_RAYS = 32  # vertices of an object's outline
_MAX_TRIES = 4000  # objects drawn per image before giving up on the density asked for


@dataclass(frozen=True)
class NucleiSpec:
    """What one image of nuclei looks like. Ranges ``(low, high)`` are drawn from per image (density,
    blur, photons, illumination) or per object (radius, aspect, brightness); sizes in pixels,
    intensities as a fraction of full brightness.

    ``density`` is the share of the image the objects cover (sparse to crowded); ``irregularity`` the
    relative amplitude of smooth bumps on an ellipse's outline (star-convex shapes); ``overlap`` the
    largest share of a new object that may lie over earlier ones. ``photons`` is the expected photon
    count at full brightness (Poisson noise: fewer is noisier), ``read_noise`` the standard deviation
    of the camera's Gaussian noise; ``illumination`` how much darker the dimmest part of the field is
    than the brightest; ``texture`` the relative amplitude of the chromatin's texture. ``bit_depth`` 16
    stores full brightness as ``max_value`` (a 16-bit camera using a small part of its range), 8 as 255.
    """

    height: int = 256
    width: int = 256
    density: tuple[float, float] = (0.15, 0.45)
    radius: tuple[float, float] = (6.0, 14.0)
    aspect: tuple[float, float] = (0.6, 1.0)
    irregularity: float = 0.12
    overlap: float = 0.2
    boundary_width: int = 1
    blur: tuple[float, float] = (0.6, 1.4)
    photons: tuple[float, float] = (60.0, 600.0)
    read_noise: float = 0.01
    background: tuple[float, float] = (0.02, 0.08)
    brightness: tuple[float, float] = (0.35, 1.0)
    texture: float = 0.15
    illumination: tuple[float, float] = (0.0, 0.4)
    bit_depth: int = 16
    max_value: int = 3000

    def validate(self) -> NucleiSpec:
        """Return ``self`` if every field makes sense; else raise ``UserError`` naming the field."""
        for name in ("height", "width"):
            require_int(f"nuclei.{name}", getattr(self, name), 16)
        require_pair("nuclei.density", self.density, integer=False, low=0, high=0.9)
        require_pair("nuclei.radius", self.radius, integer=False, low=1.0)
        require_pair("nuclei.aspect", self.aspect, integer=False, low=0.1, high=1.0)
        require_number("nuclei.irregularity", self.irregularity, 0.0, 0.5)
        require_number("nuclei.overlap", self.overlap, 0.0, 0.9)
        require_int("nuclei.boundary_width", self.boundary_width, 1)
        require_pair("nuclei.blur", self.blur, integer=False, low=0.0)
        require_pair("nuclei.photons", self.photons, integer=False, low=1.0)
        require_number("nuclei.read_noise", self.read_noise, 0.0, 1.0)
        for name in ("background", "brightness", "illumination"):
            require_pair(f"nuclei.{name}", getattr(self, name), integer=False, low=0.0, high=1.0)
        require_number("nuclei.texture", self.texture, 0.0, 1.0)
        if self.bit_depth not in (8, 16):
            raise UserError(f"nuclei.bit_depth = {self.bit_depth!r}: expected 8 or 16")
        require_int("nuclei.max_value", self.max_value, 1)
        if self.bit_depth == 16 and self.max_value > 65535:
            raise UserError(f"nuclei.max_value = {self.max_value}: a 16-bit image holds at most 65535")
        return self


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _outline(rng: np.random.Generator, spec: NucleiSpec) -> tuple[np.ndarray, np.ndarray]:
    """An object's outline around (0, 0): an ellipse of a drawn radius, aspect and angle with smooth
    radial bumps (a few low harmonics), as ``(rows, columns)`` of its vertices."""
    theta = np.linspace(0.0, 2.0 * np.pi, _RAYS, endpoint=False)
    major = _uniform(rng, spec.radius)
    minor = major * _uniform(rng, spec.aspect)
    angle = rng.uniform(0.0, np.pi)
    bumps = sum(
        rng.normal(0.0, spec.irregularity / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)
    )
    local = theta - angle
    radius = major * minor / np.sqrt((minor * np.cos(local)) ** 2 + (major * np.sin(local)) ** 2)
    radius = radius * np.clip(1.0 + bumps, 0.5, 1.5)
    return radius * np.sin(theta), radius * np.cos(theta)


def _objects(rng: np.random.Generator, spec: NucleiSpec) -> tuple[np.ndarray, np.ndarray]:
    """The instance mask (int32, 0 background) and the objects' light before the optics."""
    shape = (spec.height, spec.width)
    instances = np.zeros(shape, np.int32)
    light = np.zeros(shape, np.float32)
    target = _uniform(rng, spec.density) * spec.height * spec.width
    covered, label = 0, 0
    margin = spec.radius[1]
    for _ in range(_MAX_TRIES):
        if covered >= target:
            break
        rows, columns = _outline(rng, spec)
        centre = rng.uniform(-margin / 2, spec.height + margin / 2), rng.uniform(-margin / 2, spec.width + margin / 2)
        rr, cc = polygon(rows + centre[0], columns + centre[1], shape)
        if rr.size == 0:
            continue
        free = instances[rr, cc] == 0
        if 1.0 - free.mean() > spec.overlap:
            continue
        label += 1
        instances[rr[free], cc[free]] = label
        light[rr, cc] += _uniform(rng, spec.brightness)
        covered += int(free.sum())
    if spec.texture:
        grain = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), 1.5)
        light *= 1.0 + spec.texture * grain / max(float(grain.std()), 1e-6)
    return instances, np.clip(light, 0.0, None)


def _classes(instances: np.ndarray, width: int) -> np.ndarray:
    """Background / interior / boundary: an object's pixels within ``width`` of another label."""
    classes = np.where(instances > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    edge = find_boundaries(instances, connectivity=1, mode="inner")
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1) & (instances > 0)
    classes[edge & (instances > 0)] = BOUNDARY
    return classes


def _illumination(rng: np.random.Generator, spec: NucleiSpec) -> np.ndarray:
    """A smooth field from 1 (brightest) down to ``1 - drop`` (a vignette around a random centre)."""
    drop = _uniform(rng, spec.illumination)
    rows, columns = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
    cy, cx = rng.uniform(0, spec.height), rng.uniform(0, spec.width)
    distance = np.hypot((rows - cy) / spec.height, (columns - cx) / spec.width)
    return (1.0 - drop * (distance / max(float(distance.max()), 1e-6)) ** 2).astype(np.float32)


def nuclei_sample(rng: np.random.Generator, spec: NucleiSpec = NucleiSpec()) -> tuple[np.ndarray, ...]:
    """Draw one image, its class mask and its instance mask.

    Returns ``(image, classes, instances)``: image float32 ``(height, width)`` in [0, 1] (full
    brightness 1), classes uint8 (0 background, 1 interior, 2 boundary), instances uint16 (0 the
    background, objects 1, 2, ...). Raises ``UserError`` for an invalid ``spec``.
    """
    spec.validate()
    instances, light = _objects(rng, spec)
    signal = _uniform(rng, spec.background) + light
    signal = ndimage.gaussian_filter(signal, _uniform(rng, spec.blur)) * _illumination(rng, spec)
    photons = _uniform(rng, spec.photons)
    counted = rng.poisson(np.clip(signal, 0.0, None) * photons) / photons
    image = counted + rng.normal(0.0, spec.read_noise, signal.shape)
    return (
        np.clip(image, 0.0, 1.0).astype(np.float32),
        _classes(instances, spec.boundary_width),
        instances.astype(np.uint16),
    )


def generate_nuclei(
    out_dir: str | Path,
    n_train: int = 100,
    n_test: int = 50,
    seed: int = 0,
    spec: NucleiSpec = NucleiSpec(),
    instances: bool = True,
) -> dict:
    """Write ``n_train`` + ``n_test`` images of nuclei under ``out_dir`` (an empty or new folder: the
    caller clears it, :func:`~unet_patches.data.synthetic.prepare_output`).

    Layout: ``out_dir/{train,test}/images/NNNN.png`` (16-bit, full brightness stored as ``max_value``;
    or 8-bit), ``masks/NNNN.png`` (classes 0, 1, 2) and, with ``instances``, ``instances/NNNN.png``
    (uint16 instance labels). Train and test come from independent streams ``default_rng([seed, 10])``
    and ``default_rng([seed, 11])``. Returns a summary like ``generate_dataset``'s, with the mean
    number of objects per image.
    """
    out_dir = Path(out_dir)
    spec.validate()
    dtype, top = (np.uint16, spec.max_value) if spec.bit_depth == 16 else (np.uint8, 255)
    class_pixels = np.zeros(len(NUCLEI_CLASS_NAMES), np.int64)
    objects = images = 0
    counts = {}
    for split_index, (split, count) in enumerate(zip(("train", "test"), (n_train, n_test))):
        counts[split] = count
        rng = np.random.default_rng([seed, 10 + split_index])
        digits = max(4, len(str(max(count - 1, 0))))
        for index in range(count):
            image, classes, labels = nuclei_sample(rng, spec)
            name = f"{index:0{digits}d}.png"
            write_png(out_dir / split / "images" / name, np.round(image * top).astype(dtype))
            write_png(out_dir / split / "masks" / name, classes)
            if instances:
                write_png(out_dir / split / "instances" / name, labels)
            class_pixels += np.bincount(classes.ravel(), minlength=len(NUCLEI_CLASS_NAMES))
            objects, images = objects + int(labels.max()), images + 1
    total = int(class_pixels.sum())
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "counts": counts,
        "class_names": list(NUCLEI_CLASS_NAMES),
        "class_pixels": class_pixels.tolist(),
        "class_shares": (class_pixels / max(total, 1)).tolist(),
        "objects_per_image": objects / max(images, 1),
        "spec": asdict(spec),
    }
