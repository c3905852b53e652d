"""Predictions side by side (issue 30): several ``predict`` runs writing into one output folder never
remove or corrupt each other's files; each image is written by one of them, and the others say which
images they left."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_tiling_safety import OPTIONS, as_segmenter, files_in

from unet_patches.api import predict_files
from unet_patches.cli import main
from unet_patches.files.claims import claim_path, take_claim
from unet_patches.files.formats import OUTPUT_FORMATS
from unet_patches.files.plan import output_paths

from helpers import tiny_net, write_unet_checkpoint

pytest.importorskip("fcntl", reason="claims between processes need flock (POSIX)")


def images(folder: Path, count: int, size: int = 24) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = []
    for k in range(count):
        paths.append(folder / f"h{k:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(paths[-1])
    return paths


def outputs_of(image: Path, out: Path) -> dict[str, Path]:
    return output_paths(image, out, OUTPUT_FORMATS.lookup("png", "format"), overlay=True, probs=False)


def test_a_claim_is_held_by_one_holder_at_a_time_and_removed_when_given_up(tmp_path) -> None:
    outputs = {"labels": tmp_path / "a_labels.png"}
    first = take_claim(outputs)
    assert first is not None and claim_path(outputs["labels"]) == tmp_path / ".a_labels.png.lock"
    assert take_claim(outputs) is None  # a second open file description: flock refuses it
    first.release()
    assert files_in(tmp_path) == []
    with take_claim(outputs) as again:
        assert again is not None and files_in(tmp_path) == [".a_labels.png.lock"]
    assert files_in(tmp_path) == []


def test_a_lock_file_left_by_a_killed_run_is_taken_over(tmp_path) -> None:
    outputs = {"labels": tmp_path / "a_labels.png"}
    claim_path(outputs["labels"]).write_bytes(b"")  # its holder died: nobody holds the lock
    with take_claim(outputs) as claim:
        assert claim is not None


def test_an_image_being_written_elsewhere_is_left_with_its_files_untouched(tmp_path, caplog) -> None:
    a, b = images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / ".h000_labels.png.part"
    theirs.write_bytes(b"another process's work in progress")
    held = take_claim(outputs_of(a, out))  # the other process holds the claim on a
    with caplog.at_level(logging.WARNING, logger="unet_patches.inference.job"):
        written = predict_files(as_segmenter(tiny_net()), [a, b], out, progress=False, **OPTIONS)
    assert sorted(p.name for p in written) == ["h001_labels.png", "h001_overlay.png"]
    assert written.busy == [a]
    assert theirs.read_bytes() == b"another process's work in progress"
    assert "h000.png: skipped, another prediction is writing" in caplog.text
    held.release()
    assert files_in(out) == [".h000_labels.png.part", "h001_labels.png", "h001_overlay.png"]


def test_outputs_written_elsewhere_after_planning_are_not_replaced(tmp_path, monkeypatch) -> None:
    (a,) = images(tmp_path / "in", 1)
    out = tmp_path / "out"
    from unet_patches.inference import job

    def finished_elsewhere(outputs):  # another process finished a's files between planning and writing
        outputs["labels"].parent.mkdir(parents=True, exist_ok=True)
        outputs["labels"].write_bytes(b"theirs")
        return take_claim(outputs)

    monkeypatch.setattr(job, "take_claim", finished_elsewhere)
    written = predict_files(as_segmenter(tiny_net()), [a], out, progress=False, **OPTIONS)
    assert list(written) == [] and written.busy == [a]
    assert (out / "h000_labels.png").read_bytes() == b"theirs" and files_in(out) == ["h000_labels.png"]


def test_with_overwrite_the_outputs_there_when_planned_are_replaced(tmp_path) -> None:
    (a,) = images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "h000_labels.png").write_bytes(b"old")
    written = predict_files(as_segmenter(tiny_net()), [a], out, overwrite=True, progress=False, **OPTIONS)
    assert written.busy == [] and len(written) == 2 and (out / "h000_labels.png").read_bytes() != b"old"


def test_stale_parts_are_removed_only_under_the_images_claim(tmp_path) -> None:
    (a,) = images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".h000_overlay.png.part").write_bytes(b"left by a killed run")
    claim_path(out / "h000_labels.png").write_bytes(b"")  # and its lock file, held by nobody now
    written = predict_files(as_segmenter(tiny_net()), [a], out, progress=False, **OPTIONS)
    assert written.busy == [] and files_in(out) == ["h000_labels.png", "h000_overlay.png"]


def test_the_cli_says_which_images_it_left(tmp_path, capsys) -> None:
    a, b = images(tmp_path / "in", 2)
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "out"
    held = take_claim(outputs_of(b, out))
    assert main(["predict", str(checkpoint), str(a), str(b), "-o", str(out), "--no-progress"]) == 0
    held.release()
    printed = capsys.readouterr().out
    assert "wrote 2 files" in printed
    assert f"left 1 image(s) to another prediction writing into {out}: {b}" in printed


def test_a_shard_report_names_the_images_left_to_another_prediction(tmp_path, capsys) -> None:
    a, b = images(tmp_path / "in", 2)
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "out"
    held = take_claim(outputs_of(a, out))
    for index in (0, 1):
        command = ["predict", str(checkpoint), str(tmp_path / "in"), "-o", str(out), "--shard", f"{index}/2"]
        assert main([*command, "--no-progress"]) == 0
    held.release()
    assert main(["merge-report", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["busy"] == [str(a)] and report["written"] == sorted(str(p) for p in out.glob("h001_*.png"))
    assert "1 left to another prediction" in capsys.readouterr().out


@pytest.mark.slow
def test_two_predictions_started_together_share_the_images(tmp_path) -> None:
    """The issue's case: two ``predict`` commands on the same six images and output folder, started
    together. Each ends well: it writes its images and leaves the others', or, started when the other
    had already put files in place, refuses in one line as any predict into a folder with outputs
    does. Every image is written once and equals a prediction made alone; no temporary file is left."""
    inputs = images(tmp_path / "in", 6, size=256)
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    out, alone = tmp_path / "out", tmp_path / "alone"
    command = [sys.executable, "-m", "unet_patches", "predict", str(checkpoint), str(tmp_path / "in")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    runs = [subprocess.Popen([*command, "-o", str(out), "--no-progress"], **pipes) for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    wrote = 0
    for run, (stdout, stderr) in zip(runs, results):
        if run.returncode == 0:
            wrote += int(stdout.split("wrote ")[1].split()[0])
        else:
            assert run.returncode == 2 and "already exists" in stderr and "Traceback" not in stderr, stderr
    assert wrote == 2 * len(inputs), results
    subprocess.run([*command, "-o", str(alone), "--no-progress"], env=env, check=True, capture_output=True)
    assert files_in(out) == files_in(alone) and len(files_in(out)) == 2 * len(inputs)  # no .part, no .lock
    for name in files_in(alone):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(alone / name))), name
