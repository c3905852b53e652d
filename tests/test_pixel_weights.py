"""Pixel weights (the U-Net paper's weight map): the map against its formula, objects from instance
masks or regions, the cache, the losses that take them, and the datasets that cut them with patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from unet_patches.cli import main
from unet_patches.data import pixel_weights
from unet_patches.data.folders import find_pairs, load_pairs
from unet_patches.data.imageio import write_png
from unet_patches.data.nuclei import NucleiSpec, generate_nuclei
from unet_patches.data.patch_folder import PatchFolder, read_manifest
from unet_patches.data.patches import extract_patches, flip
from unet_patches.data.pixel_weights import PixelWeights, objects_of, unet_weight_map, weight_maps
from unet_patches.data.preprocess import Preprocess
from unet_patches.data.sampling import FixedWindows, RandomPatches
from unet_patches.errors import UserError
from unet_patches.losses import LOSSES, build_loss
from unet_patches.training.augment import BatchAugmenter


def reference_map(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula itself: every object's distance transform over the whole image, the two smallest."""
    distances = np.stack([ndimage.distance_transform_edt(instances != k) for k in range(1, instances.max() + 1)])
    distances.sort(axis=0)
    return 1 + w0 * np.exp(-np.square(distances[0] + distances[1]) / (2 * sigma**2))


def test_the_map_is_the_papers_formula():
    instances = generate_and_label(seed=2)
    weights = unet_weight_map(instances, PixelWeights(10.0, 5.0))
    # Beyond 4 sigma of an object its distance is not taken: the term is then below 10 exp(-8) = 0.0034.
    np.testing.assert_allclose(weights, reference_map(instances, 10.0, 5.0), atol=0.0035)
    assert weights.dtype == np.float32 and weights.min() >= 1.0


def generate_and_label(seed: int) -> np.ndarray:
    from unet_patches.data.nuclei import nuclei_sample

    return nuclei_sample(np.random.default_rng(seed), NucleiSpec(height=96, width=96))[2].astype(np.int32)


def test_touching_objects_weigh_most_and_a_lone_object_nothing_more():
    instances = np.zeros((40, 60), np.int32)
    instances[10:30, 5:25], instances[10:30, 26:50] = 1, 2  # a one-pixel gap at column 25
    weights = unet_weight_map(instances, PixelWeights(10.0, 5.0))
    assert weights[20, 25] == pytest.approx(1 + 10 * np.exp(-(2**2) / 50), abs=1e-4)  # d1 = d2 = 1
    assert weights[20, 25] == weights.max() and weights[0, 59] < weights[20, 25]
    lone = np.zeros((40, 60), np.int32)
    lone[10:30, 5:25] = 1
    assert (unet_weight_map(lone, PixelWeights()) == 1.0).all()  # no second object: the term is 0


def test_objects_are_the_regions_of_each_foreground_class():
    mask = np.zeros((10, 12), np.uint8)
    mask[1:4, 1:4] = 1
    mask[1:4, 4:7] = 2  # touches the first region but is another class: another object
    mask[6:9, 1:4] = 1
    labels = objects_of(mask, 3)
    assert len(np.unique(labels[labels > 0])) == 3 and (labels[mask == 0] == 0).all()


def test_instance_masks_are_used_where_the_folder_has_them_and_maps_are_cached(tmp_path, monkeypatch):
    generate_nuclei(tmp_path, n_train=2, n_test=0, seed=1, spec=NucleiSpec(height=64, width=64, density=(0.5, 0.5)))
    folder = tmp_path / "train"
    pre = Preprocess()
    pairs, masks = find_pairs(folder), [s.mask for s in load_pairs(folder, pre, cache=False)]
    maps = weight_maps(folder, pairs, masks, pre, PixelWeights())
    instances = [np.asarray(__import__("PIL.Image").Image.open(folder / "instances" / p.mask.name)) for p in pairs]
    for weights, labels in zip(maps, instances):
        np.testing.assert_allclose(weights, unet_weight_map(labels.astype(np.int32), PixelWeights()))
    monkeypatch.setattr(pixel_weights, "unet_weight_map", lambda *a: pytest.fail("computed again"))
    for cached, weights in zip(weight_maps(folder, pairs, masks, pre, PixelWeights()), maps):
        np.testing.assert_array_equal(cached, weights)


