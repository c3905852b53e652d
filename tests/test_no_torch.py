"""Deployment without torch: where only NumPy, Pillow, tifffile and ONNX Runtime are installed,
``predict``, ``evaluate`` and ``submit`` run an ONNX export through the same tiling engine and give
exactly what they give with torch installed; the commands that need torch say so in one line.

Each check runs a fresh interpreter in which importing torch fails as it does where torch is not
installed (a ``ModuleNotFoundError``), and which asserts at exit that torch was never loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from unet_patches.cli import main
from unet_patches.data.synthetic import SyntheticSpec, generate_dataset

from helpers import write_unet_checkpoint

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
"""

RUN_CLI = """
from unet_patches.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "torch was imported"
sys.exit(code)
"""


def without_torch(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """``unet-patches ARGV`` in a fresh interpreter that cannot import torch."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH + RUN_CLI, *argv], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """A small U-Net checkpoint, its ONNX export (probabilities) and a synthetic test set."""
    root = tmp_path_factory.mktemp("deployed")
    names = ["background", "line", "ellipse"]
    write_unet_checkpoint(root / "best.pt", class_names=names, normalize="percentile")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["export", str(root / "best.pt"), "--format", "onnx", "-o", str(root / "model.onnx")]) == 0
    generate_dataset(root / "data", n_train=1, n_test=3, seed=3, spec=SyntheticSpec(height=70, width=101))
    return root


def test_the_package_imports_without_torch(tmp_path):
    code = WITHOUT_TORCH + (
        "import unet_patches, unet_patches.api, unet_patches.inference.segmenter, unet_patches.inference.tiling\n"
        "import unet_patches.deploy.submission, unet_patches.inference.config, unet_patches.inference.onnx\n"
        "import unet_patches.data.folders, unet_patches.metrics, unet_patches.data.preprocess\n"
        "from unet_patches.inference.tiling import WindowBlender\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_predict_evaluate_and_submit_run_an_export_without_torch_and_agree_with_torch(deployed, tmp_path, capsys):
    model, images, test = deployed / "model.onnx", deployed / "data" / "test" / "images", deployed / "data" / "test"
    flags = ["--overlap", "0.25", "--blend", "gaussian", "--tta"]

    bare = without_torch(tmp_path, "predict", str(model), str(images), "-o", "bare", "--probs", *flags)
    assert bare.returncode == 0, bare.stderr
    assert main(["predict", str(model), str(images), "-o", str(tmp_path / "full"), "--probs", *flags]) == 0
    written = sorted(p.name for p in (tmp_path / "bare").iterdir())
    assert len(written) == 9 and written == sorted(p.name for p in (tmp_path / "full").iterdir())
    for name in written:  # labels, overlays and probabilities: the same bytes
        assert (tmp_path / "bare" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name

    bare = without_torch(tmp_path, "evaluate", str(model), str(test), "--json", *flags)
    assert bare.returncode == 0, bare.stderr
    capsys.readouterr()
    assert main(["evaluate", str(model), str(test), "--json", *flags]) == 0
    assert json.loads(bare.stdout) == json.loads(capsys.readouterr().out)

    bare = without_torch(tmp_path, "submit", str(model), str(images), "-o", "bare.csv", "--class", "line")
    assert bare.returncode == 0, bare.stderr
    assert main(["submit", str(model), str(images), "-o", str(tmp_path / "full.csv"), "--class", "line"]) == 0
    assert (tmp_path / "bare.csv").read_text() == (tmp_path / "full.csv").read_text()


def test_what_needs_torch_says_so_in_one_line(deployed, tmp_path):
    for argv, needle in [
        (["train", "-e", "1"], "train needs it"),
        (["export", str(deployed / "best.pt"), "--format", "onnx", "-o", "m.onnx"], "export needs it"),
        (["predict", str(deployed / "best.pt"), str(deployed / "data" / "test"), "-o", "out"], "best.pt: reading"),
    ]:
        result = without_torch(tmp_path, *argv)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
        assert "PyTorch" in lines[0] and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())
    usage = without_torch(tmp_path, "--help")
    assert usage.returncode == 0 and "predict" in usage.stdout and "train" not in usage.stdout.split("COMMAND")[-1]


def test_the_deployment_requirements_are_the_packages_own(repo_root):
    """requirements-deploy.txt: core dependencies of pyproject.toml and onnxruntime of the onnx extra,
    with the same bounds, and no torch."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["onnx"])
    lines = (repo_root / "requirements-deploy.txt").read_text().splitlines()
    wanted = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert wanted and set(wanted) <= declared
    assert not any(line.startswith(("torch", "kornia", "tensorboard")) for line in wanted)
