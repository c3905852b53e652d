"""Windows sized for an image (issue 14): ``auto`` (the default), ``patch`` and explicit sizes; the
predictors kept per window shape; and ``auto`` scoring like ``patch`` on a trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unet_patches import Segmenter, UserError, evaluate_folder, predict
from unet_patches.imageio import read_image
from unet_patches.preprocess import Preprocess
from unet_patches.synthetic import generate_dataset
from unet_patches.tiling.sizing import auto_overlap, plan_window

from helpers import tiny_net


@pytest.mark.parametrize(
    ("size", "options", "window", "overlap", "batch"),
    [
        ((2048, 2048), {}, (256, 256), (48, 48), 4),  # big: 256 windows, half the patch as overlap
        ((100, 700), {}, (112, 256), (48, 48), 32 * 96 * 96 // (112 * 256)),  # short side: the image, on the grid
        ((5, 7), {}, (96, 96), (48, 48), 32),  # smaller than the patch: a window of the patch, padded
        ((2048, 2048), {"window": "patch"}, (96, 96), (0.5, 0.5), 32),  # the original's
        ((2048, 2048), {"window": 128}, (128, 128), (0.5, 0.5), 18),
        ((2048, 2048), {"window": (64, 128)}, (64, 128), (0.5, 0.5), 36),
        ((2048, 2048), {"overlap": 0.25}, (256, 256), (0.25, 0.25), 4),
        ((2048, 2048), {"batch_size": 1}, (256, 256), (48, 48), 1),  # at least one window per pass
    ],
)
def test_plan_window(size, options, window, overlap, batch):
    plan = plan_window(size, patch=96, grid=16, **options)
    assert (plan.window, plan.overlap, plan.batch_size) == (window, overlap, batch)


def test_the_overlap_grows_with_the_depth_of_the_model():
    assert auto_overlap(96, 16) == 48 and auto_overlap(96, 32) == 64 and auto_overlap(32, 4) == 16
    assert plan_window((2048, 2048), patch=96, grid=32).overlap == (64, 64)  # segnet's five poolings
    assert plan_window((2048, 2048), patch=320, grid=32).window == (320, 320)  # never below the patch


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"window": "big"}, "window = 'big': expected auto, patch"),
        ({"window": 0}, "window = 0: expected auto, patch or a positive"),
        ({"overlap": "lots"}, "overlap = 'lots': expected auto or a fraction"),
    ],
)
def test_bad_window_settings_are_user_errors(options, needle):
    with pytest.raises(UserError, match=needle):
        plan_window((64, 64), patch=32, grid=4, **options)


def test_predictors_are_kept_per_window_shape_until_the_weights_change():
    segmenter = Segmenter(tiny_net(), 32, ("a", "b", "c"), Preprocess(in_channels=1, num_classes=3), grid=4)
    first = segmenter.predictor_for((500, 500), precision="fp32")
    assert segmenter.predictor_for((600, 700), precision="fp32") is first  # both get 256 x 256 windows
    assert segmenter.predictor_for((100, 500), precision="fp32") is not first  # 100 rows: a 100 x 256 window
    assert segmenter.predictor_for((500, 500), precision="bf16") is not first
    with torch.no_grad():
        next(segmenter.network.parameters()).add_(1.0)  # trained further in place
    assert segmenter.predictor_for((500, 500), precision="fp32") is not first


DEMO_MODEL = Path(__file__).parent / "data" / "demo_unet_w8.pt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo's U-Net (tests/data/README.md) and unseen 400 x 200 synthetic images: two auto windows tall."""
    root = tmp_path_factory.mktemp("sizing")
    generate_dataset(root, n_train=0, n_test=4, seed=2024)
    return root / "test", Segmenter.from_checkpoint(DEMO_MODEL)


def test_auto_windows_score_like_patch_windows_on_a_trained_model(trained):
    folder, segmenter = trained
    patch = evaluate_folder(segmenter, folder, window="patch", precision="fp32")
    auto = evaluate_folder(segmenter, folder, precision="fp32")
    assert patch["miou"] > 0.9  # a model that found the shapes, so that the comparison means something
    assert auto["miou"] >= patch["miou"] - 0.002, (auto["miou"], patch["miou"])


def test_auto_windows_change_few_labels(trained):
    folder, segmenter = trained
    for path in sorted((folder / "images").iterdir()):
        image = read_image(path)
        a = predict(segmenter, image, window="patch", precision="fp32")
        b = predict(segmenter, image, precision="fp32")
        assert (a == b).mean() >= 0.995, path
