"""Checkpoint files: atomic writes, safe reads, and files written by earlier versions."""

from pathlib import Path

import numpy as np
import pytest
import torch

from unet_patches.api import Segmenter
from unet_patches.errors import UserError
from unet_patches.models import checkpoint as checkpoints
from unet_patches.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

DEMO = Path(__file__).parent / "data" / "demo_unet_w8.pt"

DATA = Path(__file__).resolve().parent / "data"


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
        Path(f).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
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


def test_a_checkpoint_written_before_the_module_split_still_loads_and_computes_the_same():
    """tests/data/README.md: format 1, written by the code of commit f8f025a: its model_config had no
    "name", and it has no preprocess (range normalisation then), class names, schedule or int8 windows."""
    path = DATA / "checkpoint_format1_f8f025a.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1 and "name" not in raw["model_config"] and "preprocess" not in raw
    state = load_checkpoint(path)
    assert state["format_version"] == checkpoints.CHECKPOINT_FORMAT == 2
    assert state["model_config"]["name"] == "unet" and state["preprocess"]["normalize"] == "range"
    assert state["config"]["data"]["normalize"] == "range"  # what --resume trains on
    assert (state["schedule"], state["snapshots"], state["int8_windows"]) == ({}, 0, None)
    reference = np.load(DATA / "checkpoint_format1_f8f025a_logits.npz")
    model = model_from_checkpoint(state)
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["input"])).numpy()
    # Same weights, same float32 operations; only the kernels (and so the rounding) may differ per CPU.
    np.testing.assert_allclose(logits, reference["logits"], rtol=1e-4, atol=1e-4)
    segmenter = Segmenter.from_checkpoint(path)
    assert segmenter.patch_size == 32 and segmenter.in_channels == 1
    assert segmenter.class_names == ("class0", "class1", "class2")
    assert segmenter.preprocess.normalize == "range"


def test_format_0_files_without_the_facts_of_their_run_upgrade_to_the_current_format(tmp_path):
    """A file without format_version (format 0), class names, patch size or preprocessing reads as the
    runs of its time had them: U-Net, class0.., the original's patch of 96, range normalisation."""
    raw = torch.load(DATA / "checkpoint_format1_f8f025a.pt", weights_only=True)
    for key in ("format_version", "class_names", "patch_size", "in_channels", "normalization"):
        raw.pop(key, None)
    save_checkpoint(raw, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")
    assert state["format_version"] == 2 and state["patch_size"] == checkpoints.OLD_PATCH_SIZE == 96
    assert state["class_names"] == ["class0", "class1", "class2"] and state["in_channels"] == 1
    assert state["normalization"] == "by pixel type (uint8 / 255, uint16 / 65535)"
    assert Segmenter.from_checkpoint(tmp_path / "old.pt").patch_size == 96


def test_upgrade_leaves_the_current_format_and_its_argument_alone():
    current = load_checkpoint(DEMO)
    assert checkpoints.upgrade(current) is current
    raw = torch.load(DATA / "checkpoint_format1_f8f025a.pt", weights_only=True)
    keys = set(raw)
    upgraded = checkpoints.upgrade(raw)
    assert set(raw) == keys and raw["format_version"] == 1 and upgraded["format_version"] == 2
    assert checkpoints.upgrade(upgraded) is upgraded


def test_a_checkpoint_training_writes_is_the_current_format(tmp_path):
    """Written by today's training: format 2, every key present, read back unchanged by upgrade."""
    from unet_patches.training.run import fit

    from helpers import small_dataset, tiny_config

    data = small_dataset(tmp_path / "data")
    summary = fit(tiny_config(tmp_path, str(data / "train"), epochs=1), progress_bars=False)
    raw = torch.load(summary["last_checkpoint"], weights_only=True)
    assert raw["format_version"] == 2
    inference = ("model_config", "class_names", "in_channels", "patch_size", "preprocess", "normalization")
    run = ("int8_windows", "schedule", "snapshots", "config", "history", "optimizer", "torch_rng")
    assert set(inference + run) <= set(raw)
    assert checkpoints.upgrade(raw) is raw


def test_calibrate_gives_an_old_checkpoint_the_windows_training_stores(tmp_path, capsys):
    from unet_patches.cli import main
    from unet_patches.data.synthetic import SyntheticSpec, generate_dataset
    from unet_patches.training.config import default_config
    from unet_patches.training.datasets import int8_windows, make_datasets

    generate_dataset(tmp_path / "data", n_train=6, n_test=0, spec=SyntheticSpec(height=128, width=128))
    config = default_config().merged({"training": {"folder": str(tmp_path / "data" / "train"), "val_fraction": 0.34}})
    old = tmp_path / "old.pt"
    save_checkpoint({**load_checkpoint(DEMO), "config": config.to_dict(), "int8_windows": None}, old)
    before = old.read_bytes()
    assert main(["calibrate", str(old), "-o", str(tmp_path / "new.pt")]) == 0
    assert "wrote" in capsys.readouterr().out and old.read_bytes() == before
    stored = load_checkpoint(tmp_path / "new.pt")["int8_windows"]
    expected = int8_windows(make_datasets(config))
    for kind in ("calibration", "held_back"):
        assert stored[kind].dtype == torch.float16 and stored[kind].shape[1:] == (1, 96, 96)
        assert torch.equal(stored[kind], expected[kind])
    # The checkpoint itself is never rewritten; another file only with --overwrite; a missing folder named.
    for argv, message in [
        (["-o", str(old), "--overwrite"], "old.pt: is the checkpoint being read"),
        (["-o", str(tmp_path / "new.pt")], "new.pt: already exists; pass --overwrite"),
        (["-o", str(tmp_path / "x.pt"), "--training-folder", str(tmp_path / "gone")], "gone is not here; pass the"),
    ]:
        assert main(["calibrate", str(old), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert old.read_bytes() == before
