"""The folds of k-fold cross-validation: which images of a training folder validate in which fold.

The units split are the training folder's images: the source images of a patch folder (its manifest),
the images of an ``images/`` + ``masks/`` or Kaggle-layout folder. Whole groups go to one fold: a
subject in the Kaggle layout (``<subject>_<n>``, :func:`unet_patches.data.folders.group_of`), a source image
otherwise, so no near-copy of a validation image is trained on. The rule is stable: the group names
sorted, permuted by a generator seeded with ``seed`` and dealt to the folds in turn, so the folds do not
depend on the order files are listed in and change only with the seed (and the set of groups); every
image validates in exactly one fold and fold sizes in groups differ by at most one.

The split of a cross-validation is written once, to ``<run folder>/splits.json``, and read back by every
later fold, rerun and resume; a split that no longer fits the folder (other images, ``k`` or seed) is
refused rather than silently redrawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_patches.atomic import write_atomically
from unet_patches.errors import UserError

from .folders import find_pairs, is_data_folder
from .patch_folder import read_manifest

__all__ = ["SPLITS_FILE", "Splits", "assign_folds", "split_units", "splits_for"]

SPLITS_FILE = "splits.json"


def assign_folds(groups: Mapping[str, str], k: int, seed: int) -> dict[str, int]:
    """The fold (0 .. k-1) of each unit of ``groups`` (unit -> group), whole groups together.

    Raises:
        UserError: ``k`` is below 2 or above the number of groups.
    """
    names = sorted(set(groups.values()))
    if not 2 <= k <= len(names):
        raise UserError(
            f"training.folds = {k}: expected 2 to {len(names)} (the number of image groups in the folder) folds"
        )
    order = np.random.default_rng([seed, 16]).permutation(len(names))
    fold_of_group = {names[i]: rank % k for rank, i in enumerate(order)}
    return {unit: fold_of_group[group] for unit, group in groups.items()}


@dataclass(frozen=True)
class Splits:
    """A cross-validation's split: ``k`` folds of the units of ``folder`` (unit -> fold), drawn with ``seed``."""

    k: int
    seed: int
    folder: str
    kind: str  # "patches" (units are a patch folder's source images) or "images"
    folds: dict[str, int]
    groups: dict[str, str]

    def validation(self, fold: int) -> set[str]:
        """The units that validate in ``fold`` (the others train)."""
        return {unit for unit, f in self.folds.items() if f == fold}

    def to_json(self) -> str:
        record = {"k": self.k, "seed": self.seed, "folder": self.folder, "kind": self.kind}
        return json.dumps({**record, "folds": self.folds, "groups": self.groups}, indent=1, sort_keys=True)


def split_units(folder: Path) -> tuple[str, dict[str, str], Path]:
    """The units of a training folder: ``(kind, unit -> group, folder of the full images)``.

    Raises:
        UserError: the folder is neither a patch folder nor a folder of images and masks.
    """
    if (folder / "manifest.json").is_file():
        manifest = read_manifest(folder)
        sources = {p["source"] for p in manifest["patches"]}
        info = manifest.get("sources") if isinstance(manifest.get("sources"), dict) else {}
        groups = {s: str((info.get(s) or {}).get("group") or s) for s in sorted(sources)}
        return "patches", groups, Path(str(manifest.get("source", "")))
    if is_data_folder(folder):
        return "images", {pair.name: pair.group or pair.name for pair in find_pairs(folder)}, folder
    raise UserError(f"{folder}: neither a patch folder (manifest.json) nor a folder of images and masks")


def splits_for(folder: Path, k: int, seed: int, run_dir: Path, *, write: bool = True) -> Splits:
    """The split of the cross-validation in ``run_dir``: read from its ``splits.json``, or drawn
    and (``write``) written there when there is none.

    Raises:
        UserError: the stored split was drawn for another folder, ``k`` or seed, or the folder's
            images have changed since; or the file is unreadable.
    """
    kind, groups, _ = split_units(folder)
    path = run_dir / SPLITS_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            splits = Splits(**{key: stored[key] for key in ("k", "seed", "folder", "kind", "folds", "groups")})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a readable split ({exc}); remove it to draw the folds again") from None
        if (splits.k, splits.seed) != (k, seed) or splits.groups != groups:
            why = f"k = {splits.k}, seed {splits.seed}" if (splits.k, splits.seed) != (k, seed) else "other images"
            raise UserError(
                f"{path}: this cross-validation was split with {why}; the folds cannot change under a run. "
                "Use another --run-name for a new cross-validation, or remove the run folder"
            )
        return splits
    splits = Splits(k, seed, str(folder), kind, assign_folds(groups, k, seed), groups)
    if write:
        text = splits.to_json()
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: Path(tmp).write_text(text))
    return splits
