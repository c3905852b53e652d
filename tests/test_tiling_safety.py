"""Streamed prediction files under stress: BigTIFF labels past 4 GiB, decompression-bomb and damaged
TIFF inputs, temporary files left by a killed run, and failures half-way through writing."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from torch import nn

from unet_patches.api import Segmenter, predict_files
from unet_patches.cli import main
from unet_patches.data.imageio import image_to_array
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError
from unet_patches.files import sources, writers
from unet_patches.files.formats import OUTPUT_FORMATS
from unet_patches.files.plan import open_image, remove_stale_parts, write_outputs
from unet_patches.files.sources import TiffSource
from unet_patches.files.writers import Band, TiffWriter
from unet_patches.inference.tiling import predict_labels

from helpers import tiny_net, write_unet_checkpoint

OPTIONS = dict(window=16, overlap=0.5, batch_size=8, blend="gaussian")


def as_segmenter(net: nn.Module) -> Segmenter:
    preprocess = Preprocess(in_channels=1, num_classes=3, normalize="range")
    return Segmenter(net, 16, ("class0", "class1", "class2"), preprocess)


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# ------------------------------------------------------------------------------------ BigTIFF


@pytest.mark.parametrize("bigtiff", [True, False], ids=["over", "at"])
def test_tiff_writer_switches_to_bigtiff_past_the_threshold(tmp_path, monkeypatch, bigtiff: bool) -> None:
    labels = np.random.default_rng(1).integers(0, 7, (50, 33), dtype=np.uint8)
    # The same rule as at 4 GiB, on a small image: BigTIFF only when the data is above the threshold.
    monkeypatch.setattr(writers, "BIGTIFF_THRESHOLD_BYTES", labels.nbytes - 1 if bigtiff else labels.nbytes)
    writer = TiffWriter(tmp_path / "l.tif", 50, 33)
    for start, stop in ((0, 7), (7, 8), (8, 50)):
        writer.write(labels[start:stop])
    assert writer.close() == tmp_path / "l.tif"
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert tif.is_bigtiff is bigtiff
        assert np.array_equal(tif.asarray(), labels)
    assert files_in(tmp_path) == ["l.tif"]


def test_labels_over_4_gib_are_planned_as_bigtiff_and_an_abort_leaves_nothing(tmp_path) -> None:
    big = TiffWriter(tmp_path / "big.tif", 66000, 66000)  # 4.06 GiB of uint8: classic TIFF offsets overflow
    small = TiffWriter(tmp_path / "small.tif", 65000, 65000)  # 3.93 GiB: still classic
    pyramid = TiffWriter(tmp_path / "p.ome.tif", 60000, 60000, ome=True, pyramid=True)  # 3.35 GiB + a third
    try:
        assert (big.bigtiff, small.bigtiff, pyramid.bigtiff) == (True, False, True)
        big.write(np.zeros((300, 66000), np.uint8))  # a row of tiles goes to tifffile
    finally:
        for writer in (big, small, pyramid):
            writer.abort()
    assert files_in(tmp_path) == []


def test_streamed_prediction_writes_bigtiff_labels_equal_to_in_memory(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(writers, "BIGTIFF_THRESHOLD_BYTES", 1000)
    image = np.random.default_rng(2).integers(0, 256, (61, 47), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image)
    net = tiny_net()
    predict_files(
        as_segmenter(net), [tmp_path / "a.tif"], tmp_path / "out", stream_threshold_px=0, progress=False, **OPTIONS
    )
    with tifffile.TiffFile(tmp_path / "out" / "a_labels.tif") as tif:
        assert tif.is_bigtiff
        assert np.array_equal(tif.asarray(), predict_labels(image_to_array(image, 1), net, **OPTIONS))


# ------------------------------------------------------------------------------------ bombs


def bomb(path: Path, height: int, width: int, rows_per_strip: int | None = None, **options) -> Path:
    """A real 16 x 16 TIFF whose header is patched to claim ``height x width`` pixels."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), **options)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        for code, value in ((256, width), (257, height), (278, rows_per_strip or height)):
            tag = tags[code]
            struct.pack_into({3: "<H", 4: "<I"}[tag.dtype], data, tag.valueoffset, value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({}, r"claims 100000 x 100000 pixels of uint8 \(9.3 GiB uncompressed\) but the file holds only"),
        ({"compression": "zlib"}, r"claims 100000 x 100000 pixels of uint8 stored in strips of 100000 rows.*9.3 GiB"),
        ({"compression": "zlib", "rows_per_strip": 16}, "lists 1 strip.*needs 6250; the file is damaged"),
    ],
    ids=["plain", "zlib-one-strip", "zlib-missing-strips"],
)
def test_tiff_bomb_is_refused_before_reading(tmp_path, options: dict, needle: str) -> None:
    path = bomb(tmp_path / "bomb.tif", 100000, 100000, **options)
    with pytest.raises(UserError, match=rf"bomb.tif: .*{needle}") as info:
        open_image(path, Preprocess(normalize="range"), large=True)
    assert "\n" not in str(info.value)


