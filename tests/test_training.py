import json

import pytest
import torch

from unet_patches.data.patches import extract_patches
from unet_patches.errors import UserError
from unet_patches.models.checkpoint import load_checkpoint, model_from_checkpoint
from unet_patches.training import run as training
from unet_patches.training.resuming import resume
from unet_patches.training.run import fit

from helpers import small_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    small_dataset(root / "synthetic")
    extract_patches(root / "synthetic" / "train", root / "patches", patch_size=32, per_image=3)
    return root


def test_fit_on_patch_folder_writes_checkpoints_that_rebuild_the_model(data):
    config = tiny_config(data, "patches", epochs=2)
    result = fit(config, progress_bars=False)
    assert result["epochs"] == 2 and 0 <= result["best_val_miou"] <= 1
    state = load_checkpoint(result["best_checkpoint"])
    assert state["model_config"]["base_width"] == 4 and state["patch_size"] == 32
    assert state["class_names"] == ["class0", "class1", "class2"]  # data.class_names unset
    model = model_from_checkpoint(state)
    assert not model.training
    assert json.loads((data / "checkpoints" / result["run"] / "config.json").read_text())["model"]["depth"] == 2
    # Validation is by source image: no source contributes to both sides.
    history = state["history"]
    assert [h["epoch"] for h in history] == [1, 2] and "iou" in history[-1] and "dice" in history[-1]
    # Windows for int8 inference: training windows to calibrate on, validation windows for its guard.
    windows = state["int8_windows"]
    for part in ("calibration", "held_back"):
        assert windows[part].dtype == torch.float16 and windows[part].shape[1:] == (1, 32, 32), part
        assert 0 < windows[part].shape[0] <= 32
    assert torch.equal(load_checkpoint(result["last_checkpoint"])["int8_windows"]["held_back"], windows["held_back"])


def test_existing_run_is_not_overwritten_without_flag(data):
    config = tiny_config(data, "patches", epochs=1, run_name="guarded")
    fit(config, progress_bars=False)
    with pytest.raises(UserError, match="--resume .*--overwrite"):
        fit(config, progress_bars=False)
    fit(config, progress_bars=False, overwrite=True)


def test_on_the_fly_training_from_full_images(data):
    config = tiny_config(
        data,
        "synthetic/train",
        epochs=1,
        run_name="otf",
        foreground_fraction=0.5,
        class_weights="median_frequency",
        loss="dice_ce",
    )
    result = fit(config, progress_bars=False)
    assert "random 32x32 patches per epoch" in result["data"]
    assert result["steps"] == 16 // 4


def test_missing_folder_explains_how_to_make_patches(data):
    with pytest.raises(UserError, match="unet-patches patches"):
        fit(tiny_config(data, "nothing_here"), progress_bars=False)


def _weights(path):
    return load_checkpoint(path)["model"]


def test_interrupted_and_resumed_run_ends_with_identical_weights(data, monkeypatch):
    whole = fit(tiny_config(data, "patches", epochs=3, run_name="whole"), progress_bars=False)

    real = training.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(data, "patches", epochs=3, run_name="cut"), progress_bars=False)
    monkeypatch.setattr(training, "train_one_epoch", real)
    cut = data / "checkpoints" / "cut" / "last.pt"
    assert load_checkpoint(cut)["epoch"] == 1
    resumed = resume(cut, progress_bars=False)
    assert resumed["epochs"] == 3
    a, b = _weights(whole["last_checkpoint"]), _weights(resumed["last_checkpoint"])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_time_budget_without_epochs_trains_until_the_budget(data):
    config = tiny_config(data, "patches", run_name="budget_only", time_budget_minutes=0.03, epochs=None)
    result = fit(config, progress_bars=False)
    assert result["epochs"] >= 1 and 0.03 * 60 <= result["seconds"] < 60


def test_time_budget_ends_the_run_and_keeps_best(data):
    config = tiny_config(data, "patches", epochs=1000, run_name="budget", time_budget_minutes=0.05)
    result = fit(config, progress_bars=False)
    assert result["epochs"] < 1000
    assert result["seconds"] < 60
    assert load_checkpoint(result["best_checkpoint"])["best_epoch"] == result["best_epoch"]
