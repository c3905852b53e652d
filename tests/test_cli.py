"""The command line: whole commands on tiny data, and the error path for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unet_patches.cli import main, train_main

from helpers import SMALL_SPEC


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def params(tmp_path):
    """A parameter file for a tiny model and small synthetic images."""
    values = {
        "data": {"root": str(tmp_path / "data")},
        "synthetic": {
            "height": SMALL_SPEC.height,
            "width": SMALL_SPEC.width,
            "lines": [1, 3],
            "ellipses": [1, 3],
            "line_length": [10, 40],
            "n_train": 6,
            "n_test": 2,
        },
        "patches": {"patch_size": 32, "per_image": 3},
        "model": {"base_width": 4, "depth": 2},
        "training": {
            "epochs": 1,
            "batch_size": 4,
            "precision": "fp32",
            "checkpoint_dir": str(tmp_path / "ck"),
            "log_dir": str(tmp_path / "runs"),
            "folder": "patches_s32",
        },
        "inference": {"batch_size": 8},
    }
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps(values))
    return path


def test_whole_pipeline_through_the_cli(tmp_path, params, capsys):
    code, out, _ = run(capsys, "generate", "--params", params, "--seed", 3)
    assert code == 0 and "wrote 6 training and 2 test images" in out
    data = tmp_path / "data"
    code, out, _ = run(capsys, "patches", data / "synthetic" / "train", "--params", params)
    assert code == 0 and (data / "patches_s32" / "manifest.json").is_file()
    code = train_main(
        ["--params", str(params), "-e", "1", "-b", "4", "-l", "0.05", "-f", "patches_s32", "--no-progress", "--json"]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    ckpt = tmp_path / "ck" / "patches_s32_b4" / "best.pt"
    assert summary["best_checkpoint"] == str(ckpt) and ckpt.is_file()

    code, out, _ = run(capsys, "evaluate", ckpt, data / "synthetic" / "test", "--params", params, "--json")
    scores = json.loads(out)
    assert code == 0 and {"miou", "iou", "dice"} <= set(scores) and 0 <= scores["miou"] <= 1
    # The plain-text table, as the README shows the command (no --json).
    code, out, err = run(capsys, "evaluate", ckpt, data / "synthetic" / "test", "--params", params, "--no-progress")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "2 images, window auto, overlap auto"
    assert lines[1].split() == ["class", "IoU", "Dice", "ECE"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert set(rows) == {"background", "line", "ellipse", "mean"}
    assert lines[-1].startswith("probabilities (temperature ") and "uncalibrated: ECE" in lines[-1]
    assert float(rows["mean"][0]) == pytest.approx(scores["miou"], abs=1e-4)

    outdir = tmp_path / "pred"
    code, out, _ = run(
        capsys,
        "predict",
        ckpt,
        data / "synthetic" / "test" / "images",
        "-o",
        outdir,
        "--params",
        params,
        "--probs",
        "--no-progress",
    )
    assert code == 0
    labels = np.asarray(Image.open(outdir / "0000_labels.png"))
    assert labels.shape == (SMALL_SPEC.height, SMALL_SPEC.width) and labels.max() < 3
    assert (outdir / "0000_overlay.png").is_file()
    # Existing outputs are kept unless --overwrite is given.
    code, _, err = run(
        capsys, "predict", ckpt, data / "synthetic" / "test" / "images", "-o", outdir, "--params", params
    )
    assert_one_line_error(code, err, "--overwrite")


def test_generate_refuses_non_empty_folder(tmp_path, params, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    code, _, err = run(capsys, "generate", "-o", target, "--params", params)
    assert_one_line_error(code, err, str(target), "--overwrite")
    assert (target / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["train", "-f", "no_such_folder"], ["no_such_folder", "unet-patches patches"]),
        (["train", "-b", "0"], ["batch_size = 0"]),
        (["train", "-e", "many"], ["-e/--epochs", "invalid int"]),
        (["predict", "missing.pt", "x.png", "-o", "out"], ["missing.pt", "not found"]),
        (["evaluate", "missing.pt", "data"], ["missing.pt"]),
        (["patches", "no/such/source"], ["no/such/source"]),
        (["generate", "--n-train", "0", "--n-test", "0"], ["n_train = 0", "nothing to generate"]),
        (["generate", "--n-train", "-1"], ["n_train = -1"]),
        (["generate", "--lines", "5", "2"], ["command line", "lines", "low <= high"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, params, capsys, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if argv[0] == "frobnicate" or "many" in argv else _no_raise() as caught:
        code = main(argv + ([] if argv[0] == "frobnicate" else ["--params", str(params)]))
    if caught is not None and hasattr(caught, "value"):
        code = caught.value.code
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, *needles)


def test_bad_parameter_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"training": {"batchsize": 3}}))
    code, _, err = run(capsys, "train", "--params", bad)
    assert_one_line_error(code, err, "training.batchsize", "batch_size")


def test_bad_checkpoint_file_is_one_line(tmp_path, capsys):
    fake = tmp_path / "fake.pt"
    fake.write_text("hello")
    (tmp_path / "img.png").write_bytes(b"")
    code, _, err = run(capsys, "predict", fake, tmp_path / "img.png", "-o", tmp_path / "o")
    assert_one_line_error(code, err, "fake.pt")


def test_real_process_exit_status_and_message(tmp_path):
    """The installed entry points, in a real process: status 2, one line, no traceback."""
    for command in (
        [sys.executable, "-m", "unet_patches", "train", "-f", "nowhere"],
        [sys.executable, "train.py", "-f", "nowhere"],
    ):
        result = subprocess.run(
            command + ["--params", str(tmp_path / "none.json")],
            capture_output=True,
            text=True,
            cwd=__import__("pathlib").Path(__file__).resolve().parent.parent,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "none.json" in result.stderr


class _no_raise:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_compile_flags_reach_the_inference_options(params):
    from unet_patches.cli import build_parser
    from unet_patches.cli.inference import inference_options

    parser = build_parser()
    for command in (["predict", "ck.pt", "x.png", "-o", "out"], ["evaluate", "ck.pt", "data"]):
        plain = parser.parse_args([*command, "--params", str(params)])
        flagged = parser.parse_args([*command, "--params", str(params), "--compile"])
        never = parser.parse_args([*command, "--params", str(params), "--no-compile"])
        assert inference_options(plain)["compile"] == "auto"
        assert inference_options(flagged)["compile"] is True
        assert inference_options(never)["compile"] is False


def test_time_budget_alone_means_train_for_that_long(params, monkeypatch, capsys):
    from unet_patches.training import run as training

    seen = []

    def fake_fit(config, **_):
        seen.append(config.training)
        return {
            "best_val_miou": None,
            "epochs": 0,
            "steps": 0,
            "seconds": 0.0,
            "precision": "fp32",
            "best_epoch": None,
            "best_checkpoint": "x",
        }

    monkeypatch.setattr(training, "fit", fake_fit)
    assert train_main(["--params", str(params), "--time-budget", "10"]) == 0
    assert train_main(["--params", str(params), "--time-budget", "10", "-e", "3"]) == 0
    assert train_main(["--params", str(params)]) == 0
    capsys.readouterr()
    assert (seen[0].epochs, seen[0].time_budget_minutes) == (None, 10)
    assert (seen[1].epochs, seen[1].time_budget_minutes) == (3, 10)
    assert (seen[2].epochs, seen[2].time_budget_minutes) == (1, None)


def test_only_the_flags_given_override_the_file(params):
    from unet_patches.cli import build_parser
    from unet_patches.cli.flags import overrides_from

    parser = build_parser()
    assert overrides_from(parser.parse_args(["train", "--params", str(params)])) == {}
    given = parser.parse_args(["train", "-e", "3", "--loss", "ce", "--params", str(params)])
    assert overrides_from(given) == {"training": {"epochs": 3, "loss": "ce"}}
    assert overrides_from(parser.parse_args(["predict", "c.pt", "x.png", "-o", "o", "--tta"])) == {
        "inference": {"tta": True}
    }
    assert overrides_from(parser.parse_args(["patches", "src", "--no-flips", "--all-windows"])) == {
        "patches": {"flips": False, "foreground_only": False}
    }


def test_resume_refuses_flags_that_would_be_ignored(params, capsys):
    code = train_main(["--resume", "last.pt", "-e", "40", "-b", "8", "--params", str(params)])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "--resume", "training.batch_size", "-c/--load")
    assert "training.epochs" not in err  # -e extends the run
