"""k-fold cross-validation (unet_patches.data.folds, unet_patches.training.crossval): the split, the folds trained and
resumed, the pooled out-of-fold report, and the folds as an ensemble."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from unet_patches.api import Segmenter
from unet_patches.cli import main
from unet_patches.data.folders import find_pairs
from unet_patches.data.folds import assign_folds, splits_for
from unet_patches.data.patches import extract_patches
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError
from unet_patches.metrics import ConfusionMatrix
from unet_patches.training.crossval import DONE, run_crossval

from helpers import small_dataset, tiny_config


def _units(subjects: int, per_subject: int) -> dict[str, str]:
    return {f"{s}_{n}": str(s) for s in range(1, subjects + 1) for n in range(1, per_subject + 1)}


def test_whole_groups_go_to_one_fold_each_validated_once_and_stable_under_reordering():
    units = _units(11, 3)
    folds = assign_folds(units, 4, seed=0)
    assert set(folds) == set(units) and set(folds.values()) == {0, 1, 2, 3}
    for subject in set(units.values()):  # no group in two folds
        assert len({folds[u] for u, g in units.items() if g == subject}) == 1
    per_fold = [len({g for u, g in units.items() if folds[u] == f}) for f in range(4)]
    assert max(per_fold) - min(per_fold) <= 1  # groups dealt evenly
    shuffled = list(units.items())
    random.Random(3).shuffle(shuffled)
    assert assign_folds(dict(shuffled), 4, seed=0) == folds  # the order files are listed in does not matter
    assert assign_folds(units, 4, seed=1) != folds  # the seed does
    with pytest.raises(UserError, match="training.folds = 12: expected 2 to 11"):
        assign_folds(units, 12, seed=0)


def test_the_split_is_stored_and_reused_and_a_changed_one_refused(tmp_path):
    small_dataset(tmp_path, n_train=6)
    run_dir = tmp_path / "cv"
    first = splits_for(tmp_path / "train", 3, 0, run_dir)
    assert json.loads((run_dir / "splits.json").read_text())["folds"] == first.folds
    assert splits_for(tmp_path / "train", 3, 0, run_dir) == first
    with pytest.raises(UserError, match="split with k = 3, seed 0; the folds cannot change"):
        splits_for(tmp_path / "train", 2, 0, run_dir)
    (tmp_path / "train" / "images" / "0005.png").unlink()
    (tmp_path / "train" / "masks" / "0005.png").unlink()
    with pytest.raises(UserError, match="split with other images"):
        splits_for(tmp_path / "train", 3, 0, run_dir)


@pytest.mark.parametrize("damage", ["half-written", "altered", "empty"])
def test_a_damaged_split_is_refused_in_one_line_and_left_alone(tmp_path, damage):
    small_dataset(tmp_path, n_train=6)
    run_dir = tmp_path / "cv"
    splits_for(tmp_path / "train", 3, 0, run_dir)
    path = run_dir / "splits.json"
    text = path.read_text()
    damaged = {"half-written": text[: len(text) // 2], "altered": text.replace('"folds"', '"fold"'), "empty": ""}
    path.write_text(damaged[damage])
    refused = r"splits.json: not a readable split .*; remove it to draw the folds again"
    with pytest.raises(UserError, match=refused) as info:
        splits_for(tmp_path / "train", 3, 0, run_dir)
    assert "\n" not in str(info.value) and path.read_text() == damaged[damage]


@pytest.fixture
def cv(tmp_path):
    """A finished 3-fold cross-validation of 6 small images (1 epoch per fold)."""
    small_dataset(tmp_path, n_train=6)
    config = tiny_config(tmp_path, "train", epochs=1, folds=3, run_name="cv")
    report = run_crossval(config, progress_bars=False)
    return tmp_path, config, report


def test_every_image_is_predicted_by_the_model_that_did_not_train_on_it(cv):
    root, config, report = cv
    cv_dir = root / "checkpoints" / "cv"
    splits = json.loads((cv_dir / "splits.json").read_text())
    assert [f["images"] for f in report["folds"]] == [list(splits["folds"].values()).count(i) for i in range(3)]
    assert sum(f["images"] for f in report["folds"]) == 6
    for fold in range(3):  # each fold trained without its validation images
        held = {u for u, f in splits["folds"].items() if f == fold}
        assert (cv_dir / f"fold_{fold}" / "best.pt").is_file() and (cv_dir / f"fold_{fold}" / DONE).is_file()
        assert len(held) >= 1
    # The pooled score is the one recomputed from the saved out-of-fold labels, not the mean of the folds.
    matrix = ConfusionMatrix(3)
    preprocess = Preprocess(num_classes=3)
    for pair in find_pairs(root / "train"):
        matrix.update(np.asarray(Image.open(cv_dir / "oof" / f"{pair.name}.png")), preprocess.read_mask(pair.mask))
    assert report["pooled"]["miou"] == pytest.approx(matrix.mean_iou(), abs=1e-12)
    assert report["fold_miou"]["mean"] == pytest.approx(np.mean([f["miou"] for f in report["folds"]]))
    text = (cv_dir / "cv.md").read_text()
    assert "pooled out-of-fold" in text and json.loads((cv_dir / "cv.json").read_text()) == report


def test_a_rerun_trains_only_what_is_missing_and_resumes_an_interrupted_fold(cv):
    root, config, _ = cv
    cv_dir = root / "checkpoints" / "cv"
    stamps = {i: (cv_dir / f"fold_{i}" / "best.pt").stat().st_mtime_ns for i in range(3)}
    (cv_dir / "fold_1" / DONE).unlink()  # killed after its last save: resumed (nothing left to train)
    for name in ("best.pt", "last.pt", DONE):
        (cv_dir / "fold_2" / name).unlink()  # killed before its first checkpoint: trained again
    report = run_crossval(config, progress_bars=False)
    assert report is not None and (cv_dir / "fold_2" / "best.pt").is_file()
    assert (cv_dir / "fold_0" / "best.pt").stat().st_mtime_ns == stamps[0]
    assert all((cv_dir / f"fold_{i}" / DONE).is_file() for i in range(3))


def test_shards_train_their_folds_and_the_last_one_writes_the_report(tmp_path, capsys):
    small_dataset(tmp_path, n_train=6)
    params = tmp_path / "params.json"
    config = tiny_config(tmp_path, "train", epochs=1, run_name="cvs")
    params.write_text(json.dumps(config.to_dict()))
    argv = ["crossval", "-k", "2", "--params", str(params), "--no-progress"]
    assert main([*argv, "--shard", "1/2"]) == 0
    assert "run crossval again when all are" in capsys.readouterr().out
    cv_dir = tmp_path / "checkpoints" / "cvs"
    assert (cv_dir / "fold_1" / DONE).is_file() and not (cv_dir / "fold_0").exists()
    assert main([*argv, "--shard", "0/2"]) == 0
    assert "2-fold cross-validation: pooled out-of-fold mIoU" in capsys.readouterr().out
    assert (cv_dir / "cv.json").is_file()
    # the cross-validation folder is a checkpoint: its fold models averaged in one pass
    segmenter = Segmenter.from_checkpoint(cv_dir)
    assert type(segmenter.network).__name__ == "ProbabilityEnsemble" and len(segmenter.network.members) == 2
    image = next((tmp_path / "test" / "images").iterdir())
    assert main(["predict", str(cv_dir), str(image), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    assert (tmp_path / "out" / f"{image.stem}_labels.png").is_file()


def test_train_one_fold_and_a_patch_folder_splits_by_source_image(tmp_path):
    small_dataset(tmp_path, n_train=6)
    extract_patches(tmp_path / "train", tmp_path / "patches", patch_size=32, per_image=3, seed=0)
    config = tiny_config(tmp_path, "patches", epochs=1, folds=2, run_name="pcv")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(config.to_dict()))
    assert main(["train", "--params", str(params), "--fold", "1", "--no-progress"]) == 0
    cv_dir = tmp_path / "checkpoints" / "pcv"
    assert (cv_dir / "fold_1" / "best.pt").is_file() and (cv_dir / "splits.json").is_file()
    splits = json.loads((cv_dir / "splits.json").read_text())
    assert splits["kind"] == "patches" and sorted(splits["folds"]) == [p.name for p in find_pairs(tmp_path / "train")]
    report = run_crossval(config, progress_bars=False)  # fold 1 is resumed (finished), fold 0 trained
    assert sum(f["images"] for f in report["folds"]) == 6
    with pytest.raises(UserError, match="without training.fold: train one fold with --fold I"):
        main_config = config.merged({"training": {"fold": None}})
        from unet_patches.training.datasets import make_datasets

        make_datasets(main_config)


def test_under_torchrun_each_rank_trains_its_folds_alone(tmp_path, monkeypatch):
    """RANK / WORLD_SIZE pick the folds; they are then taken out of the environment so that the fold
    trains as a job of its own, not as one rank of a DDP run."""
    import os

    small_dataset(tmp_path, n_train=6)
    params = tmp_path / "params.json"
    params.write_text(json.dumps(tiny_config(tmp_path, "train", epochs=1, run_name="tr").to_dict()))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["crossval", "-k", "3", "--params", str(params), "--no-progress"]) == 0
    cv_dir = tmp_path / "checkpoints" / "tr"
    assert [p.name for p in sorted(cv_dir.glob("fold_*"))] == ["fold_1"]
    assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ
