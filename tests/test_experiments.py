"""``unet-patches experiments``: a grid of runs on the same data, one table, resumable."""

import csv
import json

import pytest
from PIL import Image

from unet_patches.cli import main
from unet_patches.errors import UserError
from unet_patches.training import resuming
from unet_patches.training import run as training
from unet_patches.training.experiments import read_grid, run_experiments

from helpers import small_dataset


@pytest.fixture
def setup(tmp_path):
    small_dataset(tmp_path / "data" / "synthetic")
    params = tmp_path / "parameters.json"
    params.write_text(json.dumps({
        "data": {"root": str(tmp_path / "data"), "class_names": None},
        "patches": {"patch_size": 32},
        "model": {"base_width": 4, "depth": 2},
        "training": {"precision": "fp32", "samples_per_epoch": 16, "batch_size": 4, "val_windows_per_image": 2},
        "inference": {"precision": "fp32"},
    }))  # fmt: skip
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({
        "base": {"training": {"folder": "synthetic/train", "epochs": 2}},
        "grid": {"loss": {"ce": {"training": {"loss": "ce"}}, "dice": {"training": {"loss": "dice"}}},
                 "optimizer": {"sgd": {"training": {"optimizer": "sgd"}},
                               "adam": {"training": {"optimizer": "adam", "learning_rate": 0.01}}}},
        "test": "synthetic/test",
    }))  # fmt: skip
    return tmp_path, params, grid


def test_a_grid_trains_every_combination_and_writes_one_table(setup, capsys):
    root, params, grid = setup
    out = root / "out"
    assert main(["experiments", str(grid), "-o", str(out), "--params", str(params), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["ce-sgd", "ce-adam", "dice-sgd", "dice-adam"]
    assert [(r["loss"], r["optimizer"]) for r in rows] == [
        ("ce", "sgd"),
        ("ce", "adam"),
        ("dice", "sgd"),
        ("dice", "adam"),
    ]
    for row in rows:
        assert 0 <= float(row["test_miou"]) <= 1 and 0 <= float(row["best_val_miou"]) <= 1
        assert int(row["parameters"]) > 0 and float(row["inference_mpx_per_s"]) > 0 and row["iou_class1"]
        assert int(row["epochs"]) == 2  # the same budget for every run
    assert "| ce-sgd |" in (out / "results.md").read_text() and "| ce-sgd |" in printed
    assert Image.open(out / "curves.png").size[0] > 400
    assert (out / "runs" / "ce-sgd").is_dir()  # each run logs to TensorBoard


def test_finished_runs_are_skipped_and_an_interrupted_one_continues(setup, monkeypatch):
    root, params, grid = setup
    out = root / "out"
    run_experiments(grid, out, params=str(params), progress=False)
    (out / "results" / "dice-adam.json").unlink()  # as if it crashed after training, before its row
    calls = []
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("a run was trained again from scratch"))
    real_resume = resuming.resume
    monkeypatch.setattr(resuming, "resume", lambda path, **k: calls.append(path) or real_resume(path, **k))
    rows = run_experiments(grid, out, params=str(params), progress=False)
    assert len(rows) == 4 and [p.parent.name for p in calls] == ["dice-adam"]


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"grid": {"seed": {"a": {"training": {"seed": 1}}}}}, "training.seed, which every run must share"),
        ({"grid": {"data": {"a": {"data": {"root": "x"}}}}}, "section 'data'"),
        ({"grid": {}, "runs": {}}, "either"),
        ({"runs": {"a": {"training": {"loss": "dise"}}}}, "run 'a'.*did you mean 'dice'"),
        ({"runs": {"../x": {}}}, "folder name"),
    ],
)
def test_bad_grids_are_refused_before_any_training(setup, grid, message):
    root, params, path = setup
    path.write_text(json.dumps(grid))
    with pytest.raises(UserError, match=message):
        read_grid(path, str(params), root / "out")


@pytest.mark.parametrize("name", ["seed_family", "lung_ct", "lung_xray", "nerves"])
def test_the_shipped_grids_are_valid(name, repo_root, tmp_path, monkeypatch):
    """Each write-up's comparison, as shipped in experiments/, names valid settings for every run."""
    monkeypatch.chdir(tmp_path)
    small_dataset(tmp_path / "data" / "synthetic")
    plans, test_dir = read_grid(
        repo_root / "experiments" / f"{name}.json", str(repo_root / "parameters.json"), tmp_path
    )
    assert plans and test_dir.resolve() == tmp_path / "data" / "synthetic" / "test"
    assert len({(p.config.training.folder, p.config.training.seed, p.config.training.epochs) for p in plans}) == 1


def test_every_cell_can_be_a_cross_validation_with_mean_and_spread(setup):
    root, params, grid = setup
    grid.write_text(json.dumps({
        "base": {"training": {"folder": "synthetic/train", "epochs": 1}},
        "runs": {"ce": {"training": {"loss": "ce"}}, "dice": {"training": {"loss": "dice"}}},
        "test": "synthetic/test",
    }))  # fmt: skip
    out = root / "cvout"
    assert (
        main(["experiments", str(grid), "-o", str(out), "--params", str(params), "--no-progress", "--folds", "2"]) == 0
    )
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["ce", "dice"]
    for row in rows:
        report = json.loads((out / "checkpoints" / row["run"] / "cv.json").read_text())
        assert int(row["folds"]) == 2 and float(row["best_val_miou"]) == pytest.approx(report["pooled"]["miou"])
        assert float(row["cv_fold_miou_std"]) == pytest.approx(report["fold_miou"]["std"])
        assert 0 <= float(row["test_miou"]) <= 1  # the 2-fold ensemble on the test images
    assert "cv_fold_miou_mean" in (out / "results.md").read_text()
