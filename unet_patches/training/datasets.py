"""Training data: the datasets named by ``training.folder`` and the loaders over this rank's shard.

A folder with ``manifest.json`` holds patches on disk (from ``unet-patches patches``): validation is
the patches of held-back source images. A folder with ``images/`` and ``masks/`` holds full images:
training patches are sampled on the fly and validation uses fixed windows of held-back images.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from unet_patches import runtime
from unet_patches.data.class_weights import class_pixel_counts, median_frequency_weights
from unet_patches.data.folders import find_pairs, is_data_folder, load_pairs, split_by_group
from unet_patches.data.folds import splits_for
from unet_patches.data.inspection import check_folder
from unet_patches.data.patch_folder import PatchFolder, manifest_preprocess, read_manifest, split_by_source
from unet_patches.data.pixel_weights import weight_maps
from unet_patches.data.preprocess import DatasetStatistics, Preprocess
from unet_patches.data.sampling import FixedWindows, RandomPatches
from unet_patches.errors import UserError

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

__all__ = [
    "DataSources",
    "HeldBack",
    "int8_windows",
    "make_datasets",
    "make_loader",
    "resolve_class_weights",
    "resolve_folder",
    "set_epoch",
]


@dataclass
class HeldBack:
    """The held-back images of an image folder, whole: network input (normalised) and masks."""

    images: list[np.ndarray]  # float32 (C, H, W)
    masks: list[np.ndarray]  # uint8 (H, W)
    warned: bool = False  # whether the classes too scarce to rank epochs by were named


@dataclass
class DataSources:
    """What :func:`make_datasets` found: the datasets and facts about them."""

    train: Dataset
    val: Dataset | None
    kind: str  # "patches" (a folder made by `unet-patches patches`) or "images" (sampled on the fly)
    folder: Path
    patch_size: int
    class_pixels: np.ndarray  # (K,) or (N, K) pixel counts, for median-frequency weights
    description: str
    preprocess: Preprocess  # how inference must prepare images (with dataset statistics if any)
    held_back: HeldBack | None = None  # the validation images whole (image folders), scored as predict does


def resolve_folder(config: Config) -> Path:
    """``training.folder`` as given when it exists or is absolute, else under ``data.root``."""
    folder = Path(config.training.folder)
    if not folder.is_absolute() and not folder.exists():
        folder = Path(config.data.root) / folder
    return folder


def make_datasets(config: Config) -> DataSources:
    """Build the training and validation sets named by ``training.folder``.

    Raises:
        UserError: the folder is neither a patch folder nor an images/ + masks/ folder, or its
            contents do not match ``data.in_channels`` / ``data.num_classes``.
    """
    folder = resolve_folder(config)
    if (folder / "manifest.json").is_file():
        _check(folder, config)
        return _patch_folder(config, folder, _fold_validation(config, folder))
    if is_data_folder(folder):
        _check(folder, config)  # every problem of the folder at once, before any training
        return _image_folder(config, folder, _fold_validation(config, folder))
    raise UserError(
        f"{folder}: found neither manifest.json (a patch folder) nor images/ and masks/ (full images) nor "
        f"X.tif + X_mask.tif files (Kaggle layout); make patches with `unet-patches patches SOURCE -o {folder}` "
        "or point -f at a data folder"
    )


def _check(folder: Path, config: Config) -> None:
    """Every problem of the folder at once, before any training (:func:`~unet_patches.data.inspection.check_folder`)."""
    t = config.training
    check_folder(folder, config.data, patch_size=config.patches.patch_size, val_fraction=t.val_fraction, seed=t.seed)


def _fold_validation(config: Config, folder: Path) -> set[str] | None:
    """With ``training.folds``: the images (patch folders: source images) that validate in
    ``training.fold``, from the cross-validation's ``splits.json`` (written by rank 0 when missing)."""
    t = config.training
    if not t.folds:
        return None
    if t.fold is None:
        raise UserError(
            f"training.folds = {t.folds} without training.fold: train one fold with --fold I, "
            "or all of them with `unet-patches crossval`"
        )
    run_dir = Path(t.checkpoint_dir) / t.cv_name()
    return splits_for(folder, t.folds, t.seed, run_dir, write=runtime.is_main_process()).validation(t.fold)


