"""Batch augmentation: presets and overrides, masks that keep their labels and follow the image,
intensity ops that touch images only, per-sample probabilities, reproducibility, shapes and dtypes."""

from __future__ import annotations

import warnings

import pytest
import torch

from unet_patches.errors import UserError
from unet_patches.training.augment import AUGMENT_OPS, PRESETS, BatchAugmenter, build_augmenter, probabilities

GEOMETRY = ("rotate", "scale", "elastic")
INTENSITY = ("brightness", "contrast", "gamma", "noise", "blur")


def blocks(n: int = 4, h: int = 40, w: int = 56, classes: int = 3, cell: int = 8, seed: int = 0) -> torch.Tensor:
    """Masks ``(n, h, w)`` of random class blocks of ``cell`` pixels: large regions, short boundaries."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, classes, (n, h // cell + 1, w // cell + 1), generator=generator)
    return cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :h, :w].contiguous()


def batch(n: int = 4, channels: int = 1, h: int = 40, w: int = 56, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that are z-scores (not in [0, 1]) with some structure, and their masks."""
    masks = blocks(n, h, w, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    images = masks[:, None].float().repeat(1, channels, 1, 1) + torch.randn(n, channels, h, w, generator=generator)
    return (images - images.mean()) / images.std(), masks


def changed_samples(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before != after).flatten(1).any(dim=1)


# --- presets and probabilities -------------------------------------------------------------------


def test_presets_cover_every_op_with_probabilities():
    assert AUGMENT_OPS == ("rotate", "scale", "elastic", "brightness", "contrast", "gamma", "noise", "blur")
    assert {"flips", "strong"} <= set(PRESETS)
    for name in PRESETS:
        assert tuple(PRESETS[name]) == AUGMENT_OPS
        assert all(0.0 <= p <= 1.0 for p in PRESETS[name].values())
    assert all(p == 0 for p in PRESETS["flips"].values())
    assert all(p > 0 for p in PRESETS["strong"].values())


def test_flips_preset_builds_nothing():
    assert build_augmenter("flips", {}) is None
    assert not BatchAugmenter(probabilities("flips", {})).active
    assert build_augmenter("flips", {"rotate": 0.5}).active


def test_overrides_replace_the_preset_and_none_keeps_it():
    chosen = probabilities("strong", {"rotate": 0.0, "blur": None, "noise": 1})
    assert chosen["rotate"] == 0.0 and chosen["noise"] == 1.0
    assert chosen["blur"] == PRESETS["strong"]["blur"]
    assert list(chosen) == list(AUGMENT_OPS)
    assert PRESETS["strong"]["rotate"] > 0  # the preset itself is not changed


@pytest.mark.parametrize("value", [-0.1, 1.5, "half", True, float("nan")])
def test_bad_probability_names_the_setting(value):
    with pytest.raises(UserError, match=r"augment\.gamma"):
        probabilities("strong", {"gamma": value})
    with pytest.raises(UserError, match=r"augment\.gamma"):
        BatchAugmenter({"gamma": value})


def test_unknown_preset_lists_the_names():
    with pytest.raises(UserError, match=r"augment\.preset.*'strng'.*did you mean 'strong'.*flips, strong"):
        probabilities("strng", {})


def test_unknown_op_is_a_value_error():
    with pytest.raises(ValueError, match="unknown augmentation op"):
        probabilities("strong", {"shear": 0.5})
    with pytest.raises(ValueError, match="unknown augmentation op"):
        BatchAugmenter({"shear": 0.5})


# --- what the ops do ------------------------------------------------------------------------------


def test_all_probabilities_zero_returns_the_inputs_untouched():
    images, masks = batch()
    augmenter = BatchAugmenter(dict.fromkeys(AUGMENT_OPS, 0.0))
    assert not augmenter.active
    out_images, out_masks = augmenter(images, masks)
    assert out_images is images and out_masks is masks


@pytest.mark.parametrize("op", AUGMENT_OPS)
def test_each_op_keeps_mask_labels_shapes_and_dtypes(op):
    images, masks = batch(channels=3)
    masks = masks * 2 + 1  # labels 1, 3, 5: a value between two labels would show
    before_images, before_masks = images.clone(), masks.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kornia's align_corners warnings included
        out_images, out_masks = BatchAugmenter({op: 1.0})(images, masks)
    assert out_images.shape == images.shape and out_images.dtype == torch.float32
    assert out_masks.shape == masks.shape and out_masks.dtype == torch.int64
    assert set(out_masks.unique().tolist()) <= set(masks.unique().tolist())
    assert torch.isfinite(out_images).all()
    assert changed_samples(images, out_images).all()
    assert torch.equal(images, before_images) and torch.equal(masks, before_masks)  # inputs not modified


@pytest.mark.parametrize("ops", [("rotate",), ("scale",), ("elastic",), GEOMETRY])
def test_geometry_moves_image_and_mask_together(ops):
    torch.manual_seed(0)
    masks = blocks(n=8, classes=2)
    images = masks[:, None].float()
    out_images, out_masks = BatchAugmenter(dict.fromkeys(ops, 1.0))(images, masks)
    assert changed_samples(masks, out_masks).sum() >= 6
    agree = (out_images[:, 0].round().long() == out_masks).float().mean().item()
    assert agree >= 0.995, agree  # one resampling: ~0.999; three chained ones (kornia's sequential) ~0.97


def test_elastic_displaces_by_a_few_pixels_smoothly():
    torch.manual_seed(0)
    x = torch.arange(64.0).expand(8, 1, 64, 64)  # each pixel holds its own column
    out, _ = BatchAugmenter({"elastic": 1.0})(x, torch.zeros(8, 64, 64, dtype=torch.long))
    shift = (out - x)[:, 0, 8:-8, 8:-8]  # away from the reflected borders
    assert 0.5 < shift.abs().mean() < 5.0
    assert (shift[:, :, 1:] - shift[:, :, :-1]).abs().mean() < 0.3  # neighbours move alike: no jitter


def test_geometry_fills_by_reflection_not_with_a_constant():
    torch.manual_seed(0)
    images = torch.full((8, 1, 32, 48), 5.0)  # no pixel of any value but 5 anywhere
    masks = torch.full((8, 32, 48), 2)
    out_images, out_masks = BatchAugmenter(dict.fromkeys(GEOMETRY, 1.0))(images, masks)
    assert torch.allclose(out_images, images)
    assert torch.equal(out_masks, masks)


@pytest.mark.parametrize("op", INTENSITY)
def test_intensity_ops_change_images_only(op):
    images, masks = batch()
    out_images, out_masks = BatchAugmenter({op: 1.0})(images, masks)
    assert out_masks is masks
    assert changed_samples(images, out_images).all()


def test_intensity_ops_are_scale_free():
    images, masks = batch()
    for op in ("brightness", "contrast", "gamma", "noise"):
        torch.manual_seed(3)
        small, _ = BatchAugmenter({op: 1.0})(images, masks)
        torch.manual_seed(3)
        large, _ = BatchAugmenter({op: 1.0})(100.0 * images + 7.0, masks)
        assert torch.allclose(large, 100.0 * small + 7.0, rtol=1e-4, atol=1e-3), op


def test_gamma_keeps_each_samples_range():
    images, masks = batch()
    out, _ = BatchAugmenter({"gamma": 1.0})(images, masks)
    assert torch.allclose(out.flatten(1).amin(1), images.flatten(1).amin(1), atol=1e-5)
    assert torch.allclose(out.flatten(1).amax(1), images.flatten(1).amax(1), atol=1e-5)
    constant = torch.full((2, 1, 8, 8), 3.0)
    assert torch.equal(BatchAugmenter({"gamma": 1.0})(constant, torch.zeros(2, 8, 8, dtype=torch.long))[0], constant)


@pytest.mark.parametrize("op", ["rotate", "brightness", "blur"])
def test_probability_half_touches_about_half_the_samples(op):
    torch.manual_seed(0)
    images, masks = batch(n=64, h=24, w=24)
    out_images, _ = BatchAugmenter({op: 0.5})(images, masks)
    changed = changed_samples(images, out_images)
    assert 16 <= changed.sum().item() <= 48
    assert torch.equal(out_images[~changed], images[~changed])


def test_reproducible_under_manual_seed():
    images, masks = batch(n=6, channels=3)
    augmenter = build_augmenter("strong", {})
    torch.manual_seed(7)
    first = augmenter(images, masks)
    torch.manual_seed(7)
    second = augmenter(images, masks)
    third = augmenter(images, masks)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])


