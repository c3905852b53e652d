"""Issue 13's promises about the user's files and hours of training: nothing replaced without
--overwrite (and --overwrite never touching a command's own inputs), a diverging run stopped before
the bad step with its last good checkpoint kept, a resume after a crash tidied, hostile checkpoints
refused without running anything, and a DataLoader worker's error kept to one line."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from unet_patches.cli import _one_line
from unet_patches.data.patches import extract_patches
from unet_patches.demo import demo_name
from unet_patches.errors import UserError
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint
from unet_patches.training.resuming import resume
from unet_patches.training.run import fit

from helpers import small_dataset, tiny_config, unet_checkpoint_state


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("trust"))


def test_a_run_folder_holding_only_best_pt_is_not_replaced(data, tmp_path):
    config = tiny_config(tmp_path, str(data / "train"), epochs=1, run_name="r")
    run_dir = tmp_path / "checkpoints" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(b"precious")
    (run_dir / "snapshot_00.pt").write_bytes(b"old snapshot")
    with pytest.raises(UserError, match=r"already holds checkpoints \(best.pt, snapshot_00.pt\).*--overwrite"):
        fit(config, progress_bars=False)
    assert (run_dir / "best.pt").read_bytes() == b"precious"
    with pytest.raises(UserError, match="--load reads a checkpoint of the run folder"):
        fit(config, init_weights=run_dir / "best.pt", overwrite=True, progress_bars=False)
    assert (run_dir / "best.pt").read_bytes() == b"precious"
    fit(config, overwrite=True, progress_bars=False)
    assert not (run_dir / "snapshot_00.pt").exists()  # the old run's snapshot does not join the new one's
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == 1


def test_starting_again_removes_the_temporary_files_of_an_interrupted_write(data, tmp_path, caplog):
    config = tiny_config(tmp_path, str(data / "train"), epochs=1, run_name="again")
    run_dir = tmp_path / "checkpoints" / "again"
    run_dir.mkdir(parents=True)
    stale = run_dir / ".best.pt.x1y2.tmp"  # a kill inside the first checkpoint write: no .pt yet
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level("WARNING"):
        fit(config, progress_bars=False)
    assert not stale.exists() and "interrupted checkpoint write" in caplog.text


def test_a_diverging_run_stops_before_the_bad_step_and_says_how_to_go_on(data, tmp_path):
    config = tiny_config(tmp_path, str(data / "train"), epochs=2, learning_rate=1e30, run_name="nan")
    with pytest.raises(UserError, match=r"training.learning_rate = 1e\+30: training diverged.*grad_clip"):
        fit(config, progress_bars=False)
    assert not list((tmp_path / "checkpoints" / "nan").glob("*.pt"))  # no NaN model saved as best


def test_gradient_clipping_trains(data, tmp_path):
    config = tiny_config(tmp_path, str(data / "train"), epochs=1, grad_clip=0.5, run_name="clip")
    assert fit(config, progress_bars=False)["epochs"] == 1


def test_resume_removes_stale_temporary_files_and_repairs_best(data, tmp_path, caplog):
    config = tiny_config(tmp_path, str(data / "train"), epochs=1, run_name="crash")
    fit(config, progress_bars=False)
    run_dir = tmp_path / "checkpoints" / "crash"
    last = load_checkpoint(run_dir / "last.pt")
    stale = run_dir / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    # As a crash between the writes of the old order left it: best.pt from another epoch.
    save_checkpoint({**last, "epoch": 0}, run_dir / "best.pt")
    state = {**last, "best_epoch": last["epoch"]}
    save_checkpoint(state, run_dir / "last.pt")
    extended = {**state, "config": {**state["config"], "training": {**state["config"]["training"], "epochs": 2}}}
    save_checkpoint(extended, run_dir / "last.pt")
    with caplog.at_level("WARNING"):
        resume(run_dir / "last.pt", progress_bars=False)
    assert not stale.exists() and "interrupted checkpoint write" in caplog.text
    assert "rewritten from last.pt" in caplog.text
    assert load_checkpoint(run_dir / "best.pt")["epoch"] >= 1


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_crafted_pickle_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model_config": {}, "model": _Payload(str(target))}, f)
    with pytest.raises(UserError, match="not a readable unet-patches checkpoint"):
        load_checkpoint(path)
    assert not target.exists()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"model_config": {"num_classes": "three"}}, "model_config.num_classes"),
        ({"model_config": {"widht": 8}}, "unknown key 'model_config.widht'"),
        ({"model_config": [1, 2]}, "expected a dict of model settings"),
        ({"class_names": ["a"]}, "class_names"),
        ({"preprocess": {"normalize": 3, "bogus": 1}}, "preprocess"),
        ({"patch_size": -4}, "patch_size = -4"),
        ({"format_version": "one"}, "format_version"),
    ],
)
def test_inconsistent_checkpoints_are_one_line_errors(tmp_path, change, needle):
    from unet_patches.api import Segmenter

    save_checkpoint({**unet_checkpoint_state(class_names=["a", "b", "c"]), **change}, tmp_path / "x.pt")
    with pytest.raises(UserError, match=needle.replace("(", r"\(")) as info:
        Segmenter.from_checkpoint(tmp_path / "x.pt")
    assert str(tmp_path / "x.pt") in str(info.value) and "\n" not in str(info.value)


def test_a_current_checkpoint_without_what_inference_reads_is_damaged(tmp_path):
    from unet_patches.api import Segmenter

    state = unet_checkpoint_state()
    del state["preprocess"]
    save_checkpoint(state, tmp_path / "x.pt")
    with pytest.raises(UserError, match=r"x.pt: no preprocess in a format 2 checkpoint; the file was edited"):
        Segmenter.from_checkpoint(tmp_path / "x.pt")


def test_weights_that_do_not_fit_the_model_config(tmp_path):
    from unet_patches.api import Segmenter
    from unet_patches.models import ModelConfig

    other = ModelConfig(base_width=8, depth=2)
    save_checkpoint(unet_checkpoint_state(model=unet_checkpoint_state(other)["model"]), tmp_path / "x.pt")
    with pytest.raises(UserError, match=r"x.pt: the weights do not fit model_config"):
        Segmenter.from_checkpoint(tmp_path / "x.pt")


def test_patches_refuses_a_source_inside_its_output(tmp_path):
    small_dataset(tmp_path / "out" / "src")
    before = sorted(p for p in (tmp_path / "out").rglob("*"))
    with pytest.raises(UserError, match="inside the output folder"):
        extract_patches(tmp_path / "out" / "src" / "train", tmp_path / "out", overwrite=True, patch_size=16)
    assert sorted(p for p in (tmp_path / "out").rglob("*")) == before


def test_the_demo_takes_a_fresh_name_instead_of_replacing(tmp_path):
    from unet_patches.training.config import default_config

    config = default_config().merged(
        {
            "data": {"root": str(tmp_path / "data")},
            "training": {"checkpoint_dir": str(tmp_path / "ck"), "log_dir": str(tmp_path / "runs")},
        }
    )
    assert demo_name(config, overwrite=False) == "demo"
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    assert demo_name(config, overwrite=False) == "demo-2"
    assert demo_name(config, overwrite=True) == "demo"


def test_an_error_from_a_dataloader_worker_is_one_line():
    wrapped = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise UserError(...)\n'
        "unet_patches.errors.UserError: p/0001.png: bad patch; fix it\n"
    )
    assert _one_line(wrapped) == "p/0001.png: bad patch; fix it"
    assert _one_line(OSError("a\nb")) == "a b"


def test_a_bad_patch_read_by_a_real_dataloader_worker_is_one_line(data, tmp_path, capsys):
    from PIL import Image

    from unet_patches.cli import main

    extract_patches(data / "train", tmp_path / "p", patch_size=32, per_image=2, seed=0)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(tmp_path / "p" / "masks" / "p0.png")
    (tmp_path / "params.json").write_text(json.dumps(tiny_config(tmp_path, "p").to_dict()))
    argv = ["train", "--workers", "1", "-e", "1", "--no-progress", "--params", str(tmp_path / "params.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"unet-patches train: error: {tmp_path / 'p' / 'masks' / 'p0.png'}: mask value 7 is out of "
        "range for num_classes=3 (expected 0..2); fix the mask or raise num_classes"
    ]


# --- --resume with new flags: -e extends a run, --run-name forks it ---------------------------------


def _same_weights(a, b) -> bool:
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_more_epochs_extends_a_finished_run(data, tmp_path, caplog):
    folder = str(data / "train")
    whole = fit(tiny_config(tmp_path, folder, epochs=4, schedule="constant", run_name="whole"), progress_bars=False)
    short = fit(tiny_config(tmp_path, folder, epochs=2, schedule="constant", run_name="short"), progress_bars=False)
    assert resume(short["last_checkpoint"], progress_bars=False)["epochs"] == 2  # finished: nothing to do
    with caplog.at_level("INFO"):
        longer = resume(short["last_checkpoint"], epochs=4, progress_bars=False)
    assert longer["epochs"] == 4 and "planned anew over 4 epochs" in caplog.text
    # A constant schedule does not depend on the run's length: extended = planned that long.
    assert _same_weights(whole["last_checkpoint"], longer["last_checkpoint"])
    assert load_checkpoint(longer["last_checkpoint"])["config"]["training"]["epochs"] == 4


def test_extending_replans_the_schedule_and_says_how_the_rate_jumps(data, tmp_path, caplog):
    config = tiny_config(tmp_path, str(data / "train"), epochs=2, schedule="poly", run_name="poly")
    short = fit(config, progress_bars=False)
    with caplog.at_level("INFO"):
        longer = resume(short["last_checkpoint"], epochs=4, progress_bars=False)
    # poly over 4 epochs, from half-way: (1 - 0.5) ** 0.9 of the base rate at the first new step.
    assert "learning rate goes from 0 to 0.0268 at epoch 3" in caplog.text
    lrs = [record["lr"] for record in longer["history"]]
    assert lrs[1] < lrs[2] and lrs[2] > lrs[3]


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({}, {2: r"-e 2: .*has trained 2 epochs already; pass more than 2", 1: r"pass more than 2"}),
        ({"schedule": "cosine_restarts", "restart_cycles": 2}, {4: r"cosine_restarts.*-c/--load"}),
    ],
)
def test_an_extension_that_cannot_be_kept_is_refused(data, tmp_path, settings, refused):
    short = fit(tiny_config(tmp_path, str(data / "train"), epochs=2, run_name="r", **settings), progress_bars=False)
    before = (tmp_path / "checkpoints" / "r" / "last.pt").read_bytes()
    for epochs, needle in refused.items():
        with pytest.raises(UserError, match=needle):
            resume(short["last_checkpoint"], epochs=epochs, progress_bars=False)
    assert (tmp_path / "checkpoints" / "r" / "last.pt").read_bytes() == before


def test_resume_with_a_run_name_forks_and_leaves_the_original_alone(data, tmp_path):
    short = fit(tiny_config(tmp_path, str(data / "train"), epochs=2, run_name="a"), progress_bars=False)
    source = tmp_path / "checkpoints" / "a"
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    fork = resume(short["last_checkpoint"], epochs=3, run_name="b", progress_bars=False)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert fork["run_dir"] == str(tmp_path / "checkpoints" / "b") and fork["epochs"] == 3
    last = load_checkpoint(fork["last_checkpoint"])
    assert last["config"]["training"]["run_name"] == "b" and last["epoch"] == 3
    assert load_checkpoint(fork["best_checkpoint"])["epoch"] == last["best_epoch"]
    assert (tmp_path / "runs" / "b").is_dir()
    # The fork's folder is a run of its own now: resuming it goes on there.
    assert resume(fork["last_checkpoint"], epochs=4, progress_bars=False)["run_dir"] == fork["run_dir"]

    with pytest.raises(UserError, match=r"checkpoints/b already holds checkpoints.*--overwrite"):
        resume(short["last_checkpoint"], epochs=3, run_name="b", progress_bars=False)
    with pytest.raises(UserError, match="would replace the run being resumed"):
        resume(short["last_checkpoint"], epochs=3, overwrite=True, progress_bars=False)
    again = resume(short["last_checkpoint"], epochs=3, run_name="b", overwrite=True, progress_bars=False)
    assert load_checkpoint(again["last_checkpoint"])["epoch"] == 3
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_the_train_command_takes_only_epochs_and_run_name_beside_resume(data, tmp_path, capsys):
    from unet_patches.cli import main

    short = fit(tiny_config(tmp_path, str(data / "train"), epochs=1, run_name="c"), progress_bars=False)
    assert main(["train", "--resume", short["last_checkpoint"], "-l", "0.1", "--no-progress"]) == 2
    assert "--resume with settings flags (training.learning_rate)" in capsys.readouterr().err
    assert main(["train", "--resume", short["last_checkpoint"], "-e", "2", "--run-name", "d", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "d" / "last.pt")["epoch"] == 2
