"""Exported networks (ONNX, TorchScript) against PyTorch: every architecture, both outputs, random
inputs of two sizes and batches, a whole tiled prediction; the sidecar; refusals; the command line."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from unet_patches.api import PredictionJob, Segmenter, evaluate_folder, predict, predict_files
from unet_patches.cli import main
from unet_patches.data.imageio import read_image
from unet_patches.data.preprocess import Preprocess
from unet_patches.data.synthetic import SyntheticSpec, generate_dataset
from unet_patches.deploy.export import OnnxNetwork, export_checkpoint, export_network, sidecar_path
from unet_patches.errors import UserError
from unet_patches.inference.ensemble import ProbabilityEnsemble
from unet_patches.inference.tiling import TiledPredictor, WindowBlender
from unet_patches.models import MODELS, ModelConfig, build_model
from unet_patches.models.checkpoint import save_checkpoint

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Measured: at most 6e-8 (ONNX Runtime) and 0 (TorchScript) on these networks.
ATOL = 1e-4
FORMATS = ("onnx", "torchscript")
# The smallest network of each architecture: base width 4; the U-Nets two levels deep, the VGG-16
# layouts their fixed depth (segnet: sizes multiples of 32, vgg16_unet: of 16).
DEPTHS = {"unet": 2, "inception_unet": 2, "segnet": 4, "vgg16_unet": 4}  # 4: the default, fixed ones ignore it
CONFIGS = {name: ModelConfig(name=name, base_width=4, depth=DEPTHS[name]) for name in MODELS}


@pytest.fixture(autouse=True)
def _quiet_exporter():
    with warnings.catch_warnings():  # the TorchScript-based ONNX exporter and tracing warn about themselves
        warnings.simplefilter("ignore")
        yield


def segmenter(config: ModelConfig, seed: int = 0) -> Segmenter:
    torch.manual_seed(seed)
    network = build_model(config, pretrained=False).eval()
    preprocess = Preprocess(in_channels=config.in_channels, num_classes=config.num_classes, normalize="range")
    names = tuple(f"class{c}" for c in range(config.num_classes))
    return Segmenter(network=network, patch_size=32, class_names=names, preprocess=preprocess)


def load(path, fmt):
    return OnnxNetwork(path) if fmt == "onnx" else torch.jit.load(str(path))


def run_exported(exported, image: torch.Tensor) -> torch.Tensor:
    """An exported network on a tensor: ONNX Runtime takes and gives NumPy, TorchScript tensors."""
    return torch.from_numpy(exported(image.numpy())) if isinstance(exported, OnnxNetwork) else exported(image)


@pytest.mark.parametrize("output", ["probabilities", "logits"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_network_matches_pytorch_on_two_sizes(tmp_path, name, fmt, output):
    seg = segmenter(CONFIGS[name])
    path = export_network(seg, tmp_path / f"model.{fmt}", fmt, output=output)
    exported = load(path, fmt)
    info = json.loads(sidecar_path(path).read_text())
    m = max(info["input_size_multiple"], 16)
    generator = torch.Generator().manual_seed(1)
    for batch, (height, width) in ((1, (2 * m, 3 * m)), (3, (4 * m, m))):
        image = torch.randn(batch, 1, height, width, generator=generator)
        with torch.no_grad():
            expected = seg.network(image)
            expected = torch.softmax(expected, dim=1) if output == "probabilities" else expected
            actual = run_exported(exported, image)
        assert actual.shape == (batch, 3, height, width) and actual.dtype == torch.float32
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_tiled_prediction_through_the_export_has_the_same_labels(tmp_path, fmt, output):
    spec = SyntheticSpec(height=100, width=90)
    generate_dataset(tmp_path / "data", n_train=1, n_test=1, seed=0, spec=spec)
    seg = segmenter(CONFIGS["unet"])
    image = seg.to_input(read_image(tmp_path / "data" / "test" / "images" / "0000.png"))
    assert image.shape == (1, 100, 90)
    path = export_network(seg, tmp_path / f"model.{fmt}", fmt, output=output)
    exported = load(path, fmt)
    # An export of probabilities has the softmax inside: the predictor must not apply it again.
    activation = "softmax" if output == "logits" else None
    if fmt == "onnx":
        assert exported.activation == activation
    reference = TiledPredictor(seg.network, 32, precision="fp32", batch_size=5).probabilities(image)
    if fmt == "onnx":  # NumPy in and out: the torch-free blender
        predictor = WindowBlender(exported, 32, activation=activation, batch_size=5)
    else:
        predictor = TiledPredictor(
            exported, 32, activation=activation, precision="fp32", inference_copy=False, batch_size=5
        )
    actual = predictor.probabilities(image)
    np.testing.assert_allclose(actual, reference, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(actual.argmax(0), reference.argmax(0))


def test_sidecar_holds_what_inference_needs(tmp_path):
    config = ModelConfig(name="unet", in_channels=2, num_classes=4, base_width=4, depth=3)
    seg = segmenter(config)
    pre = Preprocess(in_channels=2, num_classes=4, normalize="dataset", mean=(0.1, 0.2), std=(0.3, 0.4))
    seg = Segmenter(seg.network, 48, ("bg", "a", "b", "c"), pre)
    path = export_network(seg, tmp_path / "model.pt", "torchscript", output="logits")
    assert path == tmp_path / "model.pt" and sidecar_path(path) == tmp_path / "model.pt.json"
    info = json.loads((tmp_path / "model.pt.json").read_text())
    assert info["format"] == "torchscript" and info["output"] == "logits" and info["output_name"] == "logits"
    assert info["class_names"] == ["bg", "a", "b", "c"] and info["num_classes"] == 4
    assert info["in_channels"] == 2 and info["patch_size"] == 48 and info["input_size_multiple"] == 8
    assert Preprocess.from_dict(info["preprocess"]) == pre
    assert ModelConfig.from_dict(info["model_config"]) == config
    assert info["torch_version"] == torch.__version__ and info["unet_patches_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]  # no temporary files


def test_existing_output_is_refused_without_overwrite(tmp_path):
    seg = segmenter(CONFIGS["unet"])
    path = export_network(seg, tmp_path / "model.onnx", "onnx")
    before = path.read_bytes()
    with pytest.raises(UserError, match="model.onnx exists.*--overwrite"):
        export_network(seg, path, "onnx", output="logits")
    assert path.read_bytes() == before
    sidecar_path(path).unlink()
    with pytest.raises(UserError, match="exists"):  # the network alone is enough to refuse
        export_network(seg, path, "onnx")
    export_network(seg, path, "onnx", output="logits", overwrite=True)
    assert json.loads(sidecar_path(path).read_text())["output"] == "logits"
    assert OnnxNetwork(path).output == "logits"


@pytest.mark.parametrize(
    ("fmt", "output", "message"), [("tflite", "probabilities", "format"), ("onnx", "softmax", "output")]
)
def test_bad_format_or_output_is_a_user_error(tmp_path, fmt, output, message):
    with pytest.raises(UserError, match=message):
        export_network(segmenter(CONFIGS["unet"]), tmp_path / "model", fmt, output=output)
    assert not list(tmp_path.iterdir())


def test_an_ensemble_is_refused(tmp_path):
    seg = segmenter(CONFIGS["unet"])
    ensemble = Segmenter(ProbabilityEnsemble([seg.network, seg.network]), 32, seg.class_names, seg.preprocess)
    with pytest.raises(UserError, match="export one checkpoint"):
        export_network(ensemble, tmp_path / "model.onnx", "onnx")
    with pytest.raises(UserError, match="export one checkpoint"):
        export_checkpoint(f"{tmp_path}/a.pt,{tmp_path}/b.pt", tmp_path / "model.onnx", "onnx")


def test_missing_onnx_packages_say_how_to_install_them(tmp_path, monkeypatch):
    seg = segmenter(CONFIGS["unet"])
    torchscript = export_network(seg, tmp_path / "model.pt", "torchscript")  # needs no onnx
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"pip install unet-patches\[onnx\]"):
        export_network(seg, tmp_path / "model.onnx", "onnx")
    with pytest.raises(UserError, match=r"pip install unet-patches\[onnx\]"):
        OnnxNetwork(torchscript)


def write_checkpoint(path, config: ModelConfig):
    seg = segmenter(config)
    state = {
        "format_version": 1,
        "model_config": config.to_dict(),
        "model": seg.network.state_dict(),
        "class_names": list(seg.class_names),
        "in_channels": config.in_channels,
        "patch_size": 32,
        "preprocess": seg.preprocess.to_dict(),
    }
    save_checkpoint(state, path)
    return seg


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    seg = write_checkpoint(tmp_path / "best.pt", CONFIGS["unet"])
    out = tmp_path / "export" / "model.onnx"
    assert main(["export", str(tmp_path / "best.pt"), "--format", "onnx", "-o", str(out), "--logits"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and str(sidecar_path(out)) in printed
    image = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxNetwork(out)(image.numpy()), seg.network(image).numpy(), atol=ATOL, rtol=0)
    # Again: refused without --overwrite, one line and exit 2.
    assert main(["export", str(tmp_path / "best.pt"), "--format", "onnx", "-o", str(out)]) == 2
    assert_one_line(capsys.readouterr().err, "exists")
    ts = tmp_path / "model.pt"
    assert main(["export", str(tmp_path / "best.pt"), "--format", "torchscript", "-o", str(ts)]) == 0
    assert json.loads(sidecar_path(ts).read_text())["output"] == "probabilities"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--format", "tflite", "-o", "m.onnx"], "invalid choice: 'tflite'"),
        (["--format", "onnx"], "-o/--out"),
        (["--format", "onnx", "-o", "m.onnx", "missing.pt"], "checkpoint not found"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    checkpoint = [] if "missing.pt" in argv else ["best.pt"]
    with pytest.raises(SystemExit) as exit_info:
        code = main(["export", *checkpoint, *argv])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    assert_one_line(capsys.readouterr().err, needle)
    assert not list(tmp_path.iterdir())


def assert_one_line(err: str, needle: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


# --- An ONNX export in place of a checkpoint: Segmenter.from_checkpoint, the API and the commands --------


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    """A checkpoint, its exports of probabilities and of logits, and a small synthetic data set."""
    root = tmp_path_factory.mktemp("onnx_run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_checkpoint(root / "best.pt", CONFIGS["unet"])
        for output in ("probabilities", "logits"):
            export_checkpoint(root / "best.pt", root / f"{output}.onnx", "onnx", output=output)
    generate_dataset(root / "data", n_train=1, n_test=2, seed=0, spec=SyntheticSpec(height=100, width=90))
    return root


@pytest.mark.parametrize(("output", "activation"), [("probabilities", None), ("logits", "softmax")])
def test_onnx_segmenter_predicts_the_checkpoints_labels(onnx_run, output, activation):
    reference = Segmenter.from_checkpoint(onnx_run / "best.pt")
    seg = Segmenter.from_checkpoint(onnx_run / f"{output}.onnx")
    assert isinstance(seg.network, OnnxNetwork) and seg.activation == activation
    assert (seg.patch_size, seg.class_names, seg.preprocess) == (
        reference.patch_size,
        reference.class_names,
        reference.preprocess,
    )
    image = read_image(onnx_run / "data" / "test" / "images" / "0000.png")
    expected, expected_probs = predict(reference, image, precision="fp32", batch_size=5, return_probs=True)
    labels, probs = predict(seg, image, batch_size=5, return_probs=True)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(probs, expected_probs, atol=ATOL, rtol=0)


def test_onnx_predictor_is_the_torch_free_blender_and_ignores_torch_settings(onnx_run, caplog):
    seg = Segmenter.from_checkpoint(onnx_run / "logits.onnx", device=None)  # None: the CPU, not CUDA
    with caplog.at_level("WARNING", logger="unet_patches.inference.onnx"):
        predictor = PredictionJob(seg, compile=True, precision="bf16", inference_copy=True).predictor((64, 80))
    assert "compile ignored" in caplog.text
    assert type(predictor) is WindowBlender and not isinstance(predictor, TiledPredictor)
    assert predictor.network is seg.network and predictor.activation == "softmax"


def test_onnx_segmenter_with_predict_files_and_evaluate_folder(onnx_run, tmp_path):
    reference = Segmenter.from_checkpoint(onnx_run / "best.pt")
    seg = Segmenter.from_checkpoint(onnx_run / "probabilities.onnx")
    test_dir = onnx_run / "data" / "test"
    expected = evaluate_folder(reference, test_dir, precision="fp32")
    assert evaluate_folder(seg, test_dir) == expected and expected["images"] == 2
    written = predict_files(seg, test_dir / "images", tmp_path, progress=False)
    assert sorted(p.name for p in written) == [
        "0000_labels.png",
        "0000_overlay.png",
        "0001_labels.png",
        "0001_overlay.png",
    ]
    image = read_image(test_dir / "images" / "0001.png")
    np.testing.assert_array_equal(read_image(tmp_path / "0001_labels.png"), predict(seg, image))


def test_cli_predict_evaluate_submit_take_an_onnx_file(onnx_run, tmp_path, capsys):
    model, test_dir = str(onnx_run / "logits.onnx"), onnx_run / "data" / "test"
    image = str(test_dir / "images" / "0000.png")
    assert main(["predict", model, image, "-o", str(tmp_path / "out"), "--no-progress", "--compile"]) == 0
    assert (tmp_path / "out" / "0000_labels.png").is_file()
    assert main(["evaluate", model, str(test_dir), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["images"] == 2 and 0 <= scores["miou"] <= 1
    csv = tmp_path / "submission.csv"
    argv = ["submit", model, str(test_dir / "images"), "-o", str(csv), "--class", "class1", "--no-progress"]
    assert main(argv) == 0
    assert csv.read_text().splitlines()[0] == "img,pixels" and len(csv.read_text().splitlines()) == 3


def test_cli_onnx_without_its_sidecar_is_one_line_and_exit_2(onnx_run, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes((onnx_run / "probabilities.onnx").read_bytes())
    assert main(["evaluate", str(model), str(onnx_run / "data" / "test")]) == 2
    assert_one_line(capsys.readouterr().err, f"{sidecar_path(model)}: sidecar of {model} not found")


@pytest.mark.parametrize(
    ("sidecar", "spec", "device", "message"),
    [
        (
            '{"class_names": ["a"], "patch_size": 32}',
            "model.onnx",
            "cpu",
            "no 'preprocess'.*export the checkpoint again",
        ),
        ("not json", "model.onnx", "cpu", "not a readable sidecar.*export the checkpoint again"),
        (None, "model.onnx,model.onnx", "cpu", "one ONNX file at a time"),
        (None, "model.onnx", "cuda", "run on the CPU"),
        (None, "missing.onnx", "cpu", "missing.onnx: ONNX file not found"),
    ],
)
def test_bad_onnx_input_is_a_user_error(onnx_run, tmp_path, monkeypatch, sidecar, spec, device, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes((onnx_run / "probabilities.onnx").read_bytes())
    (tmp_path / "model.onnx.json").write_text(sidecar or (onnx_run / "probabilities.onnx.json").read_text())
    with pytest.raises(UserError, match=message):
        Segmenter.from_checkpoint(spec, device=device)


def test_importing_the_package_does_not_load_onnx():
    code = "import sys, unet_patches; print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
