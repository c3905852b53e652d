"""Class pixel counts and median-frequency weights, checked by hand."""

import numpy as np
import pytest

from unet_patches.data.class_weights import class_pixel_counts, median_frequency_weights
from unet_patches.errors import UserError


def hand_masks():
    a = np.array([[0, 0], [0, 1]], np.uint8)  # 3 x class 0, 1 x class 1
    b = np.array([[0, 2], [2, 2]], np.uint8)  # 1 x class 0, 3 x class 2
    return [a, b]


def test_class_pixel_counts():
    assert class_pixel_counts(hand_masks(), 4).tolist() == [4, 1, 3, 0]
    per_image = class_pixel_counts(hand_masks(), 4, per_image=True)
    assert per_image.dtype == np.int64 and per_image.tolist() == [[3, 1, 0, 0], [1, 0, 3, 0]]
    masks = hand_masks()
    masks[0][0, 0] = 255
    assert class_pixel_counts(masks, 4, ignore_index=255).tolist() == [3, 1, 3, 0]
    with pytest.raises(ValueError, match="mask 0 holds class value 255"):
        class_pixel_counts(masks, 4)


def test_median_frequency_weights_by_hand():
    # freq_0 = 4 / 8 (both images), freq_1 = 1 / 4 (image a only), freq_2 = 3 / 4 (image b only);
    # class 3 never occurs: weight 0, left out of the median. median(0.5, 0.25, 0.75) = 0.5.
    weights = median_frequency_weights(class_pixel_counts(hand_masks(), 4, per_image=True))
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, [1.0, 2.0, 0.5 / 0.75, 0.0], rtol=1e-6)
    # Totals alone treat the set as one image: median(4, 1, 3) / count = 3 / count.
    totals = median_frequency_weights(class_pixel_counts(hand_masks(), 4))
    np.testing.assert_allclose(totals, [0.75, 3.0, 1.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("counts", [np.zeros(3), np.array([1, -1, 2]), np.zeros((2, 2, 2))])
def test_median_frequency_weights_bad_counts(counts):
    with pytest.raises(ValueError) as info:
        median_frequency_weights(counts)
    assert not isinstance(info.value, UserError)


def test_a_float_mask_is_a_programming_error():
    with pytest.raises(ValueError) as info:
        class_pixel_counts([hand_masks()[0].astype(np.float32)], 3)
    assert not isinstance(info.value, UserError)