@pytest.mark.parametrize(("channels", "h", "w"), [(1, 32, 32), (3, 24, 40), (3, 48, 20)])
def test_strong_preset_keeps_shapes_and_dtypes(channels, h, w):
    torch.manual_seed(1)
    images, masks = batch(n=5, channels=channels, h=h, w=w)
    out_images, out_masks = build_augmenter("strong", {})(images, masks)
    assert out_images.shape == (5, channels, h, w) and out_images.dtype == torch.float32
    assert out_masks.shape == (5, h, w) and out_masks.dtype == torch.int64
    assert out_images.device == images.device and out_masks.device == masks.device
    assert set(out_masks.unique().tolist()) <= set(masks.unique().tolist())


def test_channels_last_input_is_accepted():
    images, masks = batch(n=4, channels=3)
    torch.manual_seed(2)
    expected = build_augmenter("strong", {})(images, masks)
    torch.manual_seed(2)
    got = build_augmenter("strong", {})(images.contiguous(memory_format=torch.channels_last), masks)
    assert torch.allclose(got[0], expected[0], atol=1e-5) and torch.equal(got[1], expected[1])


def test_wrong_shapes_are_rejected():
    images, masks = batch()
    with pytest.raises(ValueError, match=r"masks \(N, H, W\)"):
        BatchAugmenter({"rotate": 1.0})(images, masks[:, :10])
    with pytest.raises(ValueError, match=r"images \(N, C, H, W\)"):
        BatchAugmenter({"rotate": 1.0})(images[:, 0], masks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    images, masks = batch(n=6, channels=3)
    torch.manual_seed(0)
    out_images, out_masks = build_augmenter("strong", {"elastic": 1.0})(images.cuda(), masks.cuda())
    assert out_images.device.type == "cuda" and out_masks.device.type == "cuda"
    assert out_images.shape == images.shape and out_masks.dtype == torch.int64
    assert set(out_masks.unique().tolist()) <= set(masks.unique().tolist())
