"""Failed writes (issue 30): a full disk, a file-size limit or a quota stops a command with one line that
names the file and the reason; no partial file is left under a final name, and what was there before
(a best.pt, earlier outputs) stays as it was.

The failures are forced with a file-size limit (``RLIMIT_FSIZE``: Python ignores ``SIGXFSZ``, so a
write past the limit fails with ``EFBIG``, as one on a full disk fails with ``ENOSPC``) or, for training,
a checkpoint write that raises ``ENOSPC``."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unet_patches.cli import main
from unet_patches.errors import UserError
from unet_patches.models import checkpoint as checkpoint_module
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint

from helpers import small_dataset, tiny_config, write_unet_checkpoint

resource = pytest.importorskip("resource", reason="file-size limits are POSIX")


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Files of this process cannot grow past ``limit`` bytes while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_a_checkpoint_that_cannot_be_written_leaves_the_one_before(tmp_path) -> None:
    path = write_unet_checkpoint(tmp_path / "best.pt")
    before = path.read_bytes()
    state = load_checkpoint(path)
    state["model"] = {k: torch.zeros(64, 1024) for k in ("a", "b")}  # bigger than the limit
    with file_size_limit(len(before) + 1000), pytest.raises(UserError) as info:
        save_checkpoint(state, path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot write (") and "the file there before is unchanged" in message
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_training_stopped_by_a_full_disk_keeps_its_last_good_checkpoints(tmp_path, monkeypatch) -> None:
    small_dataset(tmp_path, n_train=4, n_test=1)
    config = tiny_config(tmp_path, "train", epochs=3, run_name="full")
    saves = []
    real_save = torch.save

    def disk_fills_at_the_third_save(state, path, *args, **kwargs):
        saves.append(path)
        if len(saves) >= 3:  # epoch 1 wrote best.pt and last.pt; epoch 2 finds the disk full
            real_save(state, path, *args, **kwargs)  # part of the file, then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_at_the_third_save)
    from unet_patches.training.run import fit

    with pytest.raises(UserError, match=r"\.pt: cannot write \(No space left on device\); the file there before"):
        fit(config)
    monkeypatch.undo()
    run_dir = Path(config.training.checkpoint_dir) / "full"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1 and load_checkpoint(run_dir / "best.pt")


def test_predict_past_a_size_limit_stops_in_one_line_and_keeps_earlier_outputs(tmp_path, capsys) -> None:
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (160, 160), dtype=np.uint8)).save(tmp_path / "in" / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier_labels.png").write_bytes(b"an earlier output")
    with file_size_limit(20_000):  # a colour overlay of noise is larger than this
        code = main(["predict", str(checkpoint), str(tmp_path / "in"), "-o", str(out), "--no-progress"])
    assert code == 2
    line = one_error_line(capsys)
    assert f"{out / 'a_overlay.png'}: File too large" in line, line
    assert listing(out) == {"earlier_labels.png": b"an earlier output"}  # a's labels taken back, no .part


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_past_a_size_limit_stops_in_one_line(tmp_path, capsys, fmt) -> None:
    """(``torch.jit.save`` to a path aborted the whole process on a failed write.)"""
    if fmt == "onnx":
        pytest.importorskip("onnx")
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    with file_size_limit(4096):
        code = main(["export", str(checkpoint), "--format", fmt, "-o", str(out)])
    assert code == 2
    assert f"{out}: File too large" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_crossval_stopped_by_a_full_disk_keeps_what_it_finished(tmp_path, monkeypatch) -> None:
    from unet_patches.training.crossval import run_crossval

    small_dataset(tmp_path, n_train=4, n_test=1)
    config = tiny_config(tmp_path, "train", epochs=1, folds=2, run_name="cv")
    saves = []
    real_save = torch.save

    def disk_fills_in_the_second_fold(state, path, *args, **kwargs):
        saves.append(path)
        if len(saves) > 4:  # fold 0 wrote its best.pt and last.pt, then again with their temperature
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_in_the_second_fold)
    with pytest.raises(UserError, match=r"fold_1.*\.pt: cannot write \(No space left on device\)") as info:
        run_crossval(config, progress_bars=False)
    monkeypatch.undo()
    assert "\n" not in str(info.value)
    cv_dir = Path(config.training.checkpoint_dir) / "cv"
    assert not [p for p in cv_dir.rglob("*") if p.name.endswith(".tmp")]
    for path in (cv_dir / "fold_0").glob("*.pt"):
        assert load_checkpoint(path)  # whole
    assert not list((cv_dir / "fold_1").glob("*.pt"))
