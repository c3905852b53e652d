"""Preprocess: percentile bounds (histogram, streamed), the three normalisation modes, resizing, the
row-source path of prediction, and inputs that match between training and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unet_patches.api import Segmenter, predict, predict_files
from unet_patches.data.imageio import image_to_array, read_image
from unet_patches.data.normalize import HISTOGRAM_BINS, NORMALIZE_MODES, percentile_bounds
from unet_patches.data.patch_folder import read_manifest
from unet_patches.data.patches import extract_patches, flip
from unet_patches.data.preprocess import (
    DatasetStatistics,
    Preprocess,
    resize_image,
    resize_labels,
    resize_probabilities,
)
from unet_patches.data.synthetic import generate_dataset
from unet_patches.errors import UserError
from unet_patches.files.sources import ArraySource, NormalizedSource
from unet_patches.training.datasets import make_datasets

from helpers import SMALL_SPEC, tiny_config

PAIRS = [(1.0, 99.8), (0.0, 100.0), (5.0, 95.0), (25.0, 75.0), (0.5, 99.5), (10.0, 90.0)]


def _whole(image: np.ndarray):
    return lambda: [image]


def _bands(image: np.ndarray, rows: int):
    return lambda: (image[..., start : start + rows, :] for start in range(0, image.shape[-2], rows))


def _bin_width(image: np.ndarray) -> float:
    return (float(image.max()) - float(image.min())) / HISTOGRAM_BINS


# ------------------------------------------------------------------------------------ percentile bounds


@pytest.mark.parametrize("percentiles", PAIRS)
def test_percentile_bounds_match_numpy_within_a_bin(percentiles):
    image = (np.random.default_rng(0).random((512, 512)) * 3 - 1).astype(np.float32)
    low, high = percentile_bounds(_whole(image), percentiles)
    expected = np.percentile(image.astype(np.float64), percentiles)
    width = _bin_width(image)
    assert abs(low - expected[0]) <= width and abs(high - expected[1]) <= width


@pytest.mark.parametrize("percentiles", [(1.0, 99.8), (25.0, 75.0)])
def test_percentile_bounds_match_numpy_within_a_bin_on_small_images(percentiles):
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    bounds = np.array(percentile_bounds(_whole(image), percentiles))
    expected = np.percentile(image.astype(np.float64), percentiles)
    assert np.abs(bounds - expected).max() <= _bin_width(image)


@pytest.mark.parametrize("percentiles", PAIRS)
def test_percentile_bounds_streamed_equal_whole(percentiles):
    image = np.random.default_rng(1).random((3, 61, 53)).astype(np.float32)  # (C, H, W), as sources give
    whole = percentile_bounds(_whole(image), percentiles)
    assert percentile_bounds(_bands(image, 7), percentiles) == whole
    assert percentile_bounds(_bands(image, 1), percentiles) == whole
    assert percentile_bounds(_bands(image, 500), percentiles) == whole


def test_percentile_bounds_order_and_extremes():
    image = np.random.default_rng(2).random((30, 40)).astype(np.float32)
    assert percentile_bounds(_whole(image), (0.0, 100.0)) == (float(image.min()), float(image.max()))
    low, high = percentile_bounds(_whole(image), (1.0, 99.8))
    assert image.min() <= low < high <= image.max()


def test_percentile_bounds_of_a_constant_image():
    image = np.full((1, 9, 11), 0.37, dtype=np.float32)
    assert percentile_bounds(_whole(image), (1.0, 99.8)) == (float(np.float32(0.37)),) * 2
    out = Preprocess().finish(image)
    assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError, match="no pixels"):
        percentile_bounds(lambda: [np.zeros((1, 0, 4), np.float32)], (1.0, 99.8))


def test_percentile_output_is_stretched_and_clipped():
    raw = (np.random.default_rng(3).random((40, 50)) * 3000).astype(np.uint16)
    out = Preprocess(percentiles=(1.0, 99.0)).image(raw)
    assert out.shape == (1, 40, 50) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    inside = ((out > 0) & (out < 1)).mean()
    assert 0.95 < inside < 0.99  # 1% clipped at each end, give or take ties


def test_percentile_makes_16bit_low_range_look_like_8bit(tmp_path):
    generate_dataset(tmp_path / "a", n_train=2, n_test=0, spec=SMALL_SPEC, bit_depth=8)
    generate_dataset(tmp_path / "b", n_train=2, n_test=0, spec=SMALL_SPEC, bit_depth=16, max_value=3000)
    percentile, by_range = Preprocess(), Preprocess(normalize="range")
    for name in ("0000.png", "0001.png"):
        eight = read_image(tmp_path / "a" / "train" / "images" / name)
        sixteen = read_image(tmp_path / "b" / "train" / "images" / name)
        assert eight.dtype == np.uint8 and sixteen.dtype == np.uint16 and sixteen.max() <= 3000
        assert np.abs(percentile.image(eight) - percentile.image(sixteen)).max() < 0.02
        # By pixel type alone the 16-bit scan is nearly black.
        assert by_range.image(sixteen).max() <= 3000 / 65535 + 1e-6
        assert np.abs(by_range.image(eight) - by_range.image(sixteen)).max() > 0.5


# ------------------------------------------------------------------------------------ modes


def test_normalize_modes_and_unknown_mode():
    assert set(NORMALIZE_MODES) == {"percentile", "range", "dataset"}
    assert Preprocess().normalize == "percentile"  # the default
    with pytest.raises(UserError, match="percentile"):
        Preprocess(normalize="zscore")


@pytest.mark.parametrize(
    "raw",
    [
        np.random.default_rng(4).integers(0, 256, (9, 11), dtype=np.uint8),
        np.random.default_rng(5).integers(0, 65536, (9, 11), dtype=np.uint16),
        np.random.default_rng(6).random((9, 11, 3)).astype(np.float32) * 5 - 2,
    ],
    ids=["uint8", "uint16", "float-rgb"],
)
def test_range_mode_is_image_to_array(raw):
    channels = 3 if raw.ndim == 3 else 1
    preprocess = Preprocess(in_channels=channels, normalize="range")
    expected = image_to_array(raw, channels)
    assert np.array_equal(preprocess.image(raw), expected)
    assert preprocess.bounds(_whole(expected)) is None


def test_dataset_statistics_equal_numpy_over_the_concatenated_pixels():
    rng = np.random.default_rng(7)
    a = rng.random((3, 20, 30)).astype(np.float32)
    b = (rng.random((3, 11, 17)) * 0.5 + 0.3).astype(np.float32)
    statistics = DatasetStatistics(3)
    statistics.add(a)
    for start in range(0, 11, 4):  # bands add up like the whole image
        statistics.add(b[:, start : start + 4])
    mean, std = statistics.result()
    pixels = np.concatenate([a.reshape(3, -1), b.reshape(3, -1)], axis=1).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="no pixels"):
        DatasetStatistics(1).result()


def test_dataset_mode_standardises():
    rng = np.random.default_rng(8)
    images = [(rng.random((2, 15, 19)) * [[[0.2]], [[0.9]]]).astype(np.float32) for _ in range(2)]
    statistics = DatasetStatistics(2)
    for image in images:
        statistics.add(image)
    preprocess = Preprocess(in_channels=2, normalize="dataset").with_statistics(*statistics.result())
    out = np.concatenate([preprocess.normalized(image, None).reshape(2, -1) for image in images], axis=1)
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=1), 1.0, rtol=1e-5)
    assert "dataset" in preprocess.describe()
    with pytest.raises(ValueError, match="statistics"):
        Preprocess(normalize="dataset").finish(images[0][:1])


# ------------------------------------------------------------------------------------ resizing


@pytest.mark.parametrize("size", [(5, 6), (40, 50), (5, 40), (13, 17)])
def test_resize_image(size):
    image = np.random.default_rng(9).random((2, 13, 17)).astype(np.float32)
    out = resize_image(image, size)
    assert out.shape == (2, *size) and out.dtype == np.float32
    constant = resize_image(np.full((2, 13, 17), 0.3, dtype=np.float32), size)
    np.testing.assert_allclose(constant, 0.3, atol=1e-6)


@pytest.mark.parametrize("size", [(5, 6), (40, 50), (13, 40)])
def test_resize_labels_keeps_only_existing_values(size):
    labels = np.random.default_rng(10).choice([0, 3, 7], size=(13, 17)).astype(np.uint8)
    out = resize_labels(labels, size)
    assert out.shape == size and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 3, 7}
    # Blocks survive an integer upscale unchanged.
    assert np.array_equal(resize_labels(labels, (26, 34))[::2, ::2], labels)


@pytest.mark.parametrize("size", [(5, 6), (40, 50)])
def test_resize_probabilities_keep_sums(size):
    logits = torch.from_numpy(np.random.default_rng(11).normal(size=(4, 13, 17)).astype(np.float32))
    probs = torch.softmax(logits, 0).numpy()
    out = resize_probabilities(probs, size)
    assert out.shape == (4, *size) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    assert out.min() >= 0.0


SIZE_PAIRS = [
    ((13, 17), (5, 40)),
    ((100, 80), (37, 23)),
    ((37, 23), (100, 80)),
    ((64, 64), (128, 32)),
    ((7, 9), (7, 3)),
]


@pytest.mark.parametrize(("source", "size"), SIZE_PAIRS)
def test_numpy_resizing_is_pytorchs_interpolate(source, size):
    """The resizing is NumPy (deployment needs no torch) and computes what torch's bilinear (with
    antialias when shrinking) and nearest-exact interpolation compute."""
    rng = np.random.default_rng(12)
    image = rng.random((3, *source), dtype=np.float32)
    tensor = torch.from_numpy(image)[None]
    shrinking = size[0] < source[0] or size[1] < source[1]
    bilinear = dict(mode="bilinear", align_corners=False)
    expected = F.interpolate(tensor, size=size, antialias=shrinking, **bilinear)[0].numpy()
    np.testing.assert_allclose(resize_image(image, size), expected, atol=1e-5, rtol=0)
    expected = F.interpolate(tensor, size=size, **bilinear)[0].numpy()
    np.testing.assert_allclose(resize_probabilities(image, size), expected, atol=1e-5, rtol=0)
    labels = rng.integers(0, 5, source).astype(np.uint8)
    expected = F.interpolate(torch.from_numpy(labels)[None, None], size=size, mode="nearest-exact")[0, 0].numpy()
    assert np.array_equal(resize_labels(labels, size), expected)


def test_scaled_resizes_before_normalising():
    raw = np.random.default_rng(12).integers(0, 256, (50, 70), dtype=np.uint8)
    preprocess = Preprocess(resize=(32, 40))
    scaled = preprocess.scaled(raw)
    assert scaled.shape == (1, 32, 40)
    assert np.array_equal(preprocess.image(raw), preprocess.finish(scaled))
    assert "resized to 32x40" in preprocess.describe()


# ------------------------------------------------------------------------------------ prediction path


@pytest.mark.parametrize("normalize", ["percentile", "dataset", "range"])
def test_normalized_source_equals_preprocess_image(normalize):
    raw = (np.random.default_rng(13).random((45, 33, 3)) * 4000).astype(np.uint16)
    preprocess = Preprocess(in_channels=3, normalize=normalize)
    if normalize == "dataset":
        preprocess = preprocess.with_statistics([0.02, 0.03, 0.04], [0.01, 0.02, 0.03])
    expected = preprocess.image(raw)
    source = NormalizedSource(ArraySource(image_to_array(raw, 3)), preprocess, band_pixels=7 * 33 * 3)
    assert source.band_rows == 7
    assert (source.channels, source.height, source.width) == (3, 45, 33)
    rows = np.concatenate([source.read_rows(start, min(start + 10, 45)) for start in range(0, 45, 10)], axis=1)
    assert rows.dtype == np.float32 and np.array_equal(rows, expected)
    np.testing.assert_array_equal(source.display_rows(0, 45), image_to_array(raw, 3))


def _net(classes: int = 3) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 2.0)
    return net.eval()


def test_predict_with_resize_returns_the_original_size(tmp_path):
    segmenter = Segmenter(_net(), 16, ("a", "b", "c"), Preprocess(resize=(32, 32)))
    raw = np.random.default_rng(14).integers(0, 256, (50, 70), dtype=np.uint8)
    labels, probs = predict(segmenter, raw, return_probs=True, precision="fp32")
    assert labels.shape == (50, 70) and labels.dtype == np.uint8
    assert probs.shape == (3, 50, 70)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(labels, probs.argmax(axis=0))
    Image.fromarray(raw).save(tmp_path / "x.png")
    (written,) = predict_files(
        segmenter, [tmp_path / "x.png"], tmp_path / "out", overlay=False, progress=False, precision="fp32"
    )
    assert np.array_equal(np.asarray(Image.open(written)), predict(segmenter, raw, precision="fp32"))


# ------------------------------------------------------------------------------------ training = inference


def _patch_inputs_match_inference(tmp_path, bit_depth: int) -> float:
    """Largest difference (in standard deviations) between a dataset-normalised training patch read from a
    patch folder and the inference input of the same window of its source image."""
    root = tmp_path / "data"
    generate_dataset(
        root, n_train=3, n_test=0, spec=SMALL_SPEC, bit_depth=bit_depth, max_value=3000 if bit_depth == 16 else None
    )
    folder = tmp_path / "patches"
    extract_patches(root / "train", folder, patch_size=32, per_image=2, preprocess=Preprocess(normalize="dataset"))
    config = tiny_config(tmp_path, str(folder), val_fraction=0.0).merged({"data": {"normalize": "dataset"}})
    sources = make_datasets(config)
    records = {r["name"]: r for r in read_manifest(folder)["patches"]}
    worst = 0.0
    for index, name in enumerate(sources.train.names):
        record = records[name]
        image = sources.preprocess.image(read_image(root / "train" / "images" / f"{record['source']}.png"))
        y, x = record["y"], record["x"]
        expected = flip(image[:, y : y + 32, x : x + 32], record["flip"])
        worst = max(worst, float(np.abs(sources.train[index][0].numpy() - expected).max()))
    return worst


def test_dataset_mode_patch_folder_matches_inference_for_8bit(tmp_path):
    assert _patch_inputs_match_inference(tmp_path, 8) < 0.05


def test_dataset_mode_patch_folder_matches_inference_for_16bit(tmp_path):
    assert _patch_inputs_match_inference(tmp_path, 16) < 0.05


def test_a_hot_pixel_does_not_spoil_the_percentiles():
    image = np.random.default_rng(0).normal(100, 10, (300, 300)).astype(np.float32)
    image[5, 5] = 1e7  # one saturated detector pixel stretches the range to 1e7
    bounds = percentile_bounds(lambda: [image], (1.0, 99.8))
    np.testing.assert_allclose(bounds, np.percentile(image, (1.0, 99.8)), atol=0.01)


def test_float_and_deep_sources_make_float_patches_that_match_inference(tmp_path):
    import tifffile

    from unet_patches.data.patch_folder import PatchFolder, manifest_preprocess

    for sub in ("images", "masks"):
        (tmp_path / "src" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(tmp_path / "src" / "images" / f"{i}.tif", (rng.random((40, 40)) * 2000 - 1000).astype("f4"))
        Image.fromarray((rng.random((40, 40)) > 0.5).astype(np.uint8)).save(tmp_path / "src" / "masks" / f"{i}.png")
    preprocess = Preprocess(num_classes=2, normalize="range")
    extract_patches(tmp_path / "src", tmp_path / "p", patch_size=16, per_image=2, flips=False, preprocess=preprocess)
    manifest = read_manifest(tmp_path / "p")
    assert manifest["image_suffix"] == ".tif" and manifest_preprocess(manifest) == preprocess
    record = manifest["patches"][0]
    image, _ = PatchFolder(tmp_path / "p")[0]
    source = preprocess.image(read_image(tmp_path / "src" / "images" / f"{record['source']}.tif"))
    y, x = record["y"], record["x"]
    np.testing.assert_array_equal(image.numpy(), source[:, y : y + 16, x : x + 16])  # not clipped to [0, 1]
