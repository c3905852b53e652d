"""Property-based tests (hypothesis) of the promises the docstrings make.

- Window placement (``tiling.placement``): ``pair``, ``stride_for``, ``axis_starts``, ``place_windows`` and
  ``check_coverage`` -- every pixel covered, starts strictly increasing from 0 with the last window ending
  at the border, steps no larger than the stride, and as few windows as that stride allows.
- Padding (``tiling.padding``): ``pad_indices`` agrees with ``numpy.pad`` (reflect -> ``reflect``, replicate
  -> ``edge``, constant -> fill) and is the identity in the centre; ``PaddedRows`` returns the rows of
  ``numpy.pad`` of the image.
- The band loop (``tiling.blender.WindowBlender``): for a per-pixel network the blended output equals the
  network applied to the whole image, for every blend mode, overlap, padding and with or without TTA, and
  the labels are the argmax of the probabilities.
- Run-length text (``rle``): exact round trips; runs 1-based, column-major, increasing, non-overlapping and
  maximal; any text either decodes to what its runs say or raises ``UserError`` (no other exception).
- Metrics (``metrics.ConfusionMatrix``): counts equal a brute-force count, updates are additive, IoU/Dice in
  [0, 1] or NaN exactly for absent classes, means are NaN-means, and NumPy and torch inputs agree.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_patches.deploy.rle import decode, encode
from unet_patches.errors import UserError
from unet_patches.files.sources import ArraySource
from unet_patches.inference.tiling.blender import WindowBlender
from unet_patches.inference.tiling.padding import PADDING_MODES, PaddedRows, pad_indices
from unet_patches.inference.tiling.placement import axis_starts, check_coverage, pair, place_windows, stride_for
from unet_patches.metrics import ConfusionMatrix

FAST = settings(max_examples=200, deadline=None)
MEDIUM = settings(max_examples=150, deadline=None)


# ------------------------------------------------------------------------------------------- placement


@st.composite
def window_and_overlap(draw, max_window: int = 300):
    """A window and an overlap for it: a fraction in [0, 1) or whole pixels in [0, window)."""
    window = draw(st.integers(1, max_window))
    overlap = draw(
        st.one_of(
            st.floats(0.0, 1.0, exclude_max=True, allow_nan=False, allow_subnormal=False),
            st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]),
            st.integers(0, window - 1),
        )
    )
    return window, overlap


def _covered(starts: np.ndarray, window: int, length: int) -> np.ndarray:
    count = np.zeros(length, dtype=np.int64)
    for start in starts:
        count[start : start + window] += 1
    return count


@FAST
@given(value=st.one_of(st.integers(-5, 500), st.floats(allow_nan=False)))
def test_pair_of_a_scalar_is_the_scalar_twice(value):
    assert pair(value, "x") == (value, value)


@FAST
@given(values=st.lists(st.integers(-5, 500), min_size=0, max_size=4), as_array=st.booleans())
def test_pair_of_a_sequence_needs_two_values(values, as_array):
    given_value = np.array(values, dtype=np.int64) if as_array else values
    if len(values) == 2:
        assert tuple(pair(given_value, "x")) == tuple(values)
    else:
        with pytest.raises(UserError):
            pair(given_value, "x")


@FAST
@given(text=st.one_of(st.text(max_size=5), st.binary(max_size=5)))
def test_pair_rejects_text(text):
    with pytest.raises(UserError):
        pair(text, "x")


@FAST
@given(case=window_and_overlap())
def test_stride_follows_the_documented_rule(case):
    window, overlap = case
    stride = stride_for(window, overlap)
    assert isinstance(stride, int) and 1 <= stride <= window
    if isinstance(overlap, int):
        assert stride == window - overlap
    else:
        # MONAI's rule in floating point, ``int(roi_size * (1 - overlap))`` raised to 1, so both tools agree.
        assert stride == max(1, int(window * (1 - overlap)))
        # In exact arithmetic that is floor(window * (1 - overlap)) up to float rounding of the product.
        exact = Fraction(window) * (1 - Fraction(overlap))
        assert stride == max(1, math.floor(exact)) or abs(exact - round(exact)) < 1e-12 * window
        # The overlap in pixels is never smaller than asked (up to that rounding).
        assert window - stride >= window * overlap - 1e-12 * window or stride == 1


@FAST
@given(
    window=st.integers(1, 300),
    overlap=st.one_of(
        st.floats(max_value=0.0, exclude_max=True, allow_nan=False),
        st.floats(min_value=1.0, allow_nan=False),
        st.just(float("nan")),
        st.integers(max_value=-1),
        st.booleans(),
        st.text(max_size=3),
    ),
)
def test_stride_rejects_invalid_overlaps(window, overlap):
    with pytest.raises(UserError):
        stride_for(window, overlap)


@FAST
@given(window=st.integers(1, 300), extra=st.integers(0, 5))
def test_stride_rejects_pixel_overlaps_of_a_window_or_more(window, extra):
    with pytest.raises(UserError):
        stride_for(window, window + extra)


def _assert_axis_promises(starts: np.ndarray, length: int, window: int, stride: int) -> None:
    assert starts.dtype == np.int64 and starts.ndim == 1
    assert starts[0] == 0
    assert starts[-1] + window == length  # the last window ends exactly at the border
    steps = np.diff(starts)
    assert np.all(steps > 0)  # strictly increasing: sorted, no repeated window
    assert np.all(steps <= stride)  # never further apart than the stride
    assert np.all(_covered(starts, window, length) >= 1)  # every pixel covered
    # Minimal: n windows with steps <= stride reach at most (n - 1) * stride, so n - 1 could not.
    n = len(starts)
    assert (n - 1) * stride >= length - window
    assert n == 1 or (n - 2) * stride < length - window
    check_coverage(starts, window, length)  # and the code's own check agrees


@FAST
@given(case=window_and_overlap(), extra=st.integers(0, 1700))
def test_axis_starts_cover_the_axis_with_as_few_windows_as_the_stride_allows(case, extra):
    window, overlap = case
    length = window + extra
    stride = stride_for(window, overlap)
    _assert_axis_promises(axis_starts(length, window, stride), length, window, stride)


@FAST
@given(window=st.integers(2, 300), data=st.data())
def test_axis_starts_refuse_an_axis_shorter_than_the_window(window, data):
    length = data.draw(st.integers(1, window - 1))
    stride = data.draw(st.integers(1, window))
    with pytest.raises(ValueError):
        axis_starts(length, window, stride)


@FAST
@given(
    height=st.integers(1, 2000),
    width=st.integers(1, 2000),
    rows=window_and_overlap(),
    columns=window_and_overlap(),
    as_pairs=st.booleans(),
)
def test_place_windows_on_images_of_any_size(height, width, rows, columns, as_pairs):
    (wh, oh), (ww, ow) = rows, columns
    if as_pairs:
        ys, xs = place_windows((height, width), (wh, ww), (oh, ow))
    else:  # one value for both axes
        ys, xs = place_windows((height, width), wh, oh)
        ww, ow = wh, oh
    for starts, length, window, overlap in ((ys, height, wh, oh), (xs, width, ww, ow)):
        if length < window:  # a single window at 0 of the axis padded to the window
            assert starts.tolist() == [0]
        else:
            _assert_axis_promises(starts, length, window, stride_for(window, overlap))


@FAST
@given(
    window=st.integers(1, 30),
    length=st.integers(1, 120),
    starts=st.lists(st.integers(-5, 125), min_size=0, max_size=12),
    sort=st.booleans(),
)
def test_check_coverage_accepts_exactly_increasing_starts_that_cover_the_axis_within_its_border(
    window, length, starts, sort
):
    if sort:
        starts = sorted(starts)
    increasing = all(a < b for a, b in zip(starts, starts[1:]))
    inside = all(0 <= s <= length - window for s in starts)
    covered = bool(starts) and inside and bool(np.all(_covered(np.array(starts), window, length) >= 1))
    if increasing and inside and covered:
        check_coverage(starts, window, length)
    else:
        with pytest.raises(ValueError):
            check_coverage(starts, window, length)


# --------------------------------------------------------------------------------------------- padding

NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}


def test_padding_modes_are_the_documented_ones():
    assert set(PADDING_MODES) == set(NUMPY_MODE)


@FAST
@given(
    length=st.integers(1, 60),
    before=st.integers(0, 150),
    after=st.integers(0, 150),
    mode=st.sampled_from(sorted(NUMPY_MODE)),
)
def test_pad_indices_agree_with_numpy_pad(length, before, after, mode):
    index = pad_indices(length, before, after, mode)
    assert index.shape == (before + length + after,)
    assert np.array_equal(index[before : before + length], np.arange(length))  # the centre is the identity
    kwargs = {"constant_values": -1} if mode == "constant" else {}
    assert np.array_equal(index, np.pad(np.arange(length), (before, after), mode=NUMPY_MODE[mode], **kwargs))
    if mode == "constant":
        assert np.all((index == -1) | ((index >= 0) & (index < length)))
        assert np.all(index[:before] == -1) and np.all(index[before + length :] == -1)
    else:
        assert np.all((index >= 0) & (index < length))


@st.composite
def padded_rows_case(draw):
    channels, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    hp, wp = height + draw(st.integers(0, 12)), width + draw(st.integers(0, 12))
    top, left = draw(st.integers(0, hp - height)), draw(st.integers(0, wp - width))
    y = draw(st.integers(0, hp - 1))
    count = draw(st.integers(1, hp - y))
    seed = draw(st.integers(0, 2**32 - 1))
    image = np.random.default_rng(seed).random((channels, height, width), dtype=np.float32)
    return image, (hp, wp), (top, left), y, count


@FAST
@given(case=padded_rows_case(), mode=st.sampled_from(sorted(NUMPY_MODE)), pad_value=st.sampled_from([0.0, 0.5, -2.0]))
def test_padded_rows_are_rows_of_numpy_pad(case, mode, pad_value):
    image, (hp, wp), (top, left), y, count = case
    _, height, width = image.shape
    widths = ((0, 0), (top, hp - height - top), (left, wp - width - left))
    kwargs = {"constant_values": pad_value} if mode == "constant" else {}
    expected = np.pad(image, widths, mode=NUMPY_MODE[mode], **kwargs)[:, y : y + count]
    rows = PaddedRows(ArraySource(image), (hp, wp), (top, left), mode, pad_value).rows(y, count)
    assert rows.dtype == np.float32
    assert np.array_equal(rows, expected)


# ------------------------------------------------------------------------------------------ band loop


class PixelNetwork:
    """A per-pixel "network": a 1x1 convolution ``tanh(M x + b)``, float32 ``(N, C, h, w) -> (N, K, h, w)``."""

    def __init__(self, matrix: np.ndarray, bias: np.ndarray) -> None:
        self.matrix, self.bias = matrix, bias

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4
        out = np.einsum("kc,nchw->nkhw", self.matrix, batch) + self.bias[None, :, None, None]
        return np.tanh(out).astype(np.float32)

    def reference(self, image: np.ndarray, activation: str | None) -> np.ndarray:
        """The network (and activation) applied to the whole image at once, float64 ``(K, H, W)``."""
        out = np.tanh(np.einsum("kc,chw->khw", self.matrix.astype(np.float64), image) + self.bias[:, None, None])
        if activation == "softmax":
            out = np.exp(out - out.max(axis=0))
            out /= out.sum(axis=0)
        elif activation == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        return out


@st.composite
def blender_case(draw):
    channels, classes = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rows, columns = draw(window_and_overlap(max_window=16)), draw(window_and_overlap(max_window=16))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = rng.random((channels, height, width), dtype=np.float32)
    network = PixelNetwork(rng.normal(size=(classes, channels)).astype(np.float32), rng.normal(size=classes))
    options = {
        "blend": draw(st.sampled_from(["mean", "gaussian", "hann"])),
        "tta": draw(st.booleans()),
        "padding": draw(st.sampled_from(sorted(NUMPY_MODE))),
        "activation": draw(st.sampled_from([None, "softmax", "sigmoid"])),
        "batch_size": draw(st.integers(1, 9)),
    }
    return image, network, (rows[0], columns[0]), (rows[1], columns[1]), options


@MEDIUM
@given(case=blender_case())
def test_blending_a_per_pixel_network_gives_the_network_on_the_whole_image(case):
    image, network, window, overlap, options = case
    blender = WindowBlender(network, window, overlap, **options)
    probs = blender.probabilities(image)
    expected = network.reference(image, options["activation"])
    assert probs.dtype == np.float32 and probs.shape == expected.shape
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)

    labels = blender.labels(image)
    assert labels.dtype == np.uint8 and labels.shape == image.shape[1:]
    assert np.array_equal(labels, np.argmax(probs, axis=0))
    labels_too, probs_too = blender.labels(image, return_probs=True)
    assert np.array_equal(labels_too, labels) and np.array_equal(probs_too, probs)


@MEDIUM
@given(
    height=st.integers(1, 30),
    width=st.integers(1, 30),
    rows=window_and_overlap(max_window=12),
    columns=window_and_overlap(max_window=12),
    blend=st.sampled_from(["mean", "gaussian", "hann"]),
    tta=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_blending_the_two_class_identity_network(height, width, rows, columns, blend, tta, seed):
    image = np.random.default_rng(seed).random((1, height, width), dtype=np.float32)
    blender = WindowBlender(
        lambda b: np.concatenate([b, 1 - b], axis=1),
        (rows[0], columns[0]),
        (rows[1], columns[1]),
        blend=blend,
        tta=tta,
        activation=None,
    )
    labels, probs = blender.labels(image, return_probs=True)
    np.testing.assert_allclose(probs, np.concatenate([image, 1 - image]), rtol=0, atol=1e-5)
    assert np.array_equal(labels, np.argmax(probs, axis=0))


# ------------------------------------------------------------------------------------------------ RLE

masks = st.one_of(
    hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=30)),
    hnp.arrays(np.bool_, st.tuples(st.just(1), st.integers(0, 60))),
    hnp.arrays(np.bool_, st.tuples(st.integers(0, 60), st.just(1))),
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=30).flatmap(
        lambda shape: st.sampled_from([np.zeros(shape, bool), np.ones(shape, bool)])
    ),
)


def _number(token: str) -> int:
    """An integer token's value; beyond Python's int() digit limit, a huge value of the same sign."""
    digits = token.lstrip("+-")
    if len(digits) > 1000:
        return -(10**1000) if token.startswith("-") else 10**1000
    return int(token)


def _runs(text: str) -> list[tuple[int, int]]:
    numbers = [_number(token) for token in text.split()]
    assert len(numbers) % 2 == 0
    return list(zip(numbers[0::2], numbers[1::2]))


@FAST
@given(mask=masks, as_uint8=st.booleans())
def test_rle_round_trip(mask, as_uint8):
    text = encode(mask.astype(np.uint8) if as_uint8 else mask)
    assert text == text.strip() and "  " not in text
    back = decode(text, mask.shape)
    assert back.dtype == np.uint8 and back.shape == mask.shape
    assert np.array_equal(back, mask.astype(np.uint8))
    # Runs: 1-based, column-major, strictly increasing, non-overlapping and maximal (separated by a gap).
    runs = _runs(text)
    assert (text == "") == (not mask.any())
    flat = mask.ravel(order="F")
    previous_end = -2  # 0-based index of the last pixel of the previous run (none yet: as if at -2)
    for start, length in runs:
        assert start >= 1 and length >= 1
        assert start - 1 > previous_end + 1
        assert flat[start - 1 : start - 1 + length].all()
        previous_end = start - 1 + length - 1
        assert previous_end < flat.size
        assert previous_end + 1 == flat.size or not flat[previous_end + 1]
    assert sum(length for _, length in runs) == int(flat.sum())


def _reference_decode(text: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The mask that ``text`` describes, or None when it is not valid run-length text of ``shape``."""
    tokens = text.split()
    if len(tokens) % 2 or not all(token.isascii() and token.lstrip("+-").isdigit() for token in tokens):
        return None
    if any(len(token) - len(token.lstrip("+-")) > 1 for token in tokens):
        return None
    total = shape[0] * shape[1]
    flat = np.zeros(total, dtype=np.uint8)
    previous_end = 0  # 1-based
    for start, length in _runs(text):
        if start < 1 or length < 1 or start <= previous_end or start + length - 1 > total:
            return None
        flat[start - 1 : start - 1 + length] = 1
        previous_end = start + length - 1
    return flat.reshape(shape, order="F")