def _patch_folder(config: Config, folder: Path, fold_validation: set[str] | None = None) -> DataSources:
    t, d = config.training, config.data
    manifest = read_manifest(folder)
    if manifest["num_classes"] != d.num_classes or manifest["in_channels"] != d.in_channels:
        raise UserError(
            f"{folder}: patches have {manifest['in_channels']} channel(s) and {manifest['num_classes']} classes, "
            f"but data.in_channels = {d.in_channels} and data.num_classes = {d.num_classes}; "
            "make parameters.json match the patches"
        )
    if fold_validation is None:
        train_names, val_names = split_by_source(manifest, t.val_fraction, t.seed)
    else:
        train_names = [p["name"] for p in manifest["patches"] if p["source"] not in fold_validation]
        val_names = [p["name"] for p in manifest["patches"] if p["source"] in fold_validation]
    preprocess = manifest_preprocess(manifest)
    made, asked = (preprocess.normalize, preprocess.resize), (d.normalize, d.preprocess().resize)
    if made != asked and runtime.is_main_process():
        log.warning(
            "%s: the patches were made with normalize %s, resize %s; data.normalize / data.resize (%s, %s) "
            "apply when patches are made and are ignored here",
            folder,
            *made,
            *asked,
        )
    if preprocess.mode.training_set:
        statistics = DatasetStatistics(d.in_channels)
        for image, _ in PatchFolder(folder, train_names, in_channels=d.in_channels, cache=d.cache):
            statistics.add(image.numpy())
        preprocess = preprocess.with_statistics(*statistics.result())
    # Stored patches are normalised already, except by statistics of the training set, applied as read.
    after = preprocess if preprocess.mode.training_set else None
    options = {
        "in_channels": d.in_channels,
        "normalize": after,
        "cache": d.cache,
        "weights": _patch_weights(config, manifest, folder),
    }
    train = PatchFolder(folder, train_names, **options)
    val = PatchFolder(folder, val_names, **options) if val_names else None
    held_back = set(val_names)
    sources = {p["source"] for p in manifest["patches"]}
    n_val_sources = len({p["source"] for p in manifest["patches"] if p["name"] in held_back})
    return DataSources(
        train,
        val,
        "patches",
        folder,
        int(manifest["patch_size"]),
        np.asarray(manifest["class_pixels"], dtype=np.int64),
        f"{len(train_names)} training and {len(val_names)} validation patches from {folder} "
        f"({len(sources) - n_val_sources} / {n_val_sources} source images); normalisation: {preprocess.describe()}",
        preprocess,
    )


def _patch_weights(config: Config, manifest: dict, folder: Path) -> bool:
    """Whether a patch folder's pixel weights are read: when training asks for them, which the folder
    must hold, made with the same settings."""
    t = config.training
    if not t.uses_pixel_weights():
        return False
    made = manifest.get("pixel_weights")
    if made != asdict(t.weight_map()):
        how = "without pixel weights" if made is None else f"with pixel weights {made}"
        raise UserError(
            f"{folder}: training.pixel_weights = {t.pixel_weights} (w0 {t.pixel_weight_w0:g}, sigma "
            f"{t.pixel_weight_sigma:g}), but the patches were made {how}; make them again with the same "
            "settings (unet-patches patches SOURCE --pixel-weights unet)"
        )
    return True


