"""Training on real-looking data: the Kaggle layout with its by-subject split, 16-bit and 0/255 data,
and a checkpoint that carries the preprocessing to every way of predicting."""

import json

import numpy as np
import pytest

from unet_patches.api import Segmenter, evaluate_folder, predict, predict_files
from unet_patches.cli import main
from unet_patches.data.folders import find_pairs
from unet_patches.data.imageio import read_image
from unet_patches.data.preprocess import Preprocess
from unet_patches.data.synthetic import SyntheticSpec, generate_dataset, generate_kaggle_layout
from unet_patches.models.checkpoint import load_checkpoint
from unet_patches.training import datasets as data
from unet_patches.training import resuming
from unet_patches.training import run as training

from helpers import SMALL_SPEC, tiny_config

KAGGLE_SPEC = SyntheticSpec(height=420, width=580)  # the competition's image size


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    generate_kaggle_layout(root / "nerves", subjects=4, per_subject=3, n_test=2, spec=KAGGLE_SPEC)
    return root


def _binary_config(root, folder, **settings):
    config = tiny_config(root, folder, epochs=1, val_fraction=0.25, **settings)
    return config.merged({"data": {"num_classes": 2}, "model": {"num_classes": 2}})


@pytest.mark.slow
def test_kaggle_layout_trains_with_whole_subjects_held_back(kaggle):
    config = _binary_config(kaggle, "nerves")
    sources = data.make_datasets(config)
    groups = [pair.group for pair in find_pairs(kaggle / "nerves")]
    train, val = data.split_by_group(groups, 0.25, config.training.seed)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val}) and len(val) == 3
    assert "split by subject: 3 / 1 subjects" in sources.description
    summary = training.fit(config, progress_bars=False)
    state = load_checkpoint(summary["best_checkpoint"])
    # 0/255 masks with two classes need no table; the table used is written into the checkpoint.
    assert state["preprocess"]["num_classes"] == 2 and state["preprocess"]["normalize"] == "percentile"
    assert state["preprocess"]["mask_values"] == {"0": 0, "1": 1, "255": 1}
    segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"])
    out = kaggle / "predicted"
    written = predict_files(segmenter, kaggle / "nerves" / "test", out, progress=False)
    assert sorted(p.name for p in written if "labels" in p.name) == ["1_labels.png", "2_labels.png"]


@pytest.mark.slow
def test_dataset_statistics_travel_in_the_checkpoint_to_predict_and_evaluate(tmp_path):
    generate_dataset(tmp_path / "u16", n_train=6, n_test=2, spec=SMALL_SPEC, bit_depth=16, max_value=3000)
    config = tiny_config(tmp_path, "u16/train").merged({"data": {"normalize": "dataset"}})
    summary = training.fit(config, progress_bars=False)
    segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"])
    pre = segmenter.preprocess
    assert pre.normalize == "dataset" and pre.mean is not None and pre.std is not None
    # The training images' statistics: their pixels / 65535 average about a tenth of 3000 / 65535.
    assert 0.0 < pre.mean[0] < 3000 / 65535 and pre.std[0] > 0
    image = read_image(tmp_path / "u16" / "test" / "images" / "0000.png")
    expected = (image.astype(np.float32) / 65535 - pre.mean[0]) / pre.std[0]
    np.testing.assert_allclose(segmenter.to_input(image)[0], expected, rtol=1e-5, atol=1e-5)
    # predict (API), predict_files (CLI path) and evaluate see the same input, so the same labels.
    labels = predict(segmenter, image)
    predict_files(segmenter, tmp_path / "u16" / "test" / "images" / "0000.png", tmp_path / "out", progress=False)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "0000_labels.png"), labels)
    assert 0.0 <= evaluate_folder(segmenter, tmp_path / "u16" / "test")["miou"] <= 1.0


@pytest.mark.slow
def test_resize_on_load_trains_and_predicts_at_each_images_own_size(tmp_path):
    generate_dataset(tmp_path / "s", n_train=6, n_test=2, spec=SMALL_SPEC)
    config = tiny_config(tmp_path, "s/train").merged({"data": {"resize": [40, 32]}})
    sources = data.make_datasets(config)
    assert sources.train.images[0].shape == (1, 40, 32)
    summary = training.fit(config, progress_bars=False)
    segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"])
    assert segmenter.preprocess.resize == (40, 32)
    image = read_image(tmp_path / "s" / "test" / "images" / "0000.png")
    assert predict(segmenter, image).shape == image.shape == (64, 48)
    scores = evaluate_folder(segmenter, tmp_path / "s" / "test")
    assert scores["pixels"] == 2 * 64 * 48


def test_train_stops_before_the_first_epoch_on_any_problem(tmp_path, capsys):
    generate_dataset(tmp_path / "s", n_train=3, n_test=0, spec=SMALL_SPEC)
    (tmp_path / "s" / "train" / "images" / "0001.png").write_bytes(b"")  # unreadable
    (tmp_path / "s" / "train" / "masks" / "extra.png").write_bytes(
        (tmp_path / "s" / "train" / "masks" / "0000.png").read_bytes()
    )
    params = tmp_path / "p.json"
    params.write_text(json.dumps(tiny_config(tmp_path, "s/train").to_dict()))
    assert main(["train", "--params", str(params), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s) found before training" in err and "0001.png" in err and "extra.png" in err
    assert "Traceback" not in err and not (tmp_path / "checkpoints").exists()


def test_preprocess_of_old_checkpoints_is_range():
    from pathlib import Path

    from unet_patches.models.checkpoint import preprocess_from_checkpoint

    state = load_checkpoint(Path(__file__).parent / "data" / "checkpoint_format1_f8f025a.pt")
    assert preprocess_from_checkpoint(state) == Preprocess(in_channels=1, num_classes=3, normalize="range")


@pytest.mark.slow
def test_resuming_a_run_from_before_data_normalize_keeps_range(tmp_path):
    import torch

    generate_dataset(tmp_path / "s", n_train=4, n_test=0, spec=SMALL_SPEC)
    config = tiny_config(tmp_path, "s/train", epochs=1, run_name="old")
    summary = training.fit(config, progress_bars=False)
    last = tmp_path / "checkpoints" / "old" / "last.pt"
    state = load_checkpoint(last)
    # As written before this setting existed: no preprocess, no data.normalize; two epochs asked for.
    del state["preprocess"]
    del state["config"]["data"]["normalize"]
    state["format_version"] = 1
    state["config"]["training"]["epochs"] = 2
    torch.save(state, last)
    assert summary["epochs"] == 1
    resuming.resume(last, progress_bars=False)
    assert load_checkpoint(last)["preprocess"]["normalize"] == "range"
