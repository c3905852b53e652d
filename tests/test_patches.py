"""Tests for unet_patches.data.patches: extraction, manifest, split by source, PatchFolder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unet_patches.data.folders import load_pairs, validation_count
from unet_patches.data.imageio import image_to_array, read_image, write_png
from unet_patches.data.masks import read_mask
from unet_patches.data.patch_folder import PatchFolder, manifest_preprocess, read_manifest, split_by_source
from unet_patches.data.patches import extract_patches, flip
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError

PERCENTILE = Preprocess(num_classes=3, normalize="percentile", percentiles=(2.0, 98.0))


def _write_source(root, n=3, shape=(40, 30), seed=0, rgb=False):
    """Random images; masks with foreground only in the top-left 10 x 10 corner."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image_shape = shape + (3,) if rgb else shape
        image = rng.integers(0, 256, image_shape, dtype=np.uint8)
        write_png(root / "images" / f"Img_{i + 1}.png", image)
        mask = np.zeros(shape, dtype=np.uint8)
        mask[:10, :10] = rng.integers(1, 3, (10, 10), dtype=np.uint8)
        write_png(root / "masks" / f"Mask_{i + 1}.png", mask)
    return root


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    source = _write_source(root / "src")
    summary = extract_patches(source, root / "out", patch_size=16, per_image=12, seed=3, preprocess=PERCENTILE)
    return source, root / "out", summary


def test_windows_inside_and_content_matches_source(extracted):
    source, out, summary = extracted
    manifest = read_manifest(out)
    samples = {s.name: s for s in load_pairs(source, PERCENTILE)}
    assert manifest["sources"] == {name: {"height": 40, "width": 30, "group": name} for name in samples}
    assert manifest_preprocess(manifest) == PERCENTILE
    size = manifest["patch_size"]
    for record in manifest["patches"]:
        y, x = record["y"], record["x"]
        assert 0 <= y <= 40 - size and 0 <= x <= 30 - size
        sample = samples[record["source"]]
        expected_mask = flip(sample.mask[y : y + size, x : x + size], record["flip"])
        # Patches are cut from the image normalised as a whole (per-image percentiles), then stored.
        expected_image = flip(PERCENTILE.finish(sample.image)[:, y : y + size, x : x + size], record["flip"])
        got_mask = read_mask(out / "masks" / f"{record['name']}.png", 3)
        got_image = image_to_array(read_image(out / "images" / f"{record['name']}.png"), 1)
        assert np.array_equal(got_mask, expected_mask)
        np.testing.assert_allclose(got_image, expected_image, atol=0.5 / 255)


def test_flip_variants_are_flips_of_base(extracted):
    _, out, _ = extracted
    patches = read_manifest(out)["patches"]
    assert len(patches) % 4 == 0
    for i in range(0, len(patches), 4):
        group = patches[i : i + 4]
        assert [p["flip"] for p in group] == ["none", "lr", "ud", "both"]
        assert len({(p["source"], p["y"], p["x"]) for p in group}) == 1
        base = read_image(out / "images" / f"{group[0]['name']}.png")
        base_mask = read_mask(out / "masks" / f"{group[0]['name']}.png", 3)
        expected = {"lr": np.fliplr, "ud": np.flipud, "both": lambda a: np.flipud(np.fliplr(a))}
        for record in group[1:]:
            op = expected[record["flip"]]
            assert np.array_equal(read_image(out / "images" / f"{record['name']}.png"), op(base))
            mask = read_mask(out / "masks" / f"{record['name']}.png", 3)
            assert np.array_equal(mask, op(base_mask))


