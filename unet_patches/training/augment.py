"""Strong on-the-fly augmentation of a training batch, on the batch's device, right before the forward pass.

The flips and 90-degree turns stay where they are (numpy, per sample, in the data pipeline); this
module adds what needs interpolation or per-sample statistics, applied to a whole batch at once:

- geometry, image and mask together: ``rotate`` (any angle in [-180, 180] degrees), ``scale`` (zoom
  by a factor in [0.75, 1.33], log-uniform) and ``elastic`` (a smooth random displacement field).
  They are fused into one sampling grid per sample and applied by one ``grid_sample``: the image
  bilinearly, the mask by nearest neighbour, both with reflection outside the source, so no fake
  border and no fake label appears (every mask value out is a value of that sample's mask in).
  One resampling, not one per op as ``kornia.augmentation.AugmentationSequential`` does, keeps the
  image sharp and the labels on it (see :func:`_warp`).
- intensity, image only, in plain torch and scale-free, because images may be ``[0, 1]`` values or
  z-scores. Statistics are per sample, over channels and pixels: ``brightness`` adds ``b * std``
  (b ~ U(-0.2, 0.2)); ``contrast`` maps ``x -> mean + c * (x - mean)`` (c ~ U(0.75, 1.25)); ``gamma``
  rescales to [0, 1] by the sample's min and max, raises to ``g = exp(U(log 0.7, log 1.5))`` and maps
  back to the same min and max; ``noise`` adds Gaussian noise of ``s * std`` (s ~ U(0, 0.1));
  ``blur`` is a Gaussian blur of sigma ~ U(0.5, 1.5) pixels (reflected borders).

Conventions: images float32 ``(N, C, H, W)``, masks int64 ``(N, H, W)`` of class indices; the ops run
in the order of :data:`AUGMENT_OPS`, each on every sample independently with its probability.
Randomness comes from the global torch RNG, which training seeds, so a run is reproducible under
``torch.manual_seed``. Call it outside autocast, in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F

from unet_patches.registry import Registry
from unet_patches.validate import require_number

__all__ = ["AUGMENT_OPS", "PRESETS", "BatchAugmenter", "build_augmenter", "probabilities"]

AUGMENT_OPS: tuple[str, ...] = ("rotate", "scale", "elastic", "brightness", "contrast", "gamma", "noise", "blur")
GEOMETRY_OPS: tuple[str, ...] = AUGMENT_OPS[:3]

ROTATION_DEGREES = 180.0
SCALE_RANGE = (0.75, 1.33)
# Elastic: Gaussian displacements (standard deviation ELASTIC_PIXELS) at control points ELASTIC_SPACING
# pixels apart, interpolated bicubically. Both are in pixels, so the deformation looks the same at
# every patch size. A coarse grid of displacements, upsampled, rather than smoothed full-resolution
# noise (kornia's RandomElasticTransform): it costs a bicubic upsampling of a 5 x 5 grid (96-pixel
# patches), shares the one grid_sample of rotate and scale, and moves pixels by more than kornia's
# defaults do (bench_augment.py measures both).
ELASTIC_SPACING = 24
ELASTIC_PIXELS = 2.5

BRIGHTNESS = 0.2  # b ~ U(-0.2, 0.2), in units of the sample's standard deviation
CONTRAST = (0.75, 1.25)
GAMMA = (0.7, 1.5)  # drawn log-uniformly, so darkening and brightening are equally likely
NOISE = 0.1  # s ~ U(0, 0.1), in units of the sample's standard deviation
BLUR_SIGMA = (0.5, 1.5)
BLUR_KERNEL = 2 * math.ceil(2.5 * BLUR_SIGMA[1]) + 1  # +-2.5 sigma at the widest: 9 taps

_ALL_OFF = {op: 0.0 for op in AUGMENT_OPS}

PRESETS: Registry[Mapping[str, float]] = Registry(
    "augmentation preset",
    {
        # The original's behaviour: only the flips and 90-degree turns done in the data pipeline.
        "flips": MappingProxyType(_ALL_OFF),
        # For small real data sets. Orientation and size are what varies most between real images
        # beyond the flips: rotate and scale half of the samples each. Elastic deformation makes
        # plausible new shapes, but done often it bends thin structures (lines) more than real data
        # does: a fifth. Brightness, contrast and gamma mimic differences between acquisitions: a
        # third each. Noise and blur also hide detail the network should learn from: a fifth.
        # The cost (benchmarks/bench_augment.py) hardly depends on the probabilities: an op with
        # probability > 0 is computed for the whole batch and kept for the samples drawn.
        "strong": MappingProxyType(
            {
                "rotate": 0.5,
                "scale": 0.5,
                "elastic": 0.2,
                "brightness": 0.3,
                "contrast": 0.3,
                "gamma": 0.3,
                "noise": 0.2,
                "blur": 0.2,
            }
        ),
    },
)


def probabilities(preset: str, overrides: Mapping[str, float | None] | None = None) -> dict[str, float]:
    """The probability of every op in :data:`AUGMENT_OPS` (order kept): ``preset``'s, with the
    non-None ``overrides`` applied.

    Raises:
        UserError: an unknown preset (naming ``augment.preset`` and the valid names) or a probability
            outside [0, 1] (naming ``augment.<op>``).
        ValueError: an override for an op that does not exist (user keys are checked before this).
    """
    chosen = dict(PRESETS.lookup(preset, "augment.preset"))
    for op, value in (overrides or {}).items():
        if op not in chosen:
            raise ValueError(f"unknown augmentation op {op!r}; expected one of {', '.join(AUGMENT_OPS)}")
        if value is not None:
            chosen[op] = require_number(f"augment.{op}", value, 0.0, 1.0)
    return chosen


def build_augmenter(preset: str, overrides: Mapping[str, float | None] | None = None) -> BatchAugmenter | None:
    """The augmenter of ``preset`` with ``overrides``, or None when every probability is 0.

    Raises what :func:`probabilities` raises.
    """
    augmenter = BatchAugmenter(probabilities(preset, overrides))
    return augmenter if augmenter.active else None


class BatchAugmenter:
    """Augments a training batch: ``images, masks = augmenter(images, masks)``.

    ``probabilities`` maps op names of :data:`AUGMENT_OPS` to the probability that a sample gets the
    op; ops left out have probability 0 and cost nothing (with rotate, scale and elastic all at 0,
    nothing is resampled).

    Raises:
        ValueError: an unknown op name.
        UserError: a probability outside [0, 1] (naming ``augment.<op>``).
    """

    def __init__(self, probabilities: Mapping[str, float]) -> None:
        unknown = sorted(set(probabilities) - set(AUGMENT_OPS))
        if unknown:
            raise ValueError(f"unknown augmentation ops {unknown}; expected names from {', '.join(AUGMENT_OPS)}")
        self.probabilities = {
            op: require_number(f"augment.{op}", probabilities.get(op, 0.0), 0.0, 1.0) for op in AUGMENT_OPS
        }
        self._geometry = {op: self.probabilities[op] for op in GEOMETRY_OPS}
        self._intensity = [(op, p) for op, p in self.probabilities.items() if op not in GEOMETRY_OPS and p > 0]

    @property
    def active(self) -> bool:
        """False when every probability is 0: then a call returns its inputs untouched."""
        return any(p > 0 for p in self.probabilities.values())

    def __repr__(self) -> str:
        return f"BatchAugmenter({ {op: p for op, p in self.probabilities.items() if p > 0} })"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``images`` float ``(N, C, H, W)``, ``masks`` int64 ``(N, H, W)`` and optionally pixel weights
        float ``(N, H, W)`` -> the same shapes, dtypes and device: the weights move with the masks
        (geometry only; bilinear, as a smooth map). The inputs are not modified.

        Raises:
            ValueError: images not 4-D, or masks (or weights) not ``(N, H, W)`` of the images' N, H and W.
        """
        if images.ndim != 4 or any(m.shape != (images.shape[0], *images.shape[2:]) for m in (masks, *weights)):
            shapes = " and ".join(str(tuple(t.shape)) for t in (images, masks, *weights))
            raise ValueError(f"expected images (N, C, H, W) and masks (N, H, W) (and weights alike), got {shapes}")
        if not self.active:
            return images, masks, *weights
        if any(p > 0 for p in self._geometry.values()):
            images, masks, *weights = _warp(images, masks, self._geometry, *weights)
        for op, p in self._intensity:
            chosen = (torch.rand(images.shape[0], device=images.device) < p).view(-1, 1, 1, 1)
            images = torch.where(chosen, _INTENSITY[op](images), images)
        return images, masks, *weights


