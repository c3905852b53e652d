"""Tests for unet_patches.data.imageio: reading, conversion, masks, colours."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_patches.data.imageio import PALETTE, colour_mask, colour_overlay, image_to_array, read_image, write_png
from unet_patches.data.masks import read_mask
from unet_patches.errors import UserError


def _pil_save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


# ------------------------------------------------------------------ read_image / image_to_array


def test_read_gray_png_round_trip(tmp_path):
    raw = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    write_png(tmp_path / "sub" / "g.png", raw)  # creates the parent folder
    got = read_image(tmp_path / "sub" / "g.png")
    assert got.dtype == np.uint8 and np.array_equal(got, raw)
    array = image_to_array(got, 1)
    assert array.dtype == np.float32 and array.shape == (1, 3, 4)
    np.testing.assert_allclose(array[0], raw / 255.0, rtol=1e-6)


def test_read_rgb_png_and_average_to_gray(tmp_path):
    raw = np.zeros((2, 3, 3), dtype=np.uint8)
    raw[..., 0], raw[..., 1], raw[..., 2] = 30, 60, 90
    write_png(tmp_path / "c.png", raw)
    got = read_image(tmp_path / "c.png")
    assert got.shape == (2, 3, 3) and np.array_equal(got, raw)
    rgb = image_to_array(got, 3)
    assert rgb.shape == (3, 2, 3)
    np.testing.assert_allclose(rgb[:, 0, 0], [30 / 255, 60 / 255, 90 / 255], rtol=1e-6)
    gray = image_to_array(got, 1)
    np.testing.assert_allclose(gray, np.full((1, 2, 3), 60 / 255), rtol=1e-6)


def test_rgba_alpha_dropped_and_gray_repeated():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 51
    rgba[..., 3] = 255
    np.testing.assert_allclose(image_to_array(rgba, 3), np.full((3, 2, 2), 0.2), rtol=1e-6)
    np.testing.assert_allclose(image_to_array(rgba, 1), np.full((1, 2, 2), 0.2), rtol=1e-6)
    gray = np.full((2, 2), 255, dtype=np.uint8)
    assert np.array_equal(image_to_array(gray, 3), np.ones((3, 2, 2), dtype=np.float32))


def test_read_16bit_png_and_tiff(tmp_path):
    raw = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    write_png(tmp_path / "d.png", raw)
    tifffile.imwrite(tmp_path / "d.tif", raw)
    for name in ("d.png", "d.tif"):
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint16 and np.array_equal(got, raw), name
        np.testing.assert_allclose(image_to_array(got, 1)[0], raw / 65535.0, rtol=1e-6)


def test_read_float_tiff_kept_as_is(tmp_path):
    raw = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tiff", raw)
    got = read_image(tmp_path / "f.tiff")
    assert got.dtype == np.float32
    assert np.array_equal(image_to_array(got, 1)[0], raw)


def test_planar_tiff_moved_to_channels_last(tmp_path):
    raw = np.random.default_rng(0).integers(0, 255, (3, 8, 9), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", raw, photometric="rgb", planarconfig="separate")
    got = read_image(tmp_path / "p.tif")
    assert got.shape == (8, 9, 3) and np.array_equal(got, np.moveaxis(raw, 0, -1))


def test_bool_image():
    raw = np.array([[True, False]])
    assert np.array_equal(image_to_array(raw, 1), np.array([[[1.0, 0.0]]], dtype=np.float32))


@pytest.mark.parametrize(
    "raw, in_channels, match",
    [
        (np.array([[np.nan, 0.0]], dtype=np.float32), 1, "NaN"),
        (np.array([[np.inf, 0.0]]), 1, "NaN or infinite"),
        (np.zeros((2, 2), dtype=np.int64), 1, "int64"),
        (np.zeros((2, 2), dtype=np.complex64), 1, "complex64"),
        (np.zeros((2, 2, 5), dtype=np.uint8), 3, "5 channel"),
        (np.zeros((2, 2, 3), dtype=np.uint8), 2, "in_channels=2"),
        (np.zeros((2, 2, 2, 2), dtype=np.uint8), 1, "shape"),
        (np.zeros((2, 2), dtype=np.uint8), 0, "in_channels = 0"),
    ],
)
def test_image_to_array_rejects(raw, in_channels, match):
    with pytest.raises(UserError, match=match):
        image_to_array(raw, in_channels)


def test_read_image_missing_and_broken(tmp_path):
    with pytest.raises(UserError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="bad.png: cannot read"):
        read_image(tmp_path / "bad.png")


# ------------------------------------------------------------------ masks


def test_index_mask(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    write_png(tmp_path / "m.png", labels)
    got = read_mask(tmp_path / "m.png", 3)
    assert got.dtype == np.uint8 and np.array_equal(got, labels)


def test_rgb_colour_mask(tmp_path):
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    rgb = np.zeros((2, 4, 3), dtype=np.uint8)
    rgb[labels == 1] = (255, 0, 0)
    rgb[labels == 2] = (0, 255, 0)
    rgb[labels == 3] = (0, 0, 255)
    write_png(tmp_path / "m.png", rgb)
    assert np.array_equal(read_mask(tmp_path / "m.png", 4), labels)
    # Masks written with colour_mask read back to the same labels, beyond the first four colours.
    many = np.arange(len(PALETTE)).reshape(4, 5)
    write_png(tmp_path / "many.png", colour_mask(many))
    assert np.array_equal(read_mask(tmp_path / "many.png", len(PALETTE)), many)


def test_equal_channel_mask_is_index_mask(tmp_path):
    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    write_png(tmp_path / "m.png", np.repeat(labels[..., None], 3, axis=-1))
    assert np.array_equal(read_mask(tmp_path / "m.png", 3), labels)


def test_palette_png_mask(tmp_path):
    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    # An RGB colour mask re-saved as a palette PNG (index order unrelated to the classes).
    rgb = colour_mask(labels)
    _pil_save(tmp_path / "p.png", rgb, mode="P")
    assert np.array_equal(read_mask(tmp_path / "p.png", 3), labels)
    # A VOC-style palette PNG is read by its indices.
    voc = Image.new("P", (2, 2))
    voc.putdata(labels.ravel().tolist())
    voc.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])
    voc.save(tmp_path / "voc.png")
    assert np.array_equal(read_mask(tmp_path / "voc.png", 3), labels)


def test_mask_value_out_of_range_message(tmp_path):
    write_png(tmp_path / "m.png", np.array([[0, 255]], dtype=np.uint8))
    with pytest.raises(UserError) as info:
        read_mask(tmp_path / "m.png", 3)
    message = str(info.value)
    assert "m.png" in message and "255" in message and "num_classes=3" in message
    assert "data.mask_values" in message and "\n" not in message


def test_mask_unknown_colour(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[1, 0] = (10, 200, 30)
    write_png(tmp_path / "m.png", rgb)
    with pytest.raises(UserError, match=r"m.png: colour #0ac81e at row 1, column 0"):
        read_mask(tmp_path / "m.png", 3)


def test_colour_mask_class_beyond_num_classes(tmp_path):
    write_png(tmp_path / "m.png", colour_mask(np.array([[0, 3]])))
    with pytest.raises(UserError, match="mask value 3 is out of range for num_classes=3"):
        read_mask(tmp_path / "m.png", 3)


# ------------------------------------------------------------------ colours and writing


def test_palette_and_colour_mask():
    assert PALETTE.dtype == np.uint8 and PALETTE.shape[1] == 3 and len(PALETTE) >= 20
    assert PALETTE[:4].tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    assert len({tuple(c) for c in PALETTE.tolist()}) == len(PALETTE)
    got = colour_mask(np.array([[0, 1], [2, 3]]))
    assert got.shape == (2, 2, 3) and got.dtype == np.uint8
    assert got[1, 1].tolist() == [0, 0, 255]
    with pytest.raises(UserError):
        colour_mask(np.array([[len(PALETTE)]]))


def test_colour_overlay():
    image = np.full((1, 2, 2), 0.2, dtype=np.float32)
    labels = np.array([[0, 1], [0, 2]])
    out = colour_overlay(image, labels, alpha=0.5)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [51, 51, 51]  # background leaves the image visible
    assert out[0, 1].tolist() == [153, 26, 26]  # 0.5 * 51 + 0.5 * (255, 0, 0), rounded
    assert out[1, 1].tolist() == [26, 153, 26]
    with pytest.raises(ValueError, match="differ in size"):
        colour_overlay(image, np.zeros((3, 3), dtype=int))


def test_write_png_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="float64"):
        write_png(tmp_path / "x.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="uint16"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 3), dtype=np.uint16))


@pytest.mark.parametrize(
    "call",
    [
        lambda tmp: colour_overlay(np.zeros((1, 2, 2), np.float32), np.zeros((3, 3), dtype=int)),
        lambda tmp: colour_overlay(np.zeros((1, 2, 2), np.float32), np.zeros((2, 2), dtype=int), alpha=2.0),
        lambda tmp: write_png(tmp / "x.png", np.zeros((2, 2))),
        lambda tmp: colour_mask(np.zeros((2, 2, 2), dtype=int)),
    ],
    ids=["overlay size", "overlay alpha", "png dtype", "labels 3-D"],
)
def test_programming_errors_are_value_errors_not_user_errors(tmp_path, call):
    # Arrays made by the code: a wrong one must keep its traceback, not become a one-line UserError.
    with pytest.raises(ValueError) as info:
        call(tmp_path)
    assert not isinstance(info.value, UserError)
