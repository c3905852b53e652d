"""Calibrated probabilities: the figures (ECE, NLL, Brier) against hand-computed cases and direct
formulas, the temperature fit against a known temperature, labels never changed by calibration, the
temperature kept in checkpoints and exports and fitted at the end of training and by ``calibrate``."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_patches.api import Segmenter, evaluate_folder, predict
from unet_patches.cli import main
from unet_patches.errors import UserError
from unet_patches.inference.ensemble import ProbabilityEnsemble
from unet_patches.metrics.calibration import (
    CalibrationCounts,
    PixelSample,
    apply_temperature,
    check_temperature,
    fit_temperature,
)
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint
from unet_patches.training.run import fit

from helpers import small_dataset, tiny_config, tiny_net, unet_checkpoint_state, write_unet_checkpoint

# Four pixels, two classes: winning probabilities 0.9 (right), 0.6 (wrong), 0.7 (right), 0.5 (a tie:
# class 0 wins, right). Each falls in its own bin of 15.
PROBS = np.array([[0.9, 0.6, 0.3, 0.5], [0.1, 0.4, 0.7, 0.5]], dtype=np.float32)
TARGET = np.array([0, 1, 1, 0])


def test_ece_nll_and_brier_of_a_hand_computed_case():
    counts = CalibrationCounts(2)
    counts.update(PROBS, TARGET)
    assert counts.ece() == pytest.approx((0.1 + 0.6 + 0.3 + 0.5) / 4, abs=1e-6)
    assert counts.nll() == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.5)) / 4, abs=1e-6)
    assert counts.brier() == pytest.approx((0.02 + 0.72 + 0.18 + 0.5) / 4, abs=1e-6)
    # Class 0: p = 0.9, 0.6, 0.3, 0.5 against truth 1, 0, 0, 1; class 1 mirrors it.
    np.testing.assert_allclose(counts.ece_per_class(), [1.5 / 4, 1.5 / 4], atol=1e-6)
    summary = counts.summary(["a", "b"])
    assert summary["pixels"] == 4 and set(summary["ece_per_class"]) == {"a", "b"}
    bins = counts.reliability()
    assert len(bins) == 15 and sum(b["pixels"] for b in bins) == 4
    assert bins[9]["accuracy"] == 0.0 and bins[9]["confidence"] == pytest.approx(0.6)
    assert bins[0]["accuracy"] is None


def _direct_figures(probs: np.ndarray, target: np.ndarray, bins: int = 15) -> tuple[float, float, float]:
    """ECE, NLL and Brier straight from their definitions, pixel list in hand."""
    flat = probs.reshape(probs.shape[0], -1).astype(np.float64)
    target = target.reshape(-1)
    winner = flat.argmax(0)
    confidence = flat.max(0)
    ece = 0.0
    for b in range(bins):
        inside = (np.minimum((confidence * bins).astype(int), bins - 1)) == b
        if inside.any():
            ece += inside.mean() * abs((winner[inside] == target[inside]).mean() - confidence[inside].mean())
    true = flat[target, np.arange(target.size)]
    nll = float(-np.log(true).mean())
    onehot = np.eye(flat.shape[0])[target].T
    brier = float(((flat - onehot) ** 2).sum(0).mean())
    return ece, nll, brier


def test_streamed_counts_equal_the_direct_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 60, 50)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    target = rng.integers(0, 4, size=(60, 50))
    counts = CalibrationCounts(4)
    for start in range(0, 60, 7):  # bands of rows, as the engine yields them
        counts.update(probs[:, start : start + 7], target[start : start + 7])
    ece, nll, brier = _direct_figures(probs, target)
    assert counts.ece() == pytest.approx(ece, abs=1e-6)
    assert counts.nll() == pytest.approx(nll, rel=1e-6)
    assert counts.brier() == pytest.approx(brier, rel=1e-6)
    whole = CalibrationCounts(4)
    whole.update(probs, target)
    halves = CalibrationCounts(4)
    other = CalibrationCounts(4)
    halves.update(probs[:, :30], target[:30])
    other.update(probs[:, 30:], target[30:])
    halves.add(other)
    assert halves.ece() == pytest.approx(whole.ece(), abs=1e-12) and halves.pixels == whole.pixels


def test_pixels_outside_the_classes_are_not_counted():
    counts = CalibrationCounts(2)
    counts.update(PROBS, np.array([0, 1, 255, 0]))
    assert counts.pixels == 3


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200_000, 3)) * 2
    truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    target = (rng.random(len(truth))[:, None] > truth.cumsum(1)).sum(1)  # drawn from the true probabilities
    overconfident = logits * 2.5  # a network 2.5 times too sure
    log_probs = overconfident - np.log(np.exp(overconfident).sum(1, keepdims=True))
    assert fit_temperature(log_probs.astype(np.float32), target) == pytest.approx(2.5, rel=0.03)
    underconfident = logits * 0.5
    log_probs = underconfident - np.log(np.exp(underconfident).sum(1, keepdims=True))
    assert fit_temperature(log_probs.astype(np.float32), target) == pytest.approx(0.5, rel=0.03)
    assert fit_temperature(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)) == 1.0


def test_temperature_keeps_every_label_and_is_the_softmax_of_scaled_logs():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=(40, 30)).transpose(2, 0, 1).astype(np.float32)
    for temperature in (0.3, 1.7, 6.0):
        calibrated = apply_temperature(probs, temperature)
        assert np.array_equal(calibrated.argmax(0), probs.argmax(0))
        np.testing.assert_allclose(calibrated.sum(0), 1.0, atol=1e-5)
        scaled = np.log(np.maximum(probs, 1e-12)) / temperature
        expected = np.exp(scaled - scaled.max(0)) / np.exp(scaled - scaled.max(0)).sum(0)
        np.testing.assert_allclose(calibrated, expected, atol=1e-6)
    assert apply_temperature(probs, 1.0) is probs


def test_pixel_sample_is_bounded_uniform_and_seeded():
    probs = np.full((2, 100, 100), 0.5, dtype=np.float32)
    target = np.arange(10_000).reshape(100, 100) % 2
    small = PixelSample(2, limit=50_000)
    small.update(probs, target)
    assert small.arrays()[0].shape == (10_000, 2)  # under the limit: every pixel
    sample = PixelSample(2, limit=1000, seed=3)
    for _ in range(5):
        sample.update(probs, target)
    log_probs, kept = sample.arrays()
    assert 0 < kept.size <= 1000 and log_probs.shape == (kept.size, 2)
    again = PixelSample(2, limit=1000, seed=3)
    for _ in range(5):
        again.update(probs, target)
    assert np.array_equal(again.arrays()[1], kept)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0, "2", True])
def test_a_temperature_that_is_not_finite_and_positive_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="expected a finite number > 0"):
        check_temperature(value, "temperature")
    path = write_unet_checkpoint(tmp_path / "bad.pt", calibration={"temperature": value})
    with pytest.raises(UserError, match=r"bad.pt: calibration.temperature = .*expected a finite number > 0"):
        Segmenter.from_checkpoint(path)


def test_a_calibration_that_is_not_a_record_is_refused(tmp_path):
    path = write_unet_checkpoint(tmp_path / "odd.pt", calibration=[2.0])
    with pytest.raises(UserError, match=r"odd.pt: calibration = \[2.0\]: expected"):
        Segmenter.from_checkpoint(path)


def test_calibrated_predictions_keep_the_labels(tmp_path):
    path = write_unet_checkpoint(tmp_path / "ckpt.pt", calibration={"temperature": 2.5})
    calibrated = Segmenter.from_checkpoint(path)
    assert calibrated.temperature == 2.5
    plain = replace(calibrated, temperature=1.0)
    image = np.random.default_rng(0).integers(0, 255, (70, 90), dtype=np.uint8)
    labels, probs = predict(plain, image, return_probs=True, precision="fp32")
    labels_t, probs_t = predict(calibrated, image, return_probs=True, precision="fp32")
    assert np.array_equal(labels, labels_t)
    np.testing.assert_allclose(probs_t, apply_temperature(probs, 2.5), atol=1e-6)


def test_an_ensemble_calibrates_each_member_before_averaging():
    members = [tiny_net(seed=0), tiny_net(seed=1)]
    ensemble = ProbabilityEnsemble(members, [2.0, 0.5]).eval()
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        expected = ((members[0](x) / 2.0).softmax(1) + (members[1](x) / 0.5).softmax(1)) / 2
        torch.testing.assert_close(ensemble(x).softmax(1), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on an image folder with held-back images: its checkpoints come out calibrated."""
    root = tmp_path_factory.mktemp("calibrated")
    small_dataset(root / "synthetic", n_train=8, n_test=3)
    config = tiny_config(root, "synthetic/train", epochs=2, val_fraction=0.25, run_name="cal")
    return root, fit(config, progress_bars=False)


