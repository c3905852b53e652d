"""Uncertainty maps and the review order: entropy against its formula, the maps written in every
output format equal to the in-memory prediction's bit for bit (streamed too), the per-image summary
against the written map, and a folder whose unsure images come first."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from unet_patches.api import Segmenter, predict, predict_files
from unet_patches.cli import main
from unet_patches.data.preprocess import Preprocess
from unet_patches.metrics.uncertainty import UncertaintyTally, normalised_entropy, review_order, to_uint8

from helpers import write_unet_checkpoint


def test_normalised_entropy_against_its_formula():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.7, 0.7, 0.7, 0.7], size=(9, 11)).transpose(2, 0, 1).astype(np.float32)
    expected = -(probs * np.log(probs)).sum(0) / np.log(4)
    np.testing.assert_allclose(normalised_entropy(probs), expected, atol=1e-6)
    assert normalised_entropy(np.full((3, 2, 2), 1 / 3, np.float32)) == pytest.approx(np.ones((2, 2)), abs=1e-6)
    sure = np.zeros((3, 2, 2), np.float32)
    sure[1] = 1
    assert np.array_equal(normalised_entropy(sure), np.zeros((2, 2), np.float32))
    assert to_uint8(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]


def test_tally_of_a_known_map():
    tally = UncertaintyTally(600, 700, ["bg", "a", "b"], threshold=0.5, tile=512)
    uncertain = np.zeros((600, 700), np.float32)
    uncertain[520:600, 600:700] = 0.9  # the bottom-right tile: 80 x 100 pixels
    labels = np.zeros((600, 700), np.uint8)
    labels[520:600, 600:650] = 2
    for start in range(0, 600, 64):
        tally.update(start, uncertain[start : start + 64], labels[start : start + 64])
    summary = tally.summary()
    assert summary["mean_uncertainty"] == pytest.approx(0.9 * 8000 / 420000, abs=1e-6)
    assert summary["uncertain_share"] == pytest.approx(8000 / 420000, abs=1e-6)
    assert summary["uncertain_classes"] == {"b": 4000, "bg": 4000}
    first = summary["regions"][0]
    assert (first["x"], first["y"], first["width"], first["height"]) == (512, 512, 188, 88)
    assert first["mean_uncertainty"] == pytest.approx(0.9 * 8000 / (188 * 88), abs=1e-6)
    assert len(summary["regions"]) == 4


def test_review_order_ranks_the_most_uncertain_first():
    summaries = {
        "a.png": {"mean_uncertainty": 0.1, "uncertain_share": 0.0},
        "b.png": {"mean_uncertainty": 0.4, "uncertain_share": 0.2},
        "c.png": {"mean_uncertainty": 0.4, "uncertain_share": 0.3},
    }
    assert [e["image"] for e in review_order(summaries, 2)] == ["c.png", "b.png"]


@pytest.mark.parametrize("fmt", ["png", "tiff", "ome-tiff", "zarr"])
def test_written_maps_equal_the_in_memory_prediction(tmp_path, fmt):
    path = write_unet_checkpoint(tmp_path / "ckpt.pt", calibration={"temperature": 1.5})
    segmenter = Segmenter.from_checkpoint(path)
    image = np.random.default_rng(1).integers(0, 255, (150, 230), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    _, probs = predict(segmenter, image, return_probs=True, precision="fp32")
    expected = to_uint8(normalised_entropy(probs))
    for streamed in (False, True):
        out = tmp_path / f"out-{streamed}"
        threshold = 100 if streamed else 10**9
        written = predict_files(
            segmenter,
            tmp_path / "img.png",
            out,
            uncertainty=True,
            output_format=fmt,
            stream_threshold_px=threshold,
            precision="fp32",
            progress=False,
        )
        stored = out / {"png": "img_uncertainty.png", "tiff": "img_uncertainty.tif"}.get(
            fmt, f"img_uncertainty.{'ome.tif' if fmt == 'ome-tiff' else 'zarr'}"
        )
        assert stored in written
        if fmt == "png":
            array = np.asarray(Image.open(stored))
        elif fmt == "zarr":
            import zarr

            array = np.asarray(zarr.open_array(str(stored))[...])
        else:
            array = tifffile.imread(stored)
        assert np.array_equal(array, expected), (fmt, streamed)
        report = json.loads((out / "report.json").read_text())
        summary = report["uncertainty"][str((tmp_path / "img.png").resolve())]
        assert summary["mean_uncertainty"] == pytest.approx(normalised_entropy(probs).mean(), abs=1e-5)
        assert report["review"] == [str((tmp_path / "img.png").resolve())]


class Confidence(nn.Module):
    """Two classes whose logits differ by ``40 (x - 0.5)``: sure where the input is far from 0.5, unsure near it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([20.0, -20.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-10.0, 10.0]))

    def forward(self, x):
        return self.conv(x)