def test_limits_are_module_settings(tmp_path, monkeypatch) -> None:
    image = np.random.default_rng(3).integers(0, 256, (40, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "strips.tif", image, compression="zlib", rowsperstrip=8)
    planes = np.stack([image, 255 - image, image // 2])
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="rgb", planarconfig="separate", rowsperstrip=8)
    with TiffSource(tmp_path / "strips.tif", 1) as source:
        assert np.array_equal(source.read_rows(0, 40), image_to_array(image, 1))
    monkeypatch.setattr(sources, "MAX_STREAM_PIXELS", 40 * 30 - 1)
    with pytest.raises(UserError, match=r"strips.tif: .*30 x 40 pixels .*above the limit.*MAX_STREAM_PIXELS"):
        TiffSource(tmp_path / "strips.tif", 1)
    monkeypatch.setattr(sources, "MAX_STREAM_PIXELS", 40 * 30)
    monkeypatch.setattr(sources, "MAX_DECODE_BYTES", 8 * 30 - 1)  # one strip of 8 rows decodes 240 bytes
    with pytest.raises(UserError, match=r"strips.tif: .*strips of 8 rows.*240 bytes at once.*re-save it tiled"):
        TiffSource(tmp_path / "strips.tif", 1)
    monkeypatch.setattr(sources, "MAX_DECODE_BYTES", 8 * 30 * 3 - 1)  # planar: a strip of each plane at once
    with pytest.raises(UserError, match=r"planar.tif: .*30 x 40 pixels of 3 x uint8 .*strips of 8 rows"):
        TiffSource(tmp_path / "planar.tif", 3)
    monkeypatch.setattr(sources, "MAX_DECODE_BYTES", 8 * 30 * 3)
    with TiffSource(tmp_path / "planar.tif", 3) as source:
        assert np.array_equal(source.read_rows(5, 29), image_to_array(planes.transpose(1, 2, 0)[5:29], 3))


@pytest.mark.parametrize("damage", ["cut-header", "garbage-data"])
def test_damaged_tiff_is_one_line_user_error(tmp_path, damage: str) -> None:
    path = tmp_path / "bad.tif"
    image = np.random.default_rng(4).integers(0, 256, (64, 32), dtype=np.uint8)
    tifffile.imwrite(path, image, compression="zlib", rowsperstrip=8)
    data = bytearray(path.read_bytes())
    if damage == "cut-header":
        data = data[:12]
    else:
        with tifffile.TiffFile(path) as tif:
            offsets, counts = tif.pages.first.dataoffsets, tif.pages.first.databytecounts
        data[offsets[3] : offsets[3] + counts[3]] = b"\xff" * counts[3]
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="bad.tif: ") as info:
        with TiffSource(path, 1) as source:
            source.read_rows(0, 64)
    assert "\n" not in str(info.value)


def test_cli_predict_on_a_bomb_exits_2_with_one_line(tmp_path, capsys) -> None:
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    path = bomb(tmp_path / "bomb.tif", 100000, 100000, compression="zlib")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(path), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0] and "above the limit" in lines[0], lines[0]
    assert files_in(out) == []