def test_masks_without_objects_are_refused_in_one_line(tmp_path):
    for i in range(2):
        write_png(tmp_path / "images" / f"{i}.png", np.zeros((16, 16), np.uint8))
        write_png(tmp_path / "masks" / f"{i}.png", np.zeros((16, 16), np.uint8))
    pairs, pre = find_pairs(tmp_path), Preprocess()
    masks = [s.mask for s in load_pairs(tmp_path, pre, cache=False)]
    with pytest.raises(UserError, match=r"no mask holds a foreground object, so every weight would be 1") as info:
        weight_maps(tmp_path, pairs, masks, pre, PixelWeights())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", LOSSES.names)
def test_every_loss_takes_pixel_weights(name):
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss = build_loss(name, 3)
    assert loss(logits, target, torch.ones(2, 8, 8)) == pytest.approx(float(loss(logits, target)), rel=1e-6)
    weights = torch.rand(2, 8, 8) * 5 + 1
    assert float(loss(logits, target, weights)) >= 0 and float(loss(logits, target, weights)) != float(
        loss(logits, target)
    )


def test_weighted_cross_entropy_and_dice_are_the_weighted_sums():
    torch.manual_seed(1)
    logits, target, weights = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4)), torch.rand(1, 4, 4) + 0.5
    nll = -torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    assert float(build_loss("ce", 2)(logits, target, weights)) == pytest.approx(
        float((weights * nll).sum() / weights.sum()), rel=1e-5
    )
    probs, onehot = logits.softmax(1), torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    tp = (weights[:, None] * probs * onehot).sum((0, 2, 3))
    fp = (weights[:, None] * probs * (1 - onehot)).sum((0, 2, 3))
    fn = (weights[:, None] * (1 - probs) * onehot).sum((0, 2, 3))
    dice = ((2 * tp + 1) / (2 * tp + fp + fn + 1)).mean()
    assert float(build_loss("dice", 2)(logits, target, weights)) == pytest.approx(1 - float(dice), rel=1e-5)


def test_windows_cut_and_flip_the_weights_with_the_mask():
    rng = np.random.default_rng(0)
    image, mask = rng.random((1, 40, 50)).astype(np.float32), rng.integers(0, 3, (40, 50)).astype(np.uint8)
    weights = mask.astype(np.float32) * 10 + 1  # a map that mirrors the mask, so each crop must agree
    patches = RandomPatches([image], [mask], 16, 20, num_classes=3, rotate90=True, weights=[weights])
    for i in range(20):
        _, cut_mask, cut_weights = patches[i]
        np.testing.assert_array_equal(cut_weights.numpy(), cut_mask.numpy() * 10.0 + 1)
    _, windows_mask, windows_weights = FixedWindows([image], [mask], 16, per_image=3, weights=[weights])[2]
    np.testing.assert_array_equal(windows_weights.numpy(), windows_mask.numpy() * 10.0 + 1)
    assert len(RandomPatches([image], [mask], 16, 2, num_classes=3)[0]) == 2  # no weights: image and mask


def test_the_augmenter_moves_the_weights_with_the_masks():
    torch.manual_seed(0)
    masks = torch.zeros(3, 32, 32, dtype=torch.int64)
    masks[:, 8:24, 12:20] = 1
    weights = masks.float() * 4 + 1
    images = masks[:, None].float()
    out_images, out_masks, out_weights = BatchAugmenter({"rotate": 1.0, "brightness": 1.0})(images, masks, weights)
    assert out_weights.shape == weights.shape and not torch.equal(out_masks, masks)
    inside = out_masks == 1
    assert out_weights[inside].mean() > 4 and out_weights[~inside].mean() < 2  # where the object went


