"""Validation on whole held-back images: the score is the tiled prediction's, per image, with its
bootstrap interval; best.pt is chosen on it; scarce classes are named once."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from unet_patches.api import Segmenter, score_pairs
from unet_patches.data.folders import find_pairs, split_by_group
from unet_patches.training.run import fit
from unet_patches.training.validation import bootstrap_interval

from helpers import small_dataset, tiny_config


def test_the_interval_of_one_image_is_its_score_and_resampling_spreads_several():
    one = np.array([[50, 10], [5, 35]])
    low, high = bootstrap_interval([one], np.random.default_rng(0))
    assert low == high
    good, bad = np.array([[90, 0], [0, 10]]), np.array([[50, 40], [10, 0]])
    low, high = bootstrap_interval([good, bad, good, bad], np.random.default_rng(0))
    assert low < high and 0.0 <= low and high <= 1.0


def test_validation_scores_the_held_back_images_whole_and_best_pt_is_chosen_on_it(tmp_path, caplog):
    data = small_dataset(tmp_path / "data", n_train=8)
    config = tiny_config(tmp_path, str(data / "train"), epochs=2, val_fraction=0.25, precision="fp32")
    with caplog.at_level(logging.INFO, logger="unet_patches"):
        summary = fit(config, progress_bars=False)
    history = summary["history"]
    assert all(r["val_images"] == 2 and len(r["miou_interval"]) == 2 for r in history)
    best = max(history, key=lambda r: r["miou"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_miou"] == pytest.approx(best["miou"])
    # The recorded score is what predicting the held-back images with best.pt gives.
    pairs = find_pairs(data / "train")
    _, held_back = split_by_group([p.group for p in pairs], 0.25, config.training.seed)
    segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"])
    options = config.inference.predictor_options()
    matrix = score_pairs(segmenter, [pairs[i] for i in held_back], **{**options, "precision": "fp32"})
    assert matrix.mean_iou() == pytest.approx(best["miou"], abs=2e-3)
    assert "whole images)" in caplog.text


def test_a_class_too_scarce_to_rank_epochs_is_named_once(tmp_path, caplog):
    from unet_patches.data.imageio import write_png

    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((40, 40), np.uint8)
        mask[5:25, 5:25] = 1
        mask[30, 30:33] = 2  # three pixels of class 2 per image
        write_png(tmp_path / "d" / "images" / f"{i}.png", (rng.random((40, 40)) * 60 + mask * 80).astype(np.uint8))
        write_png(tmp_path / "d" / "masks" / f"{i}.png", mask)
    config = tiny_config(tmp_path, str(tmp_path / "d"), epochs=2, val_fraction=0.25)
    with caplog.at_level(logging.WARNING):
        fit(config, progress_bars=False)
    warnings = [r.getMessage() for r in caplog.records if "too few to rank epochs" in r.getMessage()]
    assert len(warnings) == 1 and "class2 (3 pixels)" in warnings[0] and "crossval" in warnings[0]
