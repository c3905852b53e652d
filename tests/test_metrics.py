import math

import numpy as np
import pytest
import torch

from unet_patches.metrics import ConfusionMatrix


def test_hand_computed_two_classes():
    # truth  0 0 1 1 ; prediction 0 1 1 1  -> class 0: tp 1, fp 0, fn 1 ; class 1: tp 2, fp 1, fn 0
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert cm.matrix.tolist() == [[1, 1], [0, 2]]
    np.testing.assert_allclose(cm.iou(), [1 / 2, 2 / 3])
    np.testing.assert_allclose(cm.dice(), [2 / 3, 4 / 5])
    assert cm.mean_iou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert cm.pixel_accuracy() == pytest.approx(3 / 4)


def test_absent_class_is_skipped_not_zero():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1], [1, 0]]), np.array([[0, 1], [1, 0]]))  # class 2 nowhere
    iou = cm.iou()
    assert iou[0] == 1 and iou[1] == 1 and math.isnan(iou[2])
    assert cm.mean_iou() == 1.0
    summary = cm.summary(["bg", "line", "ellipse"])
    assert summary["iou"]["ellipse"] is None and summary["miou"] == 1.0


def test_class_predicted_but_absent_from_truth_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 2]), np.array([0, 0]))
    iou = cm.iou()
    assert iou[0] == pytest.approx(0.5) and iou[2] == 0 and math.isnan(iou[1])
    assert cm.mean_iou() == pytest.approx(0.25)


def test_accumulates_over_batches_like_one_batch():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 3, (2, 1000)), rng.integers(0, 3, (2, 1000))
    whole, parts = ConfusionMatrix(3), ConfusionMatrix(3)
    whole.update(pred.reshape(-1), truth.reshape(-1))
    parts.update(pred[0], truth[0])
    parts.update(pred[1], truth[1])
    assert np.array_equal(whole.matrix, parts.matrix)
    assert whole.matrix.sum() == 2000


def test_ignore_index_pixels_not_counted():
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(np.array([0, 1, 1]), np.array([0, 255, 1]))
    assert cm.matrix.sum() == 2 and cm.mean_iou() == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="pixels"):
        ConfusionMatrix(2).update(np.zeros(3), np.zeros(4))


def test_tensors_and_arrays_count_alike():
    rng = np.random.default_rng(3)
    prediction, target = rng.integers(0, 4, (2, 30, 20)), rng.integers(0, 4, (2, 30, 20))
    target[0, 0, :5] = 255
    arrays, tensors = ConfusionMatrix(4, ignore_index=255), ConfusionMatrix(4, ignore_index=255)
    arrays.update(prediction.astype(np.uint8), target.astype(np.uint8))
    tensors.update(torch.from_numpy(prediction), torch.from_numpy(target))
    assert arrays.matrix.dtype == np.int64 and np.array_equal(arrays.matrix, tensors.matrix)
    assert arrays.matrix.sum() == 2 * 30 * 20 - 5
