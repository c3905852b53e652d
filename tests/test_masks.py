"""Mask decoding by table (data.mask_values, data.mask_colors), the 2-class default, colour parsing,
and the Preprocess that carries the tables into checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unet_patches.data.folders import load_pairs
from unet_patches.data.imageio import write_png
from unet_patches.data.masks import AUTO_BINARY_VALUES, decode_mask, hex_colour, parse_colour, read_mask
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError
from unet_patches.training.config import DataConfig, default_config

RED, BLUE, ODD = (255, 0, 0), (0, 0, 255), (12, 34, 56)


def _colour_image(labels: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for label, colour in colours.items():
        rgb[labels == label] = colour
    return rgb


# ------------------------------------------------------------------------------------ gray levels


def test_mask_values_table_maps_gray_levels(tmp_path):
    gray = np.array([[0, 128, 255], [255, 0, 128]], dtype=np.uint8)
    write_png(tmp_path / "m.png", gray)
    table = {0: 0, 128: 1, 255: 2}
    got = read_mask(tmp_path / "m.png", 3, values=table)
    assert got.dtype == np.uint8 and got.tolist() == [[0, 1, 2], [2, 0, 1]]
    # A level in the table but absent from the mask is fine; 16-bit gray levels work the same.
    wide = np.array([[0, 40000]], dtype=np.uint16)
    assert decode_mask(wide, "w.png", 2, values={0: 0, 40000: 1, 7: 1}).tolist() == [[0, 1]]


def test_mask_value_not_in_table(tmp_path):
    write_png(tmp_path / "m.png", np.array([[0, 128, 64]], dtype=np.uint8))
    with pytest.raises(UserError) as info:
        read_mask(tmp_path / "m.png", 3, values={0: 0, 128: 1, 255: 2})
    message = str(info.value)
    assert "m.png" in message and "64" in message and "data.mask_values" in message
    assert "\n" not in message


def test_binary_masks_read_as_zero_one_for_two_classes(tmp_path):
    assert AUTO_BINARY_VALUES == {0: 0, 1: 1, 255: 1}
    write_png(tmp_path / "m.png", np.array([[0, 255], [255, 0]], dtype=np.uint8))
    assert read_mask(tmp_path / "m.png", 2).tolist() == [[0, 1], [1, 0]]
    for raw, expected in [
        ([[0, 1]], [[0, 1]]),
        ([[0, 0]], [[0, 0]]),
        ([[255, 255]], [[1, 1]]),
        ([[0, 1, 255]], [[0, 1, 1]]),
    ]:
        assert decode_mask(np.array(raw, dtype=np.uint8), "m.png", 2).tolist() == expected
    # An explicit table wins over the default.
    assert decode_mask(np.array([[0, 255]], dtype=np.uint8), "m.png", 2, values={0: 1, 255: 0}).tolist() == [[1, 0]]


def test_binary_masks_with_three_classes_need_a_table(tmp_path):
    write_png(tmp_path / "m.png", np.array([[0, 255]], dtype=np.uint8))
    with pytest.raises(UserError) as info:
        read_mask(tmp_path / "m.png", 3)
    message = str(info.value)
    assert "255" in message and "num_classes=3" in message and "data.mask_values" in message
    # Other values out of range for two classes are not silently mapped.
    with pytest.raises(UserError, match="mask value 128 is out of range for num_classes=2"):
        decode_mask(np.array([[0, 128]], dtype=np.uint8), "m.png", 2)


def test_gray_mask_saved_as_rgb_reads_as_indices(tmp_path):
    labels = np.array([[0, 1, 2], [2, 2, 0]], dtype=np.uint8)
    write_png(tmp_path / "m.png", np.repeat(labels[..., None], 3, axis=-1))
    assert np.array_equal(read_mask(tmp_path / "m.png", 3), labels)
    # ... and a 0/255 one as 0/1 for two classes, or through a gray-level table.
    write_png(tmp_path / "b.png", np.repeat((labels[..., None] > 0) * np.uint8(255), 3, axis=-1))
    assert np.array_equal(read_mask(tmp_path / "b.png", 2), (labels > 0).astype(np.uint8))
    write_png(tmp_path / "t.png", np.repeat(labels[..., None] * np.uint8(100), 3, axis=-1))
    assert np.array_equal(read_mask(tmp_path / "t.png", 3, values={0: 0, 100: 1, 200: 2}), labels)


# ------------------------------------------------------------------------------------ colours


def test_mask_colors_table_decodes_colours_outside_the_palette(tmp_path):
    labels = np.array([[0, 1, 2, 0], [2, 1, 0, 1]])
    write_png(tmp_path / "m.png", _colour_image(labels, {0: ODD, 1: RED, 2: BLUE}))
    got = read_mask(tmp_path / "m.png", 3, colors={RED: 1, BLUE: 2, ODD: 0})
    assert got.dtype == np.uint8 and np.array_equal(got, labels)
    # A table that maps the unusual colour to a class, and one of two colours only.
    write_png(tmp_path / "n.png", _colour_image(labels, {0: (0, 0, 0), 1: ODD, 2: BLUE}))
    assert np.array_equal(read_mask(tmp_path / "n.png", 3, colors={(0, 0, 0): 0, ODD: 1, BLUE: 2}), labels)
    write_png(tmp_path / "rb.png", _colour_image(np.array([[1, 2], [2, 1]]), {1: RED, 2: BLUE}))
    assert read_mask(tmp_path / "rb.png", 3, colors={RED: 1, BLUE: 2}).tolist() == [[1, 2], [2, 1]]
    # Alpha is ignored.
    rgba = np.concatenate([_colour_image(labels, {0: ODD, 1: RED, 2: BLUE}), np.full((2, 4, 1), 255, np.uint8)], -1)
    assert np.array_equal(decode_mask(rgba, "a.png", 3, colors={RED: 1, BLUE: 2, ODD: 0}), labels)


def test_mask_colour_not_in_table(tmp_path):
    rgb = _colour_image(np.array([[1, 2, 1], [2, 1, 1]]), {1: RED, 2: BLUE})
    rgb[1, 2] = (10, 11, 12)
    write_png(tmp_path / "m.png", rgb)
    with pytest.raises(UserError) as info:
        read_mask(tmp_path / "m.png", 3, colors={RED: 1, BLUE: 2})
    message = str(info.value)
    assert "m.png: colour #0a0b0c at row 1, column 2" in message
    assert "data.mask_colors" in message and "#ff0000=1" in message
    # Without a table an unusual colour is unknown too.
    with pytest.raises(UserError, match="colour #0a0b0c at row 1, column 2"):
        read_mask(tmp_path / "m.png", 3)


def test_mask_colors_mapping_beyond_num_classes(tmp_path):
    rgb = _colour_image(np.array([[0, 1]]), {0: (0, 0, 0), 1: ODD})
    with pytest.raises(UserError, match="mask value 5 is out of range for num_classes=3"):
        decode_mask(rgb, "m.png", 3, colors={(0, 0, 0): 0, ODD: 5})


@pytest.mark.parametrize("key", ["mask_colors", "mask_values"])
def test_empty_mask_table_is_refused_by_the_settings(key):
    with pytest.raises(UserError, match=f"data.{key} is empty"):
        default_config().merged({"data": {key: {}}})


# ------------------------------------------------------------------------------------ colour text


@pytest.mark.parametrize(
    "text, expected",
    [("#ff0000", (255, 0, 0)), ("#0A0b0C", (10, 11, 12)), ("255,0,0", (255, 0, 0)), (" 12, 34 ,56 ", ODD)],
)
def test_parse_colour_accepts(text, expected):
    assert parse_colour(text) == expected
    assert parse_colour(hex_colour(expected)) == expected


@pytest.mark.parametrize("text", ["#ff00", "#ff00000", "#gg0000", "256,0,0", "-1,0,0", "1,2", "1,2,3,4", "red", ""])
def test_parse_colour_rejects(text):
    with pytest.raises(UserError) as info:
        parse_colour(text, where="data.mask_colors")
    assert "data.mask_colors" in str(info.value) and repr(text) in str(info.value)


def test_hex_colour():
    assert hex_colour((255, 0, 0)) == "#ff0000"
    assert hex_colour(np.array(ODD, dtype=np.uint8)) == "#0c2238"


# ------------------------------------------------------------------------------------ DataConfig tables


def test_data_config_tables_become_preprocess_tables():
    data = DataConfig(mask_values={"0": 0, "255": 1}, num_classes=2)
    assert data.preprocess().mask_values == {0: 0, 255: 1}
    colours = DataConfig(mask_colors={"#ff0000": 1, "0,0,255": 2, "12,34,56": 0}).preprocess().mask_colors
    assert colours == {RED: 1, BLUE: 2, ODD: 0}
    config = default_config().merged(
        {
            "data": {"num_classes": 2, "class_names": None, "mask_values": {"0": 0, "255": 1}},
            "model": {"num_classes": 2},
        }
    )
    assert config.data.preprocess().mask_values == {0: 0, 255: 1}
    assert DataConfig().preprocess().mask_values is None and DataConfig().preprocess().mask_colors is None


@pytest.mark.parametrize("table", [{"abc": 1}, {"-1": 0}, {"": 0}, {"1.5": 1}, {"²": 1}])
def test_data_config_bad_mask_values_key(table):
    with pytest.raises(UserError, match="data.mask_values"):
        DataConfig(mask_values=table, num_classes=2).preprocess()


@pytest.mark.parametrize(
    "field, table", [("mask_values", {"0": 0, "255": 2}), ("mask_values", {"0": -1}), ("mask_colors", {"#ff0000": 2})]
)
def test_data_config_class_index_out_of_range(field, table):
    with pytest.raises(UserError, match=f"data.{field}.*outside 0..1"):
        DataConfig(num_classes=2, **{field: table}).preprocess()
    # The whole config checks the tables when it is built.
    overrides = {"data": {"num_classes": 2, "class_names": None, field: table}, "model": {"num_classes": 2}}
    with pytest.raises(UserError, match=f"data.{field}"):
        default_config().merged(overrides)


def test_data_config_bad_mask_colors_key():
    with pytest.raises(UserError, match="data.mask_colors key 'red'"):
        DataConfig(mask_colors={"red": 1}).preprocess()


def test_load_pairs_uses_the_tables(tmp_path):
    gray = np.array([[0, 128], [255, 128]], dtype=np.uint8)
    write_png(tmp_path / "images" / "g.png", np.full((2, 2), 9, dtype=np.uint8))
    write_png(tmp_path / "masks" / "g.png", gray)
    write_png(tmp_path / "images" / "c.png", np.full((2, 2), 9, dtype=np.uint8))
    write_png(tmp_path / "masks" / "c.png", _colour_image(np.array([[1, 2], [2, 0]]), {0: ODD, 1: RED, 2: BLUE}))
    preprocess = Preprocess(num_classes=3, mask_values={0: 0, 128: 1, 255: 2}, mask_colors={ODD: 0, RED: 1, BLUE: 2})
    samples = {s.name: s for s in load_pairs(tmp_path, preprocess, cache=False)}
    assert samples["g"].mask.tolist() == [[0, 1], [2, 1]]
    assert samples["c"].mask.tolist() == [[1, 2], [2, 0]]


# ------------------------------------------------------------------------------------ Preprocess round trip


def _full_preprocess() -> Preprocess:
    return Preprocess(
        in_channels=3,
        num_classes=3,
        normalize="dataset",
        percentiles=(2.0, 98.5),
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
        resize=(32, 48),
        page=2,
        mask_values={0: 0, 128: 1, 255: 2},
        mask_colors={RED: 1, BLUE: 2, ODD: 0},
    )


@pytest.mark.parametrize("preprocess", [Preprocess(), _full_preprocess()], ids=["default", "everything"])
def test_preprocess_dict_round_trip(tmp_path, preprocess):
    values = preprocess.to_dict()
    assert Preprocess.from_dict(values) == preprocess
    assert Preprocess.from_dict(json.loads(json.dumps(values))) == preprocess
    torch.save({"preprocess": values}, tmp_path / "p.pt")
    loaded = torch.load(tmp_path / "p.pt", weights_only=True)["preprocess"]
    assert Preprocess.from_dict(loaded) == preprocess


def test_preprocess_dict_is_plain():
    values = _full_preprocess().to_dict()
    assert values["mask_values"] == {"0": 0, "128": 1, "255": 2}
    assert values["mask_colors"] == {"#ff0000": 1, "#0000ff": 2, "#0c2238": 0}
    assert values["resize"] == [32, 48] and values["mean"] == [0.1, 0.2, 0.3] and values["percentiles"] == [2.0, 98.5]
    assert json.loads(json.dumps(values)) == values


def test_palette_mask_is_decoded_by_colour_when_a_colour_table_is_set(tmp_path):
    from PIL import Image

    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    palette = [(10, 200, 10), (0, 0, 0), (200, 10, 10)]  # palette order differs from class order
    image = Image.new("P", (3, 2))
    image.putdata([[1, 2, 0][v] for v in labels.ravel().tolist()])  # class -> palette index
    image.putpalette([c for colour in palette for c in colour])
    image.save(tmp_path / "pal.png")
    colours = {(0, 0, 0): 0, (200, 10, 10): 1, (10, 200, 10): 2}
    assert np.array_equal(read_mask(tmp_path / "pal.png", 3, colors=colours), labels)
    preprocess = Preprocess(num_classes=3, mask_colors=colours)
    assert np.array_equal(preprocess.read_mask(tmp_path / "pal.png"), labels)
