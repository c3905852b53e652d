"""Run-length text (Kaggle's 1-based, column-major ``start length`` pairs): exact round trips and
hand-computed strings, and one clear error per kind of malformed text."""

from __future__ import annotations

import numpy as np
import pytest

from unet_patches.deploy.rle import decode, encode
from unet_patches.errors import UserError


def _round_trip(mask: np.ndarray) -> str:
    text = encode(mask)
    back = decode(text, mask.shape)
    assert back.dtype == np.uint8 and back.shape == mask.shape
    assert np.array_equal(back, mask.astype(np.uint8))
    return text


def test_hand_computed_3x2():
    # 3 rows, 2 columns. Column-major numbering:   1 4
    #                                              2 5
    #                                              3 6
    # Set: (0, 1) = pixel 4, (1, 0) = pixel 2, (1, 1) = pixel 5. Runs: [2] and [4, 5] -> "2 1 4 2".
    mask = np.array([[0, 1], [1, 1], [0, 0]], dtype=bool)
    assert _round_trip(mask) == "2 1 4 2"


def test_runs_continue_from_one_column_into_the_next():
    # Column 0 ends with pixels 2, 3; column 1 starts with pixel 4: one run of 3 pixels.
    mask = np.array([[0, 1], [1, 0], [1, 0]], dtype=np.uint8)
    assert _round_trip(mask) == "2 3"


@pytest.mark.parametrize(
    "shape, pixels, expected",
    [
        ((4, 5), [], ""),
        ((4, 5), [(0, 0)], "1 1"),  # first pixel
        ((4, 5), [(3, 4)], "20 1"),  # last pixel
        ((4, 5), [(2, 1)], "7 1"),  # row 2 of column 1: 1 * 4 + 2 + 1
        ((1, 1), [(0, 0)], "1 1"),
        ((1, 7), [(0, 2), (0, 3), (0, 6)], "3 2 7 1"),  # one row: column-major equals row-major
        ((7, 1), [(2, 0), (3, 0), (6, 0)], "3 2 7 1"),
    ],
)
def test_known_masks(shape, pixels, expected):
    mask = np.zeros(shape, dtype=bool)
    for row, column in pixels:
        mask[row, column] = True
    assert _round_trip(mask) == expected


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (2, 3), (5, 9), (60, 80)])
def test_full_mask_is_one_run(shape):
    assert _round_trip(np.ones(shape, dtype=bool)) == f"1 {shape[0] * shape[1]}"


@pytest.mark.parametrize("shape", [(1, 13), (13, 1), (7, 3), (31, 64), (420, 580)])
@pytest.mark.parametrize("density", [0.02, 0.5, 0.97])
def test_random_masks_round_trip(shape, density):
    rng = np.random.default_rng([shape[0], shape[1], int(density * 100)])
    mask = rng.random(shape) < density
    text = _round_trip(mask)
    # Oracle: the runs of a plain loop over the column-major pixels.
    runs, start = [], None
    for i, on in enumerate([*mask.T.ravel(), False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs += [start + 1, i - start]
            start = None
    assert text == " ".join(map(str, runs))


def test_encode_accepts_0_1_numbers_and_non_contiguous_views():
    mask = np.arange(24).reshape(4, 6) % 3 == 0
    assert encode(mask.astype(np.float32)) == encode(mask)
    assert encode(mask[:, ::2]) == encode(np.ascontiguousarray(mask[:, ::2]))
    assert encode(np.asfortranarray(mask)) == encode(mask)


def test_decode_accepts_extra_whitespace_and_touching_runs():
    assert np.array_equal(decode("  1 2\n3 1 ", (2, 2)), np.array([[1, 1], [1, 0]], np.uint8))
    assert decode("", (0, 0)).shape == (0, 0)


@pytest.mark.parametrize("bad", [np.zeros(4, bool), np.zeros((2, 2, 1), bool), np.array([[0, 2]])])
def test_encode_of_a_wrong_array_is_a_programming_error(bad):
    with pytest.raises(ValueError) as caught:
        encode(bad)
    assert not isinstance(caught.value, UserError)


@pytest.mark.parametrize(
    "text, needles",
    [
        ("1 2 5", ["3 numbers", "odd", "start 5 has no length"]),
        ("1 x", ["'x'", "not an integer"]),
        ("1 2.5", ["'2.5'", "not an integer"]),
        ("1 2 3 0", ["run 2", "'3 0'", "length < 1"]),
        ("0 2", ["run 1", "'0 2'", "start < 1"]),
        ("-1 2", ["'-1 2'", "start < 1"]),
        ("1 -2", ["'1 -2'", "length < 1"]),
        ("5 2 6 3", ["run 2", "'6 3'", "overlap"]),
        ("7 1 2 1", ["run 2", "'2 1'", "increasing order"]),
        ("1 1 1 1", ["run 2", "'1 1'", "overlap"]),
        ("11 2", ["run 1", "'11 2'", "ends at pixel 12", "past the last pixel (11)", "1x11"]),
        ("12 1", ["'12 1'", "past the last pixel"]),
        ("1 99999999999999999999999", ["past the last pixel"]),
    ],
)
def test_malformed_text_is_a_clear_user_error(text, needles):
    with pytest.raises(UserError) as caught:
        decode(text, (1, 11), where="row 3")
    message = str(caught.value)
    assert message.startswith("row 3: ") and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_decode_of_a_wrong_shape_is_a_programming_error():
    with pytest.raises(ValueError):
        decode("1 1", (3,))
    with pytest.raises(ValueError):
        decode("1 1", (-1, 3))