def _warp(
    images: torch.Tensor, masks: torch.Tensor, probabilities: Mapping[str, float], *weights: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Rotation, zoom and elastic displacement fused into one sampling grid, so that each sample is
    resampled once: chained warps would blur the image at every step and move the nearest-neighbour
    mask by up to half a pixel at every step, apart from the image."""
    n, _, h, w = images.shape
    rotate, zoom, elastic = (torch.rand(n, device=images.device) < probabilities[op] for op in GEOMETRY_OPS)
    radians = math.radians(ROTATION_DEGREES)
    angle = torch.where(rotate, torch.empty(n, device=images.device).uniform_(-radians, radians), 0.0)
    log_zoom = torch.empty(n, device=images.device).uniform_(math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1]))
    factor = torch.where(zoom, log_zoom, 0.0).exp()
    # Output pixel -> source pixel, about the centre: rotate by -angle, shrink by the zoom factor;
    # in grid_sample's normalised coordinates x and y are scaled by w / 2 and h / 2.
    cos, sin = angle.cos() / factor, angle.sin() / factor
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, sin * h / w, zero, -sin * w / h, cos, zero], dim=1).view(n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if probabilities["elastic"] > 0:
        grid = grid + _elastic_field(n, h, w, elastic, images.device)
    sample = dict(padding_mode="reflection", align_corners=False)
    warped = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", **sample)
    labels = F.grid_sample(masks[:, None].float(), grid, mode="nearest", **sample)[:, 0].to(masks.dtype)
    moved = rotate | zoom | elastic  # the others stay bit for bit as they were
    out = [torch.where(moved.view(n, 1, 1, 1), warped, images), torch.where(moved.view(n, 1, 1), labels, masks)]
    for weight in weights:
        resampled = F.grid_sample(weight[:, None].float(), grid, mode="bilinear", **sample)[:, 0].to(weight.dtype)
        out.append(torch.where(moved.view(n, 1, 1), resampled, weight))
    return tuple(out)


def _elastic_field(n: int, h: int, w: int, chosen: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``(n, h, w, 2)`` displacements in grid_sample's normalised units, zero where not ``chosen``:
    Gaussian displacements (standard deviation ELASTIC_PIXELS) on a grid of control points
    ELASTIC_SPACING pixels apart, interpolated bicubically (the U-Net paper's recipe, scaled to patches)."""
    points = (math.ceil((h - 1) / ELASTIC_SPACING) + 1, math.ceil((w - 1) / ELASTIC_SPACING) + 1)
    coarse = torch.randn(n, 2, *points, device=device) * (ELASTIC_PIXELS * chosen.view(n, 1, 1, 1))
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1) * torch.tensor([2.0 / w, 2.0 / h], device=device)


