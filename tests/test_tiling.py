"""Tiled inference: placement, weights, oracles (identity/affine/probe/MONAI), TTA, streaming, files."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from unet_patches.api import Segmenter, predict_files
from unet_patches.data.imageio import image_to_array, read_image
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError
from unet_patches.files.plan import expand_inputs
from unet_patches.files.sources import ArraySource, TiffSource
from unet_patches.files.writers import NpyWriter, PngWriter, TiffWriter
from unet_patches.inference.tiling import (
    BLEND_MODES,
    TiledPredictor,
    WindowBlender,
    axis_starts,
    axis_weights,
    blend_weights,
    check_coverage,
    pad_indices,
    place_windows,
    predict_labels,
    sliding_window,
)
from unet_patches.inference.tiling.weights import MIN_WEIGHT
from unet_patches.runtime import cpu_has_fast_bf16, resolve_precision

from helpers import tiny_net

# ------------------------------------------------------------------------------------ helpers


def as_segmenter(net: nn.Module, in_channels: int = 1, classes: int = 3) -> Segmenter:
    """``net`` with the facts predict_files needs (a 16-pixel training patch)."""
    preprocess = Preprocess(in_channels=in_channels, num_classes=classes, normalize="range")
    return Segmenter(net, 16, tuple(f"class{c}" for c in range(classes)), preprocess)


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random float32 image, strictly non-zero (values in [0.1, 1.1))."""
    return (np.random.default_rng(seed).random(shape) + 0.1).astype(np.float32)


