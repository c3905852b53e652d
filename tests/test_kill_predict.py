"""``predict`` killed with SIGKILL at random moments while it writes a TIFF, an OME-TIFF or a Zarr store
(issue 30): no file ever appears under its final name half-written, and the same command run again
finishes the job with outputs whose pixels equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import write_unet_checkpoint

pytestmark = pytest.mark.slow

FORMATS = {"tiff": "_labels.tif", "ome-tiff": "_labels.ome.tif", "zarr": "_labels.zarr"}
KILLS = 20


def read_labels(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        import zarr

        return np.asarray(zarr.open_array(str(path))[:])
    return tifffile.imread(path)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def command(checkpoint: Path, image: Path, out: Path, fmt: str) -> list[str]:
    return [sys.executable, "-m", "unet_patches", "predict", str(checkpoint), str(image), "-o", str(out),
            "--format", fmt, "--no-overlay", "--no-progress", "--no-compile", "--window", "64"]  # fmt: skip


def test_a_prediction_killed_anywhere_is_finished_by_running_it_again(tmp_path) -> None:
    pytest.importorskip("zarr")
    rng = np.random.default_rng(30)
    image = tmp_path / "scan.tif"
    tifffile.imwrite(image, rng.integers(0, 256, (2048, 2048), dtype=np.uint8), tile=(256, 256), compression="zlib")
    checkpoint = write_unet_checkpoint(tmp_path / "best.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, np.zeros((64, 64), np.uint8))
    started = time.monotonic()
    subprocess.run(command(checkpoint, tiny, tmp_path / "tiny", "tiff"), env=env, check=True, capture_output=True)
    startup = time.monotonic() - started  # what comes before the writing: kills are aimed after it
    reference, duration = {}, {}
    for fmt, suffix in FORMATS.items():
        started = time.monotonic()
        run = command(checkpoint, image, tmp_path / f"ref-{fmt}", fmt)
        subprocess.run(run, env=env, check=True, capture_output=True)
        duration[fmt] = time.monotonic() - started
        reference[fmt] = read_labels(tmp_path / f"ref-{fmt}" / f"scan{suffix}")
    kill_at = np.random.default_rng(7).uniform(0.0, 1.0, KILLS)
    outcomes = []
    for k, fraction in enumerate(kill_at):
        fmt = list(FORMATS)[k % len(FORMATS)]
        out, final = tmp_path / f"killed-{k}", tmp_path / f"killed-{k}" / f"scan{FORMATS[fmt]}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        run = subprocess.Popen(command(checkpoint, image, out, fmt), env=env, **quiet)
        time.sleep(0.8 * startup + fraction * (duration[fmt] - 0.8 * startup))
        run.send_signal(signal.SIGKILL)
        run.wait()
        if final.exists():  # it was finished, or put in place whole just before the kill
            assert np.array_equal(read_labels(final), reference[fmt]), (k, fmt, "a final name held a partial file")
            outcomes.append("finished")
            continue
        outcomes.append("mid-write" if out.is_dir() and leftovers(out) else "before writing")
        again = subprocess.run(command(checkpoint, image, out, fmt), env=env, capture_output=True, text=True)
        assert again.returncode == 0, (k, fmt, again.stderr[-2000:])
        assert np.array_equal(read_labels(final), reference[fmt]), (k, fmt)
        assert leftovers(out) == [], (k, fmt, leftovers(out))  # its .part and .lock are gone
    counts = {outcome: outcomes.count(outcome) for outcome in ("mid-write", "before writing", "finished")}
    print(f"kill moments: {counts}; start-up {startup:.1f} s, whole runs {duration}")
    assert counts["mid-write"] >= KILLS // 4, counts
