"""The README runs: every command of its ``sh`` blocks is run as a user types it, in order, in a
temporary folder whose ``parameters.json`` holds tiny settings (small images, a training time budget
of seconds), and so is its Python block. Each must exit 0 and write the files it names. The commands
that need what a test cannot have are listed in :data:`NOT_RUN` with the reason.

The one change made to a command: the minutes of ``--minutes`` and ``--time-budget`` become
``TINY_MINUTES`` (:func:`as_run`), so that "plan for 10 minutes" and "train for 10 minutes" take
seconds here.

The README also names files of the user's own (``best.pt``, ``scans/``, ``slide.tif``, ``old.pt``):
the test makes them before the first command that names them (:func:`make_fixtures`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DEMO_MODEL = REPO / "tests" / "data" / "demo_unet_w8.pt"

NOT_RUN = {
    "make demo": "trains for 10 minutes; tests/test_demo.py runs the demo with a short budget",
    "make test": "runs this suite",
    "tensorboard --logdir runs": "starts a server that runs until stopped",
    "python -m venv deploy": "makes a second environment and installs into it; tests/test_no_torch.py runs "
    "predict, evaluate and submit where importing torch fails",
    "pip install": "installs packages; the test environment has every extra",
    "sbatch": "needs SLURM",
    "mlflow models serve": "starts a server that runs until stopped; tests/test_serving.py starts one and sends "
    "it requests",
    "curl": "needs the server of the line before",
}
"""README commands (by how they start) that the test does not run, and why."""

TINY = {
    "synthetic": {"height": 96, "width": 96, "lines": [1, 3], "ellipses": [1, 3], "line_length": [10, 60]},
    "training": {"time_budget_minutes": 0.1, "epochs": 4, "samples_per_epoch": 16, "val_windows_per_image": 2,
                 "precision": "fp32"},
    "inference": {"batch_size": 8},
}  # fmt: skip
"""Settings that make the README's commands take seconds: 96 x 96 synthetic images, training epochs of
one step, and runs ended after 6 seconds at the latest (flags on a command still win)."""


TINY_MINUTES = "0.05"


def as_run(command: str) -> str:
    """``command`` with the minutes it plans or trains for cut to ``TINY_MINUTES``."""
    return re.sub(r"(--minutes|--time-budget)\s+[0-9.]+", rf"\1 {TINY_MINUTES}", command)


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks of ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def commands() -> list[str]:
    """The commands of the README's ``sh`` blocks, in order: comment lines dropped, trailing comments
    cut, continued lines joined."""
    found = []
    for block in blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def reason_not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def named_outputs(command: str) -> list[str]:
    """The files and folders a command names as its outputs (``-o``/``--out``), or that it writes by
    the README's account."""
    outputs = re.findall(r"(?:^|\s)(?:-o|--out)\s+(\S+)", command)
    for report in re.findall(r"--report\s+(\S+)\.json", command):
        outputs += [f"{report}.json", f"{report}_reliability.png"]
    if "--uncertainty" in command:
        outputs += [f"{outputs[0]}/report.json"]
    if command.startswith("python train.py") or command.startswith("unet-patches train"):
        name = re.search(r"--run-name\s+(\S+)", command)
        folder = re.search(r"-f\s+(\S+)", command)
        run = name.group(1) if name else f"{Path(folder.group(1)).name}_b{_batch(command)}" if folder else None
        if run and "--resume" not in command:
            outputs += [f"checkpoints/{run}/last.pt"]
    if command.startswith("unet-patches generate") and "-o" not in command.split():
        kind = "nuclei" if "--kind nuclei" in command else "synthetic"
        outputs += [f"data/{kind}/train", f"data/{kind}/test"]
    if command.startswith("unet-patches patches"):
        outputs += ["data/patches_s96/manifest.json"]
    if command.startswith("unet-patches crossval"):
        outputs += ["checkpoints/cv5/cv.md"]
    if command.startswith("unet-patches experiments") and "-o" not in command.split():
        outputs += [f"experiments/{Path(command.split()[2]).stem}/results.md"]
    if command.startswith("unet-patches merge-report"):
        outputs += [f"{command.split()[2]}/report.json"]
    return outputs


