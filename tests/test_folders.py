"""Tests for unet_patches.data.folders: pairing images/ and masks/, loading the pairs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unet_patches.data.folders import find_pairs, load_pairs, match_pairs
from unet_patches.data.imageio import write_png
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError


def _make_folder(root, image_names, mask_names, shape=(4, 5), mask_shape=None):
    for name in image_names:
        write_png(root / "images" / name, np.full(shape, 100, dtype=np.uint8))
    for name in mask_names:
        write_png(root / "masks" / name, np.ones(mask_shape or shape, dtype=np.uint8))
    return root


def test_pairs_by_same_stem_natural_order(tmp_path):
    _make_folder(tmp_path, ["a10.png", "a2.png", "b.png"], ["a2.png", "a10.png", "b.png"])
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["a2", "a10", "b"]
    assert pairs[1].image == tmp_path / "images" / "a10.png"
    assert pairs[1].mask == tmp_path / "masks" / "a10.png"


def test_masks_named_after_their_image_with_a_usual_suffix(tmp_path):
    # ISIC's X_segmentation.png, and the common X_mask / X-mask / X_gt, next to exact stems.
    images = ["ISIC_0000001.jpg", "b.png", "c.png", "d.png", "e.png"]
    masks = ["ISIC_0000001_segmentation.png", "b_mask.png", "c-mask.png", "d_GT.png", "e.png"]
    _make_folder(tmp_path, [], masks)
    for name in images:
        write_png(tmp_path / "images" / name, np.full((4, 5), 100, dtype=np.uint8))
    pairs = {p.name: p.mask.name for p in find_pairs(tmp_path)}
    assert pairs == {"b": "b_mask.png", "c": "c-mask.png", "d": "d_GT.png", "e": "e.png",
                     "ISIC_0000001": "ISIC_0000001_segmentation.png"}  # fmt: skip


def test_unmatched_files_are_listed_in_natural_order(tmp_path):
    _make_folder(tmp_path, ["x10.png", "x2.png", "x1.png"], ["y.png"])
    with pytest.raises(UserError, match="3 image\\(s\\) without a mask: x1.png, x2.png, x10.png"):
        find_pairs(tmp_path)


def test_pairs_by_img_mask_numbers(tmp_path):
    images = ["Img_1.png", "Img_2.png", "Img_10.png"]
    _make_folder(tmp_path, images, ["Mask_10.png", "Mask_1.png", "Mask_2.png"])
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.mask.name) for p in pairs] == [
        ("Img_1", "Mask_1.png"),
        ("Img_2", "Mask_2.png"),
        ("Img_10", "Mask_10.png"),
    ]


def test_pairs_image_tif_with_png_mask(tmp_path):
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "x.tif", np.zeros((4, 5), dtype=np.uint16))
    write_png(tmp_path / "masks" / "x.png", np.zeros((4, 5), dtype=np.uint8))
    assert [p.name for p in find_pairs(tmp_path)] == ["x"]


def test_pairs_missing_partner(tmp_path):
    _make_folder(tmp_path, ["a.png", "b.png"], ["a.png", "c.png"])
    with pytest.raises(UserError) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert "1 image(s) without a mask: b.png" in message
    assert "1 mask(s) without an image: c.png" in message


@pytest.mark.parametrize("layout, match", [("none", "missing"), ("images", "masks"), ("empty", "no images")])
def test_pairs_missing_folders(tmp_path, layout, match):
    if layout == "images":
        (tmp_path / "images").mkdir()
    if layout == "empty":
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
    with pytest.raises(UserError, match=match):
        find_pairs(tmp_path)


def test_pairs_duplicate_stems(tmp_path):
    _make_folder(tmp_path, ["a.png", "a.tif"], ["a.png"])
    with pytest.raises(UserError, match="same name"):
        find_pairs(tmp_path)


def test_load_pairs(tmp_path):
    _make_folder(tmp_path, ["Img_1.png"], ["Mask_1.png"])
    (sample,) = load_pairs(tmp_path, Preprocess(in_channels=3, num_classes=2))
    assert sample.name == "Img_1"
    assert sample.image.shape == (3, 4, 5) and sample.image.dtype == np.float32
    assert sample.mask.shape == (4, 5) and sample.mask.dtype == np.uint8


def test_load_pairs_size_mismatch(tmp_path):
    _make_folder(tmp_path, ["a.png"], ["a.png"], shape=(4, 5), mask_shape=(4, 6))
    with pytest.raises(UserError, match=r"images/a.png is 4x5.*masks/a.png is 4x6"):
        load_pairs(tmp_path, Preprocess(in_channels=1, num_classes=2))


def test_duplicates_are_all_listed_and_the_rest_still_pairs(tmp_path):
    # Two duplicates (a stem and an Img_N number) next to ordinary pairs: each duplicate is one
    # problem naming both files, the first file (natural order) is kept and the rest pairs as usual.
    _make_folder(tmp_path, ["0000.png", "0001.png", "0002.png", "Img_1.png", "Img_01.png"], ["0000.png", "0001.png"])
    write_png(tmp_path / "masks" / "0000.tif", np.ones((4, 5), dtype=np.uint8))
    write_png(tmp_path / "masks" / "Mask_1.png", np.ones((4, 5), dtype=np.uint8))
    matching = match_pairs(tmp_path)
    assert matching.problems == [
        f"{tmp_path / 'masks'}: mask files 0000.png and 0000.tif have the same name; keep one of them",
        f"{tmp_path / 'images'}: image files Img_01.png and Img_1.png have the same name; keep one of them",
    ]
    assert [(p.name, p.mask.name) for p in matching.pairs] == [
        ("0000", "0000.png"),
        ("0001", "0001.png"),
        ("Img_01", "Mask_1.png"),
    ]
    assert matching.lonely_images == ["0002.png"] and matching.lonely_masks == []
    with pytest.raises(UserError, match="mask files 0000.png and 0000.tif have the same name"):
        find_pairs(tmp_path)


def test_a_mask_repeated_under_two_keys_is_one_problem(tmp_path):
    # a_mask.png and a_mask.tif share the stem a_mask and the base a: reported once, not twice.
    _make_folder(tmp_path, ["a.png"], ["a_mask.png", "a_mask.tif"])
    matching = match_pairs(tmp_path)
    assert len(matching.problems) == 1 and "a_mask.png and a_mask.tif" in matching.problems[0]
    assert [(p.name, p.mask.name) for p in matching.pairs] == [("a", "a_mask.png")]
    assert matching.lonely_masks == []
