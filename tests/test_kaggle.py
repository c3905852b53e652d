"""The Kaggle ultrasound-nerve layout: ``train/<subject>_<n>.tif`` + ``<subject>_<n>_mask.tif``,
``test/<id>.tif``; pairing, 0/255 masks, and splits that keep each subject on one side."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile

from unet_patches.data.folders import find_pairs, group_of, match_pairs, split_by_group, validation_count
from unet_patches.data.imageio import read_image
from unet_patches.data.masks import read_mask
from unet_patches.data.patch_folder import read_manifest, split_by_source
from unet_patches.data.patches import extract_patches
from unet_patches.data.preprocess import Preprocess
from unet_patches.data.synthetic import SyntheticSpec, generate_kaggle_layout
from unet_patches.errors import UserError
from unet_patches.training.datasets import make_datasets

from helpers import tiny_config

SPEC = SyntheticSpec(height=60, width=80, lines=(1, 3), ellipses=(1, 3), line_length=(10, 40))
SUBJECTS, PER_SUBJECT = 4, 3


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    generate_kaggle_layout(root, subjects=SUBJECTS, per_subject=PER_SUBJECT, n_test=2, spec=SPEC)
    return root


def _names() -> list[str]:
    return [f"{s}_{n}" for s in range(1, SUBJECTS + 1) for n in range(1, PER_SUBJECT + 1)]


def test_generated_files_have_the_kaggle_shapes(tmp_path):
    summary = generate_kaggle_layout(
        tmp_path, subjects=1, per_subject=1, n_test=1, spec=SyntheticSpec(height=420, width=580)
    )
    assert summary["train"] == 1 and summary["test"] == 1
    image = tifffile.imread(tmp_path / "train" / "1_1.tif")
    mask = tifffile.imread(tmp_path / "train" / "1_1_mask.tif")
    assert image.shape == mask.shape == (420, 580) and image.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    assert tifffile.imread(tmp_path / "test" / "1.tif").shape == (420, 580)


@pytest.mark.parametrize("where", ["root", "train"])
def test_find_pairs_in_root_and_train(kaggle, where):
    folder = kaggle if where == "root" else kaggle / "train"
    pairs = find_pairs(folder)
    assert [p.name for p in pairs] == _names()
    assert match_pairs(folder).layout == "kaggle"
    for pair in pairs:
        assert pair.image == kaggle / "train" / f"{pair.name}.tif"
        assert pair.mask == kaggle / "train" / f"{pair.name}_mask.tif"
        assert pair.group == pair.name.split("_")[0]
    assert sorted({p.group for p in pairs}, key=int) == ["1", "2", "3", "4"]
    assert all(sum(p.group == g for p in pairs) == PER_SUBJECT for g in "1234")


def test_test_ids_are_not_training_pairs(kaggle):
    assert sorted(p.name for p in (kaggle / "test").iterdir()) == ["1.tif", "2.tif"]
    pairs = find_pairs(kaggle)
    assert not any(p.image.parent.name == "test" for p in pairs)
    assert not {"1", "2"} & {p.name for p in pairs}
    with pytest.raises(UserError):  # no masks there: not a data folder
        find_pairs(kaggle / "test")


def test_group_of():
    assert group_of("12_3", by_subject=True) == "12"
    assert group_of("12_3", by_subject=False) == "12_3"
    assert group_of("scan", by_subject=True) == "scan"


def _images_masks_folder(root, names, mask_suffix="_mask"):
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, name in enumerate(names):
        tifffile.imwrite(root / "images" / f"{name}.tif", np.full((8, 8), i, np.uint8))
        tifffile.imwrite(root / "masks" / f"{name}{mask_suffix}.tif", np.zeros((8, 8), np.uint8))
    return root


@pytest.mark.parametrize("mask_suffix", ["_mask", ""])
def test_kaggle_names_in_images_and_masks_are_grouped_by_subject(tmp_path, mask_suffix):
    folder = _images_masks_folder(tmp_path, _names(), mask_suffix)
    matching = match_pairs(folder)
    assert matching.layout == "images-masks" and matching.problems == []
    assert [(p.name, p.group) for p in matching.pairs] == [(n, n.split("_")[0]) for n in _names()]
    groups = [p.group for p in matching.pairs]
    for seed in range(21):
        train, val = split_by_group(groups, 0.25, seed)
        assert sorted(train + val) == list(range(len(groups)))
        assert not {groups[i] for i in train} & {groups[i] for i in val}
        assert len(val) == PER_SUBJECT


def test_other_names_in_images_and_masks_stay_one_group_each(tmp_path):
    folder = _images_masks_folder(tmp_path, [*_names()[:3], "scan"])
    assert [p.group for p in find_pairs(folder)] == [*_names()[:3], "scan"]


def _old_split_by_group(groups, val_fraction, seed):
    """split_by_group as it was (quadratic): the oracle for the linear one."""
    names = sorted(set(groups), key=groups.index)
    order = np.random.default_rng([seed, 7]).permutation(len(names))
    held_back = {names[i] for i in order[: validation_count(len(names), val_fraction)]}
    return [i for i, g in enumerate(groups) if g not in held_back], [i for i, g in enumerate(groups) if g in held_back]


@pytest.mark.parametrize("seed", range(5))
def test_split_by_group_is_unchanged(seed):
    groups = ["c", "a", "c", "b", "e", "a", "d", "f", "b", "g", "h", "c", "i", "j", "a"]
    for fraction in (0.1, 0.25, 0.5):
        assert split_by_group(groups, fraction, seed) == _old_split_by_group(groups, fraction, seed)


def test_split_by_group_is_fast_for_many_groups():
    groups = [f"s{i}" for i in range(100_000)]
    start = time.perf_counter()
    train, val = split_by_group(groups, 0.2, 0)
    assert time.perf_counter() - start < 5
    assert len(val) == 20_000 and sorted(train + val) == list(range(100_000))


def test_masks_read_as_zero_one(kaggle):
    seen = set()
    for pair in find_pairs(kaggle):
        raw = read_image(pair.mask)
        labels = read_mask(pair.mask, 2)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
        assert np.array_equal(labels, (raw == 255).astype(np.uint8))
        seen |= set(np.unique(labels).tolist())
    assert seen == {0, 1}


@pytest.mark.parametrize("seed", range(21))
def test_split_by_group_holds_back_whole_subjects(kaggle, seed):
    groups = [p.group for p in find_pairs(kaggle)]
    train, val = split_by_group(groups, 0.25, seed)
    assert sorted(train + val) == list(range(len(groups)))
    train_groups, val_groups = {groups[i] for i in train}, {groups[i] for i in val}
    assert not train_groups & val_groups
    assert len(val_groups) == 1 and len(val) == PER_SUBJECT  # round(0.25 * 4) whole subjects


def test_split_by_group_varies_with_the_seed(kaggle):
    groups = [p.group for p in find_pairs(kaggle)]
    held_back = {frozenset(groups[i] for i in split_by_group(groups, 0.25, seed)[1]) for seed in range(21)}
    assert len(held_back) >= 2
    assert split_by_group(groups, 0.25, 3) == split_by_group(groups, 0.25, 3)


def _config(root, folder, **training):
    return tiny_config(root, str(folder), val_fraction=0.25, **training).merged(
        {"data": {"num_classes": 2, "class_names": None}, "model": {"num_classes": 2}}
    )


@pytest.mark.parametrize("where", ["root", "train"])
def test_make_datasets_trains_only_on_training_subjects(kaggle, tmp_path, where):
    folder = kaggle if where == "root" else kaggle / "train"
    sources = make_datasets(_config(tmp_path, folder))
    assert sources.kind == "images"
    assert "split by subject: 3 / 1 subjects" in sources.description
    # Which files the datasets hold: match their (normalised) images against every file's.
    preprocess = sources.preprocess
    by_name = {p.name: preprocess.image(read_image(p.image)) for p in find_pairs(kaggle)}

    def subjects(images) -> set[str]:
        found = set()
        for image in images:
            (name,) = [n for n, candidate in by_name.items() if np.array_equal(candidate, image)]
            found.add(name.split("_")[0])
        return found

    train_subjects, val_subjects = subjects(sources.train.images), subjects(sources.val.images)
    assert len(sources.train.images) == 3 * PER_SUBJECT and len(sources.val.images) == PER_SUBJECT
    assert len(train_subjects) == 3 and len(val_subjects) == 1 and not train_subjects & val_subjects
    groups = [p.group for p in find_pairs(kaggle)]
    expected_val = {groups[i] for i in split_by_group(groups, 0.25, 0)[1]}
    assert val_subjects == expected_val
    images, masks = sources.train[0]
    assert images.shape == (1, 32, 32) and set(np.unique(masks.numpy())) <= {0, 1}


def test_extract_patches_keeps_subjects_together(kaggle, tmp_path):
    out = tmp_path / "patches"
    summary = extract_patches(kaggle, out, patch_size=32, per_image=2, preprocess=Preprocess(num_classes=2))
    manifest = read_manifest(out)
    assert summary["sources"] == SUBJECTS * PER_SUBJECT and manifest["num_classes"] == 2
    assert {name: info["group"] for name, info in manifest["sources"].items()} == {
        name: name.split("_")[0] for name in _names()
    }
    subject_of = {p["name"]: manifest["sources"][p["source"]]["group"] for p in manifest["patches"]}
    sides = set()
    for seed in range(10):
        train, val = split_by_source(manifest, 0.25, seed)
        train_subjects, val_subjects = {subject_of[n] for n in train}, {subject_of[n] for n in val}
        assert not train_subjects & val_subjects and len(val_subjects) == 1
        assert sorted(train + val, key=lambda n: int(n[1:])) == [p["name"] for p in manifest["patches"]]
        sides.add(frozenset(val_subjects))
    assert len(sides) >= 2
    assert all(set(np.unique(read_image(out / "masks" / f"{n}.png"))) <= {0, 1} for n in list(subject_of)[:8])


def test_image_without_its_mask(kaggle, tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    for path in (kaggle / "train").glob("*.tif"):
        if path.name != "2_3_mask.tif":
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(UserError) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert "1 image(s) without a mask: 2_3.tif" in message and "X_mask" in message


def test_mask_without_its_image(kaggle, tmp_path):
    for path in (kaggle / "train").glob("*.tif"):
        if path.name != "4_1.tif":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(UserError, match="1 mask\\(s\\) without an image: 4_1_mask.tif"):
        find_pairs(tmp_path)
