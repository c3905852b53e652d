"""Kaggle run-length submissions: every test image predicted at its own size, one row per image id
(sorted numerically), each row decoding back to exactly what ``predict`` gives; the class choice,
--min-area, and output checks; the ``submit`` command on a real tiny checkpoint."""

from __future__ import annotations

import csv
import os
from dataclasses import replace

import numpy as np
import pytest
import tifffile

from unet_patches.api import Segmenter, predict
from unet_patches.cli import main
from unet_patches.data.preprocess import Preprocess
from unet_patches.data.synthetic import SyntheticSpec, generate_kaggle_layout
from unet_patches.deploy import submission
from unet_patches.deploy.rle import decode
from unet_patches.deploy.submission import choose_class, image_ids, write_submission
from unet_patches.errors import UserError

from helpers import tiny_config, tiny_net

NERVE = ("background", "nerve")
# Non-square sizes of their own, so rows cannot decode at another image's shape by accident.
SIZES = {"1": (20, 30), "2": (33, 17), "10": (40, 41)}


def _segmenter(names=NERVE, **preprocess) -> Segmenter:
    """A tiny network whose weights (seed 5) call about half the pixels of noise images "nerve":
    masks of many runs, of different areas."""
    pre = Preprocess(num_classes=len(names), **preprocess)
    return Segmenter(tiny_net(1, len(names), seed=5), 16, tuple(names), pre)


