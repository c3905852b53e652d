"""int8 inference (unet_patches.inference.int8): the quantized network, its accuracy guard, its cache beside
the checkpoint, and when ``precision: auto`` chooses it. On the demo U-Net (tests/data/README.md)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from unet_patches import runtime  # noqa: E402
from unet_patches.api import (  # noqa: E402
    PredictionJob,  # noqa: E402
    Segmenter,
    predict,
)
from unet_patches.data.synthetic import SyntheticSpec, generate_sample  # noqa: E402
from unet_patches.errors import UserError  # noqa: E402
from unet_patches.inference import int8 as quantizing
from unet_patches.inference.int8 import Guard, Int8Network, cache_folder, check, int8_network  # noqa: E402
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

DEMO_MODEL = Path(__file__).parent / "data" / "demo_unet_w8.pt"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a new process would: nothing kept in memory, the guard's threshold as
    shipped unless a test lowers it."""
    monkeypatch.setattr(quantizing, "_KEPT", {})
    monkeypatch.setattr(quantizing, "_SAID", set())


@pytest.fixture
def lenient_guard(monkeypatch):
    """Tests about the cache and the engine must not depend on how close to 0.99 this CPU's int8
    kernels land for the demo model's thin class; the guard itself is tested apart."""
    monkeypatch.setattr(quantizing, "GUARD_MIN_IOU", 0.9)


@pytest.fixture(scope="module")
def image():
    image, _ = generate_sample(np.random.default_rng(7), SyntheticSpec(height=256, width=320))
    return (image * 255).astype(np.uint8)


def _copy(tmp_path: Path, name: str = "best.pt", **changes) -> Path:
    state = load_checkpoint(DEMO_MODEL)
    state.update(changes)
    save_checkpoint(state, tmp_path / name)
    return tmp_path / name