# ------------------------------------------------------------------------------------ temporary files


def test_predict_removes_stale_parts_of_its_planned_outputs_only(tmp_path, caplog) -> None:
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", np.full((40, 40), 30, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    stale = [".a_labels.png.part", ".a_overlay.png.part", ".b_labels.tif.part", ".b_overlay.png.part"]
    kept = [".notes.part", ".a_probs.npy.part", "a_labels.png.part", ".a_labels.png.part.bak"]  # not planned / not ours
    for name in stale + kept:
        (out / name).write_bytes(b"left over")
    with caplog.at_level(logging.INFO, logger="unet_patches.files.plan"):
        written = predict_files(
            as_segmenter(tiny_net()), [tmp_path / "a.png", tmp_path / "b.tif"], out, stream_threshold_px=500,
            progress=False, **OPTIONS,
        )  # fmt: skip
    assert sorted(p.name for p in written) == ["a_labels.png", "a_overlay.png", "b_labels.tif", "b_overlay.png"]
    assert files_in(out) == sorted(kept + [p.name for p in written])
    assert all((out / name).read_bytes() == b"left over" for name in kept)
    messages = [r.getMessage() for r in caplog.records if "temporary" in r.getMessage()]
    assert len(messages) == 2 and all(name in " ".join(messages) for name in stale), messages  # one per image


def test_refused_run_removes_nothing(tmp_path) -> None:
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_labels.png").write_bytes(b"mine")
    (out / ".a_overlay.png.part").write_bytes(b"left over")
    with pytest.raises(UserError, match="already exists"):
        predict_files(as_segmenter(tiny_net()), [tmp_path / "a.png"], out, progress=False, **OPTIONS)
    assert files_in(out) == [".a_overlay.png.part", "a_labels.png"]


def test_read_failure_half_way_leaves_no_output(tmp_path, monkeypatch) -> None:
    written_rows = []
    write = TiffWriter.write
    monkeypatch.setattr(TiffWriter, "write", lambda self, rows: (written_rows.append(len(rows)), write(self, rows)))
    path = tmp_path / "cut.tif"
    tifffile.imwrite(
        path, np.random.default_rng(5).integers(0, 256, (200, 64), dtype=np.uint8), compression="zlib", rowsperstrip=5
    )
    with tifffile.TiffFile(path) as tif:
        offsets = tif.pages.first.dataoffsets
    path.write_bytes(path.read_bytes()[: offsets[30] + 10])  # rows 150.. are gone
    out = tmp_path / "out"
    with pytest.raises(UserError, match="cut.tif.*truncated"):
        predict_files(
            as_segmenter(tiny_net()), [path], out, stream_threshold_px=0, probs=True, progress=False, **OPTIONS
        )
    assert 0 < sum(written_rows) <= 150  # bands were written before the failure
    assert files_in(out) == []


