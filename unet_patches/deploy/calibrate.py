"""``unet-patches calibrate``: a copy of a checkpoint with what calibrates it. With a labelled folder
(``--folder``), the temperature that calibrates its probabilities (:mod:`unet_patches.metrics.calibration`),
fitted on that folder's images predicted whole. And, for a checkpoint written before checkpoints kept
them, the int8 calibration and held-back windows, from its training data with the run's own split and
preprocessing (the same windows :func:`~unet_patches.training.datasets.int8_windows` keeps in every
checkpoint it writes). The checkpoint itself is never rewritten: all goes into a copy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from unet_patches.data.folders import find_pairs
from unet_patches.errors import UserError
from unet_patches.files.sources import image_size
from unet_patches.inference.job import PredictionJob
from unet_patches.inference.predict import fit_calibration
from unet_patches.inference.segmenter import Segmenter
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint
from unet_patches.training.config import config_from_dict
from unet_patches.training.datasets import int8_windows, make_datasets, resolve_folder

__all__ = ["add_int8_windows", "calibrate_checkpoint", "fit_folder_temperature"]


def calibrate_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    folder: str | Path | None = None,
    training_folder: str | Path | None = None,
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
    page: int | None = None,
) -> dict[str, Any]:
    """Write ``out``: ``checkpoint`` with its temperature fitted on the labelled ``folder`` (when
    given) and the int8 windows it lacks (always without ``folder``; with it, when the training data
    is here). ``training_folder``: where the int8 windows come from (default the run's
    ``training.folder``). ``options``: the inference settings the folder is predicted with (``page``: the
    TIFF page of its images, default the run's). Returns
    ``{"calibration": record or None, "int8_windows": {kind: count} or None}``.

    Raises:
        UserError: ``out`` is the checkpoint itself (never rewritten), or exists without ``overwrite``;
            the checkpoint cannot be read; a folder is missing or does not fit the run (a mask of
            other classes is named).
    """
    source, target = Path(checkpoint), Path(out)
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise UserError(f"{target}: is the checkpoint being read; write the new one elsewhere (-o OTHER.pt)")
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it, or choose another -o")
    target.parent.mkdir(parents=True, exist_ok=True)  # a bad place for it fails before the work
    state = load_checkpoint(source)
    windows_from = None  # the training settings the int8 windows come from, found before any work
    if folder is None or training_folder is not None:
        windows_from = _training_config(state, source, training_folder)
    elif state.get("int8_windows") is None:
        try:
            windows_from = _training_config(state, source, None)
        except UserError:  # the training data is not here: the temperature alone
            windows_from = None
    done: dict[str, Any] = {"calibration": None, "int8_windows": None}
    if folder is not None:
        state["calibration"] = done["calibration"] = fit_folder_temperature(source, folder, dict(options or {}), page)
    if windows_from is not None:
        state["int8_windows"] = int8_windows(make_datasets(windows_from))
        done["int8_windows"] = {kind: int(w.shape[0]) for kind, w in state["int8_windows"].items()}
    save_checkpoint(state, target)
    return done


def fit_folder_temperature(
    checkpoint: str | Path, folder: str | Path, options: dict[str, Any], page: int | None = None
) -> dict[str, Any]:
    """The ``calibration`` record of ``checkpoint`` fitted on the labelled ``folder`` (images/ +
    masks/), every image predicted whole with ``options`` (:func:`~unet_patches.inference.predict.fit_calibration`)."""
    segmenter = Segmenter.from_checkpoint(checkpoint, device=options.pop("device", None))
    if page is not None:
        segmenter = replace(segmenter, preprocess=replace(segmenter.preprocess, page=page))
    pairs = find_pairs(folder)
    sizes = [image_size(pair.image, segmenter.preprocess.page) for pair in pairs]
    job = PredictionJob(segmenter, sizes, **{"compile": False, **options})
    source = f"{Path(folder)} ({len(pairs)} images)"
    return fit_calibration(job, lambda counter: job.score(pairs, calibration=counter), source=source)


def _training_config(state: dict[str, Any], source: Path, training_folder: str | Path | None):
    """The run's training settings (its data folder, or ``training_folder``).

    Raises:
        UserError: the checkpoint holds no settings, or the data folder is not here.
    """
    if not isinstance(state.get("config"), dict):
        raise UserError(f"{source}: holds no training settings (config), so its training data is unknown; train again")
    values = dict(state["config"])
    if training_folder is not None:
        values["training"] = {**values["training"], "folder": str(training_folder)}
    config = config_from_dict(values, f"{source} (config)")
    if not resolve_folder(config).exists():
        raise UserError(
            f"{source}: its training data {resolve_folder(config)} is not here; "
            "pass the folder it was trained on with --training-folder"
        )
    return config


def add_int8_windows(
    checkpoint: str | Path, out: str | Path, folder: str | Path | None = None, overwrite: bool = False
) -> dict[str, int]:
    """Write ``out``: ``checkpoint`` with the int8 calibration and held-back windows that training
    stores, from its training data (``folder``, default the run's ``training.folder``); returns how
    many windows of each kind were stored (:func:`calibrate_checkpoint` without a labelled folder)."""
    done = calibrate_checkpoint(checkpoint, out, training_folder=folder, overwrite=overwrite)
    return done["int8_windows"]
