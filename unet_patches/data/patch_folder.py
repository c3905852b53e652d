"""Reading a patch folder written by :func:`~unet_patches.data.patches.extract_patches`: its
``manifest.json`` (:func:`read_manifest`), how its patches were normalised (:func:`manifest_preprocess`),
the split by source image (:func:`split_by_source`), and the patches as a dataset (:class:`PatchFolder`),
with their pixel weights where the folder has them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unet_patches.errors import UserError, one_line
from unet_patches.validate import require_int, require_number

from .cache import DecodeCache
from .folders import validation_count
from .imageio import image_to_array
from .masks import decode_mask
from .preprocess import Preprocess

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "PatchFolder", "manifest_preprocess", "read_manifest", "split_by_source"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


def read_manifest(folder: str | Path) -> dict:
    """Load and check ``folder/manifest.json``.

    Raises ``UserError`` when it is missing, not JSON, or lacks the fields a patch folder needs.
    """
    path = Path(folder) / MANIFEST_NAME
    fix = "run `unet-patches patches` first to create a patch folder"
    if not path.is_file():
        raise UserError(f"{path}: not found, so {folder} is not a patch folder; {fix}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = one_line(exc)
        raise UserError(f"{path}: not a readable JSON file ({reason}); {fix}") from exc
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object; {fix}")
    required = ("patch_size", "num_classes", "in_channels", "patches")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise UserError(f"{path}: missing field(s) {', '.join(missing)}; {fix}")
    patches = manifest["patches"]
    if not isinstance(patches, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("source"), str) for p in patches
    ):
        raise UserError(f"{path}: 'patches' must be a list of records with name and source; {fix}")
    return manifest


def split_by_source(manifest: dict, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split patch names into ``(train_names, val_names)`` by whole group of source images.

    A group is a source image, or a subject for sources in the Kaggle layout (the manifest's
    ``sources[name]["group"]``). All patches of one group (its windows and their flips) go to the
    same side, so no near-copy leaks into validation. ``round(val_fraction * n_groups)`` groups go to
    validation, at least one when ``val_fraction > 0`` and there are >= 2 groups, and never all of
    them (one group: validation is empty). Names keep manifest order. Deterministic for a given ``seed``.
    Raises ``UserError`` unless ``0 <= val_fraction < 1`` and ``seed`` is an integer >= 0.
    """
    require_number("val_fraction", val_fraction, 0, 1, high_open=True)
    require_int("seed", seed, 0)
    patches = manifest["patches"]
    info = manifest.get("sources") if isinstance(manifest.get("sources"), dict) else {}
    group = {p["source"]: str((info.get(p["source"]) or {}).get("group") or p["source"]) for p in patches}
    groups = sorted(set(group.values()))
    n_val = validation_count(len(groups), val_fraction)
    order = np.random.default_rng(seed).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    train = [p["name"] for p in patches if group[p["source"]] not in val_groups]
    val = [p["name"] for p in patches if group[p["source"]] in val_groups]
    return train, val


def manifest_preprocess(manifest: dict) -> Preprocess:
    """How the manifest's patches were normalised before storing (``range`` for older folders)."""
    if isinstance(manifest.get("preprocess"), dict):
        return Preprocess.from_dict(manifest["preprocess"])
    return Preprocess(
        in_channels=int(manifest["in_channels"]), num_classes=int(manifest["num_classes"]), normalize="range"
    )


class PatchFolder(Dataset):
    """The patches of a folder written by :func:`extract_patches`.

    ``names`` picks patches (default: all, in manifest order), e.g. one side of
    :func:`split_by_source`. Items are ``(image, mask)``: float32 tensor ``(in_channels, h, w)`` in
    [0, 1] (float32 TIFF patches: as stored) and int64 tensor ``(h, w)``. Files are read lazily in
    ``__getitem__``, through the decode cache (a ``.npy`` per patch under the folder, unless
    ``cache`` is False), so DataLoader workers share no large arrays. Raises ``UserError`` for a
    missing or broken manifest, and ``ValueError`` for ``names`` not in the manifest (they come
    from the caller, e.g. :func:`split_by_source` of the same manifest, so an unknown one is a
    programming error).
    """

    def __init__(
        self,
        folder: str | Path,
        names: list[str] | None = None,
        in_channels: int = 1,
        *,
        normalize: Preprocess | None = None,
        cache: bool = True,
        weights: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.weights = weights
        self.in_channels = in_channels
        self.normalize = normalize
        self.reader = DecodeCache(self.folder if cache else None)
        self.num_classes = int(self.manifest["num_classes"])
        known = [p["name"] for p in self.manifest["patches"]]
        if names is None:
            self.names = known
        else:
            unknown = sorted(set(names) - set(known))
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise ValueError(
                    f"{self.folder}: {len(unknown)} patch name(s) not in its manifest ({shown}); "
                    "use names from that folder's manifest.json"
                )
            self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        """Patch ``index``: image, mask and, with ``weights``, its pixel weights (float32 ``(h, w)``)."""
        name = self.names[index]
        image_path = self.folder / "images" / f"{name}{self.manifest.get('image_suffix', '.png')}"
        image = image_to_array(self.reader.read(image_path), self.in_channels, name=str(image_path))
        if self.normalize is not None:  # dataset statistics (``normalize``'s step 3; no per-image bounds)
            image = self.normalize.normalized(image, None)
        mask_path = self.folder / "masks" / f"{name}.png"
        mask = decode_mask(self.reader.read(mask_path, mask=True), mask_path, self.num_classes)
        if not self.weights:
            return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))
        weights = np.load(self.folder / "weights" / f"{name}.npy", allow_pickle=False).astype(np.float32)
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(weights)
