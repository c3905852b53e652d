"""Issue 13: a real training process killed with SIGKILL at 20 moments, inside each checkpoint write
and at random, leaves a best.pt/last.pt pair that loads and agrees, and resumes to bit-identical
final weights.

One uninterrupted run is the reference. Each scenario starts the same run in a folder of its own and
kills it: 12 deterministic moments inside the writes of ``best.pt`` and ``last.pt`` (a driver script
patches the write path, then calls ``unet_patches.cli.main``; at the N-th write of the chosen file
the process sends itself SIGKILL) and 8 random moments (the plain command, SIGKILLed after a seeded
random delay: 3 spread over the reference run's wall time, process start-up included, 5 over its
training time, counted from the moment training began). The crashed
folder is kept as it was for the checks, then the run is continued as a user would: ``train
--resume <run>/last.pt`` when last.pt exists, else the original command with ``--overwrite``.

What a crash may leave, as ``training._save`` and ``run_folder.tidy`` promise: best.pt is
written before last.pt, so either best.pt's epoch is last.pt's ``best_epoch`` or a crash came
between the two writes and best.pt's epoch is greater than last.pt's ``epoch`` (that epoch is redone
on resume and rewrites best.pt). A best.pt without any last.pt is possible only before the first
last.pt, when the run is started again.

The scenarios run two at a time (each process on one thread: OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from unet_patches.models.checkpoint import load_checkpoint

from helpers import small_dataset, tiny_config

pytestmark = pytest.mark.slow

RUN = "crash"
EPOCHS = 5
SEED = 13  # of the random kill moments
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Kills the process at the N-th write of one checkpoint file (best.pt or last.pt), at one phase of
# unet_patches.atomic.write_atomically:
#   partial: inside torch.save: the temporary file holds half the bytes (a torn write);
#   written: the temporary file is complete, before its fsync and rename;
#   before_replace: after fsync and chmod, just before os.replace;
#   after_replace: just after os.replace, before the folder's fsync.
DRIVER = r"""
import os, signal, sys
from pathlib import Path

import torch

import unet_patches.atomic as atomic
import unet_patches.cli

phase, target, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
argv = sys.argv[4:]
prefix = "." + target + "."
count = {"save": 0, "replace": 0}


def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


real_save = torch.save


def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if isinstance(f, (str, os.PathLike)) and Path(f).name.startswith(prefix):
        count["save"] += 1
        if count["save"] == nth:
            if phase == "partial":
                os.truncate(f, os.path.getsize(f) // 2)
                die()
            if phase == "written":
                die()


real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    hit = Path(src).name.startswith(prefix) and Path(dst).name == target
    if hit:
        count["replace"] += 1
        hit = count["replace"] == nth
    if hit and phase == "before_replace":
        die()
    real_replace(src, dst, *args, **kwargs)
    if hit and phase == "after_replace":
        die()


torch.save = save
atomic.os.replace = replace
sys.exit(unet_patches.cli.main(argv))
"""

# (phase, file, N-th write of that file). The reference run improves in epochs 1-3 (best.pt written
# three times) and not in 4-5 (last.pt alone, five times): checked in ``reference``.
WRITE_KILLS = [
    ("partial", "best.pt", 1),  # epoch 1: nothing but a torn temporary file
    ("written", "last.pt", 1),  # epoch 1: best.pt and no last.pt: started again
    ("after_replace", "last.pt", 1),  # epoch 1: both written
    ("before_replace", "best.pt", 2),  # epoch 2: the pair of epoch 1 and a complete temporary best.pt
    ("after_replace", "best.pt", 2),  # epoch 2: best.pt of epoch 2, last.pt of epoch 1
    ("partial", "last.pt", 2),  # epoch 2: best.pt written, last.pt torn
    ("written", "best.pt", 3),  # epoch 3
    ("before_replace", "last.pt", 3),  # epoch 3: best.pt of epoch 3, last.pt of epoch 2
    ("after_replace", "best.pt", 3),  # epoch 3
    ("partial", "last.pt", 4),  # epoch 4: no improvement, last.pt alone
    ("written", "last.pt", 5),  # the last epoch
    ("after_replace", "last.pt", 5),  # the last write of the run
]
RANDOM_KILLS = 8


def _params(folder: Path, data: Path) -> Path:
    config = tiny_config(
        folder,
        "train",
        epochs=EPOCHS,
        run_name=RUN,
        samples_per_epoch=32,
        val_fraction=0.34,
        schedule="constant",
        learning_rate=0.1,
    )
    values = config.to_dict()
    values["data"]["root"] = str(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "parameters.json"
    path.write_text(json.dumps(values, indent=2))
    return path


def _train_argv(params: Path) -> list[str]:
    return ["train", "--params", str(params), "--precision", "fp32", "--no-progress"]


def _run(command: list[str], folder: Path, log: str) -> subprocess.CompletedProcess:
    with open(folder / f"{log}.out", "w") as out, open(folder / f"{log}.err", "w") as err:
        done = subprocess.run(command, cwd=folder, env=ENV, stdout=out, stderr=err, timeout=300)
    done.stderr = (folder / f"{log}.err").read_text()
    return done


def _killed_after(command: list[str], folder: Path, delay: float, after: str) -> int:
    """Run ``command`` and SIGKILL it ``delay`` seconds after it started (``after="start"``) or after
    training began, when the run folder's config.json appeared (``after="training"``)."""
    started = folder / "checkpoints" / RUN / "config.json"
    with open(folder / "killed.out", "w") as out, open(folder / "killed.err", "w") as err:
        process = subprocess.Popen(command, cwd=folder, env=ENV, stdout=out, stderr=err)
        while after == "training" and not started.exists() and process.poll() is None:
            time.sleep(0.002)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
        return process.wait(timeout=60)


def _scenario(kind: tuple, folder: Path, data: Path) -> dict:
    """Start the run, kill it, keep a copy of what the crash left, then continue the run."""
    params = _params(folder, data)
    argv = _train_argv(params)
    if kind[0] == "random":
        rc = _killed_after([sys.executable, "-m", "unet_patches", *argv], folder, kind[2], kind[1])
    else:
        phase, target, nth = kind
        command = [sys.executable, "-c", DRIVER, phase, target, str(nth), *argv]
        with open(folder / "killed.out", "w") as out, open(folder / "killed.err", "w") as err:
            rc = subprocess.run(command, cwd=folder, env=ENV, stdout=out, stderr=err, timeout=300).returncode
    run_dir = folder / "checkpoints" / RUN
    crashed = folder / "crashed"
    if run_dir.is_dir():
        shutil.copytree(run_dir, crashed)
    else:
        crashed.mkdir()
    if (run_dir / "last.pt").is_file():
        how = "resume"
        done = _run(
            [sys.executable, "-m", "unet_patches", "train", "--resume", str(run_dir / "last.pt"), "--no-progress"],
            folder,
            "continued",
        )
    else:
        how = "overwrite"
        done = _run([sys.executable, "-m", "unet_patches", *argv, "--overwrite"], folder, "continued")
    return {
        "kill_rc": rc,
        "crashed": crashed,
        "run_dir": run_dir,
        "how": how,
        "rc": done.returncode,
        "stderr": done.stderr,
        "killed_stderr": (folder / "killed.err").read_text(),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("crash_data"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("reference")
    params = _params(folder, data)
    command = [sys.executable, "-m", "unet_patches", *_train_argv(params)]
    started = folder / "checkpoints" / RUN / "config.json"
    start = time.monotonic()
    with open(folder / "train.err", "w") as err:
        process = subprocess.Popen(command, cwd=folder, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        while not started.exists() and process.poll() is None:
            time.sleep(0.002)
        training = time.monotonic()
        rc = process.wait(timeout=300)
    end = time.monotonic()
    assert rc == 0, (folder / "train.err").read_text()
    run_dir = folder / "checkpoints" / RUN
    last, best = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir / "best.pt")
    # The scenarios of WRITE_KILLS count on best.pt written in epochs 1-3 and not in 4-5.
    assert _improving_epochs(last) == [1, 2, 3] and last["epoch"] == EPOCHS
    assert best["epoch"] == last["best_epoch"] == 3
    return {"seconds": end - start, "training_seconds": end - training, "last": last, "best": best}


def _improving_epochs(state: dict) -> list[int]:
    best, epochs = -1.0, []
    for record in state["history"]:
        if record["miou"] > best:
            best = record["miou"]
            epochs.append(record["epoch"])
    return epochs


def _scenarios(reference: dict) -> list[tuple]:
    """WRITE_KILLS, then the random moments: ("random", "start" or "training", delay in seconds).

    Stratified, so that they spread: 3 over the reference run's whole wall time from the process's
    start (start-up included), 5 over its training time from the moment training began (the run
    folder's config.json appears), which is where the checkpoint writes are."""
    rng = random.Random(SEED)
    kinds = []
    for after, count, seconds in (("start", 3, reference["seconds"]), ("training", 5, reference["training_seconds"])):
        kinds += [("random", after, round(seconds * (i + rng.random()) / count, 3)) for i in range(count)]
    assert len(kinds) == RANDOM_KILLS
    return [*WRITE_KILLS, *kinds]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, data, reference):
    kinds = _scenarios(reference)
    root = tmp_path_factory.mktemp("scenarios")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_scenario, kind, root / f"s{i:02d}", data) for i, kind in enumerate(kinds)]
        return [(kind, future.result()) for kind, future in zip(kinds, futures)]


def _same_weights(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [key for key in a if not torch.equal(a[key], b[key])]


@pytest.mark.parametrize("index", range(len(WRITE_KILLS) + RANDOM_KILLS))
def test_a_killed_run_leaves_a_sound_pair_and_resumes_to_identical_weights(index, outcomes, reference):
    kind, outcome = outcomes[index]
    if kind[0] != "random":  # the chosen write happened and killed the process
        assert outcome["kill_rc"] == -signal.SIGKILL, (kind, outcome["killed_stderr"])
        phase, target, _ = kind
        temporary = [p.name for p in outcome["crashed"].glob(f".{target}.*.tmp")]
        # Killed inside the write: before the rename its temporary file is left, after it none is.
        assert len(temporary) == (0 if phase == "after_replace" else 1), (kind, temporary)
    assert "Traceback" not in outcome["killed_stderr"], outcome["killed_stderr"]

    # What the crash left: each checkpoint present loads, and the pair agrees.
    crashed = outcome["crashed"]
    last = load_checkpoint(crashed / "last.pt") if (crashed / "last.pt").is_file() else None
    best = load_checkpoint(crashed / "best.pt") if (crashed / "best.pt").is_file() else None
    if last is not None:
        assert last["best_epoch"] is not None  # every epoch of this run has validation
        assert best is not None, f"{kind}: last.pt (epoch {last['epoch']}) without best.pt"
        assert best["epoch"] == last["best_epoch"] or best["epoch"] > last["epoch"], (
            kind,
            best["epoch"],
            last["epoch"],
            last["best_epoch"],
        )
        if best["epoch"] == last["best_epoch"] == last["epoch"]:  # written from the same state
            assert not _same_weights(best["model"], last["model"]), kind
    if best is not None and best["epoch"] == reference["best"]["epoch"]:  # a crash does not change weights
        assert not _same_weights(best["model"], reference["best"]["model"]), kind
    if best is not None and last is None:
        assert best["epoch"] == 1, kind  # only before the first last.pt

    # Continued as a user would, the run ends exactly as the uninterrupted one.
    assert outcome["rc"] == 0, (kind, outcome["how"], outcome["stderr"])
    assert "Traceback" not in outcome["stderr"], outcome["stderr"]
    run_dir = outcome["run_dir"]
    leftovers = sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))
    assert not leftovers, f"{kind} ({outcome['how']}): temporary files left in the run folder: {leftovers}"
    final_last, final_best = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir / "best.pt")
    assert final_last["epoch"] == EPOCHS and final_last["step"] == reference["last"]["step"]
    differ = _same_weights(final_last["model"], reference["last"]["model"])
    assert not differ, f"{kind} ({outcome['how']}): last.pt weights differ from the reference: {differ}"
    assert [h["miou"] for h in final_last["history"]] == [h["miou"] for h in reference["last"]["history"]]
    assert final_best["epoch"] == final_last["best_epoch"] == reference["best"]["epoch"]
    differ = _same_weights(final_best["model"], reference["best"]["model"])
    assert not differ, f"{kind} ({outcome['how']}): best.pt weights differ from the reference: {differ}"
