"""Two-process DDP on CPU (gloo) through the real entry point, ``torchrun ... train.py``.

One short run on a tiny patch folder is shared by the tests of this module. While it runs, an
audit hook (a ``sitecustomize`` put on ``PYTHONPATH``) logs every file each rank opens, creates,
renames or removes, so the tests can check from the outside that only rank 0 writes and that the
two ranks read disjoint shards of every epoch. The sharding is also checked directly on
``data.make_loader`` with the world size and rank patched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from unet_patches import runtime
from unet_patches.data.patches import extract_patches
from unet_patches.losses import build_loss
from unet_patches.models import checkpoint as checkpoints
from unet_patches.training import datasets as data
from unet_patches.training import loops
from unet_patches.training.config import config_from_dict, load_config

from helpers import small_dataset

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parent.parent
EPOCHS, BATCH = 2, 4
TIMEOUT = 120  # seconds per torchrun launch; a hang (mismatched collectives) fails instead of blocking CI

# Logs, per rank, the file events of the process: "open" (builtins.open and os.open: read or write),
# "os.rename" (os.rename / os.replace), "os.mkdir", "os.remove". Only torchrun's workers (RANK set) log.
SITECUSTOMIZE = r"""
import os, sys
if "RANK" in os.environ and os.environ.get("AUDIT_DIR"):
    _log = open(os.path.join(os.environ["AUDIT_DIR"], f"rank{os.environ['RANK']}-{os.getpid()}.log"), "w", buffering=1)
    _write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, (str, bytes, os.PathLike)):
                write = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _write_flags)
                _log.write(f"{'write' if write else 'read'}\t{os.fsdecode(path)}\n")
        elif event == "os.rename":
            _log.write(f"rename\t{os.fsdecode(args[0])}\t{os.fsdecode(args[1])}\n")
        elif event in ("os.mkdir", "os.remove"):
            _log.write(f"{event}\t{os.fsdecode(args[0])}\n")
    sys.addaudithook(_hook)
"""

# Evaluates a checkpoint on the validation set of its stored config, sharded as training shards it,
# and prints (rank 0) the reduced confusion matrix and mean loss as JSON.
EVALUATE = r"""
import json, sys
import torch
from unet_patches import runtime
from unet_patches.models import checkpoint as checkpoints
from unet_patches.training import datasets as data, loops
from unet_patches.training.config import config_from_dict
from unet_patches.losses import build_loss

state = checkpoints.load_checkpoint(sys.argv[1])
config = config_from_dict(state["config"])
device = runtime.init_distributed(torch.device("cpu"))
sources = data.make_datasets(config)
t = config.training
loader = data.make_loader(sources.val, t.batch_size, train=False, seed=t.seed, num_workers=0)
loss_fn = build_loss(t.loss, config.data.num_classes, class_weights=data.resolve_class_weights(config, sources))
model = checkpoints.model_from_checkpoint(state, device)
loss, matrix, _ = loops.evaluate(model, loader, loss_fn, config.data.num_classes, device=device,
                                    precision=runtime.resolve_precision(t.precision, device))
if runtime.is_main_process():
    print(json.dumps({"world": runtime.world_size(), "matrix": matrix.matrix.tolist(), "loss": loss}))
