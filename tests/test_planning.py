"""Planning a recipe: the data's fingerprint against known folders, each choice of the plan against
the fingerprint and the step times, the plan file, ``unet-patches plan`` and ``train --plan``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unet_patches.cli import main
from unet_patches.data.fingerprint import TOUCHING_GAP, fingerprint_folder, object_statistics, region_thickness
from unet_patches.data.imageio import write_png
from unet_patches.data.nuclei import NUCLEI_CLASS_NAMES, NucleiSpec, generate_nuclei
from unet_patches.errors import UserError
from unet_patches.training.config import default_config, load_config
from unet_patches.training.planning import MIN_STEPS, TRAIN_SHARE, plan_parameters, plan_training, time_step

from helpers import small_dataset

NUCLEI = NucleiSpec(height=64, width=64, density=(0.45, 0.6), max_value=1000)


def nuclei_folder(root, n_train=6, instances=True):
    generate_nuclei(root, n_train, 1, 0, NUCLEI, instances=instances)
    return root / "train"


def nuclei_config(folder, **training):
    return default_config().merged(
        {"data": {"class_names": list(NUCLEI_CLASS_NAMES)}, "training": {"folder": str(folder), **training}}
    )


def fixed_timer(seconds_by_width):
    return lambda config, width, depth, patch, batch: seconds_by_width[width]


def choices(plan):
    return {(c.section, c.key): c.value for c in plan.choices}


# ---------------------------------------------------------------- the fingerprint


def test_thickness_of_a_disc_and_a_line():
    disc = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    disc[(yy - 20) ** 2 + (xx - 20) ** 2 <= 36] = 1  # radius 6
    line = np.zeros((40, 40), np.int32)
    line[10:13, 2:38] = 1  # 3 pixels wide
    assert region_thickness(disc) == [pytest.approx(2 * np.sqrt(37))]  # the nearest outside pixel: (6, 1) away
    assert region_thickness(line) == [4.0]
    assert region_thickness(np.zeros((5, 5), np.int32)) == []


def test_objects_closer_than_the_gap_touch_and_farther_ones_do_not():
    labels = np.zeros((30, 60), np.int32)
    near = 14 + TOUCHING_GAP  # the first column TOUCHING_GAP away from object 1's last (14)
    labels[5:15, 5:15], labels[5:15, near : near + 10] = 1, 2
    labels[20:28, 50:58] = 3  # alone
    diameters, touching, total = object_statistics([labels])
    assert (touching, total) == (2, 3)
    labels[5:15, near : near + 10] = 0
    labels[5:15, near + 1 : near + 11] = 2  # one pixel farther
    assert object_statistics([labels])[1:] == (0, 3)
    assert diameters[0] == pytest.approx(np.sqrt(400 / np.pi))


def test_the_fingerprint_of_crowded_16_bit_nuclei(tmp_path):
    folder = nuclei_folder(tmp_path / "n")
    fp = fingerprint_folder(folder, nuclei_config(folder).data, patch_size=96, val_fraction=0.1, seed=0)
    assert (fp.images, fp.height, fp.width, fp.dtype, fp.instances) == (6, [64, 64, 64], [64, 64, 64], "uint16", True)
    assert fp.range_share < 0.05  # 16-bit storage using 0-1000
    assert fp.touching_share > 0.5 and fp.objects > 20
    assert fp.thickness["boundary"] <= 3 < fp.thickness["interior"]
    assert 4 < fp.object_diameter <= fp.object_diameter_p90 < 40
    assert sum(fp.class_shares.values()) == pytest.approx(1.0)
    # Without instance masks the objects are the regions of the classes that are not thin: the interiors.
    bare = nuclei_folder(tmp_path / "bare", instances=False)
    plain = fingerprint_folder(bare, nuclei_config(bare).data, patch_size=96, val_fraction=0.1, seed=0)
    assert not plain.instances and plain.touching_share > 0.5
    json.dumps(fp.to_dict())


def test_the_fingerprint_of_the_shapes_and_of_varying_exposure(tmp_path):
    folder = small_dataset(tmp_path / "s", n_train=6) / "train"
    config = default_config()
    fp = fingerprint_folder(folder, config.data, patch_size=96, val_fraction=0.1, seed=0)
    assert fp.dtype == "uint8" and fp.range_share > 0.5
    assert fp.thickness["line"] <= 6 and fp.thickness["line"] < fp.thickness["ellipse"]
    # The same images with a gain of 1 or 4: the contrast spread is the std of log(1), log(4).
    varied = tmp_path / "varied"
    for sub in ("images", "masks"):
        (varied / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        image = (rng.random((40, 40)) * 1000).astype(np.uint16) * (1 if i % 2 else 4)
        write_png(varied / "images" / f"{i}.png", image)
        write_png(varied / "masks" / f"{i}.png", np.zeros((40, 40), np.uint8))
    spread = fingerprint_folder(varied, config.data, patch_size=32, val_fraction=0.1, seed=0).exposure_spread
    assert spread == pytest.approx(np.std(np.log([4.0, 1.0, 4.0, 1.0])), abs=0.01)


def test_a_folder_that_cannot_be_trained_stops_with_inspects_summary(tmp_path):
    folder = small_dataset(tmp_path / "s", n_train=3) / "train"
    (folder / "masks" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="problem.*unet-patches inspect"):
        fingerprint_folder(folder, default_config().data, patch_size=32, val_fraction=0.1, seed=0)
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="not an image folder"):
        fingerprint_folder(tmp_path / "patches", default_config().data, patch_size=32, val_fraction=0.1, seed=0)


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("minutes, expected", [(0.5, 8), (5.0, 16), (30.0, 32)])
def test_the_widest_network_that_gets_its_steps_in_the_minutes(tmp_path, minutes, expected):
    folder = nuclei_folder(tmp_path / "n")
    seconds = {8: 0.1, 16: 0.2, 32: 0.6}
    plan = plan_training(nuclei_config(folder), minutes, timer=fixed_timer(seconds))
    chosen = choices(plan)
    assert chosen["model", "base_width"] == expected
    steps = int(minutes * 60 * TRAIN_SHARE / seconds[expected])
    assert steps >= MIN_STEPS or expected == 8
    batch = chosen["training", "batch_size"]
    assert chosen["training", "samples_per_epoch"] == max(batch * 20, round(steps / 20) * batch)
    assert chosen["training", "time_budget_minutes"] == minutes and chosen["training", "epochs"] is None
    assert plan.step_seconds[8] == 0.1


def test_the_plan_for_crowded_16_bit_nuclei(tmp_path):
    folder = nuclei_folder(tmp_path / "n")
    plan = plan_training(nuclei_config(folder), 5, timer=fixed_timer({8: 0.1, 16: 0.2, 32: 0.6}))
    chosen = choices(plan)
    assert chosen["patches", "patch_size"] == 64  # the 64-pixel images cap the patch
    assert chosen["training", "batch_size"] == 32 and chosen["model", "depth"] == 4
    assert chosen["data", "normalize"] == "percentile"
    assert chosen["training", "pixel_weights"] == "unet"
    assert chosen["augment", "preset"] == "flips" and chosen["training", "rotate90"] is True
    assert chosen["training", "val_fraction"] == pytest.approx(1 / 6, abs=1e-3)  # 1 of 6 images
    assert all(": " in line and line.split(": ")[1] for line in plan.lines())  # each choice has its reason
    # The plan's settings load as a parameters file, its reasons kept aside.
    values = plan_parameters(nuclei_config(folder), plan)
    assert values["_plan"]["choices"] == plan.lines() and values["_plan"]["fingerprint"]["images"] == 6
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(values))
    loaded = load_config(path)
    assert loaded.model.base_width == 16 and loaded.training.pixel_weights == "unet"


def test_large_images_of_8_bit_shapes_exposed_alike(tmp_path):
    root = tmp_path / "s"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(60):
        image = np.full((300, 300), 40, np.uint8)
        image[100:140, 100:140] = 250
        image[0, 0] = 0
        mask = np.zeros((300, 300), np.uint8)
        mask[100:140, 100:140] = 1
        write_png(root / "images" / f"{i:02d}.png", image)
        write_png(root / "masks" / f"{i:02d}.png", mask)
    config = default_config().merged({"training": {"folder": str(root)}})
    chosen = choices(plan_training(config, 10, timer=fixed_timer({8: 0.1, 16: 0.2, 32: 0.6})))
    assert chosen["data", "normalize"] == "range"  # the full 8-bit range, every image alike
    assert chosen["patches", "patch_size"] == 160  # three times a 45-pixel object, in steps of 32
    assert chosen["training", "batch_size"] == 6
    assert chosen["augment", "preset"] == "flips" and ("training", "rotate90") not in chosen  # 60 images
    assert chosen["training", "pixel_weights"] == "none"
    assert chosen["training", "val_fraction"] == pytest.approx(8 / 60, abs=1e-3)  # 15 %, at most 8


@pytest.mark.parametrize("count, held", [(3, 0), (5, 1), (12, 2)])
def test_images_held_back_for_validation(tmp_path, count, held):
    folder = small_dataset(tmp_path / "s", n_train=count) / "train"
    config = default_config().merged({"training": {"folder": str(folder)}})
    chosen = choices(plan_training(config, 1, timer=fixed_timer({8: 0.1, 16: 0.2, 32: 0.6})))
    assert round(chosen["training", "val_fraction"] * count) == held


@pytest.mark.parametrize("minutes", [0, -1, float("nan"), float("inf")])
def test_minutes_must_be_a_positive_number(tmp_path, minutes):
    with pytest.raises(UserError, match="--minutes"):
        plan_training(default_config(), minutes)


def test_a_step_is_timed_with_the_runs_model_and_loss():
    config = default_config().merged({"training": {"precision": "fp32"}})
    seconds = time_step(config, 4, 2, 32, 2, repeats=1)
    assert 0 < seconds < 30


# ---------------------------------------------------------------- the commands


def test_the_plan_command_writes_a_parameters_file_and_refuses_to_replace_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = small_dataset(tmp_path / "s", n_train=6) / "train"
    assert main(["plan", str(folder), "--minutes", "0.2", "-o", "plan.json"]) == 0
    out = capsys.readouterr().out
    assert "model.base_width = " in out and "wrote plan.json" in out
    planned = json.loads((tmp_path / "plan.json").read_text())
    assert planned["training"]["folder"] == str(folder) and planned["training"]["time_budget_minutes"] == 0.2
    assert set(planned["_plan"]["step_seconds_by_width"]) <= {"8", "16", "32"}
    before = (tmp_path / "plan.json").read_bytes()
    assert main(["plan", str(folder), "--minutes", "1", "-o", "plan.json"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "plan.json").read_bytes() == before
    assert main(["plan", str(folder), "--minutes", "1", "-o", "plan.json", "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["minutes"] == 1.0


@pytest.mark.slow
def test_train_plan_plans_and_trains_and_flags_given_override_the_plan(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    folder = small_dataset(tmp_path / "s", n_train=6) / "train"
    argv = ["train", "-f", str(folder), "--plan", "--time-budget", "0.05", "--no-progress", "--json"]
    assert main([*argv, "-b", "4", "--run-name", "planned", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "planned for 0.05 min" in out and "model.base_width = " in out
    stored = torch.load(tmp_path / "checkpoints" / "planned" / "last.pt", weights_only=True)["config"]
    assert stored["training"]["batch_size"] == 4  # the flag, over the plan's 32
    assert stored["training"]["time_budget_minutes"] == 0.05 and stored["training"]["rotate90"] is True
    assert main(["train", "-f", str(folder), "--plan", "--no-progress"]) == 2
    assert "--time-budget" in capsys.readouterr().err