def test_a_folder_whose_unsure_images_come_first(tmp_path, capsys):
    segmenter = Segmenter(
        network=Confidence().eval(),
        patch_size=32,
        class_names=("dark", "bright"),
        preprocess=Preprocess(in_channels=1, num_classes=2, normalize="range"),
    )
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for name, centre in (("clear_a", 250), ("clear_b", 5), ("unsure", 128), ("halfway", 100)):
        noise = rng.integers(-3, 4, (64, 80))
        Image.fromarray(np.clip(centre + noise, 0, 255).astype(np.uint8)).save(folder / f"{name}.png")
    written = predict_files(segmenter, folder, tmp_path / "out", uncertainty=True, progress=False, precision="fp32")
    order = [e["image"] for e in review_order(written.uncertainty, 4)]
    assert [p.split("/")[-1] for p in order][:2] == ["unsure.png", "halfway.png"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["review"] == order
    unsure = report["uncertainty"][str((folder / "unsure.png").resolve())]
    assert unsure["uncertain_share"] > 0.9 and set(unsure["uncertain_classes"]) <= {"dark", "bright"}
    assert report["uncertainty"][str((folder / "clear_a.png").resolve())]["uncertain_share"] == 0.0


def test_cli_predict_uncertainty_and_review(tmp_path, capsys):
    path = write_unet_checkpoint(tmp_path / "ckpt.pt")
    for k in range(3):
        image = np.random.default_rng(k).integers(0, 255, (40 + 10 * k, 60), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"in{k}.png")
    argv = ["predict", str(path), str(tmp_path / "in*.png"), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--uncertainty", "--review", "2"]) == 0
    out = capsys.readouterr().out
    assert "review first (2 of 3 images" in out and "mean uncertainty" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"in{k}_{kind}.png" for k in range(3) for kind in ("labels", "overlay", "uncertainty")] + ["report.json"]
    )
    assert main([*argv, "--uncertainty", "--overwrite"]) == 0
    capsys.readouterr()
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "report.json").write_text("mine")
    code = main([*argv[:4], str(tmp_path / "out2"), "--uncertainty", "--no-progress"])
    assert code == 2 and "report.json: already exists" in capsys.readouterr().err
    assert (tmp_path / "out2" / "report.json").read_text() == "mine"
    assert main([*argv, "--review", "3"]) == 2
    assert "--review 3" in capsys.readouterr().err


def test_sharded_reports_carry_the_summaries_and_merge_into_a_review(tmp_path, capsys):
    path = write_unet_checkpoint(tmp_path / "ckpt.pt")
    for k in range(3):
        image = np.random.default_rng(k).integers(0, 255, (40, 60), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"in{k}.png")
    for index in range(2):
        argv = ["predict", str(path), str(tmp_path / "in*.png"), "-o", str(tmp_path / "out"), "--no-progress"]
        assert main([*argv, "--uncertainty", "--shard", f"{index}/2"]) == 0
    assert main(["merge-report", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["uncertainty"]) == 3 and len(report["review"]) == 3
    means = [report["uncertainty"][name]["mean_uncertainty"] for name in report["review"]]
    assert means == sorted(means, reverse=True)


def test_overlays_wash_out_the_uncertain_pixels(tmp_path):
    segmenter = Segmenter(
        network=Confidence().eval(),
        patch_size=32,
        class_names=("dark", "bright"),
        preprocess=Preprocess(in_channels=1, num_classes=2, normalize="range"),
    )
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (40, 1))  # sure at both ends, unsure between
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    options = {"progress": False, "precision": "fp32"}
    predict_files(segmenter, tmp_path / "ramp.png", tmp_path / "plain", **options)
    predict_files(segmenter, tmp_path / "ramp.png", tmp_path / "marked", uncertainty=True, **options)
    plain = np.asarray(Image.open(tmp_path / "plain" / "ramp_overlay.png")).astype(np.uint16)
    marked = np.asarray(Image.open(tmp_path / "marked" / "ramp_overlay.png"))
    uncertain = np.asarray(Image.open(tmp_path / "marked" / "ramp_uncertainty.png")) > 0.5 * 255
    assert 0 < uncertain.sum() < uncertain.size
    assert np.array_equal(marked[uncertain], ((plain[uncertain] + 255) // 2).astype(np.uint8))
    assert np.array_equal(marked[~uncertain], plain[~uncertain].astype(np.uint8))
