"""On-the-fly patch sampling, the fixed validation windows, and class weights."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from unet_patches.data.sampling import FixedWindows, RandomPatches
from unet_patches.errors import UserError

SIZES = [(40, 50), (64, 48), (33, 70)]


def make_data(sizes=SIZES, channels=2, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.random((channels, h, w), dtype=np.float32) for h, w in sizes]
    masks = [rng.integers(0, num_classes, (h, w)).astype(np.uint8) for h, w in sizes]
    return images, masks


def make_dataset(**overrides):
    images, masks = make_data()
    options = dict(num_classes=3, flips=True, rotate90=True, foreground_fraction=0.3, seed=7)
    options.update(overrides)
    return RandomPatches(images, masks, 16, 64, **options)


def test_sample_shapes_dtypes_and_contiguity():
    ds = make_dataset()
    image, mask = ds[5]
    assert image.shape == (2, 16, 16) and image.dtype == torch.float32 and image.is_contiguous()
    assert mask.shape == (16, 16) and mask.dtype == torch.int64 and mask.is_contiguous()
    assert len(ds) == 64


def test_samples_do_not_share_memory_with_the_images():
    images, masks = make_data(sizes=[(16, 16)])
    ds = RandomPatches(images, masks, 16, 4, num_classes=3, flips=False)
    image, mask = ds[0]
    image += 1
    mask += 1
    assert images[0].max() < 1 and masks[0].max() < 3


def test_same_seed_epoch_index_gives_same_sample_in_any_order():
    ds = make_dataset()
    ds.set_epoch(3)
    forward = [ds[i] for i in range(len(ds))]
    other = make_dataset()  # a fresh object, as a worker or a resumed run would have
    other.set_epoch(3)
    for i in reversed(range(len(ds))):
        image, mask = other[i]
        assert torch.equal(image, forward[i][0]) and torch.equal(mask, forward[i][1])


def test_different_epochs_and_seeds_differ():
    ds = make_dataset()
    epoch0 = [ds.window(i, epoch=0) for i in range(len(ds))]
    epoch1 = [ds.window(i, epoch=1) for i in range(len(ds))]
    other_seed = [make_dataset(seed=8).window(i, epoch=0) for i in range(len(ds))]
    assert sum(a != b for a, b in zip(epoch0, epoch1)) > len(ds) * 0.9
    assert sum(a != b for a, b in zip(epoch0, other_seed)) > len(ds) * 0.9
    ds.set_epoch(1)
    assert [ds.window(i) for i in range(len(ds))] == epoch1


@pytest.mark.parametrize("foreground_fraction", [0.0, 0.5, 1.0])
def test_windows_lie_inside_their_image(foreground_fraction):
    ds = make_dataset(foreground_fraction=foreground_fraction, rotate90=False)
    for epoch in range(5):
        for i in range(len(ds)):
            w = ds.window(i, epoch)
            h_img, w_img = SIZES[w.image_index]
            assert 0 <= w.y <= h_img - 16 and 0 <= w.x <= w_img - 16
            assert 0 <= w.flip < 4 and w.rot == 0


def test_images_are_chosen_in_proportion_to_their_area():
    images, masks = make_data(sizes=[(32, 32), (64, 64)])
    ds = RandomPatches(images, masks, 16, 2000, num_classes=3)
    big = sum(ds.window(i).image_index for i in range(len(ds))) / len(ds)
    assert 0.75 < big < 0.85  # 4096 / (1024 + 4096) = 0.8


def test_flips_and_rotations_transform_the_base_window():
    images, masks = make_data()
    ds = RandomPatches(images, masks, 16, 200, num_classes=3, flips=True, rotate90=True, seed=1)
    seen = set()
    for i in range(len(ds)):
        w = ds.window(i)
        seen.add((w.flip, w.rot))
        base_image = torch.from_numpy(images[w.image_index][:, w.y : w.y + 16, w.x : w.x + 16])
        base_mask = torch.from_numpy(masks[w.image_index][w.y : w.y + 16, w.x : w.x + 16]).long()
        dims = [d for bit, d in ((1, -1), (2, -2)) if w.flip & bit]
        expected_image = torch.rot90(torch.flip(base_image, dims), w.rot, dims=(-2, -1))
        expected_mask = torch.rot90(torch.flip(base_mask, dims), w.rot, dims=(-2, -1))
        image, mask = ds[i]
        assert torch.equal(image, expected_image) and torch.equal(mask, expected_mask)
    assert seen == {(f, r) for f in range(4) for r in range(4)}


def test_flip_convention_on_a_known_patch():
    image = np.arange(4, dtype=np.float32).reshape(1, 2, 2)  # [[0, 1], [2, 3]]
    mask = np.arange(4, dtype=np.uint8).reshape(2, 2)
    ds = RandomPatches([image], [mask], 2, 100, num_classes=4, flips=True, rotate90=True)
    expected = {
        (0, 0): [[0, 1], [2, 3]],
        (1, 0): [[1, 0], [3, 2]],  # left-right
        (2, 0): [[2, 3], [0, 1]],  # up-down
        (0, 1): [[1, 3], [0, 2]],  # a quarter turn counter-clockwise
    }
    found = set()
    for i in range(len(ds)):
        w = ds.window(i)
        if (w.flip, w.rot) in expected:
            image_i, mask_i = ds[i]
            assert mask_i.tolist() == expected[(w.flip, w.rot)]
            assert image_i[0].tolist() == expected[(w.flip, w.rot)]
            found.add((w.flip, w.rot))
    assert found == set(expected)


def test_no_augmentation_when_disabled():
    ds = make_dataset(flips=False, rotate90=False)
    assert all(ds.window(i)[3:] == (0, 0) for i in range(len(ds)))


def test_foreground_fraction_1_always_contains_foreground():
    h, w = 96, 120
    mask = np.zeros((h, w), np.uint8)
    mask[5:8, 110:113] = 1  # a 3x3 blob near an edge
    mask[90, 2] = 2  # one pixel in a corner
    empty = np.zeros((40, 40), np.uint8)  # no foreground: falls back to random windows
    images = [np.zeros((1, h, w), np.float32), np.zeros((1, 40, 40), np.float32)]
    ds = RandomPatches(images, [mask, empty], 16, 300, num_classes=3, foreground_fraction=1.0)
    classes = []
    for i in range(len(ds)):
        w_ = ds.window(i)
        _, m = ds[i]
        if w_.image_index == 0:
            assert m.max() > 0
            classes.append(2 if (m == 2).any() else 1)
    # The class is chosen uniformly among those present, not by pixel count (9 vs 1).
    assert 0.35 < classes.count(2) / len(classes) < 0.65


def test_dataloader_workers_do_not_change_the_batches():
    ds = make_dataset()
    ds.set_epoch(2)
    serial = list(DataLoader(ds, batch_size=8, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=8, num_workers=2))
    assert len(serial) == len(parallel) == 8
    for (a_img, a_mask), (b_img, b_mask) in zip(serial, parallel):
        assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)


def test_sharded_indices_give_the_same_samples():
    full = make_dataset()
    full.set_epoch(4)
    covered = set()
    for rank in range(2):
        shard = make_dataset()  # each rank holds its own copy
        shard.set_epoch(4)
        sampler = DistributedSampler(shard, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(4)
        for i in sampler:
            assert torch.equal(shard[i][0], full[i][0]) and torch.equal(shard[i][1], full[i][1])
            covered.add(i)
    assert covered == set(range(len(full)))


def test_ignore_index_is_allowed_in_masks_and_never_foreground():
    images, masks = make_data(sizes=[(32, 32)])
    masks[0][:, :16] = 255
    with pytest.raises(ValueError, match="mask 0 holds class value 255"):
        RandomPatches(images, masks, 16, 4, num_classes=3)
    ds = RandomPatches(images, masks, 16, 50, num_classes=3, ignore_index=255, foreground_fraction=1.0)
    assert set(ds._foreground[0]) == {1, 2}


# User settings and user data raise UserError; arrays handed over by code (already checked by the
# loaders) raise a plain ValueError, which keeps its traceback.
@pytest.mark.parametrize(
    "change, fragment, error",
    [
        ({"patch_size": 41}, "image 0 is 40x50 (HxW), smaller than patch_size=41", UserError),
        ({"patch_size": 0}, "patch_size = 0", UserError),
        ({"samples_per_epoch": 0}, "samples_per_epoch = 0", UserError),
        ({"foreground_fraction": 1.5}, "foreground_fraction = 1.5", UserError),
        ({"seed": -1}, "seed = -1", UserError),
        ({"num_classes": 2}, "holds class value 2", ValueError),
        ({"masks": "short"}, "got 3 images but 2 masks", ValueError),
        ({"masks": "wrong size"}, "image 1 is 64x48 but its mask is 48x64", ValueError),
        ({"images": "integer"}, "image 0 has dtype uint8", ValueError),
        ({"images": "2d"}, "image 0 has shape (40, 50)", ValueError),
        ({"images": "empty"}, "got no images", UserError),
    ],
)
def test_bad_arguments_raise_one_line_errors(change, fragment, error):
    images, masks = make_data()
    args = {"patch_size": 16, "samples_per_epoch": 8, "num_classes": 3, "foreground_fraction": 0.0, "seed": 0}
    special = {
        "short": lambda: (images, masks[:2]),
        "wrong size": lambda: (images, [masks[0], masks[1].T, masks[2]]),
        "integer": lambda: ([(im * 255).astype(np.uint8) for im in images], masks),
        "2d": lambda: ([im[0] for im in images], masks),
        "empty": lambda: ([], []),
    }
    for key, value in change.items():
        if isinstance(value, str):
            images, masks = special[value]()
        else:
            args[key] = value
    with pytest.raises(error) as info:
        RandomPatches(images, masks, args.pop("patch_size"), args.pop("samples_per_epoch"), **args)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, UserError) == (error is UserError)


def test_index_out_of_range_and_bad_epoch():
    ds = make_dataset()
    with pytest.raises(IndexError):
        ds[64]
    with pytest.raises(UserError, match="epoch = -1"):
        ds.set_epoch(-1)


# ------------------------------------------------------------- FixedWindows


def test_fixed_windows_are_identical_across_constructions_and_epochs():
    images, masks = make_data()
    a = FixedWindows(images, masks, 16, per_image=5, seed=3)
    b = FixedWindows(images, masks, 16, per_image=5, seed=3)
    assert len(a) == 15 and a.windows == b.windows
    assert [a.window(i).image_index for i in range(len(a))] == [0] * 5 + [1] * 5 + [2] * 5
    for i in range(len(a)):
        w = a.window(i)
        h, w_img = SIZES[w.image_index]
        assert 0 <= w.y <= h - 16 and 0 <= w.x <= w_img - 16 and w.flip == 0 and w.rot == 0
        image, mask = a[i]
        assert torch.equal(image, b[i][0]) and torch.equal(mask, b[i][1])
        assert torch.equal(image, torch.from_numpy(images[w.image_index][:, w.y : w.y + 16, w.x : w.x + 16]))
    assert FixedWindows(images, masks, 16, per_image=5, seed=4).windows != a.windows


def test_fixed_windows_of_an_image_do_not_depend_on_the_others():
    images, masks = make_data()
    all_three = FixedWindows(images, masks, 16, per_image=4, seed=1)
    first_only = FixedWindows(images[:1], masks[:1], 16, per_image=4, seed=1)
    assert all_three.windows[:4] == first_only.windows


def test_fixed_windows_whole_images():
    images, masks = make_data()
    ds = FixedWindows(images, masks, None)
    assert len(ds) == 3
    for j in range(3):
        image, mask = ds[j]
        assert torch.equal(image, torch.from_numpy(images[j]))
        assert torch.equal(mask, torch.from_numpy(masks[j]).long())
    with pytest.raises(ValueError, match="per_image=2 with patch_size=None"):
        FixedWindows(images, masks, None, per_image=2)
    with pytest.raises(UserError, match="image 2 is 33x70"):
        FixedWindows(images, masks, 34)


# ------------------------------------------------------------- class weights


def test_programming_errors_are_value_errors_not_user_errors():
    images, masks = make_data()
    calls = [
        lambda: RandomPatches(images, [m.T for m in masks], 16, 8, num_classes=3),  # image/mask sizes
        lambda: FixedWindows([im[0] for im in images], masks, 16),  # (H, W) instead of (C, H, W)
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        assert not isinstance(info.value, UserError)