class Counting(nn.Module):
    """Identity that records each forward's batch, to pin the number and make-up of the passes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        return x


# ------------------------------------------------------------------------------------ placement


@pytest.mark.parametrize("window", [1, 7, 16, 96])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, 3])
def test_axis_starts_end_at_border_without_duplicates(window: int, overlap: float) -> None:
    if isinstance(overlap, int) and overlap >= window:
        pytest.skip("overlap in pixels must be smaller than the window")
    stride = window - overlap if isinstance(overlap, int) else max(1, int(window * (1 - overlap)))
    for length in range(window, window + 130):
        starts = place_windows((length, window), window, overlap)[0]
        assert starts[0] == 0 and starts[-1] + window == length
        assert np.all(np.diff(starts) >= 1), "duplicated start"
        assert np.all(np.diff(starts) <= stride), "stride larger than asked (overlap smaller)"
        assert len(starts) == math.ceil((length - window) / stride) + 1
        check_coverage(starts, window, length)


def test_place_windows_matches_the_issue_rule_and_accepts_pairs() -> None:
    rows, cols = place_windows((2048, 100), (96, 20), (0.5, 5))
    assert len(rows) == math.ceil((2048 - 96) / 48) + 1
    assert rows.tolist() == np.floor(np.linspace(0, 2048 - 96, len(rows)) + 0.5).astype(int).tolist()
    assert cols.tolist() == np.floor(np.linspace(0, 80, math.ceil(80 / 15) + 1) + 0.5).astype(int).tolist()
    # Pixels and fractions agree; an axis shorter than the window gets one (padded) window.
    assert np.array_equal(place_windows((500, 500), 96, 48)[0], place_windows((500, 500), 96, 0.5)[0])
    assert place_windows((5, 300), 16, 0.5)[0].tolist() == [0]
    assert axis_starts(16, 16, 8).tolist() == [0]


@pytest.mark.parametrize(
    "starts, window, length, message",
    [
        ([0, 10, 30], 16, 46, "not covered"),
        ([2, 10], 16, 26, "not covered"),
        ([0, 10], 16, 30, "border"),
        ([0, 10, 10, 14], 16, 30, "repeat"),
        ([], 16, 30, "no windows"),
    ],
)
def test_check_coverage_fails_loudly(starts: list[int], window: int, length: int, message: str) -> None:
    # The windows are placed by the code, so a failure is a bug with a traceback, not a UserError.
    with pytest.raises(ValueError, match=message) as info:
        check_coverage(starts, window, length)
    assert not isinstance(info.value, UserError)


@pytest.mark.parametrize("options", [{}, {"compression": "zlib", "rowsperstrip": 5}], ids=["plain", "zlib"])
def test_truncated_tiff_is_a_user_error_naming_the_file(tmp_path, options: dict) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.random.default_rng(5).integers(0, 256, (200, 64), dtype=np.uint8), **options)
    with tifffile.TiffFile(path) as tif:
        offsets = tif.pages.first.dataoffsets
    path.write_bytes(path.read_bytes()[: offsets[len(offsets) // 2] + 100])
    with pytest.raises(UserError, match="cut.tif.*truncated"), TiffSource(path, in_channels=1) as source:
        source.read_rows(0, 200)


def test_arrays_from_code_raise_value_error_not_user_error() -> None:
    for call in (lambda: place_windows((0, 16), 16), lambda: ArraySource(np.zeros((16, 16), np.float32))):
        with pytest.raises(ValueError) as info:
            call()
        assert not isinstance(info.value, UserError)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": 0}, "window"),
        ({"window": (16, 16, 16)}, "window"),
        ({"window": 16.0}, "window"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"overlap": 16}, "overlap"),
        ({"overlap": "half"}, "overlap"),
        ({"batch_size": 0}, "batch_size"),
        ({"blend": "median"}, "blend"),
        ({"padding": "wrap"}, "padding"),
        ({"precision": "int8"}, "precision"),
        ({"blend": "gaussian", "sigma_scale": 0.0}, "sigma_scale"),
    ],
)
def test_bad_settings_raise_user_error(kwargs: dict, message: str) -> None:
    settings = {"window": 16, "overlap": 0.5, **kwargs}
    with pytest.raises(UserError, match=message):
        TiledPredictor(lambda x: x, **settings)


def test_unknown_activation_is_a_programmer_error() -> None:
    # No setting or flag chooses the activation: only Python code passes it.
    with pytest.raises(ValueError, match="activation") as info:
        TiledPredictor(lambda x: x, 16, 0.5, activation="tanh")
    assert not isinstance(info.value, UserError)


# ------------------------------------------------------------------------------------ weights


@pytest.mark.parametrize("size", [1, 2, 15, 16, 96, 97])
@pytest.mark.parametrize("mode", ["gaussian", "hann"])
def test_profiles_are_symmetric_centred_and_positive(size: int, mode: str) -> None:
    profile = axis_weights(size, mode)
    assert np.array_equal(profile, profile[::-1])
    assert profile.min() > 0 and profile.max() == pytest.approx(1.0)
    centre = np.flatnonzero(profile == profile.max())
    assert centre.tolist() == ([size // 2] if size % 2 else [size // 2 - 1, size // 2])
    if size > 2:
        assert np.all(np.diff(profile[: (size + 1) // 2]) >= 0)  # rises to the centre (flat floor)


def test_blend_weights_are_outer_products_and_sigma_matters() -> None:
    w = blend_weights((16, 9), "gaussian", sigma_scale=0.125)
    assert w.dtype == np.float32 and w.shape == (16, 9)
    expected = np.outer(axis_weights(16, "gaussian"), axis_weights(9, "gaussian"))
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert np.array_equal(blend_weights(8, "mean"), np.ones((8, 8)))
    narrow, wide = axis_weights(32, "gaussian", 0.05), axis_weights(32, "gaussian", 0.3)
    assert narrow[4] < wide[4]
    assert axis_weights(96, "gaussian", 0.01).min() > 0  # floored, no underflow to zero


def test_blend_modes_registry() -> None:
    assert list(BLEND_MODES) == ["mean", "gaussian", "hann"] and "hann" in BLEND_MODES
    for mode, profile in BLEND_MODES.items():
        raw = profile(17, 0.125)
        assert raw.dtype == np.float64 and raw.shape == (17,)
        np.testing.assert_array_equal(axis_weights(17, mode), np.maximum(raw / raw.max(), MIN_WEIGHT))
    with pytest.raises(UserError, match=r"blend = 'median': unknown blend mode \(did you mean 'mean'\?\)"):
        axis_weights(16, "median")
    with pytest.raises(UserError, match="sigma_scale = 0"):
        axis_weights(16, "gaussian", 0)


# ------------------------------------------------------------------------------------ oracles


@pytest.mark.parametrize("blend", BLEND_MODES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("shape", [(1, 37, 53), (2, 5, 7), (1, 10, 70), (3, 16, 16)])
def test_identity_and_affine_networks_come_back(blend: str, overlap: float, shape: tuple[int, ...]) -> None:
    image = random_image(shape, seed=sum(shape))
    for network, expected in ((lambda x: x, image), (lambda x: 2 * x + 1, 2 * image + 1)):
        out = sliding_window(image, network, 16, overlap, blend=blend, activation=None, batch_size=5)
        assert out.dtype == np.float32 and out.shape == image.shape
        np.testing.assert_allclose(out, expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("padding", ["constant", "reflect", "replicate"])
def test_padding_probe_shows_what_the_padding_adds(padding: str) -> None:
    image = random_image((1, 5, 7), seed=3)
    fill = 0.25
    probe = lambda x: x + x.sum(dim=(1, 2, 3), keepdim=True)  # noqa: E731
    out = sliding_window(image, probe, 16, 0.5, activation=None, padding=padding, pad_value=fill)
    numpy_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[padding]
    pads = ((0, 0), ((16 - 5) // 2, 16 - 5 - (16 - 5) // 2), ((16 - 7) // 2, 16 - 7 - (16 - 7) // 2))
    extra = {"constant_values": fill} if padding == "constant" else {}
    window_sum = np.pad(image, pads, mode=numpy_mode, **extra).sum(dtype=np.float64)
    np.testing.assert_allclose(out, image + window_sum, rtol=1e-5)


@pytest.mark.parametrize("mode, numpy_mode", [("reflect", "reflect"), ("replicate", "edge"), ("constant", None)])
@pytest.mark.parametrize("length", [1, 2, 3, 7])
@pytest.mark.parametrize("before, after", [(0, 0), (2, 3), (9, 20)])
def test_pad_indices_match_numpy_pad(mode: str, numpy_mode: str | None, length: int, before: int, after: int) -> None:
    values = np.arange(10, 10 + length)
    index = pad_indices(length, before, after, mode)
    if numpy_mode is None:
        padded = np.pad(values, (before, after), constant_values=-1)
        assert np.array_equal(np.where(index >= 0, values[np.maximum(index, 0)], -1), padded)
    else:
        assert np.array_equal(values[index], np.pad(values, (before, after), mode=numpy_mode))


def test_batch_size_does_not_change_the_result() -> None:
    image = random_image((1, 45, 61), seed=4)
    per_sample = lambda x: x + x.mean(dim=(1, 2, 3), keepdim=True)  # noqa: E731
    one = sliding_window(image, per_sample, 16, 0.5, batch_size=1, blend="gaussian", activation=None)
    seven = sliding_window(image, per_sample, 16, 0.5, batch_size=7, blend="gaussian", activation=None)
    assert np.array_equal(one, seven)
    net = tiny_net()
    a = sliding_window(image, net, 16, 0.5, batch_size=1, precision="fp32")
    b = sliding_window(image, net, 16, 0.5, batch_size=7, precision="fp32")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tta_puts_flips_into_the_same_batches() -> None:
    image = random_image((1, 40, 40), seed=5)
    counting = Counting()
    predictor = TiledPredictor(counting, 16, 0.5, batch_size=8, tta=True, activation=None)
    windows = predictor.count_windows((40, 40))
    out = predictor.probabilities(image)
    assert predictor.windows_per_batch == 2
    assert len(counting.batches) == math.ceil(windows / 2)  # not 4x the passes without TTA
    for batch in counting.batches:
        n = batch.shape[0] // 4
        assert batch.shape[0] == 4 * n
        assert torch.equal(batch[n : 2 * n], batch[:n].flip(-1))
        assert torch.equal(batch[2 * n : 3 * n], batch[:n].flip(-2))
        assert torch.equal(batch[3 * n :], batch[:n].flip(-2, -1))
    np.testing.assert_allclose(out, image, rtol=2e-6)
    # Without TTA: one pass per batch of 8 windows.
    counting.batches.clear()
    TiledPredictor(counting, 16, 0.5, batch_size=8, activation=None).probabilities(image)
    assert len(counting.batches) == math.ceil(windows / 8)


def test_tta_with_a_flip_equivariant_network_equals_no_tta() -> None:
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        kernel = torch.randn(3, 1, 3, 3, generator=torch.Generator().manual_seed(0))
        conv.weight.copy_((kernel + kernel.flip(-1) + kernel.flip(-2) + kernel.flip(-2, -1)) / 4)
    image = random_image((1, 37, 29), seed=6)
    plain = sliding_window(image, conv, 16, 0.5, blend="gaussian")
    flipped = sliding_window(image, conv, 16, 0.5, blend="gaussian", tta=True)
    np.testing.assert_allclose(flipped, plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        sliding_window(image, tiny_net(), 16, 0.5, tta=True), sliding_window(image, tiny_net(), 16, 0.5)
    )


@pytest.mark.parametrize("size", [(40, 56), (16, 32), (10, 13)])
def test_mean_blending_equals_monai_constant_mode(size: tuple[int, int]) -> None:
    monai = pytest.importorskip("monai.inferers")
    net = tiny_net()
    image = random_image((1, *size), seed=7)
    ours = sliding_window(image, net, 16, 0.5, blend="mean", padding="constant", precision="fp32", batch_size=4)
    with torch.no_grad():
        theirs = monai.sliding_window_inference(
            torch.from_numpy(image)[None],
            (16, 16),
            4,
            lambda x: torch.softmax(net(x), 1),
            overlap=0.5,
            mode="constant",
            padding_mode="constant",
        )[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_precision_policy() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("fp32", cpu).dtype is None
    assert resolve_precision("auto", cuda).dtype is torch.float16
    auto = resolve_precision("auto", cpu)
    assert auto.channels_last
    assert auto.dtype is (torch.bfloat16 if cpu_has_fast_bf16() else None)
    image = random_image((1, 24, 24), seed=8)
    fp32 = sliding_window(image, tiny_net(), 16, 0.5, precision="fp32")
    bf16 = sliding_window(image, tiny_net(), 16, 0.5, precision="bf16")
    assert bf16.dtype == np.float32  # sums stay float32
    assert np.mean(fp32.argmax(0) == bf16.argmax(0)) > 0.95


def test_batchnorm_folding_keeps_outputs_and_leaves_the_model_alone() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    image = random_image((1, 30, 30), seed=9)
    net.train()
    folded = TiledPredictor(net, 16, 0.5, precision="fp32")
    assert net.training and isinstance(net[1], nn.BatchNorm2d)  # the caller's model is untouched
    assert not isinstance(folded.network[1], nn.BatchNorm2d)
    plain = TiledPredictor(net, 16, 0.5, precision="fp32", inference_copy=False)
    assert not net.training  # run as it is: put in eval mode
    np.testing.assert_allclose(folded.probabilities(image), plain.probabilities(image), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"name": "unet", "upsampling": "bilinear"},
        {"name": "unet", "upsampling": "transpose", "normalization": "none"},
        {"name": "unet", "upsampling": "nearest", "depth": 2},
        {"name": "vgg16_unet"},
        {"name": "inception_unet"},
    ],
)
def test_the_inference_copy_splits_the_decoder_concatenations_and_keeps_the_outputs(options) -> None:
    from unet_patches.inference.tiling.network import inference_copy
    from unet_patches.models import ModelConfig, build_model
    from unet_patches.models.blocks import SplitInput
    from unet_patches.models.unet import Up

    torch.manual_seed(0)
    config = {"base_width": 4, "num_classes": 3, **options}
    if options["name"] == "vgg16_unet":
        config.update(base_width=8)
    model = build_model(ModelConfig(**config).to_dict())
    with torch.no_grad():  # BatchNorm statistics that folding has to carry
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = inference_copy(model)
    ups = [m for m in copy.modules() if isinstance(m, Up)]
    splittable = options["name"] != "inception_unet"  # its blocks do not start with one convolution
    assert ups and all(isinstance(up.conv, SplitInput) == splittable for up in ups)
    assert not any(isinstance(m, SplitInput) for m in model.modules())  # the model itself is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(2, 1, 48, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(copy(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ streaming


def test_bands_cover_the_rows_once_in_order_and_stay_small() -> None:
    image = random_image((1, 203, 35), seed=10)
    predictor = TiledPredictor(tiny_net(), 16, 0.5, batch_size=3)
    bands = list(predictor.bands(image, probs=True))
    starts = [b.start for b in bands]
    assert starts[0] == 0 and starts == sorted(starts)
    assert sum(len(b.labels) for b in bands) == 203
    assert all(b.start + len(b.labels) == n.start for b, n in zip(bands, bands[1:]))
    assert max(len(b.labels) for b in bands) <= 16
    labels, probs = predictor.labels(image, return_probs=True)
    assert np.array_equal(np.concatenate([b.labels for b in bands]), labels)
    assert np.array_equal(labels, probs.argmax(0))


def _write_tiffs(folder, image_u16, image_rgb):
    paths = {"contiguous": folder / "contiguous.tif", "strips": folder / "strips.tif", "tiled": folder / "tiled.tiff"}
    tifffile.imwrite(paths["contiguous"], image_u16)
    tifffile.imwrite(paths["strips"], (image_u16 >> 8).astype(np.uint8), compression="zlib", rowsperstrip=5)
    tifffile.imwrite(paths["tiled"], image_rgb, compression="zlib", tile=(32, 32), photometric="rgb")
    return paths


@pytest.mark.parametrize("kind", ["contiguous", "strips", "tiled"])
def test_streamed_tiff_gives_exactly_the_in_memory_labels(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(11)
    image_u16 = rng.integers(0, 65536, size=(77, 45), dtype=np.uint16)
    image_rgb = rng.integers(0, 256, size=(77, 45, 3), dtype=np.uint8)
    path = _write_tiffs(tmp_path, image_u16, image_rgb)[kind]
    net = tiny_net()
    options = dict(window=16, overlap=0.5, batch_size=5, blend="gaussian")

    raw = read_image(path)
    with TiffSource(path, in_channels=1) as source:
        assert np.array_equal(source.read_rows(0, 77), image_to_array(raw, 1))
    expected, expected_probs = predict_labels(image_to_array(raw, 1), net, return_probs=True, **options)

    written = predict_files(
        as_segmenter(net), [path], tmp_path / "out", stream_threshold_px=0, probs=True, progress=False, **options
    )
    labels_path = tmp_path / "out" / f"{path.stem}_labels.tif"
    assert labels_path in written
    assert np.array_equal(tifffile.imread(labels_path), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{path.stem}_probs.npy"), expected_probs)
    assert np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_overlay.png")).shape == (77, 45, 3)
    assert len(np.unique(expected)) > 1


def test_in_memory_png_input_writes_labels_png(tmp_path) -> None:
    image = (np.random.default_rng(12).random((33, 50)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    net = tiny_net()
    written = predict_files(
        as_segmenter(net), [tmp_path / "a.png"], tmp_path / "out", window=16, blend="gaussian", progress=False
    )
    expected = predict_labels(image_to_array(image, 1), net, 16, blend="gaussian")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a_labels.png")), expected)
    assert sorted(p.name for p in written) == ["a_labels.png", "a_overlay.png"]


def test_writers_round_trip_in_bands(tmp_path) -> None:
    rng = np.random.default_rng(13)
    gray = rng.integers(0, 256, (50, 33), dtype=np.uint8)
    rgb = rng.integers(0, 256, (50, 33, 3), dtype=np.uint8)
    probs = rng.random((3, 50, 33)).astype(np.float32)
    writers = [
        (PngWriter(tmp_path / "g.png", 50, 33), gray),
        (PngWriter(tmp_path / "c.png", 50, 33, channels=3), rgb),
        (TiffWriter(tmp_path / "t.tif", 50, 33), gray),
    ]
    for writer, data in writers:
        for start, stop in ((0, 7), (7, 8), (8, 50)):
            writer.write(data[start:stop])
        writer.close()
    npy = NpyWriter(tmp_path / "p.npy", 3, 50, 33)
    for start, stop in ((0, 20), (20, 50)):
        npy.write(probs[:, start:stop])
    npy.close()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), gray)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgb)
    assert np.array_equal(tifffile.imread(tmp_path / "t.tif"), gray)
    assert np.array_equal(np.load(tmp_path / "p.npy", mmap_mode="r"), probs)
    unfinished = PngWriter(tmp_path / "u.png", 50, 33)
    unfinished.write(gray[:10])
    with pytest.raises(ValueError, match="rows"):
        unfinished.close()
    assert sorted(os.listdir(tmp_path)) == ["c.png", "g.png", "p.npy", "t.tif"]


# ------------------------------------------------------------------------------------ files


def test_predict_files_refuses_to_overwrite(tmp_path) -> None:
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "b.png")
    out = tmp_path / "out"
    predict_files(as_segmenter(tiny_net()), [str(tmp_path / "b.png")], out, window=16, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    Image.fromarray(np.full((20, 20), 10, np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(UserError, match="already exists.*overwrite"):
        predict_files(as_segmenter(tiny_net()), [str(tmp_path / "b.png")], out, window=16, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    predict_files(as_segmenter(tiny_net()), [str(tmp_path / "b.png")], out, window=16, progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} != before


def test_expand_inputs_files_folders_globs(tmp_path) -> None:
    for name in ("x.png", "y.tif", "x_labels.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"")
    assert [p.name for p in expand_inputs([tmp_path])] == ["x.png", "y.tif"]
    assert [p.name for p in expand_inputs([str(tmp_path / "*.png"), tmp_path / "x.png"])] == ["x.png"]
    with pytest.raises(UserError, match="matches no image"):
        expand_inputs([str(tmp_path / "*.jpg")])
    with pytest.raises(UserError, match="not found"):
        expand_inputs([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        expand_inputs([tmp_path / "empty"])


def test_same_stem_in_two_folders_is_refused(tmp_path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / "img.png")
    with pytest.raises(UserError, match="both write"):
        predict_files(
            as_segmenter(tiny_net()), [tmp_path / "a", tmp_path / "b"], tmp_path / "out", window=16, progress=False
        )


def test_unreadable_file_is_a_user_error(tmp_path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="bad.png"):
        predict_files(as_segmenter(tiny_net()), [tmp_path / "bad.png"], tmp_path / "out", window=16, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_network_matches_eager() -> None:
    image = random_image((1, 50, 50), seed=14)
    eager = sliding_window(image, tiny_net(), 16, 0.5, precision="fp32", batch_size=8)
    compiled = sliding_window(image, tiny_net(), 16, 0.5, precision="fp32", batch_size=8, compile=True)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)


def test_failed_compile_falls_back_to_eager() -> None:
    image = random_image((1, 20, 20), seed=15)
    predictor = TiledPredictor(tiny_net(), 16, 0.5, precision="fp32", compile=True)

    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C++ compiler")

    predictor.network = broken
    out = predictor.probabilities(image)
    assert not predictor.compiled
    np.testing.assert_allclose(out, sliding_window(image, tiny_net(), 16, 0.5, precision="fp32"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_batch", [1, 2, 4, 9])
@pytest.mark.parametrize("keep_sums", [True, False])
def test_the_row_merger_makes_the_sums_of_a_zeroed_image_bit_for_bit(per_batch, keep_sums):
    """Windows of uneven overlaps (as evenly spread starts give, one wider than half a window) in
    batches that split window rows: every finished row has the sums (or their argmax) of plain
    additions in window order on a zeroed image, bit for bit."""
    from unet_patches.inference.tiling.merger import RowMerger, argmax_classes

    rng = np.random.default_rng(per_batch)
    h, w = 5, 4
    ys, xs = [0, 3, 4, 7], [0, 1, 3, 6]
    outputs = rng.random((len(ys) * len(xs), 3, h, w)).astype(np.float32)
    expected = np.zeros((3, 12, 10), np.float32)
    for i, output in enumerate(outputs):
        y, x = ys[i // len(xs)], xs[i % len(xs)]
        expected[:, y : y + h, x : x + w] += output
    merger, rows = RowMerger(xs, (h, w), sums=keep_sums), []
    for r, y in enumerate(ys):
        merger.begin_row(y, ys[r + 1] if r + 1 < len(ys) else y + h)
        mine = outputs[r * len(xs) : (r + 1) * len(xs)].copy()
        for first in range(0, len(xs), per_batch):
            merger.add(mine[first : first + per_batch])
        rows.append(merger.finished())
    if keep_sums:
        np.testing.assert_array_equal(np.concatenate(rows, axis=1), expected)
    else:
        np.testing.assert_array_equal(np.concatenate(rows), argmax_classes(expected))


def test_the_row_merger_refuses_more_classes_than_uint8_labels_hold():
    from unet_patches.inference.tiling.merger import RowMerger

    merger = RowMerger([0], (2, 2))
    merger.begin_row(0, 2)
    with pytest.raises(ValueError, match="257 classes"):
        merger.add(np.zeros((1, 257, 2, 2), np.float32))


@pytest.mark.parametrize("torch_network", [False, True])
def test_a_network_that_reuses_its_output_array_blends_right(torch_network):
    """The merger makes its sums in the arrays forward_windows returns and keeps the last window
    until the next batch: a network that writes every batch into the same array (activation None,
    so nothing else copies it) must still give the plain blend, here the image itself."""
    kept: dict = {}

    def per_pixel(batch):
        out = kept.setdefault("out", np.empty((batch.shape[0], 2, *batch.shape[2:]), np.float32))
        out[:, 0], out[:, 1] = batch[:, 0], 1.0 - batch[:, 0]
        return out

    def per_pixel_torch(batch):
        return torch.from_numpy(per_pixel(batch.numpy()))

    image = np.random.default_rng(3).random((1, 40, 50)).astype(np.float32)
    if torch_network:
        predictor = TiledPredictor(per_pixel_torch, 16, 0.5, batch_size=3, activation=None, precision="fp32")
    else:
        predictor = WindowBlender(per_pixel, 16, 0.5, batch_size=3, activation=None)
    probs = predictor.probabilities(image)
    np.testing.assert_allclose(probs[0], image[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs[1], 1.0 - image[0], rtol=1e-5, atol=1e-6)


def test_outputs_a_network_says_are_new_are_not_copied_again():
    """ONNX Runtime and OpenVINO return new arrays on every call (``new_outputs = True``): the merger
    makes its sums in them directly, and in nothing else."""
    returned: list = []

    class Fresh:
        new_outputs = True

        def __call__(self, batch):
            returned.append(np.repeat(batch, 2, axis=1))
            return returned[-1]

    windows = np.random.default_rng(4).random((3, 1, 16, 16)).astype(np.float32)
    out = WindowBlender(Fresh(), 16, 0.5, activation=None).forward_windows(windows)
    assert np.shares_memory(out, returned[-1])
    torch_out = TiledPredictor(
        lambda b: torch.from_numpy(Fresh()(b.numpy())), 16, 0.5, activation=None, precision="fp32"
    ).forward_windows(windows)
    assert not np.shares_memory(torch_out, returned[-1])  # a plain function without the marker: copied
    tta_out = TiledPredictor(
        lambda b: torch.from_numpy(Fresh()(b.numpy())), 16, 0.5, activation=None, precision="fp32", tta=True
    ).forward_windows(windows)
    assert not np.shares_memory(tta_out, returned[-1])  # the flips' average is a new array


@pytest.mark.parametrize("classes", [1, 2, 3, 5, 12, 256])
def test_argmax_classes_equals_numpy_argmax_with_ties(classes: int) -> None:
    from unet_patches.inference.tiling.merger import argmax_classes

    scores = np.random.default_rng(classes).random((classes, 23, 31)).astype(np.float32)
    scores[:, :4] = 0.5  # ties: the lowest class wins, as in numpy
    scores[-1, 5:7] = scores[0, 5:7]
    labels = argmax_classes(scores)
    assert labels.dtype == np.uint8 and labels.flags.c_contiguous
    assert np.array_equal(labels, scores.argmax(axis=0))
    # Into a strided view of a larger array, from strided scores: the same labels, nothing else touched.
    band = np.full((30, 50), 77, np.uint8)
    argmax_classes(scores[:, 2:, 3:], out=band[1:22, 5:33])
    assert np.array_equal(band[1:22, 5:33], scores[:, 2:, 3:].argmax(axis=0))
    band[1:22, 5:33] = 77
    assert (band == 77).all()


def test_keep_freed_memory_is_set_on_glibc_once() -> None:
    import platform

    from unet_patches.runtime import keep_freed_memory

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc  # mallopt accepted both settings where glibc is the C library