tokens = st.one_of(
    st.integers(-3, 80).map(str),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["", "+1", "-0", "0", "1.0", "1e3", "x", "--1", "+-2", "١", "1,2", "nan", "\t", "\n"]),
    st.text(max_size=4),
)


@st.composite
def corrupted_rle(draw):
    mask = draw(masks)
    words = encode(mask).split()
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["replace", "insert", "delete", "swap", "shift"]))
        position = draw(st.integers(0, max(len(words) - 1, 0)))
        if edit == "replace" and words:
            words[position] = draw(tokens)
        elif edit == "insert":
            words.insert(position, draw(tokens))
        elif edit == "delete" and words:
            del words[position]
        elif edit == "swap" and len(words) > 1:
            other = draw(st.integers(0, len(words) - 1))
            words[position], words[other] = words[other], words[position]
        elif edit == "shift" and words and re.fullmatch("[0-9]+", words[position]):
            words[position] = str(int(words[position]) + draw(st.integers(-3, 3)))
    separator = draw(st.sampled_from([" ", "  ", "\t", " \n"]))
    return separator.join(words), mask.shape


@settings(max_examples=300, deadline=None)
@given(
    case=st.one_of(corrupted_rle(), st.tuples(st.text(max_size=30), st.tuples(st.integers(0, 9), st.integers(0, 9))))
)
def test_rle_decode_of_any_text_round_trips_or_raises_user_error(case):
    text, shape = case
    expected = _reference_decode(text, shape)
    try:
        mask = decode(text, shape)
    except UserError:
        assert expected is None, f"valid text {text!r} rejected"
        return
    except Exception as error:  # noqa: BLE001 - any other exception type is the failure
        pytest.fail(f"decode({text!r}, {shape}) raised {type(error).__name__}: {error}")
    assert expected is not None, f"invalid text {text!r} accepted"
    assert mask.dtype == np.uint8 and mask.shape == shape
    assert np.array_equal(mask, expected)
    assert np.array_equal(decode(encode(mask), shape), mask)