# --- intensity ops: (N, C, H, W) -> (N, C, H, W), every sample changed; the caller picks which to keep


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """``n`` draws of U(low, high), shaped ``(n, 1, 1, 1)`` to broadcast over a batch like ``like``."""
    return torch.empty(n, 1, 1, 1, device=like.device, dtype=like.dtype).uniform_(low, high)


def _std(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).std(dim=1).view(-1, 1, 1, 1)


def _brightness(images: torch.Tensor) -> torch.Tensor:
    return images + _uniform(images.shape[0], -BRIGHTNESS, BRIGHTNESS, images) * _std(images)


def _contrast(images: torch.Tensor) -> torch.Tensor:
    mean = images.flatten(1).mean(dim=1).view(-1, 1, 1, 1)
    return mean + _uniform(images.shape[0], *CONTRAST, images) * (images - mean)


def _gamma(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    span = (flat.amax(dim=1).view(-1, 1, 1, 1) - low).clamp_min(torch.finfo(images.dtype).tiny)
    gamma = _uniform(images.shape[0], math.log(GAMMA[0]), math.log(GAMMA[1]), images).exp()
    unit = ((images - low) / span).clamp(0.0, 1.0)  # clamp: rounding must not give pow a negative base
    return low + unit.pow(gamma) * span


def _noise(images: torch.Tensor) -> torch.Tensor:
    sigma = _uniform(images.shape[0], 0.0, NOISE, images) * _std(images)
    return images + sigma * torch.randn_like(images)


def _blur(images: torch.Tensor) -> torch.Tensor:
    sigma = torch.empty(images.shape[0], 1, device=images.device, dtype=images.dtype).uniform_(*BLUR_SIGMA)
    import kornia.filters  # here, not at the top: loading kornia slows every command's start-up

    return kornia.filters.gaussian_blur2d(images, BLUR_KERNEL, sigma.expand(-1, 2), border_type="reflect")


_INTENSITY = {"brightness": _brightness, "contrast": _contrast, "gamma": _gamma, "noise": _noise, "blur": _blur}
