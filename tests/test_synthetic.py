"""Tests for unet_patches.data.synthetic: the seeded line/ellipse generator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unet_patches.data.imageio import read_image
from unet_patches.data.masks import read_mask
from unet_patches.data.synthetic import SyntheticSpec, generate_dataset, generate_sample
from unet_patches.errors import UserError

SMALL = SyntheticSpec(height=60, width=40, line_length=(10, 30))


def test_sample_types_and_ranges():
    image, mask = generate_sample(np.random.default_rng(0), SyntheticSpec())
    assert image.shape == (400, 200) and image.dtype == np.float32
    assert mask.shape == (400, 200) and mask.dtype == np.uint8
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1, 2}
    background = image[mask == 0]
    assert background.min() >= 0.6 and background.max() <= 1.0


def test_same_seed_same_arrays_different_seed_different():
    a = generate_sample(np.random.default_rng(7), SMALL)
    b = generate_sample(np.random.default_rng(7), SMALL)
    c = generate_sample(np.random.default_rng(8), SMALL)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_class_shares_near_original():
    rng = np.random.default_rng(123)
    counts = np.zeros(3)
    for _ in range(50):
        _, mask = generate_sample(rng, SyntheticSpec())
        counts += np.bincount(mask.ravel(), minlength=3)
    shares = counts / counts.sum()
    np.testing.assert_allclose(shares, [0.94, 0.02, 0.04], atol=0.01)


def test_each_shape_has_one_gray():
    # One shape of each kind: every class region is one constant gray.
    spec = dataclasses.replace(SyntheticSpec(), lines=(1, 1), ellipses=(1, 1))
    for seed in range(5):
        image, mask = generate_sample(np.random.default_rng(seed), spec)
        for cls in (1, 2):
            values = np.unique(image[mask == cls])
            assert len(values) <= 1, (seed, cls)
            assert values.size == 0 or 0.0 <= values[0] <= 0.7


def test_line_drawn_over_ellipse():
    # A huge ellipse covering the whole image and one line: the line must show on top of it.
    spec = SyntheticSpec(
        height=50,
        width=50,
        lines=(1, 1),
        ellipses=(1, 1),
        ellipse_radius=(200, 200),
        ellipse_aspect=(1.0, 1.0),
        line_length=(30, 30),
    )
    for seed in range(5):
        _, mask = generate_sample(np.random.default_rng(seed), spec)
        assert (mask == 0).sum() == 0
        assert (mask == 1).sum() > 0 and (mask == 2).sum() > 0


def test_lines_dilated_to_disk_width():
    # A horizontal-ish line of radius-2 dilation is 5 px thick away from its ends.
    spec = SyntheticSpec(
        height=100, width=100, lines=(1, 1), ellipses=(0, 0), line_length=(60, 60), line_dilation=(2, 2)
    )
    image, mask = generate_sample(np.random.default_rng(1), spec)
    assert (mask == 2).sum() == 0
    columns = np.nonzero((mask == 1).any(axis=0))[0]
    rows = np.nonzero((mask == 1).any(axis=1))[0]
    # Thickness across the line, measured along whichever axis the line is flatter in.
    thickness = (
        (mask == 1).sum(axis=0)[columns].max() if len(columns) >= len(rows) else ((mask == 1).sum(axis=1)[rows].max())
    )
    assert thickness >= 5


@pytest.mark.parametrize("shape", ["ellipse", "line"])
def test_no_wrap_around_at_edges(shape):
    # One shape per image, at most 65 px across in a 200 x 200 image: if it touches one edge it
    # cannot touch the opposite one unless it wrapped round.
    spec = SyntheticSpec(
        height=200,
        width=200,
        lines=(0, 0),
        ellipses=(0, 0),
        ellipse_radius=(30, 30),
        ellipse_aspect=(1.0, 1.0),
        line_length=(60, 60),
        line_dilation=(2, 2),
    )
    spec = dataclasses.replace(spec, **{"ellipses" if shape == "ellipse" else "lines": (1, 1)})
    crossing = 0
    for seed in range(60):
        _, mask = generate_sample(np.random.default_rng(seed), spec)
        rows, cols = np.nonzero(mask)
        top, bottom = (rows == 0).any(), (rows == 199).any()
        left, right = (cols == 0).any(), (cols == 199).any()
        crossing += top or bottom or left or right
        assert not (top and bottom) and not (left and right), seed
        assert rows.max() - rows.min() <= 65 and cols.max() - cols.min() <= 65, seed
    assert crossing >= 5  # the test did see shapes crossing an edge


def test_ellipse_near_corner_stays_in_corner():
    spec = SyntheticSpec(
        height=100, width=100, lines=(0, 0), ellipses=(1, 1), ellipse_radius=(19, 19), ellipse_aspect=(2.0, 2.0)
    )
    for seed in range(30):
        rng = np.random.default_rng(seed)
        _, mask = generate_sample(rng, spec)
        rows, cols = np.nonzero(mask == 2)
        assert rows.max() - rows.min() <= 2 * 38 + 1 and cols.max() - cols.min() <= 2 * 38 + 1


def test_line_and_ellipse_counts_are_independent():
    # With ellipses fixed to 0 the generator still draws lines (the original tied them together).
    spec = dataclasses.replace(SMALL, ellipses=(0, 0), lines=(3, 3))
    _, mask = generate_sample(np.random.default_rng(0), spec)
    assert (mask == 1).any() and not (mask == 2).any()


@pytest.mark.parametrize(
    "field, value",
    [
        ("height", 0),
        ("width", 2.5),
        ("lines", (5, 1)),
        ("ellipses", (-1, 3)),
        ("ellipse_radius", (0, 3)),
        ("ellipse_aspect", (0.0, 1.0)),
        ("line_dilation", (1.5, 2)),
        ("shape_gray", (0.0, 1.5)),
        ("background_clip", (0.9, 0.1)),
        ("noise_std", -0.1),
        ("lines", (1, 2, 3)),
    ],
)
def test_spec_validation(field, value):
    spec = dataclasses.replace(SyntheticSpec(), **{field: value})
    with pytest.raises(UserError, match=field):
        spec.validate()


def test_generate_dataset_layout_and_reproducible(tmp_path):
    summary = generate_dataset(tmp_path / "a", n_train=3, n_test=2, seed=5, spec=SMALL)
    assert summary["counts"] == {"train": 3, "test": 2}
    assert summary["class_names"] == ["background", "line", "ellipse"]
    assert abs(sum(summary["class_shares"]) - 1.0) < 1e-9
    for split, count in (("train", 3), ("test", 2)):
        names = sorted(p.name for p in (tmp_path / "a" / split / "images").iterdir())
        assert names == [f"{i:04d}.png" for i in range(count)]
        assert sorted(p.name for p in (tmp_path / "a" / split / "masks").iterdir()) == names
    image = read_image(tmp_path / "a" / "train" / "images" / "0000.png")
    mask = read_mask(tmp_path / "a" / "train" / "masks" / "0000.png", 3)
    assert image.dtype == np.uint8 and image.shape == (60, 40)
    assert mask.shape == (60, 40)

    # The files equal what generate_sample gives from the documented stream.
    expected_image, expected_mask = generate_sample(np.random.default_rng([5, 0]), SMALL)
    assert np.array_equal(mask, expected_mask)
    assert np.array_equal(image, np.round(expected_image * 255).astype(np.uint8))

    # Test images do not depend on how many training images were asked for.
    generate_dataset(tmp_path / "b", n_train=1, n_test=2, seed=5, spec=SMALL)
    for name in ("0000.png", "0001.png"):
        assert np.array_equal(
            read_image(tmp_path / "a" / "test" / "images" / name), read_image(tmp_path / "b" / "test" / "images" / name)
        )
    pixels = sum(summary["class_pixels"])
    assert pixels == 5 * 60 * 40


def test_generate_dataset_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(UserError, match="--overwrite"):
        generate_dataset(out, n_train=1, n_test=1, spec=SMALL)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    generate_dataset(out, n_train=2, n_test=1, spec=SMALL, overwrite=True)
    generate_dataset(out, n_train=1, n_test=1, spec=SMALL, overwrite=True)
    # Overwrite replaces only train/ and test/; the user's file stays, stale images are gone.
    assert (out / "keep.txt").read_text() == "user file"
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == ["0000.png"]


@pytest.mark.parametrize("kwargs", [{"n_train": -1}, {"seed": -3}, {"n_train": 0, "n_test": 0}])
def test_generate_dataset_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError):
        generate_dataset(tmp_path / "x", spec=SMALL, **kwargs)