def _batch(command: str) -> int:
    found = re.search(r"-b\s+(\d+)", command)
    return int(found.group(1)) if found else 16  # training.batch_size


def make_fixtures(command: str, root: Path) -> None:
    """Make the user's own files that ``command`` names, if not there yet."""
    if re.search(r"(^|\s)best\.pt(\s|$)", command) and not (root / "best.pt").exists():
        shutil.copy(DEMO_MODEL, root / "best.pt")  # a trained model: the demo's U-Net (tests/data)
    if "scans" in command and not (root / "scans").exists():
        rng = np.random.default_rng(0)
        (root / "scans").mkdir()
        for i, (h, w) in enumerate([(300, 240), (180, 200)]):
            tifffile.imwrite(root / "scans" / f"scan{i}.tif", rng.integers(0, 4000, (h, w), dtype=np.uint16))
    if "slide.tif" in command and not (root / "slide.tif").exists():
        image = np.random.default_rng(1).integers(0, 255, (600, 520), dtype=np.uint8)
        with tifffile.TiffWriter(root / "slide.tif") as tif:  # tiled, with one sub-resolution
            tif.write(image, tile=(128, 128), compression="zlib", subifds=1)
            tif.write(image[::2, ::2], tile=(128, 128), compression="zlib", subfiletype=1)
    if re.search(r"(^|\s)old\.pt(\s|$)", command) and not (root / "old.pt").exists():
        import torch

        state = torch.load(root / "checkpoints" / "patches_s96_b16" / "best.pt", weights_only=True)
        state["int8_windows"] = None  # as written before checkpoints kept them
        torch.save(state, root / "old.pt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    (root / "parameters.json").write_text(json.dumps(TINY))
    shutil.copy(REPO / "train.py", root / "train.py")
    shutil.copytree(REPO / "experiments", root / "experiments", ignore=shutil.ignore_patterns("*_cv5", "*_run"))
    return root


def test_the_readme_has_commands_and_every_one_not_run_says_why():
    every = commands()
    assert len(every) > 30 and every[0] == "make demo"
    skipped = [c for c in every if reason_not_run(c)]
    assert all(reason_not_run(c) for c in skipped) and len(skipped) < 12
    assert any(c.startswith("unet-patches evaluate") and "--json" not in c for c in every)  # as a user types it


@pytest.mark.slow
def test_every_readme_command_runs_as_written(folder):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WORLD_SIZE", None)
    ran = []
    for command in commands():
        if reason_not_run(command):
            continue
        make_fixtures(command, folder)
        result = subprocess.run(
            as_run(command), shell=True, cwd=folder, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        for output in named_outputs(command):
            assert (folder / output).exists(), f"{command}: {output} was not written"
        if command.startswith("unet-patches evaluate"):  # the plain-text table
            lines = result.stdout.strip().splitlines()
            assert lines[1].split() == ["class", "IoU", "Dice", "ECE"], result.stdout
            assert any(line.startswith("mean") for line in lines), result.stdout
            assert any(line.startswith("probabilities (temperature") for line in lines), result.stdout
        ran.append(command)
    assert len(ran) >= 30


@pytest.mark.slow
def test_the_readme_python_runs_as_written(folder):
    """After the commands (it reads the tour's checkpoint and data): the Python block as a script."""
    if not (folder / "checkpoints" / "patches_s96_b16" / "best.pt").exists():
        pytest.skip("needs the tour's checkpoint: runs after test_every_readme_command_runs_as_written")
    (python,) = blocks("python")
    (folder / "readme_api.py").write_text(python)
    result = subprocess.run([sys.executable, "readme_api.py"], cwd=folder, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / "out_api" / "0000_labels.png").is_file()