def test_failure_after_some_outputs_are_in_place_removes_them(tmp_path, monkeypatch) -> None:
    labels = np.zeros((20, 30), np.uint8)
    bands = [
        Band(0, labels[:10], np.zeros((3, 10, 30), np.float32)),
        Band(10, labels[10:], np.zeros((3, 10, 30), np.float32)),
    ]
    source = sources.ArraySource(np.zeros((1, 20, 30), np.float32))
    outs = {"labels": tmp_path / "l.tif", "overlay": tmp_path / "o.png", "probs": tmp_path / "p.npy"}
    replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        replace(src, dst)

    monkeypatch.setattr(writers.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(iter(bands), source, outs, OUTPUT_FORMATS["tiff"])
    assert len(calls) == 2 and files_in(tmp_path) == []


# ------------------------------------------------------------------------------------ formats


def _bands(labels: np.ndarray, heights=(7, 1, 100, 300)):
    start = 0
    for height in [*heights, labels.shape[0]]:
        if start < labels.shape[0]:
            yield start, labels[start : start + height]
            start += len(labels[start : start + height])


@pytest.mark.parametrize("size", [(50, 33), (1000, 777), (513, 1025)])
def test_ome_tiff_labels_are_tiled_with_a_nearest_pyramid_that_viewers_read(tmp_path, size) -> None:
    labels = np.random.default_rng(3).integers(0, 7, size, dtype=np.uint8)
    writer = TiffWriter(tmp_path / "l.ome.tif", *size, tile=128, ome=True, pyramid=True)
    for _, rows in _bands(labels):
        writer.write(rows)
    writer.close()
    with tifffile.TiffFile(tmp_path / "l.ome.tif") as tif:
        assert tif.is_ome and tif.pages.first.is_tiled and tif.pages.first.tilewidth == 128
        levels = tif.series[0].levels
        assert np.array_equal(levels[0].asarray(), labels)
        assert len(levels) == 1 + writers.pyramid_levels(*size, 128)
        for k, level in enumerate(levels[1:], start=1):  # every 2**k-th row and column: class indices kept
            assert np.array_equal(level.asarray(), labels[:: 2**k, :: 2**k])
    assert files_in(tmp_path) == ["l.ome.tif"]


def test_ome_tiff_probabilities_are_a_uint8_sample_per_class_with_a_pyramid(tmp_path) -> None:
    probs = np.random.default_rng(5).random((3, 300, 211)).astype(np.float32)
    writer = writers.ProbabilityTiffWriter(tmp_path / "p.ome.tif", 3, 300, 211, tile=64, ome=True, pyramid=True)
    for start, rows in _bands(probs[0]):
        writer.write(probs[:, start : start + len(rows)])
    writer.close()
    expected = np.rint(np.moveaxis(probs, 0, -1) * 255).astype(np.uint8)
    with tifffile.TiffFile(tmp_path / "p.ome.tif") as tif:
        levels = tif.series[0].levels
        assert tif.is_ome and np.array_equal(levels[0].asarray(), expected)
        assert np.array_equal(levels[1].asarray(), expected[::2, ::2])


def test_zarr_labels_and_probabilities_round_trip_chunk_by_chunk(tmp_path) -> None:
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, (1000, 777), dtype=np.uint8)
    probs = rng.random((3, 1000, 777)).astype(np.float32)
    label_writer = writers.ZarrWriter(tmp_path / "l.zarr", 1000, 777, chunk=128)
    prob_writer = writers.ZarrWriter(tmp_path / "p.zarr", 1000, 777, classes=3, chunk=128)
    half = writers.ZarrWriter(tmp_path / "h.zarr", 1000, 777, classes=3, dtype="float16", chunk=128)
    for start, rows in _bands(labels):
        label_writer.write(rows)
        prob_writer.write(probs[:, start : start + len(rows)])
        half.write(probs[:, start : start + len(rows)])
        assert label_writer.written == (start + len(rows)) // 128 * 128 or start + len(rows) == 1000  # whole chunks
    for writer in (label_writer, prob_writer, half):
        writer.close()
    assert np.array_equal(zarr.open_array(tmp_path / "l.zarr")[:], labels)
    assert np.array_equal(zarr.open_array(tmp_path / "p.zarr")[:], np.rint(probs * 255).astype(np.uint8))
    assert np.abs(zarr.open_array(tmp_path / "h.zarr")[:] - probs).max() < 1e-3
    assert zarr.open_array(tmp_path / "l.zarr").chunks == (128, 128)
    assert files_in(tmp_path) == ["h.zarr", "l.zarr", "p.zarr"]


