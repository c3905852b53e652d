"""Windows sized for an image (issue 14): ``auto`` (the default), ``patch`` and explicit sizes; the
predictors kept per window shape; and ``auto`` scoring like ``patch`` on a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unet_patches import Segmenter, UserError, evaluate_folder, predict
from unet_patches.api import PredictionJob
from unet_patches.data.imageio import read_image
from unet_patches.data.preprocess import Preprocess
from unet_patches.data.synthetic import generate_dataset
from unet_patches.inference.tiling.sizing import auto_overlap, plan_window

from helpers import tiny_net


@pytest.mark.parametrize(
    ("size", "options", "window", "overlap", "batch"),
    [
        ((2048, 2048), {}, (336, 336), (48, 48), 2),  # big: 7 windows of 336 per axis, half the patch as overlap
        ((1000, 1000), {}, (368, 368), (48, 48), 2),  # 3 windows of 368 cover 1000, not 4 of 320
        ((100, 700), {}, (112, 384), (48, 48), 32 * 96 * 96 // (112 * 384)),  # short side: the image, on the grid
        ((5, 7), {}, (96, 96), (48, 48), 32),  # smaller than the patch: a window of the patch, padded
        ((2048, 2048), {"window": "patch"}, (96, 96), (0.5, 0.5), 32),  # the original's
        ((2048, 2048), {"window": 128}, (128, 128), (0.5, 0.5), 18),
        ((2048, 2048), {"window": (64, 128)}, (64, 128), (0.5, 0.5), 36),
        ((2048, 2048), {"overlap": 0.25}, (336, 336), (0.25, 0.25), 2),
        ((2048, 2048), {"batch_size": 1}, (336, 336), (48, 48), 1),  # at least one window per pass
    ],
)
def test_plan_window(size, options, window, overlap, batch):
    plan = plan_window(size, patch=96, grid=16, **options)
    assert (plan.window, plan.overlap, plan.batch_size) == (window, overlap, batch)


def test_the_overlap_grows_with_the_depth_of_the_model():
    assert auto_overlap(96, 16) == 48 and auto_overlap(96, 32) == 64 and auto_overlap(32, 4) == 16
    assert plan_window((2048, 2048), patch=96, grid=32).overlap == (64, 64)  # segnet's five poolings
    assert plan_window((2048, 2048), patch=448, grid=32).window >= (448, 448)  # never below the patch


@pytest.mark.parametrize("length", [97, 320, 321, 500, 593, 1000, 2048, 3001, 10000])
def test_auto_windows_cover_each_axis_with_the_overlap_and_no_window_to_spare(length):
    from unet_patches.inference.tiling.placement import axis_starts, stride_for

    plan = plan_window((length, 64), patch=96, grid=16)
    side, overlap = plan.window[0], plan.overlap[0]
    assert side % 16 == 0
    if side >= length:
        assert side == -(-length // 16) * 16  # the whole axis in one window, padded to the grid
        assert length < 2 * 320 - overlap  # ... only where one window of about 320 could not cover it
        return
    assert side >= 320
    starts = axis_starts(length, side, stride_for(side, overlap))
    assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:]))  # every seam has the overlap
    n = len(starts)
    assert n == 1 or (n - 1) * side - (n - 2) * overlap < length  # one window fewer would not cover the axis


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


def test_a_job_keeps_its_predictors_per_window_shape_and_a_new_job_sees_new_weights():
    segmenter = Segmenter(tiny_net(), 32, ("a", "b", "c"), Preprocess(in_channels=1, num_classes=3), grid=4)
    job = PredictionJob(segmenter, precision="fp32", compile=False)
    first = job.predictor((2048, 2048))
    assert job.predictor((2050, 2046)) is first  # both get 356 x 356 windows
    assert job.predictor((100, 2048)) is not first  # 100 rows: a 100 x 356 window
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    before = predict(segmenter, image, precision="fp32", return_probs=True)[1]
    with torch.no_grad():
        next(segmenter.network.parameters()).add_(1.0)  # trained further in place
    after = predict(segmenter, image, precision="fp32", return_probs=True)[1]  # a job of its own
    assert not np.allclose(before, after)


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


def test_models_that_predict_worse_in_large_windows_keep_the_patch_under_auto():
    from unet_patches.models import MODELS, large_windows

    assert {name: large_windows({"name": name}) for name in MODELS.names} == {
        "unet": True,
        "inception_unet": True,
        "segnet": False,  # measured 0.009 mIoU lower with larger windows (BENCHMARKS.md)
        "vgg16_unet": True,
    }
    plan = plan_window((2048, 2048), patch=96, grid=32, large=False)
    assert (plan.window, plan.overlap, plan.batch_size) == ((96, 96), (0.5, 0.5), 32)
    assert plan_window((2048, 2048), window=256, patch=96, grid=32, large=False).window == (256, 256)


@pytest.mark.parametrize(("patch", "grid"), [(32, 4), (96, 16), (96, 32), (128, 256), (512, 16), (48, 64)])
@pytest.mark.parametrize("length", [1, 63, 320, 333, 1000, 4097])
def test_auto_windows_for_deep_or_wide_models(patch, grid, length):
    plan = plan_window((length, length), patch=patch, grid=grid)
    side, overlap = plan.window[0], plan.overlap[0]
    assert side % grid == 0 and side >= patch and 0 <= overlap < side and plan.batch_size >= 1
