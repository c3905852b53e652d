"""``inspect``: every problem of a data folder listed at once, the facts right, the split as training's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_patches.cli import main
from unet_patches.data.cache import CACHE_DIR_NAME
from unet_patches.data.folders import split_by_group
from unet_patches.data.imageio import write_png
from unet_patches.data.inspection import check_folder, format_report, inspect_folder
from unet_patches.data.patches import extract_patches
from unet_patches.errors import UserError
from unet_patches.training.config import default_config


def config(classes: int = 3, patch_size: int = 8, **data):
    names = None if classes != 3 else ["background", "line", "ellipse"]
    return default_config().merged(
        {
            "data": {"num_classes": classes, "class_names": names, **data},
            "model": {"num_classes": classes, "in_channels": data.get("in_channels", 1)},
            "patches": {"patch_size": patch_size},
        }
    )


def gray(height: int = 16, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def labels(height: int = 16, width: int = 16, values=(0, 1, 2)) -> np.ndarray:
    """Rows cycling through ``values``: equal shares when ``height`` is a multiple of their count."""
    return np.repeat(np.resize(np.asarray(values, dtype=np.uint8), height)[:, None], width, axis=1)


def expected(cfg) -> dict:
    """What training expects of a folder under the settings ``cfg``."""
    t = cfg.training
    return {"patch_size": cfg.patches.patch_size, "val_fraction": t.val_fraction, "seed": t.seed}


def inspected(folder, cfg):
    return inspect_folder(folder, cfg.data, **expected(cfg))


def checked(folder, cfg):
    return check_folder(folder, cfg.data, **expected(cfg))


def image_folder(root: Path, n: int = 4, mask_values=(0, 1, 2)) -> Path:
    for i in range(n):
        write_png(root / "images" / f"im{i}.png", gray(seed=i))
        write_png(root / "masks" / f"im{i}.png", labels(values=mask_values))
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_parameters_file(tmp_path, monkeypatch):
    """The CLI reads ./parameters.json when present: run where there is none (the code defaults)."""
    monkeypatch.chdir(tmp_path)


def test_a_clean_folder_has_no_problems_and_right_facts(tmp_path, capsys):
    folder = image_folder(tmp_path / "clean")
    write_png(folder / "images" / "wide.png", gray(16, 40))
    write_png(folder / "masks" / "wide.png", labels(16, 40))
    report = inspected(folder, config())
    assert report.problems == [] and report.warnings == []
    assert report.layout == "images-masks" and report.kind == "images"
    assert report.counts == {"images": 5, "masks": 5, "pairs": 5}
    assert report.sizes == {"height": [16, 16, 16], "width": [16, 16, 40]}
    assert report.dtypes == {"uint8": 5} and report.channels == {1: 5}
    assert report.mask_values == [0, 1, 2]
    assert report.class_shares == pytest.approx({"background": 6 / 16, "line": 5 / 16, "ellipse": 5 / 16})
    assert report.split == {"unit": "images", "train": 4, "val": 1, "train_groups": 4, "val_groups": 1, "groups": 5}
    assert (folder / CACHE_DIR_NAME).is_dir()  # inspecting filled training's decode cache
    assert checked(folder, config()).problems == []
    code, out, err = run(capsys, "inspect", folder, "-s", 8)
    assert code == 0 and "No problems found." in out and "5 images, 5 masks, 5 pairs" in out and err == ""


def test_every_problem_is_listed_at_once_each_naming_its_file(tmp_path, capsys):
    folder = image_folder(tmp_path / "bad", n=2)
    write_png(folder / "images" / "lonely.png", gray())
    write_png(folder / "masks" / "orphan.png", labels())
    (folder / "images" / "empty.png").write_bytes(b"")
    write_png(folder / "masks" / "empty.png", labels())
    write_png(folder / "images" / "cut.png", gray(64, 64))
    (folder / "images" / "cut.png").write_bytes((folder / "images" / "cut.png").read_bytes()[:200])
    write_png(folder / "masks" / "cut.png", labels(64, 64))
    write_png(folder / "images" / "other_size.png", gray(16, 16))
    write_png(folder / "masks" / "other_size.png", labels(16, 20))
    write_png(folder / "images" / "tiny.png", gray(6, 6))
    write_png(folder / "masks" / "tiny.png", labels(6, 6))
    write_png(folder / "images" / "seven.png", gray())
    write_png(folder / "masks" / "seven.png", labels(values=(0, 7)))

    report = inspected(folder, config())
    assert report.counts == {"images": 8, "masks": 8, "pairs": 7}
    assert report.unmatched_images == ["lonely.png"] and report.unmatched_masks == ["orphan.png"]
    assert 7 in report.mask_values
    expected = {
        "lonely.png": "without a mask",
        "orphan.png": "without an image",
        "empty.png": "cannot read",
        "cut.png": "cannot read",
        "other_size.png": "same size",
        "tiny.png": "smaller than the 8x8 patches",
        "seven.png": "mask value 7 is out of range for num_classes=3",
    }
    assert len(report.problems) == len(expected), report.problems
    for name, what in expected.items():
        assert any(f"/{name}: " in p and what in p for p in report.problems), (name, report.problems)

    code, out, err = run(capsys, "inspect", folder, "-s", 8)
    assert code == 2 and "Problems (7):" in out and "Traceback" not in out + err
    assert all(name in out for name in expected)

    with pytest.raises(UserError, match=r"7 problem\(s\) found before training: .*lonely\.png.* \.\.\.; run ") as exc:
        checked(folder, config())
    assert "\n" not in str(exc.value)


def test_binary_masks_need_two_classes_or_a_table(tmp_path, capsys):
    folder = image_folder(tmp_path / "binary", mask_values=(0, 0, 0, 255))
    report = inspected(folder, config(classes=2))
    assert report.problems == [] and report.mask_values == [0, 255]
    assert report.class_shares == pytest.approx({"class0": 0.75, "class1": 0.25})
    code, out, _ = run(capsys, "inspect", folder, "--classes", 2, "-s", 8)
    assert code == 0 and "class0 75.0 %, class1 25.0 %" in out

    report = inspected(folder, config(classes=3))
    assert len(report.problems) == 4 and all("data.mask_values" in p for p in report.problems)
    tables = config(classes=3, mask_values={"0": 0, "255": 2})
    assert inspected(folder, tables).class_shares == pytest.approx({"background": 0.75, "line": 0, "ellipse": 0.25})


def test_a_narrow_16_bit_range_is_a_warning_not_a_problem(tmp_path, capsys):
    folder = tmp_path / "scan"
    (folder / "images").mkdir(parents=True)
    tifffile.imwrite(folder / "images" / "a.tif", np.linspace(0, 3000, 256).astype(np.uint16).reshape(16, 16))
    write_png(folder / "masks" / "a.png", labels())
    report = inspected(folder, config())
    assert report.problems == [] and report.dtypes == {"uint16": 1}
    assert report.value_ranges == {"uint16": [0, 3000]} and report.range_share["uint16"] == pytest.approx(3000 / 65535)
    assert len(report.warnings) == 2 and "5 % of the uint16 range" in report.warnings[0]
    assert "training runs without validation" in report.warnings[1]  # one image: nothing to hold back
    code, out, _ = run(capsys, "inspect", folder, "-s", 8, "--normalize", "range")
    assert code == 0 and "Warnings (2):" in out and "training runs without validation" in out
    assert "5 % of the uint16 range; with data.normalize: range" in out and "consider data.normalize: percentile" in out


def test_channels_the_model_cannot_take_are_a_problem(tmp_path):
    folder = tmp_path / "rgb"
    write_png(folder / "images" / "a.png", np.zeros((16, 16, 3), np.uint8))
    write_png(folder / "masks" / "a.png", labels())
    assert inspected(folder, config()).channels == {3: 1}
    assert inspected(folder, config()).problems == []  # averaged to gray
    problems = inspected(folder, config(in_channels=4)).problems
    assert len(problems) == 1 and "a.png: image has 3 channel(s)" in problems[0] and "in_channels=4" in problems[0]


def test_kaggle_layout_split_keeps_subjects_whole(tmp_path, capsys):
    folder = tmp_path / "kaggle"
    folder.mkdir()
    for subject in (1, 2, 3):
        for n in (1, 2):
            tifffile.imwrite(folder / f"{subject}_{n}.tif", gray(seed=subject * 10 + n))
            tifffile.imwrite(folder / f"{subject}_{n}_mask.tif", labels(values=(0, 255)))
    tifffile.imwrite(folder / "4_1_mask.tif", labels(values=(0, 255)))
    report = inspected(folder, config(classes=2))
    assert report.layout == "kaggle" and report.counts == {"images": 6, "masks": 7, "pairs": 6}
    assert (
        len(report.problems) == 1 and "4_1_mask.tif: mask without an image; add an image 4_1.tif" in report.problems[0]
    )
    split = report.split
    assert split["groups"] == 3 and split["train_groups"] + split["val_groups"] == 3 and split["val_groups"] == 1
    assert (split["train"], split["val"]) == (4, 2)  # whole subjects of 2 images on each side
    (folder / "4_1_mask.tif").unlink()
    code, out, _ = run(capsys, "inspect", folder, "--classes", 2, "-s", 8, "--val-fraction", 0.5, "--seed", 3)
    train, val = split_by_group(["1", "1", "2", "2", "3", "3"], 0.5, 3)
    assert code == 0 and "kaggle layout" in out
    assert f"{len(train)} training / {len(val)} validation images ({len(train) // 2} / {len(val) // 2} subjects)" in out


def test_a_patch_folder_is_reported_and_checked_against_the_settings(tmp_path, capsys):
    source = image_folder(tmp_path / "source", n=3)
    extract_patches(source, tmp_path / "patches", patch_size=8, per_image=2, preprocess=config().data.preprocess())
    report = inspected(tmp_path / "patches", config())
    assert report.kind == "patches" and report.problems == []
    assert report.counts == {"patches": 24, "sources": 3, "groups": 3, "classes": 3}
    assert report.sizes["height"] == [8, 8, 8] and report.channels == {1: 24}
    assert report.split["train"] + report.split["val"] == 24 and report.split["val_sources"] == 1
    assert set(report.class_shares) == {"background", "line", "ellipse"}
    assert "24 patches of 8x8 from 3 source images" in format_report(report)

    (tmp_path / "patches" / "images" / "p0.png").unlink()
    problems = inspected(tmp_path / "patches", config(classes=2)).problems
    assert len(problems) == 2 and "data.num_classes = 2" in problems[0] and "p0.png: listed in" in problems[1]
    code, out, _ = run(capsys, "inspect", tmp_path / "patches", "--json")
    assert code == 2 and json.loads(out)["problems"] == [problems[1]]


def test_json_output_holds_facts_and_problems(tmp_path, capsys):
    folder = image_folder(tmp_path / "j", n=2)
    write_png(folder / "masks" / "orphan.png", labels())
    code, out, err = run(capsys, "inspect", folder, "-s", 8, "--json")
    result = json.loads(out)
    assert code == 2 and err.count("\n") == 1 and err.startswith("unet-patches inspect: error: ")
    assert result["counts"] == {"images": 2, "masks": 3, "pairs": 2} and result["dtypes"] == {"uint8": 2}
    assert result["channels"] == {"1": 2} and result["sizes"]["width"] == [16, 16, 16]
    assert len(result["problems"]) == 1 and "orphan.png" in result["problems"][0]
    assert result["split"]["train"] + result["split"]["val"] == 2 and result["warnings"] == []


def test_folders_are_found_under_data_root_and_a_missing_one_is_one_line(tmp_path, capsys):
    image_folder(tmp_path / "data" / "set")
    code, out, _ = run(capsys, "inspect", "set", "-s", 8, "--no-cache")
    assert code == 0 and "data/set (images-masks layout)" in out
    assert not (tmp_path / "data" / "set" / CACHE_DIR_NAME).exists()
    code, out, err = run(capsys, "inspect", "nowhere")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and "nowhere: data folder not found" in lines[0]
    with pytest.raises(UserError, match="not found"):
        inspected(tmp_path / "nowhere", config())
    code, out, _ = run(capsys, "inspect", tmp_path)
    assert code == 2 and "missing" in out and "images" in out


def test_a_duplicate_name_does_not_hide_the_other_problems(tmp_path, capsys):
    folder = image_folder(tmp_path / "dup", n=6)
    write_png(folder / "masks" / "0000.png", labels())
    tifffile.imwrite(folder / "masks" / "0000.tif", labels())  # the same name: 0000.png is kept
    write_png(folder / "images" / "0000.png", gray())
    cut = folder / "images" / "im3.png"
    write_png(cut, gray(64, 64))
    cut.write_bytes(cut.read_bytes()[:200])
    write_png(folder / "masks" / "im3.png", labels(64, 64))
    (folder / "masks" / "im5.png").unlink()
    report = inspected(folder, config())
    assert report.counts == {"images": 7, "masks": 6, "pairs": 6}
    assert report.unmatched_images == ["im5.png"] and report.unmatched_masks == []
    assert len(report.problems) == 3, report.problems
    for expected in ("mask files 0000.png and 0000.tif have the same name", "/im3.png: cannot read",
                     "/im5.png: image without a mask"):  # fmt: skip
        assert sum(expected in problem for problem in report.problems) == 1, (expected, report.problems)
    code, out, err = run(capsys, "inspect", folder, "-s", 8)
    assert code == 2 and "Problems (3):" in out and "7 images, 6 masks, 6 pairs" in out
    assert err.count("\n") == 1 and err.rstrip().endswith("(and 2 more in the report)")


def test_complex_pixels_are_a_problem_not_a_traceback(tmp_path, capsys):
    folder = image_folder(tmp_path / "complex", n=2)
    for name in ("a", "b"):  # two of each, so the tallies would compare complex values
        tifffile.imwrite(folder / "images" / f"{name}.tif", (gray() + 1j * gray(seed=1)).astype(np.complex64))
        write_png(folder / "masks" / f"{name}.png", labels())
        write_png(folder / "images" / f"{name}_m.png", gray())
        tifffile.imwrite(folder / "masks" / f"{name}_m.tif", (labels() * (1 + 1j)).astype(np.complex64))
    report = inspected(folder, config())
    assert len(report.problems) == 4, report.problems
    for name in ("images/a.tif", "images/b.tif"):
        assert any(f"{name}: pixel type complex64 is not supported" in p for p in report.problems)
    for name in ("masks/a_m.tif", "masks/b_m.tif"):
        assert any(f"{name}: mask pixel type complex64 is not supported" in p for p in report.problems)
    assert list(report.value_ranges) == ["uint8"] and report.mask_values == [0, 1, 2]
    code, out, err = run(capsys, "inspect", folder, "-s", 8)
    assert code == 2 and "Problems (4):" in out and "a.tif" in out and "a_m.tif" in out
    assert "Traceback" not in out + err


def test_a_class_no_mask_holds_is_a_warning(tmp_path):
    folder = image_folder(tmp_path / "d", mask_values=(0, 1))
    report = inspected(folder, config(classes=3))
    assert not report.problems
    assert any("no pixel of class class2" in w or "no pixel of class ellipse" in w for w in report.warnings)