@pytest.mark.parametrize("output_format, suffix", [("ome-tiff", ".ome.tif"), ("zarr", ".zarr"), ("tiff", ".tif")])
def test_predicted_files_in_every_format_hold_the_in_memory_labels(tmp_path, output_format, suffix) -> None:
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(2).integers(0, 256, (300, 410), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a b.png")
    net = tiny_net()
    expected = predict_labels(image_to_array(image, 1), net, **OPTIONS)
    segmenter = as_segmenter(net)
    out = tmp_path / "out"
    written = predict_files(
        segmenter, [tmp_path / "a b.png"], out, output_format=output_format, probs=True, progress=False, **OPTIONS
    )
    labels_path = out / f"a b_labels{suffix}"
    assert labels_path in written
    if output_format == "zarr":
        assert np.array_equal(zarr.open_array(labels_path)[:], expected)
        assert zarr.open_array(out / "a b_probs.zarr").shape == (3, 300, 410)
    else:
        assert np.array_equal(tifffile.imread(labels_path), expected)
    probs_name = {"zarr": "a b_probs.zarr", "ome-tiff": "a b_probs.ome.tif", "tiff": "a b_probs.npy"}[output_format]
    assert out / probs_name in written
    # A second run refuses to replace them, then replaces them when asked.
    with pytest.raises(UserError, match="already exists"):
        predict_files(segmenter, [tmp_path / "a b.png"], out, output_format=output_format, progress=False, **OPTIONS)
    predict_files(
        segmenter, [tmp_path / "a b.png"], out, output_format=output_format, overwrite=True, progress=False, **OPTIONS
    )


def test_float16_probabilities_are_for_zarr_only(tmp_path) -> None:
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(6).integers(0, 256, (70, 90), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    segmenter, out = as_segmenter(tiny_net()), tmp_path / "out"
    expected = predict_labels(image_to_array(image, 1), tiny_net(), return_probs=True, **OPTIONS)[1]
    options = dict(probs=True, progress=False, probs_dtype="float16", **OPTIONS)
    predict_files(segmenter, [tmp_path / "a.png"], out, output_format="zarr", **options)
    stored = zarr.open_array(out / "a_probs.zarr")
    assert stored.dtype == np.float16 and np.abs(stored[:] - expected).max() < 1e-3
    with pytest.raises(UserError, match="--probs-dtype float16 is for --format zarr"):
        predict_files(segmenter, [tmp_path / "a.png"], tmp_path / "o2", output_format="ome-tiff", **options)


def test_a_zarr_store_left_by_a_killed_run_is_removed_and_a_failed_one_leaves_nothing(tmp_path) -> None:
    pytest.importorskip("zarr")
    out = tmp_path / "out"
    stale = writers.ZarrWriter(out / "a_labels.zarr", 40, 30, chunk=16)
    stale.write(np.zeros((20, 30), np.uint8))  # killed here: .a_labels.zarr.part/ stays
    assert files_in(out) == [".a_labels.zarr.part"]
    assert remove_stale_parts([out / "a_labels.zarr"]) == [out / ".a_labels.zarr.part"]
    failed = writers.ZarrWriter(out / "a_labels.zarr", 40, 30, chunk=16)
    failed.write(np.zeros((20, 30), np.uint8))
    with pytest.raises(ValueError, match="only 20 of 40 rows"):
        failed.close()
    assert files_in(out) == []


def test_predict_sets_the_heap_up_before_anything_else(tmp_path, monkeypatch) -> None:
    """glibc fixes its number of arenas when a thread first needs one: ``predict`` must ask for one
    arena before any decoding thread runs (BENCHMARKS.md, memory: the default command line)."""
    from unet_patches import runtime
    from unet_patches.inference import predict as predict_module

    calls: list[str] = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("heap") or True)
    real = predict_module.predict_files
    monkeypatch.setattr(predict_module, "predict_files", lambda *a, **k: calls.append("predict") or real(*a, **k))
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(tmp_path / "a.png")
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    assert (
        main(["predict", str(checkpoint), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    )
    assert calls[:2] == ["heap", "predict"]