def test_foreground_only_and_manifest_contents(extracted):
    _, out, summary = extracted
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("patch_size", "num_classes", "in_channels", "seed")} == {
        "patch_size": 16,
        "num_classes": 3,
        "in_channels": 1,
        "seed": 3,
    }
    names = [p["name"] for p in manifest["patches"]]
    assert names == [f"p{i}" for i in range(len(names))]
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(names)
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(names)
    # Foreground lies in rows/cols < 10 only, so a kept window must start above/left of it.
    for record in manifest["patches"]:
        assert record["y"] < 10 and record["x"] < 10
        assert read_mask(out / "masks" / f"{record['name']}.png", 3).any()
    assert summary["windows_drawn"] == 36
    assert 0 < summary["windows_kept"] < 36  # some windows were dropped
    assert summary["patches"] == 4 * summary["windows_kept"] == len(names)
    # Class pixel totals equal a recount over the written masks.
    recount = np.zeros(3, dtype=np.int64)
    for name in names:
        recount += np.bincount(read_mask(out / "masks" / f"{name}.png", 3).ravel(), minlength=3)
    assert manifest["class_pixels"] == recount.tolist() == summary["class_pixels"]


def test_without_foreground_filter_or_flips_keeps_every_window(tmp_path):
    source = _write_source(tmp_path / "src", n=2)
    summary = extract_patches(source, tmp_path / "out", patch_size=16, per_image=5, foreground_only=False, flips=False)
    manifest = read_manifest(tmp_path / "out")
    assert summary["patches"] == summary["windows_kept"] == 10
    assert {p["flip"] for p in manifest["patches"]} == {"none"}


def test_same_seed_same_windows(tmp_path):
    source = _write_source(tmp_path / "src", n=2)
    for folder, seed in (("a", 1), ("b", 1), ("c", 2)):
        extract_patches(source, tmp_path / folder, patch_size=16, per_image=6, seed=seed, foreground_only=False)
    a, b, c = (read_manifest(tmp_path / d)["patches"] for d in "abc")
    assert a == b and a != c


def test_resize_width_and_rgb(tmp_path):
    source = _write_source(tmp_path / "src", n=1, shape=(40, 30), rgb=True)
    extract_patches(
        source,
        tmp_path / "out",
        patch_size=16,
        per_image=4,
        resize_width=60,
        foreground_only=False,
        preprocess=Preprocess(in_channels=3),
    )
    manifest = read_manifest(tmp_path / "out")
    assert manifest["sources"] == {"Img_1": {"height": 80, "width": 60, "group": "Img_1"}}
    assert manifest["in_channels"] == 3 and manifest["resize_width"] == 60
    first = manifest["patches"][0]["name"]
    assert read_image(tmp_path / "out" / "images" / f"{first}.png").shape == (16, 16, 3)
    # Nearest-neighbour mask resizing keeps only existing class values.
    mask = read_mask(tmp_path / "out" / "masks" / f"{first}.png", 3)
    assert set(np.unique(mask)) <= {0, 1, 2}


def test_image_smaller_than_patch(tmp_path):
    source = _write_source(tmp_path / "src", n=1, shape=(40, 30))
    with pytest.raises(UserError, match="Img_1 is 40x30.*patches are 32x32"):
        extract_patches(source, tmp_path / "out", patch_size=32)
    assert not (tmp_path / "out" / "images").exists()


