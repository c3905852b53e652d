"""Normalisation modes are registry rows: each row's facts, and a new mode added as one row."""

import numpy as np
import pytest

from unet_patches.data import normalize, preprocess
from unet_patches.data.imageio import read_image, write_png
from unet_patches.data.normalize import NORMALIZE_MODES, Normalization
from unet_patches.data.patch_folder import read_manifest
from unet_patches.data.patches import extract_patches
from unet_patches.data.preprocess import Preprocess
from unet_patches.files.rows import NormalizedSource, RawSource
from unet_patches.registry import Registry


def test_each_mode_says_what_it_needs():
    facts = {name: (m.per_image, m.training_set, m.stretches) for name, m in NORMALIZE_MODES.items()}
    assert facts == {"percentile": (True, False, True), "range": (False, False, False), "dataset": (False, True, False)}
    pre = Preprocess(normalize="dataset", mean=(0.5,), std=(0.25,))
    assert pre.stored() == Preprocess(normalize="dataset")  # patches are made without training statistics
    assert Preprocess(normalize="percentile").stored() == Preprocess(normalize="percentile")
    image = np.full((1, 2, 2), 0.75, np.float32)
    np.testing.assert_array_equal(pre.finish(image), np.ones((1, 2, 2), np.float32))
    assert Preprocess(normalize="range").finish(image) is image


class MinMax(Normalization):
    """A mode added by a test: each image's minimum and maximum map to 0 and 1."""

    name = "minmax"
    summary = "per image: minimum and maximum -> 0 and 1"
    per_image = True
    stretches = True

    def statistics(self, preprocess, bands):
        values = [(float(b.min()), float(b.max())) for b in bands()]
        return min(v[0] for v in values), max(v[1] for v in values)

    def apply(self, image, preprocess, statistics):
        low, high = statistics
        return ((image - low) / (high - low)).astype(np.float32)

    def describe(self, preprocess):
        return "minimum-maximum per image"


@pytest.fixture
def with_minmax(monkeypatch):
    modes = Registry("normalize mode", {**NORMALIZE_MODES, "minmax": MinMax()})
    monkeypatch.setattr(normalize, "NORMALIZE_MODES", modes)
    monkeypatch.setattr(preprocess, "NORMALIZE_MODES", modes)


def test_a_new_mode_is_one_row(with_minmax, tmp_path):
    raw = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) % 3000 + 1000).astype(np.uint16)
    pre = Preprocess(normalize="minmax")
    whole = pre.image(raw)
    assert whole.min() == 0.0 and whole.max() == 1.0 and pre.describe() == "minimum-maximum per image"
    streamed = NormalizedSource(RawSource(raw, 1), pre, band_pixels=100)  # statistics from a pass over bands
    np.testing.assert_array_equal(streamed.read_rows(0, 64), whole)
    # Patches on disk: stored normalised (per image), as 8-bit PNGs (the mode stretches every image).
    for i in range(2):
        write_png(tmp_path / "src" / "images" / f"{i}.png", raw.astype(np.uint8))
        write_png(tmp_path / "src" / "masks" / f"{i}.png", (raw % 3).astype(np.uint8))
    (tmp_path / "src" / "images").joinpath("0.png").unlink()
    import tifffile

    tifffile.imwrite(tmp_path / "src" / "images" / "0.tif", raw)
    extract_patches(tmp_path / "src", tmp_path / "patches", patch_size=16, per_image=2, preprocess=pre)
    manifest = read_manifest(tmp_path / "patches")
    assert manifest["preprocess"]["normalize"] == "minmax"
    from_16_bit = [p["name"] for p in manifest["patches"] if p["source"].startswith("0")]
    assert from_16_bit
    for name in from_16_bit:  # stretched: range scaling would have kept 1000-4000 of 65535 at 3-16 of 255
        assert read_image(tmp_path / "patches" / "images" / f"{name}.png").max() > 100