@settings(max_examples=10, deadline=None)
@given(digits=st.integers(4301, 6000), first=st.booleans(), shape=st.tuples(st.integers(0, 5), st.integers(0, 5)))
def test_rle_decode_of_a_number_too_long_for_int_raises_user_error(digits, first, shape):
    # More digits than Python's int() converts by default (4300): still bad text from the user.
    number = "1" * digits
    text = f"{number} 1" if first else f"1 {number}"
    with pytest.raises(ValueError) as raised:
        decode(text, shape)
    assert type(raised.value) is UserError, f"{type(raised.value).__name__}: {raised.value}"


# -------------------------------------------------------------------------------------------- metrics


@st.composite
def labelled_batch(draw):
    classes = draw(st.integers(1, 6))
    ignore = draw(st.sampled_from([None, 255, -1, "in range"]))
    if ignore == "in range":
        ignore = draw(st.integers(0, classes - 1))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
    target_values = list(range(classes)) + ([] if ignore is None else [ignore])
    target = draw(hnp.arrays(np.int64, shape, elements=st.sampled_from(target_values)))
    prediction = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, classes - 1)))
    return classes, ignore, target, prediction


def _brute_matrix(classes, ignore, target, prediction) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(target.ravel().tolist(), prediction.ravel().tolist()):
        if 0 <= t < classes and t != ignore:
            matrix[t, p] += 1
    return matrix


