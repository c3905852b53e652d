"""Snapshot ensembles: cosine_restarts keeps the model at the end of each cycle, and a run folder (or a
comma-separated list) of checkpoints predicts as one network averaging its members' probabilities."""

import numpy as np
import pytest
import torch

from unet_patches.api import Segmenter, evaluate_folder, predict
from unet_patches.data.patches import extract_patches
from unet_patches.errors import UserError
from unet_patches.inference.ensemble import ProbabilityEnsemble, checkpoint_paths
from unet_patches.models.checkpoint import load_checkpoint
from unet_patches.training.run import fit

from helpers import small_dataset, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    small_dataset(root / "synthetic")
    extract_patches(root / "synthetic" / "train", root / "patches", patch_size=32, per_image=3)
    config = tiny_config(root, "patches", epochs=4, run_name="sgdr", schedule="cosine_restarts", restart_cycles=2)
    return root, fit(config, progress_bars=False)


def test_cosine_restarts_keeps_one_snapshot_per_cycle(run):
    _, result = run
    run_dir = result["run_dir"]
    snapshots = checkpoint_paths(run_dir)
    assert [p.name for p in snapshots] == ["snapshot_01.pt", "snapshot_02.pt"]
    first, last = (load_checkpoint(p) for p in snapshots)
    assert first["step"] == result["steps"] // 2 and last["step"] == result["steps"]
    # The second snapshot is the model at the end of the run.
    final = load_checkpoint(result["last_checkpoint"])["model"]
    assert all(torch.equal(last["model"][k], final[k]) for k in final)


def test_a_run_folder_predicts_the_mean_of_its_snapshots(run):
    root, result = run
    image = np.random.default_rng(0).random((40, 37), dtype=np.float32)
    ensemble = Segmenter.from_checkpoint(result["run_dir"])
    assert isinstance(ensemble.network, ProbabilityEnsemble) and len(ensemble.network.members) == 2
    labels, probs = predict(ensemble, image, return_probs=True, precision="fp32")
    members = [Segmenter.from_checkpoint(p) for p in checkpoint_paths(result["run_dir"])]
    mean = np.mean([predict(m, image, return_probs=True, precision="fp32")[1] for m in members], axis=0)
    np.testing.assert_allclose(probs, mean, rtol=1e-4, atol=1e-5)
    assert np.array_equal(labels, probs.argmax(0))
    listed = Segmenter.from_checkpoint(",".join(str(p) for p in checkpoint_paths(result["run_dir"])))
    np.testing.assert_allclose(predict(listed, image, return_probs=True, precision="fp32")[1], probs, atol=1e-6)
    scores = evaluate_folder(ensemble, root / "synthetic" / "test", precision="fp32")
    assert 0 <= scores["miou"] <= 1


def test_a_folder_without_snapshots_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no snapshot_NN.pt"):
        checkpoint_paths(tmp_path)


def test_plateau_state_is_kept_in_checkpoints(run):
    root, _ = run
    config = tiny_config(root, "patches", epochs=3, run_name="plateau", schedule="plateau", plateau_patience=1)
    result = fit(config, progress_bars=False)
    state = load_checkpoint(result["last_checkpoint"])
    assert set(state["schedule"]) == {"reductions", "best", "bad_epochs"}
    assert state["schedule"]["best"] == pytest.approx(max(h["miou"] for h in state["history"]))