def test_patch_folders_store_the_weights_of_the_whole_image_cut_and_flipped(tmp_path):
    generate_nuclei(tmp_path / "src", n_train=2, n_test=0, seed=3, spec=NucleiSpec(height=64, width=64))
    settings = PixelWeights(8.0, 4.0)
    extract_patches(tmp_path / "src" / "train", tmp_path / "p", patch_size=32, per_image=2, pixel_weights=settings)
    manifest = read_manifest(tmp_path / "p")
    assert manifest["pixel_weights"] == {"w0": 8.0, "sigma": 4.0}
    folder = tmp_path / "src" / "train"
    pairs, pre = find_pairs(folder), Preprocess()
    maps = dict(
        zip(
            (p.name for p in pairs),
            weight_maps(folder, pairs, [s.mask for s in load_pairs(folder, pre)], pre, settings),
        )
    )
    dataset = PatchFolder(tmp_path / "p", weights=True)
    for index, record in enumerate(manifest["patches"]):
        _, _, weights = dataset[index]
        y, x = record["y"], record["x"]
        expected = flip(maps[record["source"]][y : y + 32, x : x + 32], record["flip"]).astype(np.float16)
        np.testing.assert_array_equal(weights.numpy(), expected.astype(np.float32))


def test_training_with_pixel_weights_on_the_fly_and_on_patches(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generate_nuclei(tmp_path / "data" / "nuclei", n_train=4, n_test=0, seed=0, spec=NucleiSpec(height=64, width=64))
    common = ["--no-progress", "--precision", "fp32", "-e", "1", "--classes", "3"]
    small = ["--params", str(tiny_params(tmp_path))]
    assert main(["train", "-f", "nuclei/train", "--pixel-weights", "unet", "--run-name", "fly", *common, *small]) == 0
    assert main(["patches", "data/nuclei/train", "-s", "32", "-n", "2", "-o", "data/plain", *small]) == 0
    capsys.readouterr()
    assert main(["train", "-f", "plain", "--pixel-weights", "unet", "--run-name", "p", *common, *small]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the patches were made without pixel weights; make them again" in err[0]
    assert (
        main(
            [
                "patches",
                "data/nuclei/train",
                "-s",
                "32",
                "-n",
                "2",
                "-o",
                "data/weighted",
                "--pixel-weights",
                "unet",
                *small,
            ]
        )
        == 0
    )
    assert main(["train", "-f", "weighted", "--pixel-weights", "unet", "--run-name", "w", *common, *small]) == 0


def tiny_params(tmp_path):
    import json

    path = tmp_path / "tiny.json"
    path.write_text(
        json.dumps(
            {
                "model": {"base_width": 4, "depth": 2},
                "patches": {"patch_size": 32},
                "training": {"samples_per_epoch": 8, "batch_size": 4},
            }
        )
    )
    return path


@pytest.mark.parametrize("damage", ["cut short", "another shape"])
def test_a_damaged_weights_entry_is_computed_again_never_used(tmp_path, caplog, damage):
    generate_nuclei(tmp_path, n_train=1, n_test=0, seed=1, spec=NucleiSpec(height=32, width=32, density=(0.5, 0.5)))
    folder = tmp_path / "train"
    pre = Preprocess()
    pairs, masks = find_pairs(folder), [s.mask for s in load_pairs(folder, pre, cache=False)]
    (first,) = weight_maps(folder, pairs, masks, pre, PixelWeights())
    (entry,) = (folder / ".unet-patches-cache").glob("weights-*")
    if damage == "cut short":
        entry.write_bytes(entry.read_bytes()[:100])
    else:  # a map of another size under the entry's name, with a valid checksum
        from unet_patches.data.cache import write_entry

        write_entry(entry, np.ones((16, 16), np.float32))
    with caplog.at_level("WARNING", logger="unet_patches.data.pixel_weights"):
        (again,) = weight_maps(folder, pairs, masks, pre, PixelWeights())
    np.testing.assert_array_equal(again, first)
    assert "cache entry damaged" in caplog.text