@pytest.fixture
def test_dir(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for image_id, shape in SIZES.items():
        tifffile.imwrite(folder / f"{image_id}.tif", rng.integers(0, 256, shape, dtype=np.uint8))
    return folder


def _read(path) -> list[list[str]]:
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


@pytest.mark.parametrize("preprocess", [{}, {"resize": (16, 24)}, {"normalize": "range"}])
def test_rows_decode_to_the_predictions(tmp_path, test_dir, preprocess):
    segmenter = _segmenter(**preprocess)
    out = tmp_path / "submission.csv"
    summary = write_submission(segmenter, test_dir, out, progress=False, overlap=0.25)
    rows = _read(out)
    assert rows[0] == ["img", "pixels"]
    assert [row[0] for row in rows[1:]] == ["1", "2", "10"]
    for image_id, pixels in rows[1:]:
        image = tifffile.imread(test_dir / f"{image_id}.tif")
        expected = predict(segmenter, image, overlap=0.25) == 1
        assert np.array_equal(decode(pixels, image.shape), expected.astype(np.uint8)), image_id
    assert all(len(row[1].split()) > 20 for row in rows[1:])  # many runs in every row
    assert summary == {"path": str(out), "rows": 3, "empty": 0, "dropped": 0, "class": "nerve"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv", "test"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600


def test_min_area_drops_whole_small_masks(tmp_path, test_dir):
    segmenter = _segmenter()
    areas = {i: int((predict(segmenter, tifffile.imread(test_dir / f"{i}.tif")) == 1).sum()) for i in SIZES}
    assert len(set(areas.values())) == 3 and min(areas.values()) > 0
    threshold = sorted(areas.values())[1]  # drops the smallest mask only; the middle one is exactly N
    summary = write_submission(segmenter, test_dir, tmp_path / "s.csv", min_area=threshold, progress=False)
    rows = dict(_read(tmp_path / "s.csv")[1:])
    for image_id, area in areas.items():
        assert (rows[image_id] == "") == (area < threshold)
    assert summary["dropped"] == summary["empty"] == 1
    with pytest.raises(UserError, match="min_area = -1"):
        write_submission(segmenter, test_dir, tmp_path / "t.csv", min_area=-1)


def test_class_choice():
    assert choose_class(NERVE) == 1
    names = ("background", "nerve", "vessel")
    assert choose_class(names, "vessel") == 2
    with pytest.raises(UserError, match=r"2 foreground classes.*--class \(nerve, vessel\)"):
        choose_class(names)
    with pytest.raises(UserError, match=r"--class background is the background class.*\(nerve, vessel\)"):
        choose_class(names, "background")
    with pytest.raises(UserError, match=r"--class artery: not a class of this model; pick one of nerve, vessel"):
        choose_class(names, "artery")


def test_another_class_of_a_three_class_model(tmp_path, test_dir):
    segmenter = _segmenter(("background", "nerve", "vessel"))
    write_submission(segmenter, test_dir, tmp_path / "s.csv", class_name="vessel", progress=False)
    for image_id, pixels in _read(tmp_path / "s.csv")[1:]:
        image = tifffile.imread(test_dir / f"{image_id}.tif")
        assert np.array_equal(decode(pixels, image.shape), predict(segmenter, image) == 2)
    with pytest.raises(UserError, match="--class"):
        write_submission(segmenter, test_dir, tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


def test_image_ids_sort_numerically_then_naturally(tmp_path):
    names = ["10", "2", "1", "100"]
    assert [i for i, _ in image_ids([tmp_path / f"{n}.tif" for n in names])] == ["1", "2", "10", "100"]
    names = ["img10", "img2", "b", "a1", "img1"]
    assert [i for i, _ in image_ids([tmp_path / f"{n}.png" for n in names])] == ["a1", "b", "img1", "img2", "img10"]
    with pytest.raises(UserError, match="same image id '1'"):
        image_ids([tmp_path / "1.tif", tmp_path / "1.png"])


def test_outputs_are_checked_before_predicting(tmp_path, test_dir, monkeypatch):
    segmenter = _segmenter()
    out = tmp_path / "s.csv"
    out.write_text("mine\n")
    with pytest.raises(UserError, match="--overwrite"):
        write_submission(segmenter, test_dir, out, progress=False)
    assert out.read_text() == "mine\n"
    with pytest.raises(UserError, match="would overwrite the input image"):
        write_submission(segmenter, test_dir, test_dir / "2.tif", overwrite=True, progress=False)
    with pytest.raises(UserError, match="is a folder"):
        write_submission(segmenter, test_dir, tmp_path, progress=False)
    with pytest.raises(UserError, match="folder not found"):
        write_submission(segmenter, test_dir, tmp_path / "nowhere" / "s.csv", progress=False)
    # A failure part way leaves the old file as it was and no temporary behind.
    calls = []

    def failing_read(path, page=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(5, "Input/output error", str(path))
        return tifffile.imread(path)

    monkeypatch.setattr(submission, "read_image", failing_read)
    with pytest.raises(OSError):
        write_submission(segmenter, test_dir, out, overwrite=True, progress=False)
    assert out.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "test"]
    monkeypatch.undo()
    write_submission(segmenter, test_dir, out, overwrite=True, progress=False)
    assert _read(out)[0] == ["img", "pixels"]


def test_page_of_the_segmenter_is_read(tmp_path):
    folder = tmp_path / "stacks"
    folder.mkdir()
    pages = np.random.default_rng(1).integers(0, 256, (2, 20, 24), dtype=np.uint8)
    tifffile.imwrite(folder / "1.tif", pages, photometric="minisblack")
    segmenter = _segmenter(page=1)
    write_submission(segmenter, folder, tmp_path / "s.csv", progress=False)
    (row,) = _read(tmp_path / "s.csv")[1:]
    assert np.array_equal(decode(row[1], (20, 24)), predict(segmenter, pages[1]) == 1)
    no_page = replace(segmenter, preprocess=replace(segmenter.preprocess, page=None))
    with pytest.raises(UserError, match="2 pages"):
        write_submission(no_page, folder, tmp_path / "t.csv", progress=False)


# ------------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("nerves")
    spec = SyntheticSpec(height=40, width=56, lines=(1, 2), ellipses=(1, 2), line_length=(10, 30))
    generate_kaggle_layout(root / "kaggle", subjects=2, per_subject=2, n_test=3, spec=spec)
    config = tiny_config(root, "kaggle", epochs=1, samples_per_epoch=8, val_fraction=0.5).merged(
        {"data": {"num_classes": 2, "class_names": ["background", "nerve"]}, "model": {"num_classes": 2}}
    )
    from unet_patches.training.run import fit

    return fit(config, progress_bars=False)["best_checkpoint"], root / "kaggle" / "test"


def test_submit_command(tmp_path, checkpoint, capsys, monkeypatch):
    ckpt, test = checkpoint
    monkeypatch.chdir(tmp_path)  # the code defaults, not a parameters.json found in the working folder
    code = main(["submit", str(ckpt), str(test), "-o", "submission.csv", "--no-progress", "--min-area", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("wrote 3 rows to submission.csv (class nerve: ") and out.count("\n") == 1
    rows = _read(tmp_path / "submission.csv")
    assert rows[0] == ["img", "pixels"] and [r[0] for r in rows[1:]] == ["1", "2", "3"]
    segmenter = Segmenter.from_checkpoint(ckpt)
    for image_id, pixels in rows[1:]:
        image = tifffile.imread(test / f"{image_id}.tif")
        expected = predict(segmenter, image) == 1
        if expected.sum() < 5:
            expected[:] = False
        assert np.array_equal(decode(pixels, image.shape), expected)


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--class", "vessel"], ["--class vessel", "pick one of nerve"]),
        (["--class", "background"], ["background class"]),
        (["--min-area", "-3"], ["--min-area = -3", "integer >= 0"]),
    ],
)
def test_submit_command_bad_values(tmp_path, checkpoint, capsys, monkeypatch, flags, needles):
    ckpt, test = checkpoint
    monkeypatch.chdir(tmp_path)
    code = main(["submit", str(ckpt), str(test), "-o", "s.csv", "--no-progress", *flags])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("unet-patches submit: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "s.csv").exists()