def test_training_ends_by_fitting_the_temperature_of_its_checkpoints(trained):
    root, summary = trained
    assert set(summary["calibration"]) == {"best", "last"}
    for which in ("best", "last"):
        state = load_checkpoint(summary[f"{which}_checkpoint"])
        record = state["calibration"]
        assert record == summary["calibration"][which]
        assert 0.05 <= record["temperature"] <= 20 and record["pixels"] > 0
        assert "held-back" in record["fitted_on"]
        # Fitted by NLL on the held-back pixels: no worse there than uncalibrated (a sample of them).
        assert record["after"]["nll"] <= record["before"]["nll"] + 1e-3
    events = list((root / "runs" / "cal").glob("events.out.tfevents.*"))
    assert events, "TensorBoard logs are written"


def test_a_run_without_held_back_images_is_not_calibrated(tmp_path):
    small_dataset(tmp_path / "synthetic", n_train=4, n_test=1)
    config = tiny_config(tmp_path, "synthetic/train", epochs=1, val_fraction=0.0, run_name="none")
    summary = fit(config, progress_bars=False)
    assert summary["calibration"] is None
    assert "calibration" not in load_checkpoint(summary["last_checkpoint"])


def test_evaluate_reports_calibrated_and_uncalibrated_figures(trained):
    root, summary = trained
    segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"])
    folder = root / "synthetic" / "test"
    scores = evaluate_folder(segmenter, folder, precision="fp32", calibration=True)
    for key in ("ece", "nll", "brier"):
        assert 0 <= scores[key] and 0 <= scores[f"{key}_uncalibrated"]
    assert scores["temperature"] == segmenter.temperature
    assert set(scores["ece_per_class"]) == set(segmenter.class_names)
    assert scores["miou"] == evaluate_folder(segmenter, folder, precision="fp32")["miou"]  # labels alike
    # The same figures from whole-image probabilities, counted directly.
    from unet_patches.data.folders import find_pairs, read_pair

    direct = CalibrationCounts(segmenter.num_classes)
    for pair in find_pairs(folder):
        raw, mask = read_pair(pair, segmenter.preprocess)
        direct.update(predict(segmenter, raw, return_probs=True, precision="fp32")[1], mask)
    assert scores["ece"] == pytest.approx(direct.ece(), abs=1e-6)
    assert scores["nll"] == pytest.approx(direct.nll(), rel=1e-5)
    plain = evaluate_folder(replace(segmenter, temperature=1.0), folder, precision="fp32", calibration=True)
    assert plain["ece"] == plain["ece_uncalibrated"] == pytest.approx(scores["ece_uncalibrated"])


