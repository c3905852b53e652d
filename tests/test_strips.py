"""Wide images worked in column strips: the strips and their windows, the same blended map as one
pass over the whole width, row ranges bit for bit, sources read by columns, and the memory a waiting
strip keeps."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from unet_patches.files.rows import ArraySource, RawSource
from unet_patches.files.sources import TiffSource, ZarrSource
from unet_patches.inference.tiling import TiledPredictor, blender
from unet_patches.inference.tiling.blender import WindowBlender
from unet_patches.inference.tiling.merger import RowMerger, assemble
from unet_patches.inference.tiling.padding import PaddedRows
from unet_patches.inference.tiling.placement import axis_starts, column_strips

from helpers import tiny_net


@pytest.mark.parametrize(
    ("length", "window", "stride", "per_strip"),
    [(1000, 64, 48, 6), (777, 32, 16, 4), (5000, 256, 192, 8), (300, 50, 37, 3)],
)
def test_a_strips_windows_are_exactly_those_touching_its_columns(length, window, stride, per_strip):
    xs = axis_starts(length, window, stride)
    strips = column_strips(xs, window, per_strip)
    assert strips[0][2] == 0 and strips[-1][3] == length
    for (first, end, begin, stop), following in zip(strips, [*strips[1:], None]):
        touching = [j for j, x in enumerate(xs) if x < stop and x + window > begin]
        assert touching == list(range(first, end))
        assert end - first == per_strip or following is None
        if following is not None:
            assert following[2] == stop  # the strips tile the axis


def _linear_net(batch: np.ndarray) -> np.ndarray:
    """A NumPy network whose outputs for a window do not depend on the other windows of its batch."""
    weights = np.array([[1.5, -0.5], [-1.0, 2.0], [0.25, 0.25]], dtype=np.float32)
    mixed = np.concatenate([batch, np.roll(batch, 3, axis=-1)], axis=1)
    return np.einsum("kc,nchw->nkhw", weights, mixed).astype(np.float32)


@pytest.mark.parametrize("overlap", [0.25, 0.5, 12])
@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_strips_give_the_whole_widths_map(overlap, blend):
    image = np.random.default_rng(0).random((1, 150, 1337), dtype=np.float32)
    whole = WindowBlender(_linear_net, 64, overlap, batch_size=3, blend=blend, strip_columns=0)
    strips = WindowBlender(_linear_net, 64, overlap, batch_size=3, blend=blend, strip_columns=200)
    assert len(strips.strips(strips.window_starts(image.shape[1:])[1])) >= 4
    labels, probs = whole.labels(image, return_probs=True)
    strip_labels, strip_probs = strips.labels(image, return_probs=True)
    # Every pixel sums the same windows in the same order; only the batches differ.
    assert np.array_equal(strip_probs, probs) and np.array_equal(strip_labels, labels)


def test_strips_of_a_torch_network_agree_with_one_pass():
    image = np.random.default_rng(1).random((1, 97, 900), dtype=np.float32)
    one = TiledPredictor(tiny_net(), 32, 0.25, batch_size=4, precision="fp32", strip_columns=0)
    strips = TiledPredictor(tiny_net(), 32, 0.25, batch_size=4, precision="fp32", strip_columns=100)
    np.testing.assert_allclose(strips.probabilities(image), one.probabilities(image), rtol=0, atol=1e-5)


def test_row_ranges_of_a_striped_image_equal_its_rows_bit_for_bit():
    image = np.random.default_rng(5).random((1, 203, 777), dtype=np.float32)
    predictor = TiledPredictor(tiny_net(), 32, 0.4, batch_size=3, blend="gaussian", precision="fp32", strip_columns=90)
    labels, probs = assemble(predictor.bands(image, probs=True), (203, 777), with_probs=True)
    for start, stop in [(0, 64), (64, 128), (128, 203), (37, 38)]:
        part = list(predictor.bands(image, probs=True, rows=(start, stop)))
        assert np.array_equal(np.concatenate([b.labels for b in part]), labels[start:stop])
        assert np.array_equal(np.concatenate([b.probs for b in part], axis=1), probs[:, start:stop])


def test_the_default_strip_width_is_read_when_the_image_comes(monkeypatch):
    predictor = WindowBlender(_linear_net, 64, 0.25)
    xs = predictor.window_starts((64, 2000))[1]
    assert len(predictor.strips(xs)) == 1
    monkeypatch.setattr(blender, "STRIP_COLUMNS", 300)
    assert len(predictor.strips(xs)) > 1


def test_a_waiting_strip_keeps_only_the_overlap_rows():
    merger = RowMerger([0, 50], (40, 50), sums=True)
    merger.begin_row(0, 30)
    merger.add(np.ones((2, 3, 40, 50), dtype=np.float32))
    assert merger.finished().shape == (3, 30, 100)
    # Between window rows it holds the rows the next one shares, and no window of the row before.
    assert merger.left is None and merger.carry is not None and merger.carry.shape == (3, 10, 100)
    merger.begin_row(30, 70)
    merger.add(np.ones((2, 3, 40, 50), dtype=np.float32))  # the next window row adds to the kept rows
    assert np.all(merger.finished() == np.repeat([2.0, 1.0], [10, 30])[None, :, None])


# ----------------------------------------------------------------------------- reading columns


def _smooth(shape: tuple[int, ...]) -> np.ndarray:
    return (np.arange(int(np.prod(shape))) * 7 % 251).astype(np.uint8).reshape(shape)


@pytest.mark.parametrize("layout", ["tiled", "striped", "plain", "planar"])
def test_file_sources_read_a_strip_of_columns_as_the_same_pixels(tmp_path, layout):
    path = tmp_path / "image.tif"
    image = _smooth((3, 90, 130) if layout == "planar" else (90, 130))
    options = {
        "tiled": {"tile": (32, 32), "compression": "zlib"},
        "striped": {"rowsperstrip": 16, "compression": "zlib"},
        "plain": {},
        "planar": {"planarconfig": "separate", "photometric": "rgb", "compression": "zlib"},
    }[layout]
    tifffile.imwrite(path, image, **options)
    channels = 3 if layout == "planar" else 1
    with TiffSource(path, channels) as source:
        whole = source.read_rows(10, 60)
        assert np.array_equal(source.read_rows(10, 60, (33, 97)), whole[:, :, 33:97])
        assert np.array_equal(source.read_rows(10, 60), whole)  # whole rows again after a strip


def test_a_zarr_store_and_arrays_read_a_strip_of_columns(tmp_path):
    image = _smooth((70, 120))
    zarr.create_array(str(tmp_path / "a.zarr"), shape=image.shape, chunks=(32, 32), dtype=np.uint8)[...] = image
    with ZarrSource(tmp_path / "a.zarr", 1) as source:
        assert np.array_equal(source.read_rows(5, 50, (40, 100)), source.read_rows(5, 50)[:, :, 40:100])
    raw = RawSource(image, 1)
    assert np.array_equal(raw.read_rows(5, 50, (40, 100)), raw.read_rows(5, 50)[:, :, 40:100])
    floats = ArraySource(image[None].astype(np.float32))
    assert np.array_equal(floats.read_rows(5, 50, (40, 100)), image[None, 5:50, 40:100])


@pytest.mark.parametrize("mode", ["reflect", "constant", "replicate"])
def test_padded_rows_of_a_strip_are_the_padded_images_columns(mode):
    source = ArraySource(np.random.default_rng(2).random((1, 20, 30), dtype=np.float32))
    padded = PaddedRows(source, (40, 50), (10, 10), mode, 0.5)
    assert np.array_equal(padded.rows(0, 40, (5, 45)), padded.rows(0, 40)[:, :, 5:45])
    wide = PaddedRows(source, (40, 30), (10, 0), mode, 0.5)
    assert np.array_equal(wide.rows(3, 30, (7, 21)), wide.rows(3, 30)[:, :, 7:21])


@pytest.mark.parametrize(("shape", "axis"), [((70, 9), 0), ((3, 70, 9), -2), ((70, 9, 2), 0)])
def test_row_blocks_regroup_bands_into_whole_blocks(shape, axis):
    from unet_patches.files.row_blocks import RowBlocks

    image = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    total = image.shape[axis] - 4  # rows past the total are dropped
    blocks, got = RowBlocks(total, 16, axis=axis, dtype=np.int32), []
    for first, stop in [(0, 5), (5, 6), (6, 40), (40, 70)]:
        band = np.take(image, range(first, stop), axis=axis)
        got += [(row, block.copy()) for row, block in blocks.add(band)]
        band[...] = -1  # the caller may reuse its array
    assert [row for row, _ in got] == [0, 16, 32, 48, 64]
    assert [block.shape[axis] for _, block in got] == [16, 16, 16, 16, 2]
    assert np.array_equal(np.concatenate([b for _, b in got], axis=axis), np.take(image, range(total), axis=axis))