def _counted(classes, ignore, target) -> np.ndarray:
    return (target >= 0) & (target < classes) & (target != ignore if ignore is not None else True)


@FAST
@given(batch=labelled_batch(), cuts=st.lists(st.integers(0, 10**6), max_size=4))
def test_confusion_matrix_counts_and_scores(batch, cuts):
    classes, ignore, target, prediction = batch
    metric = ConfusionMatrix(classes, ignore_index=ignore)
    metric.update(prediction, target)
    assert metric.matrix.dtype == np.int64
    assert np.array_equal(metric.matrix, _brute_matrix(classes, ignore, target, prediction))
    counted = _counted(classes, ignore, target)
    assert metric.matrix.sum() == counted.sum()

    # Updating in parts is updating with the whole.
    parts = ConfusionMatrix(classes, ignore_index=ignore)
    bounds = [0, *sorted(c % (target.size + 1) for c in cuts), target.size]
    for lo, hi in zip(bounds, bounds[1:]):
        parts.update(prediction.ravel()[lo:hi], target.ravel()[lo:hi])
    assert np.array_equal(parts.matrix, metric.matrix)

    iou, dice = metric.iou(), metric.dice()
    present = np.zeros(classes, dtype=bool)
    present[np.unique(target[counted])] = True
    present[np.unique(prediction[counted])] = True
    for scores in (iou, dice):
        assert scores.shape == (classes,)
        assert np.array_equal(np.isnan(scores), ~present)  # NaN exactly for classes absent from both
        assert np.all((scores[present] >= 0) & (scores[present] <= 1))
    np.testing.assert_allclose(dice[present], 2 * iou[present] / (1 + iou[present]), rtol=1e-12)
    if present.any():
        assert metric.mean_iou() == pytest.approx(np.nanmean(iou), rel=1e-12)
        assert metric.mean_dice() == pytest.approx(np.nanmean(dice), rel=1e-12)
        assert metric.pixel_accuracy() == pytest.approx(np.mean(prediction[counted] == target[counted]))
    else:
        assert math.isnan(metric.mean_iou()) and math.isnan(metric.mean_dice())
        assert math.isnan(metric.pixel_accuracy())


