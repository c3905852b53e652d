"""Inputs read lazily (tiled / compressed / pyramidal TIFF through tifffile's Zarr store, Zarr
stores, ``--level``) and one image split by rows between processes into one shared Zarr store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from unet_patches.api import Segmenter, predict, predict_files
from unet_patches.cli import main
from unet_patches.data.imageio import image_to_array
from unet_patches.errors import UserError
from unet_patches.files.formats import OUTPUT_FORMATS
from unet_patches.files.plan import expand_inputs
from unet_patches.files.shards import Shard, row_block
from unet_patches.files.shared_zarr import marks_folder
from unet_patches.files.sources import TiffSource, ZarrSource, image_size
from unet_patches.inference.tiling import TiledPredictor, blender
from unet_patches.inference.tiling.merger import assemble

from helpers import tiny_net, write_unet_checkpoint

REPO = Path(__file__).resolve().parent.parent


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth 8-bit image (blocks of random gray), so that a network sees structure, not noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, *shape[2:]), dtype=np.uint8)
    return np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[: shape[0], : shape[1]].copy()


def _pyramid(path: Path, image: np.ndarray, levels: int = 3, **options) -> list[np.ndarray]:
    """A tiled, deflate-compressed OME-TIFF with ``levels`` levels (SubIFDs); the arrays of each level."""
    arrays = [image[:: 2**k, :: 2**k] for k in range(levels)]
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(arrays[0], tile=(64, 64), compression="zlib", subifds=levels - 1, **options)
        for array in arrays[1:]:
            tif.write(array, tile=(64, 64), compression="zlib", subfiletype=1, **options)
    return arrays


# ------------------------------------------------------------------------------------ lazy inputs


def test_a_pyramidal_compressed_tiff_is_read_by_chunk_rows_at_any_level(tmp_path):
    image = _image((300, 200))
    arrays = _pyramid(tmp_path / "slide.ome.tif", image)
    for level, array in enumerate(arrays):
        assert image_size(tmp_path / "slide.ome.tif", level=level) == array.shape
        with TiffSource(tmp_path / "slide.ome.tif", 1, level=level) as source:
            assert (source.height, source.width) == array.shape
            for start, stop in [(0, 7), (5, 70), (64, 128), (array.shape[0] - 3, array.shape[0])]:
                assert np.array_equal(source.read_rows(start, stop), image_to_array(array[start:stop], 1))
    levels = r"3 level\(s\) \(0: 200 x 300, 1: 100 x 150"
    with pytest.raises(UserError, match=rf"slide.ome.tif: level 3 asked for .* {levels}"):
        TiffSource(tmp_path / "slide.ome.tif", 1, level=3)
    tifffile.imwrite(tmp_path / "flat.tif", image)
    with pytest.raises(UserError, match=r"flat.tif: level 1 asked for .* has 1 level\(s\) \(0: 200 x 300\)"):
        image_size(tmp_path / "flat.tif", level=1)


@pytest.mark.parametrize("layout", ["HW", "HWC", "CHW", "ome-group"])
def test_a_zarr_store_is_an_image(tmp_path, layout):
    gray = _image((130, 90), seed=1)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    path = tmp_path / "scan.zarr"
    channels = 1 if layout == "HW" else 3
    expected = gray if layout == "HW" else rgb
    if layout == "HW":
        zarr.create_array(str(path), data=gray, chunks=(32, 32))
    elif layout == "HWC":
        zarr.create_array(str(path), data=rgb, chunks=(32, 32, 3))
    elif layout == "CHW":
        zarr.create_array(str(path), data=np.moveaxis(rgb, -1, 0), chunks=(1, 32, 32))
    else:  # OME-Zarr: a group with multiscales, arrays (t, c, z, y, x)
        group = zarr.open_group(str(path), mode="w")
        group.attrs["multiscales"] = [{"datasets": [{"path": "full"}, {"path": "half"}]}]
        for name, k in (("full", 1), ("half", 2)):
            data = np.moveaxis(rgb[::k, ::k], -1, 0)[None, :, None]
            group.create_array(name, data=data, chunks=(1, 3, 1, 32, 32))
    with ZarrSource(path, channels) as source:
        assert np.array_equal(source.read_rows(10, 75), image_to_array(expected[10:75], channels))
    assert image_size(path) == gray.shape
    if layout == "ome-group":
        assert image_size(path, level=1) == rgb[::2, ::2].shape[:2]
        with pytest.raises(UserError, match=r"scan.zarr: level 2 asked for .* levels 0..1"):
            ZarrSource(path, channels, level=2)
    assert expand_inputs([tmp_path]) == [path.resolve()]  # a store is one image, not a folder


def test_predicting_a_zarr_store_and_a_level_equals_predicting_the_array(tmp_path):
    image = _image((150, 120), seed=2)
    zarr.create_array(str(tmp_path / "a.zarr"), data=image, chunks=(40, 40))
    arrays = _pyramid(tmp_path / "b.ome.tif", image, levels=2)
    segmenter = Segmenter.from_checkpoint(write_unet_checkpoint(tmp_path / "ckpt.pt"))
    options = dict(window="patch", precision="fp32", compile=False, progress=False, overlay=False)
    written = predict_files(segmenter, [tmp_path / "a.zarr"], tmp_path / "out", **options)
    assert [p.name for p in written] == ["a_labels.png"]
    expected = predict(segmenter, image, window="patch", precision="fp32", compile=False)
    assert np.array_equal(np.asarray(Image.open(written[0])), expected)
    written = predict_files(segmenter, [tmp_path / "b.ome.tif"], tmp_path / "out1", level=1, **options)
    expected = predict(segmenter, arrays[1], window="patch", precision="fp32", compile=False)
    assert np.array_equal(np.asarray(Image.open(written[0])), expected)
    # the outputs folder holds a _labels.zarr of our own later: it is not taken for an input
    predict_files(segmenter, [tmp_path / "a.zarr"], tmp_path, output_format="zarr", **options)
    assert expand_inputs([tmp_path]) == [(tmp_path / name).resolve() for name in ("a.zarr", "b.ome.tif")]


def test_cli_level_must_be_a_level(tmp_path, capsys):
    checkpoint = write_unet_checkpoint(tmp_path / "ckpt.pt")
    _pyramid(tmp_path / "s.ome.tif", _image((64, 64)), levels=2)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(checkpoint), str(tmp_path / "s.ome.tif"), "-o", str(tmp_path / "o"), "--level", "x"])
    assert exit_info.value.code == 2
    assert "expected a pyramid level" in capsys.readouterr().err
    argv = ["predict", str(checkpoint), str(tmp_path / "s.ome.tif"), "-o", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--level", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s.ome.tif: level 5 asked for" in err[0] and "Traceback" not in err[0]


# ------------------------------------------------------------------------------------ rows


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_bands_of_a_row_range_equal_the_whole_images_rows_bit_for_bit(blend):
    image = np.random.default_rng(5).random((1, 203, 77), dtype=np.float32)
    predictor = TiledPredictor(tiny_net(), 32, 0.4, batch_size=3, blend=blend, precision="fp32")
    labels, probs = assemble(predictor.bands(image, probs=True), (203, 77), with_probs=True)
    for start, stop in [(0, 64), (64, 128), (128, 203), (37, 38), (0, 203), (150, 1000)]:
        part = list(predictor.bands(image, probs=True, rows=(start, stop)))
        stop = min(stop, 203)
        assert part[0].start == start and sum(b.labels.shape[0] for b in part) == stop - start
        assert np.array_equal(np.concatenate([b.labels for b in part]), labels[start:stop])
        assert np.array_equal(np.concatenate([b.probs for b in part], axis=1), probs[:, start:stop])
    assert list(predictor.bands(image, rows=(90, 90))) == []


def test_row_blocks_are_whole_chunk_rows_covering_the_image_once():
    for height, count in [(1, 1), (511, 2), (1300, 3), (5000, 7), (700, 4)]:
        blocks = [row_block(height, Shard(i, count), 512) for i in range(count)]
        assert blocks[0][0] == 0 and blocks[-1][1] == height
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(start % 512 == 0 for start, _ in blocks)


@pytest.fixture
def huge(tmp_path, monkeypatch):
    """An odd-sized TIFF (tiled, compressed), a checkpoint, and 64-row chunks so that a small image
    has several chunk rows."""
    monkeypatch.setattr(OUTPUT_FORMATS["zarr"], "block_rows", 64)
    tifffile.imwrite(tmp_path / "big.tif", _image((333, 141), seed=3), tile=(32, 32), compression="zlib")
    write_unet_checkpoint(tmp_path / "ckpt.pt")
    return tmp_path


def _run(folder: Path, out: str, *flags: str) -> int:
    argv = ["predict", str(folder / "ckpt.pt"), str(folder / "big.tif"), "-o", str(folder / out), "--no-progress"]
    return main([*argv, "--precision", "fp32", "--no-compile", "--probs", *flags])


@pytest.mark.parametrize(("count", "strips"), [(2, False), (3, False), (2, True)])
def test_one_image_over_shards_equals_one_process_bit_for_bit(huge, count, strips, monkeypatch):
    flags = []
    if strips:  # the image worked in column strips, by every shard as by the one process
        monkeypatch.setattr(blender, "STRIP_COLUMNS", 24)
        used = []
        strip_bands = blender.WindowBlender._strip_bands
        monkeypatch.setattr(blender.WindowBlender, "_strip_bands", lambda *a: used.append(1) or strip_bands(*a))
        flags = ["--window", "32", "--overlap", "0.25", "--batch-size", "2"]
    assert _run(huge, "one", "--format", "zarr", *flags) == 0
    for i in range(count):
        assert _run(huge, "sharded", "--shard", f"{i}/{count}", *flags) == 0
    for name in ("big_labels.zarr", "big_probs.zarr"):
        one, sharded = zarr.open_array(str(huge / "one" / name)), zarr.open_array(str(huge / "sharded" / name))
        assert np.array_equal(one[...], sharded[...]), name
    assert main(["merge-report", str(huge / "sharded")]) == 0
    report = json.loads((huge / "sharded" / "report.json").read_text())
    assert report["missing"] == [] and report["finished"] == list(range(count))
    assert not strips or len(used) >= 2 * (count + 1)  # two strips or more, in every run


def test_a_rerun_computes_only_the_chunk_rows_not_marked_finished(huge, monkeypatch):
    assert _run(huge, "out", "--shard", "0/2") == 0 and _run(huge, "out", "--shard", "1/2") == 0
    store = huge / "out" / "big_labels.zarr"
    good = zarr.open_array(str(store))[...]
    array = zarr.open_array(str(store), mode="r+")
    array[64:128] = 200  # chunk row 1: damaged, its mark removed (as if killed while writing it)
    array[256:320] = 201  # chunk row 4: damaged but marked finished: a rerun must not touch it
    (marks_folder(store) / "1").unlink()
    (marks_folder(huge / "out" / "big_probs.zarr") / "1").unlink()
    assert _run(huge, "out", "--shard", "0/2") == 0 and _run(huge, "out", "--shard", "1/2") == 0
    again = zarr.open_array(str(store))[...]
    assert np.array_equal(again[:256], good[:256]) and (again[256:320] == 201).all()
    report = json.loads((huge / "out" / ".shards" / "shard-1-of-2.json").read_text())
    assert report["written"] == [] and report["skipped"] == [str((huge / "big.tif").resolve())]
    from unet_patches.inference import predict as predicting

    monkeypatch.setattr(predicting, "PredictionJob", lambda *a, **k: pytest.fail("a job was settled"))
    assert _run(huge, "out", "--shard", "0/2") == 0  # every chunk row finished: no job decided


def test_a_store_of_another_job_is_refused_without_overwrite(huge, capsys):
    assert _run(huge, "out", "--format", "zarr") == 0  # a one-process store under the same name
    assert _run(huge, "out", "--shard", "0/2") == 2
    assert "big_labels.zarr: already exists, begun not by a sharded job; pass --overwrite" in capsys.readouterr().err
    assert _run(huge, "out", "--shard", "0/2", "--overwrite") == 0
    assert _run(huge, "out", "--shard", "1/2", "--window", "patch") == 2  # other settings than shard 0's
    assert "begun by another job" in capsys.readouterr().err
    assert _run(huge, "out", "--shard", "1/2", "--format", "ome-tiff") == 2
    assert "one image split over 2 shards is written as one store" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_under_torchrun_rank_0_writes_the_report(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _image((90, 70), seed=4))
    tifffile.imwrite(tmp_path / "b.tif", _image((60, 80), seed=5))
    checkpoint = write_unet_checkpoint(tmp_path / "ckpt.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "unet_patches", "predict", str(checkpoint), str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    command += ["-o", str(tmp_path / "out"), "--no-progress", "--precision", "fp32", "--no-compile"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["shards"] == 2 and report["missing"] == []
    assert sorted(Path(p).name for p in report["written"]) == sorted(
        ["a_labels.png", "a_overlay.png", "b_labels.png", "b_overlay.png"]
    )


# ------------------------------------------------------------------------------------ whole slides


def _slide(path: Path) -> list[np.ndarray]:
    """A two-level tiled RGB TIFF under a slide's name (OpenSlide reads it as a generic tiled TIFF)."""
    image = np.stack([_image((300, 200), seed=7), _image((300, 200), seed=8), _image((300, 200), seed=9)], axis=-1)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), photometric="rgb", compression="zlib")
        tif.write(image[::2, ::2], tile=(64, 64), photometric="rgb", compression="zlib", subfiletype=1)
    return [image, image[::2, ::2]]


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_a_whole_slide_is_read_by_openslide_or_else_by_tifffile(tmp_path, monkeypatch, reader):
    from unet_patches.data.preprocess import Preprocess
    from unet_patches.files import slides
    from unet_patches.files.plan import open_image

    if reader == "openslide":
        pytest.importorskip("openslide")
    else:
        monkeypatch.setattr(slides, "openslide_module", lambda: None)
    levels = _slide(tmp_path / "case.svs")
    for level, array in enumerate(levels):
        assert image_size(tmp_path / "case.svs", level=level) == array.shape[:2]
        with open_image(
            tmp_path / "case.svs", Preprocess(in_channels=3, normalize="range"), large=False, level=level
        ) as source:
            assert type(source.source).__name__ == ("SlideSource" if reader == "openslide" else "TiffSource")
            assert np.array_equal(source.read_rows(17, 140), image_to_array(array[17:140], 3))
    assert expand_inputs([tmp_path]) == [(tmp_path / "case.svs").resolve()]
    (tmp_path / "case.mrxs").write_bytes(b"not a slide")
    expected = (
        "needs OpenSlide; pip install 'unet-patches\\[openslide\\]'"
        if reader == "tifffile"
        else "OpenSlide cannot read"
    )
    with pytest.raises(UserError, match=rf"case.mrxs: .*{expected}"):
        image_size(tmp_path / "case.mrxs")