runtime.cleanup_distributed()
"""


def torchrun(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (a free rendezvous port is picked by torchrun)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def audit_events(audit_dir: Path, rank: int) -> list[list[str]]:
    logs = sorted(audit_dir.glob(f"rank{rank}-*.log"))
    assert len(logs) == 1, f"expected one worker process of rank {rank}, found logs {logs}"
    return [line.split("\t") for line in logs[0].read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Tiny data, a parameter file, and one 2-process training run through train.py."""
    root = tmp_path_factory.mktemp("ddp")
    small_dataset(root / "synthetic")
    extract_patches(root / "synthetic" / "train", root / "patches", patch_size=32, per_image=3)
    params = root / "parameters.json"
    params.write_text(
        json.dumps(
            {
                # No decode cache: the audit follows which patch PNGs each rank reads.
                "data": {"root": str(root), "cache": False},
                "patches": {"patch_size": 32},
                "model": {"base_width": 4, "depth": 2},
                # Cross-entropy is a mean over pixels, so its value does not depend on how samples are batched
                # (a Dice term's batch statistics would), and one- and two-process evaluations can be compared.
                "training": {
                    "epochs": EPOCHS,
                    "batch_size": BATCH,
                    "learning_rate": 0.05,
                    "precision": "fp32",
                    "loss": "ce",
                    "num_workers": 0,
                    "checkpoint_dir": str(root / "ck"),
                    "log_dir": str(root / "runs"),
                },
            }
        )
    )
    hooks, audit = root / "hooks", root / "audit"
    hooks.mkdir()
    audit.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(hooks), str(REPO)]), AUDIT_DIR=str(audit))
    result = torchrun(
        "train.py", "--params", str(params), "-f", "patches", "--run-name", "ddp", "--no-progress", "--json", env=env
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    env.pop("AUDIT_DIR")
    config = load_config(params, {"training": {"folder": "patches"}})
    return {
        "root": root,
        "params": params,
        "env": env,
        "result": result,
        "audit": audit,
        "config": config,
        "run_dir": root / "ck" / "ddp",
    }


def test_two_process_run_writes_each_checkpoint_from_rank_0_only(ddp_run):
    summary = json_lines(ddp_run["result"].stdout)[-1]
    sources = data.make_datasets(ddp_run["config"])
    steps_per_epoch = len(sources.train) // 2 // BATCH  # each rank takes half of every epoch
    assert summary["epochs"] == EPOCHS and summary["steps"] == EPOCHS * steps_per_epoch
    run_dir = ddp_run["run_dir"]
    # Exactly the expected files: no duplicates, no temporary files left from a partial write.
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt"]
    last = checkpoints.load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == EPOCHS and [h["epoch"] for h in last["history"]] == list(range(1, EPOCHS + 1))
    checkpoints.load_checkpoint(run_dir / "best.pt")

    root = str(ddp_run["root"])
    rank1 = audit_events(ddp_run["audit"], 1)
    assert any(e[0] == "read" for e in rank1)  # the hook saw rank 1 work
    written = [e for e in rank1 if e[0] != "read" and e[-1].startswith(root)]
    assert written == [], f"rank 1 wrote files: {written[:5]}"
    events = audit_events(ddp_run["audit"], 0)
    created = [e[1] for e in events if e[0] == "write" and e[1].endswith(".tmp") and e[1].startswith(str(run_dir))]
    renamed = [(e[1], e[2]) for e in events if e[0] == "rename" and e[2].startswith(str(run_dir))]
    # Every checkpoint was written to a temporary file and renamed into place, once per epoch for
    # last.pt and once per improvement for best.pt.
    improvements, best = 0, float("-inf")
    for record in last["history"]:
        if record["miou"] > best:
            improvements, best = improvements + 1, record["miou"]
    assert sorted(src for src, _ in renamed) == sorted(created)
    assert sum(dst.endswith("/last.pt") for _, dst in renamed) == EPOCHS
    assert sum(dst.endswith("/best.pt") for _, dst in renamed) == improvements
    assert len(renamed) == EPOCHS + improvements


def _epochs_of_reads(events: list[list[str]], folder: Path, names: set[str]) -> list[list[str]]:
    """The patch names read from ``folder/images``, split into runs of consecutive reads of ``names``."""
    runs: list[list[str]] = []
    previous_in = False
    for kind, *paths in events:
        path = Path(paths[0])
        if kind != "read" or path.parent != folder / "images":
            continue
        inside = path.stem in names
        if inside:
            if not previous_in:
                runs.append([])
            runs[-1].append(path.stem)
        previous_in = inside
    return runs


def test_ranks_read_disjoint_shards_that_cover_each_epoch(ddp_run):
    sources = data.make_datasets(ddp_run["config"])
    folder = sources.folder
    train_names, val_names = set(sources.train.names), set(sources.val.names)
    steps_per_epoch = len(sources.train) // 2 // BATCH
    per_rank = {r: _epochs_of_reads(audit_events(ddp_run["audit"], r), folder, train_names) for r in (0, 1)}
    # Rank 0 first reads the training windows its checkpoints keep for int8 calibration, in one run.
    calibration = [sources.train.names[i] for i in data.evenly_spread(len(sources.train), data.CALIBRATION_WINDOWS)]
    assert per_rank[0][0] == calibration and per_rank[1][0] != calibration
    per_rank[0] = per_rank[0][1:]
    assert [len(per_rank[r]) for r in (0, 1)] == [EPOCHS, EPOCHS]
    for epoch in range(EPOCHS):
        a, b = per_rank[0][epoch], per_rank[1][epoch]
        assert len(a) == len(set(a)) == len(b) == len(set(b)) == steps_per_epoch * BATCH
        assert not set(a) & set(b), f"epoch {epoch}: both ranks read {sorted(set(a) & set(b))[:5]}"
        if len(train_names) % (2 * BATCH) == 0:
            assert set(a) | set(b) == train_names
    assert per_rank[0][0] != per_rank[0][1]  # a new shuffle each epoch
    # Validation after every epoch: disjoint halves that together are the whole validation set.
    val = {r: _epochs_of_reads(audit_events(ddp_run["audit"], r), folder, val_names) for r in (0, 1)}
    held_back = [sources.val.names[i] for i in data.evenly_spread(len(sources.val), data.HELD_BACK_WINDOWS)]
    assert val[0][0] == held_back and val[1][0] != held_back  # the int8 guard's windows, rank 0 only
    val[0] = val[0][1:]
    assert [len(val[r]) for r in (0, 1)] == [EPOCHS, EPOCHS]
    for epoch in range(EPOCHS):
        a, b = set(val[0][epoch]), set(val[1][epoch])
        assert not a & b and a | b == val_names


class Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def _shards(monkeypatch, n: int, batch: int, train: bool, epoch: int = 0) -> list[list[int]]:
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(runtime, "world_size", lambda: 2)
        monkeypatch.setattr(runtime, "rank", lambda rank=rank: rank)
        loader = data.make_loader(Indices(n), batch, train=train, seed=3, num_workers=0)
        data.set_epoch(loader, epoch)
        shards.append([int(i) for b in loader for i in b])
    monkeypatch.undo()
    return shards


@pytest.mark.parametrize("n", [48, 51])
def test_make_loader_gives_each_rank_a_distinct_shard(monkeypatch, n):
    batch = 4
    for epoch in (0, 1):
        a, b = _shards(monkeypatch, n, batch, train=True, epoch=epoch)
        # Same number of steps on both ranks (else DDP would hang), no sample on both ranks,
        # and together the whole epoch but for the remainder of n / (2 * batch).
        assert len(a) == len(b) == (n // 2) // batch * batch
        assert len(set(a)) == len(a) and not set(a) & set(b)
        assert len(set(a) | set(b)) == n - n % (2 * batch)
    assert _shards(monkeypatch, n, batch, train=True, epoch=0) != _shards(monkeypatch, n, batch, train=True, epoch=1)
    # Validation: strided, nothing repeated or dropped, so the summed confusion matrix is exact.
    a, b = _shards(monkeypatch, n, batch, train=False)
    assert sorted(a + b) == list(range(n))


def _single_process(state_path: Path) -> dict:
    state = checkpoints.load_checkpoint(state_path)
    config = config_from_dict(state["config"])
    t, device = config.training, torch.device("cpu")
    sources = data.make_datasets(config)
    loader = data.make_loader(sources.val, t.batch_size, train=False, seed=t.seed, num_workers=0)
    loss_fn = build_loss(t.loss, config.data.num_classes, class_weights=data.resolve_class_weights(config, sources))
    loss, matrix, _ = loops.evaluate(
        checkpoints.model_from_checkpoint(state),
        loader,
        loss_fn,
        config.data.num_classes,
        device=device,
        precision=runtime.resolve_precision(t.precision, device),
    )
    return {"matrix": matrix.matrix.tolist(), "loss": loss, "summary": matrix.summary(config.data.names())}


@pytest.fixture(scope="module")
def two_process_evaluation(ddp_run):
    script = ddp_run["root"] / "evaluate_checkpoint.py"
    script.write_text(EVALUATE)
    result = torchrun(str(script), str(ddp_run["run_dir"] / "last.pt"), env=ddp_run["env"])
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    (printed,) = json_lines(result.stdout)
    assert printed["world"] == 2
    return printed


# Tolerances. The same weights are evaluated in batches of other compositions (two shards against one
# set) or in another memory layout (the training process keeps its model channels_last; a model rebuilt
# from a checkpoint is contiguous), and oneDNN picks its float32 kernels per shape, layout and CPU family:
# on an AVX-512 CPU a recorded loss and its re-evaluation differed by 2e-8 relative, on AVX2 by nothing.
# Float32 kernels agree to about 1e-6 relative on a mean over a few thousand pixels, so the losses get
# rel=1e-5. A pixel whose two top classes tie within that rounding may flip its argmax, so the
# confusion matrices may move a few pixels between cells (never their total) and IoUs get abs=2e-3
# (one pixel of a class of 500 is 2e-3). A wrong shard, a dropped sample or another rank's BatchNorm
# statistics, which these tests guard against, change the figures by far more.
LOSS_RTOL = 1e-5
MOVED_PIXELS = 8
IOU_ATOL = 2e-3


def _moved_pixels(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)) // 2


def test_confusion_matrix_reduced_over_two_ranks_equals_single_process(ddp_run, two_process_evaluation):
    single = _single_process(ddp_run["run_dir"] / "last.pt")
    pixels = len(data.make_datasets(ddp_run["config"]).val) * 32 * 32
    assert sum(map(sum, single["matrix"])) == sum(map(sum, two_process_evaluation["matrix"])) == pixels
    assert _moved_pixels(two_process_evaluation["matrix"], single["matrix"]) <= MOVED_PIXELS
    assert two_process_evaluation["loss"] == pytest.approx(single["loss"], rel=LOSS_RTOL)


def test_metrics_recorded_by_ddp_training_match_the_saved_model(ddp_run, two_process_evaluation):
    recorded = checkpoints.load_checkpoint(ddp_run["run_dir"] / "last.pt")["metrics"]
    single = _single_process(ddp_run["run_dir"] / "last.pt")
    assert recorded["iou"].keys() == single["summary"]["iou"].keys()
    for name, value in recorded["iou"].items():
        expected = single["summary"]["iou"][name]
        assert (value is None) == (expected is None), name
        if value is not None:
            assert value == pytest.approx(expected, abs=IOU_ATOL), name
    assert recorded["val_loss"] == pytest.approx(two_process_evaluation["loss"], rel=LOSS_RTOL)


def test_only_rank_0_prints_the_summary(ddp_run):
    assert len(json_lines(ddp_run["result"].stdout)) == 1


def test_time_budget_ends_both_ranks_together(ddp_run):
    """Each rank reads its own clock; the run must still stop on the same step on both ranks."""
    result = torchrun(
        "train.py",
        "--params",
        str(ddp_run["params"]),
        "-f",
        "patches",
        "--run-name",
        "budget",
        "-e",
        "1000",
        "--time-budget",
        "0.05",
        "--no-progress",
        "--json",
        env=ddp_run["env"],
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    summary = json_lines(result.stdout)
    assert len(summary) == 1 and summary[0]["epochs"] < 1000
