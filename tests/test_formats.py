"""File formats through the one reader (imageio.read_raw): PNG, JPEG, BMP, TIFF (dtypes, channels,
pages), folders mixing formats, and the same reader behind training (load_pairs) and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_patches.api import Segmenter, predict, predict_files
from unet_patches.data.folders import load_pairs
from unet_patches.data.imageio import image_to_array, read_image, write_png
from unet_patches.data.masks import read_mask
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError

from helpers import tiny_net

# ------------------------------------------------------------------------------------ helpers


def _gradient(height: int = 20, width: int = 30, channels: int = 0) -> np.ndarray:
    """A smooth uint8 image (JPEG keeps smooth images close); ``channels`` 0 means (H, W)."""
    y, x = np.mgrid[0:height, 0:width]
    gray = 40 + 4 * y + 3 * x
    if not channels:
        return gray.astype(np.uint8)
    return np.stack([gray + 10 * c for c in range(channels)], axis=-1).astype(np.uint8)


def _random(shape: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _segmenter(preprocess: Preprocess) -> Segmenter:
    classes = preprocess.num_classes
    return Segmenter(tiny_net(preprocess.in_channels, classes), 16, tuple(f"c{c}" for c in range(classes)), preprocess)


def _stack(path, pages: int = 3, height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    """Write a ``pages``-page TIFF (one series) and return its pages."""
    data = _random((pages, height, width), np.uint8, seed)
    tifffile.imwrite(path, data, photometric="minisblack")
    return data


# ------------------------------------------------------------------------------------ PNG, JPEG, BMP


@pytest.mark.parametrize("kind", ["L", "I;16", "RGB", "RGBA", "LA"])
def test_png_round_trip(tmp_path, kind):
    arrays = {
        "L": _random((20, 30), np.uint8),
        "I;16": _random((20, 30), np.uint16),
        "RGB": _random((20, 30, 3), np.uint8),
        "RGBA": _random((20, 30, 4), np.uint8),
        "LA": _random((20, 30, 2), np.uint8),
    }
    raw = arrays[kind]
    Image.fromarray(raw, mode="LA" if kind == "LA" else None).save(tmp_path / "x.png")
    got = read_image(tmp_path / "x.png")
    assert got.dtype == raw.dtype and np.array_equal(got, raw)
    top = 65535.0 if raw.dtype == np.uint16 else 255.0
    colour = raw.ndim == 3 and raw.shape[-1] >= 3
    array = image_to_array(got, 3 if colour else 1)
    expected = raw[..., :3] if colour else (raw[..., 0] if raw.ndim == 3 else raw)  # alpha dropped
    expected = np.moveaxis(np.atleast_3d(expected), -1, 0) / top
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, expected, rtol=1e-6)


def test_palette_png_reads_as_its_colours(tmp_path):
    rgb = _random((20, 30, 3), np.uint8)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "p.png")
    got = read_image(tmp_path / "p.png")
    assert got.shape == (20, 30, 3) and np.array_equal(got, np.asarray(palette.convert("RGB")))
    assert len(np.unique(got.reshape(-1, 3), axis=0)) <= 8
    # A palette with a transparent entry keeps the transparency as alpha, which image_to_array drops.
    palette.save(tmp_path / "t.png", transparency=0)
    with_alpha = read_image(tmp_path / "t.png")
    assert with_alpha.shape == (20, 30, 4)
    assert np.array_equal(image_to_array(with_alpha, 3), image_to_array(got, 3))


@pytest.mark.parametrize("channels", [0, 3], ids=["gray", "rgb"])
def test_jpeg_round_trip_is_close(tmp_path, channels):
    raw = _gradient(channels=channels)
    Image.fromarray(raw).save(tmp_path / "x.jpg", quality=95)
    got = read_image(tmp_path / "x.jpg")
    assert got.shape == raw.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - raw).max() <= 6  # lossy: close, not equal
    array = image_to_array(got, 3 if channels else 1)
    np.testing.assert_allclose(array, image_to_array(raw, 3 if channels else 1), atol=6 / 255 + 1e-6)


@pytest.mark.parametrize("channels", [0, 3], ids=["gray", "rgb"])
def test_bmp_round_trip(tmp_path, channels):
    raw = _random((20, 30, 3) if channels else (20, 30), np.uint8)
    Image.fromarray(raw).save(tmp_path / "x.bmp")
    got = read_image(tmp_path / "x.bmp")
    assert got.dtype == np.uint8 and np.array_equal(got, raw)


# ------------------------------------------------------------------------------------ TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tiff_round_trip(tmp_path, dtype, channels):
    shape = (20, 30) if channels == 1 else (20, 30, channels)
    raw = _random(shape, dtype, seed=channels)
    options = {"photometric": "minisblack"} if channels == 1 else {"photometric": "rgb"}
    if channels == 4:
        options["extrasamples"] = ("unassalpha",)
    tifffile.imwrite(tmp_path / "x.tif", raw, **options)
    got = read_image(tmp_path / "x.tif")
    assert got.dtype == raw.dtype and got.shape == raw.shape and np.array_equal(got, raw)
    scale = {np.uint8: 255.0, np.uint16: 65535.0, np.float32: 1.0}[dtype]
    array = image_to_array(got, 1 if channels == 1 else 3)
    colour = raw[..., :3] if channels > 1 else raw[..., None]  # alpha dropped
    np.testing.assert_allclose(array, np.moveaxis(colour, -1, 0) / scale, rtol=1e-6)


def test_multipage_tiff_needs_a_page(tmp_path):
    pages = _stack(tmp_path / "s.tif")
    with pytest.raises(UserError) as info:
        read_image(tmp_path / "s.tif")
    message = str(info.value)
    assert "s.tif" in message and "3 pages" in message and "data.page" in message
    for page in range(3):
        assert np.array_equal(read_image(tmp_path / "s.tif", page=page), pages[page])
    with pytest.raises(UserError, match=r"page 5 .*3 page\(s\)"):
        read_image(tmp_path / "s.tif", page=5)
    with pytest.raises(UserError, match="page -1"):
        read_image(tmp_path / "s.tif", page=-1)


def test_multipage_tiff_from_pillow_needs_a_page(tmp_path):
    pages = _random((3, 20, 30), np.uint8)
    frames = [Image.fromarray(p) for p in pages]
    frames[0].save(tmp_path / "s.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(UserError, match="3 pages.*data.page"):
        read_image(tmp_path / "s.tif")
    assert np.array_equal(read_image(tmp_path / "s.tif", page=2), pages[2])


def test_multipage_tiff_written_page_by_page_needs_a_page(tmp_path):
    pages = _random((3, 20, 30), np.uint8)
    for index, page in enumerate(pages):
        tifffile.imwrite(tmp_path / "a.tif", page, append=index > 0)
    assert np.array_equal(read_image(tmp_path / "a.tif", page=1), pages[1])
    with pytest.raises(UserError, match="pages.*data.page"):
        read_image(tmp_path / "a.tif")


def test_multipage_masks_and_images_by_page(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    images = _stack(tmp_path / "images" / "a.tif")
    labels = np.random.default_rng(5).integers(0, 3, (3, 20, 30)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "masks" / "a.tif", labels, photometric="minisblack")
    (sample,) = load_pairs(tmp_path, Preprocess(num_classes=3, normalize="range", page=1), cache=False)
    np.testing.assert_allclose(sample.image[0], images[1] / 255.0, rtol=1e-6)
    assert np.array_equal(sample.mask, labels[1])
    assert np.array_equal(read_mask(tmp_path / "masks" / "a.tif", 3, page=2), labels[2])
    with pytest.raises(UserError, match="data.page"):
        load_pairs(tmp_path, Preprocess(num_classes=3), cache=False)


def test_float_tiff_with_nan_is_refused(tmp_path):
    raw = np.full((20, 30), 0.5, dtype=np.float32)
    raw[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", raw)
    got = read_image(tmp_path / "f.tif")  # reading works; turning it into input does not
    with pytest.raises(UserError, match="NaN"):
        image_to_array(got, 1, name="f.tif")
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "f.tif", raw)
    write_png(tmp_path / "masks" / "f.png", np.zeros((20, 30), dtype=np.uint8))
    with pytest.raises(UserError, match=r"images/f.tif: float image contains NaN"):
        load_pairs(tmp_path, Preprocess(num_classes=2), cache=False)


# ------------------------------------------------------------------------------------ mixed folders


def test_folder_mixing_png_images_with_tiff_masks_and_the_reverse(tmp_path):
    rng = np.random.default_rng(3)
    image_a, image_b = _random((20, 30), np.uint8, 1), _random((20, 30), np.uint16, 2)
    mask_a, mask_b = (rng.integers(0, 3, (20, 30)).astype(np.uint8) for _ in range(2))
    write_png(tmp_path / "images" / "a.png", image_a)
    tifffile.imwrite(tmp_path / "images" / "b.tif", image_b)
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "masks" / "a.tiff", mask_a)
    write_png(tmp_path / "masks" / "b.png", mask_b)
    samples = load_pairs(tmp_path, Preprocess(num_classes=3, normalize="range"), cache=False)
    assert [s.name for s in samples] == ["a", "b"]
    np.testing.assert_allclose(samples[0].image[0], image_a / 255.0, rtol=1e-6)
    np.testing.assert_allclose(samples[1].image[0], image_b / 65535.0, rtol=1e-6)
    assert np.array_equal(samples[0].mask, mask_a) and np.array_equal(samples[1].mask, mask_b)


# ------------------------------------------------------------------------------------ one reader


def _write(path, raw) -> None:
    if path.suffix == ".tif":
        tifffile.imwrite(path, raw)
    else:
        Image.fromarray(raw).save(path)


@pytest.mark.parametrize(
    "name, raw, stream",
    [
        ("a.png", _random((37, 45), np.uint8, 7), False),
        ("b.png", _random((37, 45), np.uint16, 8) // 20, False),
        ("c.tif", _random((37, 45), np.uint16, 9) // 20, False),
        ("c.tif", _random((37, 45), np.uint16, 9) // 20, True),
        ("d.bmp", _random((37, 45, 3), np.uint8, 10), False),
    ],
    ids=["png8", "png16", "tiff16", "tiff16-streamed", "bmp-rgb"],
)
def test_predict_on_read_image_equals_predict_files(tmp_path, name, raw, stream):
    segmenter = _segmenter(Preprocess(in_channels=1, num_classes=3, normalize="percentile"))
    path = tmp_path / name
    _write(path, raw)
    expected = predict(segmenter, read_image(path), window="patch", precision="fp32")
    threshold = 0 if stream else 4096 * 4096
    written = predict_files(
        segmenter,
        [path],
        tmp_path / "out",
        window="patch",
        precision="fp32",
        overlay=False,
        progress=False,
        stream_threshold_px=threshold,
    )
    (labels_path,) = written
    labels = tifffile.imread(labels_path) if stream else np.asarray(Image.open(labels_path))
    assert labels.shape == raw.shape[:2]
    assert np.array_equal(labels, expected)
    assert len(np.unique(expected)) > 1  # the check means something only if the labels vary


def test_streamed_multipage_tiff_with_a_page_equals_in_memory(tmp_path):
    pages = _stack(tmp_path / "s.tif", height=37, width=45)
    segmenter = _segmenter(Preprocess(num_classes=3, normalize="percentile", page=1))
    expected = predict(segmenter, read_image(tmp_path / "s.tif", page=1), precision="fp32")
    assert np.array_equal(expected, predict(segmenter, pages[1], precision="fp32"))
    (labels_path,) = predict_files(
        segmenter, [tmp_path / "s.tif"], tmp_path / "out", overlay=False, progress=False, stream_threshold_px=0
    )
    assert np.array_equal(tifffile.imread(labels_path), expected)


def test_streamed_multipage_tiff_without_a_page_is_refused(tmp_path):
    _stack(tmp_path / "s.tif", height=37, width=45)
    segmenter = _segmenter(Preprocess(num_classes=3, normalize="percentile"))
    with pytest.raises(UserError, match="pages"):
        predict_files(segmenter, [tmp_path / "s.tif"], tmp_path / "small", progress=False)  # in memory: refused
    with pytest.raises(UserError, match="pages"):
        predict_files(segmenter, [tmp_path / "s.tif"], tmp_path / "large", progress=False, stream_threshold_px=0)


# ------------------------------------------------------------------------------------ found in review


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_deflate", "tiff_adobe_deflate"])
def test_compressed_tiffs_read_in_memory_and_streamed(tmp_path, compression):
    gray = _random((40, 30), np.uint8)
    Image.fromarray(gray).save(tmp_path / "c.tif", compression=compression)
    assert np.array_equal(read_image(tmp_path / "c.tif"), gray)
    segmenter = _segmenter(Preprocess(num_classes=3, normalize="range"))
    whole = predict(segmenter, gray)
    predict_files(segmenter, tmp_path / "c.tif", tmp_path / "out", stream_threshold_px=0, progress=False)
    assert np.array_equal(read_image(tmp_path / "out" / "c_labels.tif"), whole)


def test_sixteen_bit_colour_png_keeps_all_its_bits(tmp_path):
    import imagecodecs

    rgb = (np.random.default_rng(0).random((8, 9, 3)) * 3000).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb))
    got = read_image(tmp_path / "rgb16.png")
    assert got.dtype == np.uint16 and np.array_equal(got, rgb)


def test_signed_integer_images_are_scaled_by_their_maximum():
    ct = np.array([[-1024, 0], [3071, 32767]], dtype=np.int16)  # Hounsfield units
    np.testing.assert_allclose(image_to_array(ct, 1)[0], ct / 32767.0, rtol=1e-6)


def test_a_stack_is_refused_before_any_output_and_predicted_by_page(tmp_path):
    from dataclasses import replace

    (tmp_path / "in").mkdir()
    stack = np.stack([_random((20, 30), np.uint8, seed) for seed in range(3)])
    for index, page in enumerate(stack):
        tifffile.imwrite(tmp_path / "in" / "b.tif", page, append=index > 0)
    write_png(tmp_path / "in" / "a.png", _random((20, 30), np.uint8))
    segmenter = _segmenter(Preprocess(num_classes=3))
    with pytest.raises(UserError, match="3 pages.*--page"):
        predict_files(segmenter, tmp_path / "in", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # checked before a.png's outputs were written
    paged = replace(segmenter, preprocess=replace(segmenter.preprocess, page=1))  # what --page 1 does
    predict_files(paged, tmp_path / "in", tmp_path / "out", progress=False)
    assert np.array_equal(read_image(tmp_path / "out" / "b_labels.png"), predict(segmenter, stack[1]))


def test_a_kaggle_train_folder_predicts_images_not_their_masks(tmp_path):
    for name in ("1_1.tif", "1_1_mask.tif", "2_mask.tif"):
        tifffile.imwrite(tmp_path / name, _random((20, 30), np.uint8))
    written = predict_files(_segmenter(Preprocess(num_classes=3)), tmp_path, tmp_path / "out", progress=False)
    # 2_mask.tif has no 2.tif beside it, so it is an image of its own.
    assert sorted(p.name for p in written if p.name.endswith("_labels.png")) == ["1_1_labels.png", "2_mask_labels.png"]