def test_int8_labels_agree_with_float_and_the_network_is_cached_beside_the_checkpoint(tmp_path, image, lenient_guard):
    checkpoint = shutil.copy(DEMO_MODEL, tmp_path / "best.pt")
    segmenter = Segmenter.from_checkpoint(checkpoint)
    reference = predict(segmenter, image, precision="fp32")
    labels = predict(segmenter, image, precision="int8")
    assert (labels == reference).mean() >= 0.99
    info = json.loads((cache_folder(checkpoint) / "info.json").read_text())
    assert info["passed"] and info["windows"] == 16 and set(info["iou"]) == set(segmenter.class_names)
    assert (tmp_path / "best.pt.int8" / "model.xml").is_file() and (tmp_path / "best.pt.int8" / "model.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "best.pt.int8"]  # no staging folder left


def test_the_cache_is_read_again_and_rebuilt_when_the_checkpoint_changes(tmp_path, monkeypatch, lenient_guard):
    checkpoint = shutil.copy(DEMO_MODEL, tmp_path / "best.pt")
    segmenter = Segmenter.from_checkpoint(checkpoint)
    int8_network(checkpoint, segmenter.network, segmenter.class_names)
    first = json.loads((cache_folder(checkpoint) / "info.json").read_text())

    def no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr(quantizing, "_KEPT", {})  # a new process
    monkeypatch.setattr(quantizing, "quantize", no_quantizing)
    network, guard = int8_network(checkpoint, segmenter.network, segmenter.class_names)
    assert isinstance(network, Int8Network) and guard.passed  # read from the cache

    state = load_checkpoint(checkpoint)  # the checkpoint changes: trained further, say
    state["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(state, checkpoint)
    monkeypatch.setattr(quantizing, "_KEPT", {})
    with pytest.raises(AssertionError, match="quantized again"):
        int8_network(checkpoint, segmenter.network, segmenter.class_names)
    monkeypatch.undo()
    monkeypatch.setattr(quantizing, "GUARD_MIN_IOU", 0.9)
    changed = Segmenter.from_checkpoint(checkpoint)
    int8_network(checkpoint, changed.network, changed.class_names)
    second = json.loads((cache_folder(checkpoint) / "info.json").read_text())
    assert second["checkpoint_sha256"] != first["checkpoint_sha256"]


def int8_predictor(segmenter, **options):
    """The predictor of a job that asks for int8, for a 96 x 96 image."""
    return PredictionJob(segmenter, precision="int8", **options).predictor((96, 96))


def test_the_guard_refuses_a_broken_calibration_with_the_per_class_figures(tmp_path, monkeypatch):
    windows = load_checkpoint(DEMO_MODEL)["int8_windows"]
    broken = {"calibration": torch.zeros_like(windows["calibration"]), "held_back": windows["held_back"]}
    checkpoint = _copy(tmp_path, int8_windows=broken)
    segmenter = Segmenter.from_checkpoint(checkpoint)
    pattern = r"best.pt: int8 refused by its accuracy guard \(IoU against float labels on 16 held-back windows: "
    with pytest.raises(UserError, match=pattern + r"background 0\.\d+ \(< 0\.99\), line .*ellipse"):
        int8_predictor(segmenter)
    info = json.loads((cache_folder(checkpoint) / "info.json").read_text())
    assert info["passed"] is False and not (cache_folder(checkpoint) / "model.xml").exists()
    # precision auto, on a CPU with int8 dot products: the failed guard is remembered, not retried
    monkeypatch.setattr(quantizing, "_KEPT", {})
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: True)
    monkeypatch.setattr(quantizing, "quantize", lambda *a, **k: pytest.fail("quantized again"))
    assert PredictionJob(segmenter, [(4096, 4096)], precision="auto", compile=False).precision == "auto"


def test_the_guard_on_a_network_against_itself_and_a_broken_copy():
    windows = load_checkpoint(DEMO_MODEL)["int8_windows"]["held_back"].float().numpy()
    segmenter = Segmenter.from_checkpoint(DEMO_MODEL)
    same = check(segmenter.network, lambda batch: segmenter.network(batch), windows, segmenter.class_names)
    assert same.passed and same.agreement == 1.0 and set(same.iou.values()) == {1.0}
    ellipse_as_background = check(
        segmenter.network, lambda batch: segmenter.network(batch)[:, [0, 1, 0]], windows, segmenter.class_names
    )
    assert not ellipse_as_background.passed and ellipse_as_background.iou["ellipse"] == 0.0
    assert "ellipse 0.0000 (< 0.99)" in ellipse_as_background.describe()
    assert Guard({"a": 0.995, "b": None}, 0.999, 3).passed


def test_auto_chooses_int8_on_int8_cpus_when_cached_or_when_the_job_repays_building_it(tmp_path, monkeypatch):
    monkeypatch.setattr(quantizing, "GUARD_MIN_IOU", 0.9)
    checkpoint = shutil.copy(DEMO_MODEL, tmp_path / "best.pt")
    segmenter = Segmenter.from_checkpoint(checkpoint)
    small, large = [(256, 320)], [(8192, 8192)]  # 0.1 and about 90 Mpx of windows
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: False)
    assert PredictionJob(segmenter, large, compile=False).precision == "auto"
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: True)
    job = PredictionJob(segmenter, small, compile=False)
    assert (job.precision, job.compile) == ("auto", False)  # not built
    assert not cache_folder(checkpoint).exists()
    job = PredictionJob(segmenter, large, compile="auto")
    assert (job.precision, job.compile) == ("int8", False)  # built
    assert cache_folder(checkpoint).is_dir()
    assert PredictionJob(segmenter, small).precision == "int8"  # cached now
    assert PredictionJob(segmenter).precision == "int8"  # images not known yet: the cached network
    assert PredictionJob(segmenter, small, precision="bf16", compile=False).precision == "bf16"  # asked for
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert PredictionJob(segmenter, large, device=device, compile=False).precision == (
        "auto" if torch.cuda.is_available() else "int8"
    )
    # the API's single image (predict): auto, cached -> int8
    predictor = PredictionJob(segmenter, small, compile=False).predictor(small[0])
    assert isinstance(predictor.network, Int8Network) and predictor.precision.name == "fp32"


def test_int8_that_cannot_be_had_is_a_user_error(tmp_path, monkeypatch):
    old = _copy(tmp_path, "old.pt", int8_windows=None)
    with pytest.raises(
        UserError, match=r"old.pt: holds no int8 calibration windows .*unet-patches calibrate .*old.pt -o NEW.pt"
    ):
        int8_predictor(Segmenter.from_checkpoint(old))
    segmenter = Segmenter.from_checkpoint(DEMO_MODEL)
    with pytest.raises(UserError, match="precision int8 runs on the CPU"):
        int8_predictor(segmenter, device="cuda:0")
    ensemble = Segmenter.from_checkpoint(f"{DEMO_MODEL},{DEMO_MODEL}")
    with pytest.raises(UserError, match="not an ensemble or an ONNX file"):
        int8_predictor(ensemble)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    with pytest.raises(UserError, match=r"needs the nncf package\(s\); pip install 'unet-patches\[int8\]'"):
        int8_predictor(segmenter)