def test_calibrate_fits_a_temperature_into_a_copy(trained, tmp_path, capsys):
    root, summary = trained
    source = Path(summary["best_checkpoint"])
    state = load_checkpoint(source)
    state.pop("calibration")
    old = tmp_path / "old.pt"
    save_checkpoint(state, old)
    before = old.read_bytes()
    folder = root / "synthetic" / "test"
    assert (
        main(["calibrate", str(old), "-o", str(tmp_path / "new.pt"), "--folder", str(folder), "--precision", "fp32"])
        == 0
    )
    out = capsys.readouterr().out
    assert "temperature" in out and "ECE" in out and "int8" not in out  # windows were there already
    assert old.read_bytes() == before
    record = load_checkpoint(tmp_path / "new.pt")["calibration"]
    assert record["fitted_on"].startswith(str(folder)) and record["after"]["nll"] <= record["before"]["nll"] + 1e-3
    assert main(["evaluate", str(tmp_path / "new.pt"), str(folder), "--json", "--precision", "fp32"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["temperature"] == pytest.approx(record["temperature"])
    assert scores["nll"] == pytest.approx(record["after"]["nll"], rel=1e-4)
    assert scores["nll_uncalibrated"] == pytest.approx(record["before"]["nll"], rel=1e-4)


def test_calibrate_refuses_a_folder_of_other_classes(trained, tmp_path, capsys):
    from PIL import Image

    root, summary = trained
    folder = tmp_path / "other"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(folder / "images" / "a.png")
    Image.fromarray(np.full((48, 64), 7, np.uint8)).save(folder / "masks" / "a.png")
    code = main(["calibrate", summary["best_checkpoint"], "-o", str(tmp_path / "x.pt"), "--folder", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "a.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_evaluate_report_writes_json_and_a_reliability_diagram(trained, tmp_path, capsys):
    from PIL import Image

    root, summary = trained
    report = tmp_path / "eval" / "scores.json"
    argv = ["evaluate", summary["best_checkpoint"], str(root / "synthetic" / "test"), "--report", str(report)]
    assert main([*argv, "--no-progress", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "ECE" in out and "uncalibrated" in out
    scores = json.loads(report.read_text())
    assert {"ece", "nll", "brier", "ece_uncalibrated", "reliability"} <= set(scores)
    with Image.open(tmp_path / "eval" / "scores_reliability.png") as diagram:
        assert diagram.format == "PNG" and diagram.size[0] > 300
    assert main([*argv, "--no-progress"]) == 2  # both exist: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--no-progress", "--overwrite"]) == 0


def test_exports_carry_the_temperature(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = write_unet_checkpoint(tmp_path / "ckpt.pt", calibration={"temperature": 1.8})
    assert main(["export", str(path), "--format", "onnx", "-o", str(tmp_path / "model.onnx")]) == 0
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["temperature"] == 1.8
    onnx = Segmenter.from_checkpoint(tmp_path / "model.onnx")
    assert onnx.temperature == 1.8
    image = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    labels, probs = predict(onnx, image, return_probs=True)
    torch_labels, torch_probs = predict(Segmenter.from_checkpoint(path), image, return_probs=True, precision="fp32")
    assert (labels == torch_labels).mean() > 0.999
    np.testing.assert_allclose(probs, torch_probs, atol=1e-3)
    sidecar["temperature"] = -1
    (tmp_path / "model.onnx.json").write_text(json.dumps(sidecar))
    with pytest.raises(UserError, match=r"model.onnx.json: .*temperature = -1: expected a finite number > 0"):
        Segmenter.from_checkpoint(tmp_path / "model.onnx")


def test_an_old_checkpoint_reads_as_uncalibrated(tmp_path):
    state = unet_checkpoint_state()
    save_checkpoint(state, tmp_path / "plain.pt")
    assert Segmenter.from_checkpoint(tmp_path / "plain.pt").temperature == 1.0