@FAST
@given(batch=labelled_batch())
def test_perfect_prediction_scores_one_for_present_classes(batch):
    classes, ignore, target, _ = batch
    metric = ConfusionMatrix(classes, ignore_index=ignore)
    counted = _counted(classes, ignore, target)
    prediction = np.where(counted, target, 0)
    metric.update(prediction, target)
    present = np.zeros(classes, dtype=bool)
    present[np.unique(target[counted])] = True
    for scores in (metric.iou(), metric.dice()):
        assert np.all(scores[present] == 1.0)
        assert np.all(np.isnan(scores[~present]))
    if present.any():
        assert metric.mean_iou() == 1.0 and metric.mean_dice() == 1.0 and metric.pixel_accuracy() == 1.0


@MEDIUM
@given(batch=labelled_batch(), kinds=st.sampled_from(["both", "prediction", "target"]))
def test_numpy_and_torch_inputs_give_the_same_counts(batch, kinds):
    torch = pytest.importorskip("torch")
    classes, ignore, target, prediction = batch
    from_numpy = ConfusionMatrix(classes, ignore_index=ignore)
    from_numpy.update(prediction, target)
    from_torch = ConfusionMatrix(classes, ignore_index=ignore)
    p = torch.from_numpy(prediction) if kinds in ("both", "prediction") else prediction
    t = torch.from_numpy(target) if kinds in ("both", "target") else target
    from_torch.update(p, t)
    assert np.array_equal(from_torch.matrix, from_numpy.matrix)
    np.testing.assert_array_equal(from_torch.iou(), from_numpy.iou())
    np.testing.assert_array_equal(from_torch.dice(), from_numpy.dice())
