"""The nuclei generator: seeded, classes that separate touching objects, storage like a 16-bit camera,
instance masks, and the ``generate --kind nuclei`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unet_patches.cli import main
from unet_patches.data.imageio import read_image
from unet_patches.data.nuclei import BOUNDARY, INTERIOR, NucleiSpec, generate_nuclei, nuclei_sample
from unet_patches.errors import UserError

SMALL = NucleiSpec(height=96, width=80)


def test_the_same_seed_draws_the_same_image():
    first = nuclei_sample(np.random.default_rng(5), SMALL)
    second = nuclei_sample(np.random.default_rng(5), SMALL)
    other = nuclei_sample(np.random.default_rng(6), SMALL)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])


@pytest.mark.parametrize("width", [1, 2])
def test_boundaries_separate_every_touching_pair_and_lie_inside_objects(width):
    spec = NucleiSpec(height=128, width=128, density=(0.5, 0.6), overlap=0.5, boundary_width=width)
    image, classes, instances = nuclei_sample(np.random.default_rng(1), spec)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert ((classes > 0) == (instances > 0)).all()  # every object pixel is interior or boundary
    for a, b in ((instances[1:], instances[:-1]), (instances[:, 1:], instances[:, :-1])):
        touching = (a != b) & (a > 0)  # an object pixel next to another label (object or background)
        side = classes[1:] if a.shape[0] < instances.shape[0] else classes[:, 1:]
        assert (side[touching] == BOUNDARY).all()
    pairs = ((instances[1:] != instances[:-1]) & (instances[1:] > 0) & (instances[:-1] > 0)).sum()
    assert pairs > 0  # a crowded image has touching objects
    if width == 2:  # a pixel one step further in is boundary too, when it is inside the object
        thin = nuclei_sample(np.random.default_rng(1), NucleiSpec(**{**spec.__dict__, "boundary_width": 1}))[1]
        assert (classes == BOUNDARY).sum() > (thin == BOUNDARY).sum()
    assert (classes == INTERIOR).sum() > 0


def test_crowded_images_cover_more_than_sparse_ones():
    rng = np.random.default_rng(0)
    sparse = np.mean([(nuclei_sample(rng, NucleiSpec(density=(0.1, 0.1)))[2] > 0).mean() for _ in range(3)])
    crowded = np.mean([(nuclei_sample(rng, NucleiSpec(density=(0.5, 0.5)))[2] > 0).mean() for _ in range(3)])
    assert 0.05 < sparse < 0.2 and 0.4 < crowded < 0.65


def test_a_folder_of_16_bit_images_using_a_part_of_their_range(tmp_path):
    summary = generate_nuclei(tmp_path, n_train=3, n_test=2, seed=4, spec=SMALL)
    assert summary["counts"] == {"train": 3, "test": 2} and summary["class_names"] == [
        "background",
        "interior",
        "boundary",
    ]
    image = read_image(tmp_path / "train" / "images" / "0000.png")
    assert image.dtype == np.uint16 and image.max() <= SMALL.max_value == 3000
    mask = read_image(tmp_path / "train" / "masks" / "0000.png")
    instances = read_image(tmp_path / "train" / "instances" / "0000.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
    assert instances.dtype == np.uint16 and ((instances > 0) == (mask > 0)).all()
    eight = generate_nuclei(tmp_path / "eight", 1, 0, 4, NucleiSpec(height=64, width=64, bit_depth=8), instances=False)
    assert read_image(tmp_path / "eight" / "train" / "images" / "0000.png").dtype == np.uint8
    assert not (tmp_path / "eight" / "train" / "instances").exists() and eight["counts"]["test"] == 0


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"density": (0.2, 0.95)}, "nuclei.density"),
        ({"bit_depth": 12}, "nuclei.bit_depth"),
        ({"height": 4}, "nuclei.height"),
    ],
)
def test_a_spec_that_makes_no_sense_names_its_field(change, needle):
    with pytest.raises(UserError, match=needle):
        nuclei_sample(np.random.default_rng(0), NucleiSpec(**{**SMALL.__dict__, **change}))


def test_the_generate_command_writes_nuclei(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"nuclei": {"height": 64, "width": 64, "max_value": 1000}}))
    argv = ["generate", "--kind", "nuclei", "--n-train", "2", "--n-test", "1", "--params", str(params)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote 2 training and 1 test images of nuclei to data/nuclei" in out and "nuclei per image" in out
    assert read_image(tmp_path / "data" / "nuclei" / "train" / "images" / "0001.png").shape == (64, 64)
    assert main([*argv, "-o", "other", "--no-instances", "--height", "48", "--bit-depth", "8"]) == 0
    assert read_image(tmp_path / "other" / "test" / "images" / "0000.png").shape == (48, 64)
    assert not (tmp_path / "other" / "train" / "instances").exists()
    for extra, message in [(["--kaggle"], "--kaggle writes the shapes"), ([], "folder is not empty")]:
        capsys.readouterr()
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
