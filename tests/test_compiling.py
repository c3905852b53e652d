"""``inference.compile: auto`` (issue 14): compile when the job's planned work repays the warm-up, never
for one small image; ``true`` / ``false`` as given; the choice made once per job."""

from __future__ import annotations

import pytest

from unet_patches import Segmenter, UserError
from unet_patches.api import PredictionJob
from unet_patches.data.preprocess import Preprocess
from unet_patches.inference import compiling
from unet_patches.inference.compiling import MIN_NETWORK_PIXELS, PAYBACK_SECONDS
from unet_patches.inference.config import check_compile, inference_settings

from helpers import tiny_net


@pytest.fixture
def segmenter():
    return Segmenter(tiny_net(), 96, ("a", "b", "c"), Preprocess(in_channels=1, num_classes=3), grid=16)


def compiles(segmenter, sizes, **options) -> bool:
    """Whether a job of images of ``sizes`` compiles (precision fp32: no int8 question on the way)."""
    return PredictionJob(segmenter, sizes, precision="fp32", **options).compile


@pytest.fixture
def timed(monkeypatch):
    """Pretend eager passes take ``rate[0]`` seconds per pixel; counts the trials."""
    rate, trials = [0.0], []

    def fake(predictor, channels):
        trials.append(predictor.window)
        return rate[0]

    monkeypatch.setattr(compiling, "seconds_per_pixel", fake)
    return rate, trials


def test_given_choices_are_kept(segmenter, timed):
    assert compiles(segmenter, [(8000, 8000)], compile=True) is True
    assert compiles(segmenter, [(8000, 8000)], compile=False) is False
    assert timed[1] == []  # no trial when the user decided


def test_one_small_image_is_never_compiled_and_not_even_timed(segmenter, timed):
    timed[0][0] = 1.0  # even on an absurdly slow machine
    assert compiles(segmenter, [(2048, 2048)]) is False
    assert timed[1] == []


def test_big_work_is_compiled_when_its_eager_passes_would_repay_the_warm_up(segmenter, timed):
    rate, trials = timed
    sizes = [(2048, 2048)] * 10  # 10 images of 7 x 7 windows of 336: 55 Mpx of windows
    pixels = 10 * 49 * 336 * 336
    assert pixels > MIN_NETWORK_PIXELS
    rate[0] = PAYBACK_SECONDS / pixels * 1.01
    assert compiles(segmenter, sizes) is True
    rate[0] = PAYBACK_SECONDS / pixels * 0.99
    assert compiles(segmenter, sizes) is False
    assert trials == [(336, 336)] * 2
    # Two window shapes: two warm-ups to repay.
    rate[0] = PAYBACK_SECONDS / pixels * 1.5
    assert compiles(segmenter, sizes + [(100, 2048)]) is False


def test_a_real_trial_times_the_eager_passes(segmenter):
    job = PredictionJob(segmenter, precision="fp32", compile=False)
    per_pixel = compiling.seconds_per_pixel(job.predictor((2048, 2048)), 1)
    assert 0 < per_pixel < 1e-3


@pytest.mark.parametrize("value", ["yes", 1, 0.0, None])
def test_a_compile_setting_other_than_auto_true_false_is_refused(value):
    with pytest.raises(UserError, match="expected auto, true or false"):
        check_compile(value)
    with pytest.raises(UserError, match="inference.compile"):
        inference_settings(None, {"compile": value})


def test_a_job_decides_once_and_keeps_its_predictors_per_window_shape(segmenter, timed):
    timed[0][0] = 1.0
    job = PredictionJob(segmenter, [(2048, 2048)] * 10, precision="fp32")
    assert job.compile is True and len(timed[1]) == 1  # one trial, for the whole job
    first = job.predictor((2048, 2048))
    assert first.compiled  # the trial's eager predictor was not kept for the compiled job
    assert job.predictor((2050, 2046)) is first  # both get 336 x 336 windows
    assert job.predictor((100, 2048)) is not first and len(job.predictors) == 2
    assert len(timed[1]) == 1