def test_training_precision_int8_is_refused(tmp_path):
    from unet_patches.training.config import default_config

    with pytest.raises(UserError, match="training.precision = 'int8': int8 is for inference only"):
        default_config().merged({"training": {"precision": "int8"}})


def test_damaged_int8_windows_are_a_user_error(tmp_path):
    path = _copy(tmp_path, int8_windows={"calibration": torch.zeros(2, 3, 8, 8), "held_back": torch.zeros(2, 3, 8, 8)})
    with pytest.raises(UserError, match=r"best.pt: int8_windows = .*expected calibration and held_back windows"):
        load_checkpoint(path)


def test_predict_command_with_precision_int8(tmp_path, image, lenient_guard, caplog):
    from PIL import Image

    from unet_patches.cli import main

    checkpoint = shutil.copy(DEMO_MODEL, tmp_path / "best.pt")
    Image.fromarray(image).save(tmp_path / "scan 1.png")
    argv = ["predict", str(checkpoint), str(tmp_path / "scan 1.png"), "-o", str(tmp_path / "out"), "--no-progress"]
    with caplog.at_level("INFO"):
        assert main([*argv, "--precision", "int8"]) == 0
    assert "int8 accuracy guard passed" in caplog.text
    labels = np.asarray(Image.open(tmp_path / "out" / "scan 1_labels.png"))
    assert main([*argv, "--precision", "fp32", "-o", str(tmp_path / "fp32")]) == 0
    assert (labels == np.asarray(Image.open(tmp_path / "fp32" / "scan 1_labels.png"))).mean() >= 0.99


DAMAGED_CACHE = """
import json, logging, sys
from pathlib import Path
from unet_patches.api import Segmenter
from unet_patches.inference import int8 as quantizing

checkpoint, damage = Path(sys.argv[1]), sys.argv[2]
quantizing.GUARD_MIN_IOU = 0.9  # as lenient_guard
segmenter = Segmenter.from_checkpoint(checkpoint)
quantizing.int8_network(checkpoint, segmenter.network, segmenter.class_names)
weights = quantizing.cache_folder(checkpoint) / "model.bin"
classes = segmenter.class_names
if damage == "a byte of model.bin altered":
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
elif damage == "model.bin cut short":
    weights.write_bytes(weights.read_bytes()[:100])
else:  # a cache that passes its digests but is not this network's: asked for one more class
    classes = (*classes, "extra")
quantizing._KEPT.clear()  # as a new process would find it
built, quantize = [], quantizing.quantize
quantizing.quantize = lambda *a, **k: built.append(1) or quantize(*a, **k)
logging.basicConfig(level=logging.WARNING, format="%(message)s")
build = damage != "another network's shape"
network, guard = quantizing.int8_network(checkpoint, segmenter.network, classes, build=build)
quantizing._KEPT.clear()
again = quantizing.int8_network(checkpoint, segmenter.network, classes, build=False)[1]
print(json.dumps({"built": len(built), "network": network is not None, "passed": guard is not None and guard.passed,
                  "read_again": again is not None and again.passed}))
"""


@pytest.mark.parametrize("damage", ["a byte of model.bin altered", "model.bin cut short", "another network's shape"])
def test_a_damaged_cache_is_built_again_never_used(tmp_path, damage):
    """In a process of its own: OpenVINO keeps state (thread pools, mapped weights) that this test's
    rebuilding would otherwise leave to the rest of the suite."""
    checkpoint = shutil.copy(DEMO_MODEL, tmp_path / "best.pt")
    run = subprocess.run(
        [sys.executable, "-c", DAMAGED_CACHE, str(checkpoint), damage], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if damage == "another network's shape":
        assert result == {"built": 0, "network": False, "passed": False, "read_again": False}, result
        assert "int8 cache damaged (a network of" in run.stderr and "not used" in run.stderr
    else:
        assert result == {"built": 1, "network": True, "passed": True, "read_again": True}, result
        assert "int8 cache damaged (model.bin is not the file that was cached); building it again" in run.stderr
