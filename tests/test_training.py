import json

import pytest
import torch

from unet_patches import training
from unet_patches.errors import UserError
from unet_patches.patches import extract_patches
from unet_patches.training import fit, load_checkpoint, lr_factor, model_from_checkpoint, save_checkpoint

from helpers import small_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    small_dataset(root / "synthetic")
    extract_patches(root / "synthetic" / "train", root / "patches", patch_size=32, per_image=3)
    return root


def test_step_schedule_is_the_originals():
    # x0.1 after 30 % of the run and every 30 % after that.
    assert lr_factor("step", 0.0) == 1.0
    assert lr_factor("step", 0.29) == 1.0
    assert lr_factor("step", 0.3) == pytest.approx(0.1)
    assert lr_factor("step", 0.6) == pytest.approx(0.01)
    assert lr_factor("step", 0.95) == pytest.approx(0.001)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0)
    assert lr_factor("poly", 0.5) == pytest.approx(0.5**0.9)
    assert lr_factor("constant", 0.7, warmup=0.1) == 1.0
    assert lr_factor("constant", 0.05, warmup=0.1) == pytest.approx(0.51)


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


def test_existing_run_is_not_overwritten_without_flag(data):
    config = tiny_config(data, "patches", epochs=1, run_name="guarded")
    fit(config, progress_bars=False)
    with pytest.raises(UserError, match="--resume .*--overwrite"):
        fit(config, progress_bars=False)
    fit(config, progress_bars=False, overwrite=True)


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    model = torch.nn.Linear(2, 2)
    state = {"model_config": {"base_width": 4}, "model": model.state_dict(), "format_version": 1}
    save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["weight"], model.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint({"model_config": {}, "model": {"a": torch.ones(1)}}, tmp_path / "c.pt")

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(training.torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        save_checkpoint({"model_config": {}, "model": {}}, tmp_path / "c.pt")
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["model"]["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_bad_checkpoint_is_a_user_error(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(UserError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_on_the_fly_training_from_full_images(data):
    config = tiny_config(data, "synthetic/train", epochs=1, run_name="otf", foreground_fraction=0.5,
                         class_weights="median_frequency", loss="dice_ce")
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
    resumed = fit(None, resume=cut, progress_bars=False)
    assert resumed["epochs"] == 3
    a, b = _weights(whole["last_checkpoint"]), _weights(resumed["last_checkpoint"])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_without_an_epoch_limit_the_budget_alone_drives_the_schedule():
    progress = training.Progress(total_steps=None, budget_seconds=100.0)
    progress.step, progress._clock = 10**6, 25.0
    assert progress.fraction() == 0.25 and not progress.done()
    progress._clock = 100.0
    assert progress.done()
    capped = training.Progress(total_steps=40, budget_seconds=100.0)
    capped.step, capped._clock = 30, 25.0
    assert capped.fraction() == 0.75  # with both limits the nearer one leads


def test_time_budget_without_epochs_trains_until_the_budget(data):
    config = tiny_config(data, "patches", run_name="budget_only", time_budget_minutes=0.03).set("training", epochs=None)
    result = fit(config, progress_bars=False)
    assert result["epochs"] >= 1 and 0.03 * 60 <= result["seconds"] < 60


def test_time_budget_ends_the_run_and_keeps_best(data):
    config = tiny_config(data, "patches", epochs=1000, run_name="budget", time_budget_minutes=0.05)
    result = fit(config, progress_bars=False)
    assert result["epochs"] < 1000
    assert result["seconds"] < 60
    assert load_checkpoint(result["best_checkpoint"])["best_epoch"] == result["best_epoch"]
