"""``unet-patches calibrate``: a checkpoint written before checkpoints kept the int8 calibration and
held-back windows gets them, from its training data with the run's own split and preprocessing (the
same windows :func:`~unet_patches.training.datasets.int8_windows` keeps in every checkpoint it writes). The
checkpoint itself is never rewritten: the windows go into a copy."""

from __future__ import annotations

from pathlib import Path

from unet_patches.errors import UserError
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint
from unet_patches.training.config import config_from_dict
from unet_patches.training.datasets import int8_windows, make_datasets, resolve_folder

__all__ = ["add_int8_windows"]


def add_int8_windows(
    checkpoint: str | Path, out: str | Path, folder: str | Path | None = None, overwrite: bool = False
) -> dict[str, int]:
    """Write ``out``: ``checkpoint`` with the int8 calibration and held-back windows that training
    stores (:func:`int8_windows`), for a checkpoint written before they existed. They come from its
    training data (``folder``, default the run's ``training.folder``) with the run's own split and
    preprocessing. Returns how many windows of each kind were stored.

    Raises:
        UserError: ``out`` is the checkpoint itself (never rewritten), or exists without ``overwrite``;
            the checkpoint cannot be read; the data folder is missing or does not fit the run.
    """

    source, target = Path(checkpoint), Path(out)
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise UserError(f"{target}: is the checkpoint being read; write the new one elsewhere (-o OTHER.pt)")
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it, or choose another -o")
    target.parent.mkdir(parents=True, exist_ok=True)  # a bad place for it fails before the work
    state = load_checkpoint(source)
    if not isinstance(state.get("config"), dict):
        raise UserError(f"{source}: holds no training settings (config), so its training data is unknown; train again")
    values = dict(state["config"])
    if folder is not None:
        values["training"] = {**values["training"], "folder": str(folder)}
    config = config_from_dict(values, f"{source} (config)")
    if not resolve_folder(config).exists():
        raise UserError(
            f"{source}: its training data {resolve_folder(config)} is not here; "
            "pass the folder it was trained on with --folder"
        )
    state["int8_windows"] = int8_windows(make_datasets(config))
    save_checkpoint(state, target)
    return {kind: int(windows.shape[0]) for kind, windows in state["int8_windows"].items()}