def _image_folder(config: Config, folder: Path, fold_validation: set[str] | None = None) -> DataSources:
    t, d = config.training, config.data
    samples = load_pairs(folder, d.preprocess(), cache=d.cache)
    if fold_validation is None:
        train_idx, val_idx = split_by_group([sample.group for sample in samples], t.val_fraction, t.seed)
    else:
        val_idx = [i for i, sample in enumerate(samples) if sample.name in fold_validation]
        train_idx = [i for i, sample in enumerate(samples) if sample.name not in fold_validation]
    preprocess = d.preprocess()
    if preprocess.mode.training_set:
        statistics = DatasetStatistics(d.in_channels)
        for i in train_idx:
            statistics.add(samples[i].image)
        preprocess = preprocess.with_statistics(*statistics.result())
    samples = [replace(sample, image=preprocess.finish(sample.image)) for sample in samples]
    masks = [samples[i].mask for i in train_idx]
    weights = None
    if t.uses_pixel_weights():
        all_masks = [sample.mask for sample in samples]
        weights = weight_maps(folder, find_pairs(folder), all_masks, preprocess, t.weight_map(), cache=d.cache)
    size = config.patches.patch_size
    train = RandomPatches(
        [samples[i].image for i in train_idx],
        masks,
        size,
        t.samples_per_epoch,
        num_classes=d.num_classes,
        flips=t.flips,
        rotate90=t.rotate90,
        foreground_fraction=t.foreground_fraction,
        seed=t.seed,
        weights=None if weights is None else [weights[i] for i in train_idx],
    )
    val = None
    if val_idx:
        val = FixedWindows(
            [samples[i].image for i in val_idx],
            [samples[i].mask for i in val_idx],
            size,
            per_image=t.val_windows_per_image,
            seed=t.seed,
            weights=None if weights is None else [weights[i] for i in val_idx],
        )
    return DataSources(
        train,
        val,
        "images",
        folder,
        size,
        class_pixel_counts(masks, d.num_classes, per_image=True),
        f"{t.samples_per_epoch} random {size}x{size} patches per epoch from {len(train_idx)} images in {folder}; "
        f"validation: {len(val) if val else 0} fixed windows of {len(val_idx)} held-back images"
        f"{_groups_note(samples, val_idx)}; normalisation: {preprocess.describe()}",
        preprocess,
        HeldBack([samples[i].image for i in val_idx], [samples[i].mask for i in val_idx]) if val_idx else None,
    )


def _groups_note(samples: list, val_idx: list[int]) -> str:
    groups = {sample.group for sample in samples}
    if len(groups) == len(samples):
        return ""
    held_back = {samples[i].group for i in val_idx}
    return f" (split by subject: {len(groups) - len(held_back)} / {len(held_back)} subjects)"


def resolve_class_weights(config: Config, sources: DataSources) -> list[float] | None:
    """``training.class_weights`` as numbers: ``median_frequency`` computed from the training masks."""
    weights = config.training.class_weights
    if weights == "median_frequency":
        return [float(w) for w in median_frequency_weights(sources.class_pixels)]
    return weights


CALIBRATION_WINDOWS = 32
"""Training windows stored in each checkpoint to calibrate its int8 network (:mod:`unet_patches.inference.int8`)."""
HELD_BACK_WINDOWS = 32
"""Validation windows stored beside them, on which the int8 network's accuracy guard compares it with float."""


def evenly_spread(length: int, count: int, skip: set[int] | None = None) -> list[int]:
    """``count`` indices of ``range(length)`` (fewer if there are fewer), evenly spread, ``skip`` left out."""
    free = [i for i in range(length) if i not in (skip or ())]
    return [free[int(k)] for k in np.unique(np.linspace(0, len(free) - 1, min(count, len(free))).round())]


def int8_windows(sources: DataSources) -> dict[str, torch.Tensor]:
    """The network-input windows a checkpoint keeps for int8 inference, float16 ``(N, C, p, p)``:
    ``calibration`` (training windows, evenly spread over the training set) and ``held_back``
    (validation windows; without a validation set, training windows not used for calibration, or
    the calibration windows themselves when there are no others). They are chosen by position, so
    every run on the same data and split keeps the same ones."""

    def stacked(dataset: Dataset, indices: list[int]) -> torch.Tensor:
        return torch.stack([dataset[i][0] for i in indices]).to(torch.float16)

    used = evenly_spread(len(sources.train), CALIBRATION_WINDOWS)  # type: ignore[arg-type]
    calibration = stacked(sources.train, used)
    if sources.val is not None and len(sources.val) > 0:  # type: ignore[arg-type]
        held_back = stacked(sources.val, evenly_spread(len(sources.val), HELD_BACK_WINDOWS))  # type: ignore[arg-type]
    else:
        rest = evenly_spread(len(sources.train), HELD_BACK_WINDOWS, skip=set(used))  # type: ignore[arg-type]
        held_back = stacked(sources.train, rest) if rest else calibration
    return {"calibration": calibration, "held_back": held_back}


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int, num_workers: int) -> DataLoader:
    """A loader over this rank's shard: a seeded shuffle for training, a strided split for validation."""
    world, rank = runtime.world_size(), runtime.rank()
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        shard_size = len(dataset) // world
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            drop_last=shard_size >= batch_size,
            persistent_workers=False,
        )
    # Validation shards must not repeat samples, or the summed confusion matrix would be wrong.
    shard = Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler and an on-the-fly dataset which epoch is next (they are seeded by it)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
