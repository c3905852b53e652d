"""Prediction jobs split over processes (unet_patches.files.shards): the share, skipping finished images,
the shard reports and their merge."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet_patches.cli import main
from unet_patches.errors import UserError
from unet_patches.files.shards import Shard, merge_report, shard_from, share

from helpers import write_unet_checkpoint


def test_the_shard_comes_from_the_flag_torchrun_or_a_slurm_array():
    assert shard_from("1/3") == Shard(1, 3, "--shard")
    assert shard_from(None, {"WORLD_SIZE": "4", "RANK": "2"}) == Shard(2, 4, "torchrun")
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert shard_from(None, slurm) == Shard(2, 3, "SLURM array")
    assert shard_from("0/2", {"WORLD_SIZE": "4", "RANK": "2"}) == Shard(0, 2)  # the flag wins
    assert shard_from(None, {}) is None and shard_from(None, {"WORLD_SIZE": "1"}) is None
    for bad in ("3/3", "1", "a/2", "-1/2", "1/0", "1/2/3"):
        with pytest.raises(UserError, match=r"expected I/N with 0 <= I < N"):
            shard_from(bad)


def test_shares_are_disjoint_cover_every_file_and_ignore_the_order_given():
    files = [Path(f"in/{name}.png") for name in "qwertyuiopasd"]
    shares = [share(files, Shard(i, 4)) for i in range(4)]
    assert sorted(p for s in shares for p in s) == sorted(files)
    assert sum(len(s) for s in shares) == len(files) and {len(s) for s in shares} == {3, 4}
    assert [share(list(reversed(files)), Shard(i, 4)) for i in range(4)] == shares


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(tmp_path / f"img {k}.png")
    write_unet_checkpoint(tmp_path / "ckpt.pt")
    return tmp_path


def _predict(folder: Path, *flags: str) -> int:
    argv = ["predict", str(folder / "ckpt.pt"), str(folder), "-o", str(folder / "out"), "--no-progress"]
    return main([*argv, "--window", "patch", "--no-overlay", *flags])


def test_shards_predict_their_files_once_and_a_rerun_skips_what_is_done(folder, capsys):
    assert _predict(folder, "--shard", "0/2") == 0
    labels = sorted(p.name for p in (folder / "out").glob("*_labels.png"))
    assert labels == ["img 0_labels.png", "img 2_labels.png", "img 4_labels.png"]
    (folder / "out" / "img 4_labels.png").unlink()  # killed before its last image was written
    assert _predict(folder, "--shard", "0/2") == 0  # redoes only that one
    report = json.loads((folder / "out" / ".shards" / "shard-0-of-2.json").read_text())
    assert [Path(p).name for p in report["written"]] == ["img 4_labels.png"]
    assert sorted(Path(p).name for p in report["skipped"]) == ["img 0.png", "img 2.png"]
    assert main(["merge-report", str(folder / "out")]) == 0
    assert "1 of 2 shards, 1 files written, 2 images skipped; shards still missing: [1]" in capsys.readouterr().out
    assert json.loads((folder / "out" / "report.json").read_text())["missing"] == [1]
    assert _predict(folder, "--shard", "1/2") == 0
    merged = merge_report(folder / "out")
    assert merged["missing"] == [] and len(merged["written"]) == 3  # shard 1's two and shard 0's redo
    assert len(list((folder / "out").glob("*_labels.png"))) == 5


def test_a_rerun_with_nothing_left_to_do_settles_no_job(folder, monkeypatch):
    """Deciding a job's network (building int8, timing a compile trial) waits until there is work."""
    from unet_patches.inference import predict

    assert _predict(folder, "--shard", "0/2") == 0
    monkeypatch.setattr(predict, "PredictionJob", lambda *a, **k: pytest.fail("a job was settled"))
    assert _predict(folder, "--shard", "0/2", "--precision", "int8") == 0  # int8 is not even asked for
    report = json.loads((folder / "out" / ".shards" / "shard-0-of-2.json").read_text())
    assert report["written"] == [] and len(report["skipped"]) == 3


def test_merge_report_without_shards_is_a_user_error(tmp_path, capsys):
    assert main(["merge-report", str(tmp_path)]) == 2
    assert "no shard reports" in capsys.readouterr().err