def test_refuses_non_empty_output(tmp_path):
    source = _write_source(tmp_path / "src", n=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        extract_patches(source, out, patch_size=16, per_image=3)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    extract_patches(source, out, patch_size=16, per_image=8, overwrite=True, foreground_only=False)
    extract_patches(source, out, patch_size=16, per_image=1, overwrite=True, foreground_only=False)
    assert (out / "notes.txt").read_text() == "mine"
    written = sorted(p.name for p in (out / "images").iterdir())
    assert written == ["p0.png", "p1.png", "p2.png", "p3.png"]

    with pytest.raises(UserError, match="source folder"):
        extract_patches(source, source, patch_size=16, overwrite=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patch_size": 0},
        {"per_image": 0},
        {"resize_width": -5},
        {"preprocess": Preprocess(in_channels=2)},
        {"seed": -1},
        {"resize_width": 60, "preprocess": Preprocess(resize=(50, 50))},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    source = _write_source(tmp_path / "src", n=1)
    with pytest.raises(UserError):
        extract_patches(source, tmp_path / "out", **kwargs)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(UserError, match="unet-patches patches"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(UserError, match="not a readable JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"patch_size": 16}')
    with pytest.raises(UserError, match="num_classes"):
        read_manifest(tmp_path)


def _fake_manifest(n_sources, per_source=4):
    patches = [
        {"name": f"p{i * per_source + j}", "source": f"s{i}", "y": 0, "x": 0, "flip": "none"}
        for i in range(n_sources)
        for j in range(per_source)
    ]
    return {"patch_size": 8, "num_classes": 2, "in_channels": 1, "patches": patches}


@pytest.mark.parametrize("n_sources, val_fraction, n_val", [(20, 0.1, 2), (5, 0.1, 1), (2, 0.5, 1), (3, 0.9, 2)])
def test_split_by_source(n_sources, val_fraction, n_val):
    manifest = _fake_manifest(n_sources)
    source_of = {p["name"]: p["source"] for p in manifest["patches"]}
    train, val = split_by_source(manifest, val_fraction, seed=4)
    assert sorted(train + val) == sorted(source_of)  # covers every patch once
    train_sources, val_sources = {source_of[n] for n in train}, {source_of[n] for n in val}
    assert not train_sources & val_sources
    assert len(val_sources) == n_val
    assert split_by_source(manifest, val_fraction, seed=4) == (train, val)


def test_split_by_source_edge_cases():
    assert split_by_source(_fake_manifest(1), 0.5) == ([f"p{i}" for i in range(4)], [])
    assert split_by_source(_fake_manifest(3), 0.0)[1] == []
    splits = {tuple(split_by_source(_fake_manifest(10), 0.3, seed=s)[1]) for s in range(5)}
    assert len(splits) > 1  # the seed matters
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(UserError, match="val_fraction"):
            split_by_source(_fake_manifest(3), bad)


def test_split_on_real_manifest_keeps_flips_together(extracted):
    _, out, _ = extracted
    manifest = read_manifest(out)
    train, val = split_by_source(manifest, 0.34, seed=0)
    by_name = {p["name"]: p for p in manifest["patches"]}
    assert val and train
    assert not {by_name[n]["source"] for n in train} & {by_name[n]["source"] for n in val}


def test_patch_folder(extracted):
    _, out, _ = extracted
    manifest = read_manifest(out)
    dataset = PatchFolder(out)
    assert len(dataset) == len(manifest["patches"])
    image, mask = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16)
    assert mask.dtype == torch.int64 and mask.shape == (16, 16)
    assert 0.0 <= image.min() and image.max() <= 1.0
    expected = read_mask(out / "masks" / "p0.png", 3).astype(np.int64)
    assert torch.equal(mask, torch.from_numpy(expected))

    subset = PatchFolder(out, names=["p3", "p1"], in_channels=3)
    assert len(subset) == 2 and subset[0][0].shape == (3, 16, 16)
    assert torch.equal(subset[1][1], dataset[1][1])
    with pytest.raises(ValueError, match="not in its manifest") as info:
        PatchFolder(out, names=["p0", "nope"])
    assert not isinstance(info.value, UserError)  # names come from code, not from the user

    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    images, masks = next(iter(loader))
    assert images.shape == (4, 1, 16, 16) and masks.shape == (4, 16, 16)


@pytest.mark.parametrize(
    "n, fraction, held_back",
    [(10, 0.1, 1), (10, 0.0, 0), (2, 0.01, 1), (1, 0.6, 0), (1, 0.0, 0), (10, 0.95, 9), (0, 0.5, 0)],
)
def test_validation_never_takes_every_image(n, fraction, held_back):
    # Used for patch folders (by source image) and for full-image folders alike: at least one image is
    # held back when asked for and possible, and at least one is always left to train on.
    assert validation_count(n, fraction) == held_back
