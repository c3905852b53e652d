"""Checkpoint files: the format, its :func:`upgrade` from every earlier format, atomic writing, safe
reading (contents validated like ``parameters.json``), the weights loaded into a network, and the
network and preprocessing a checkpoint describes. What a training run puts into one, and how it is
put back, is :mod:`unet_patches.training.state`.

A checkpoint is a ``dict`` saved with ``torch.save`` and read with ``weights_only=True``. Format 2
holds every key below; :func:`load_checkpoint` hands out format 2 whatever the file's format:

- ``format_version``: 2;
- ``model_config``: :class:`~unet_patches.models.ModelConfig` as a dict, ``model``: the weights
  (unwrapped from DDP);
- what inference needs, so that ``predict`` needs nothing but the file: ``class_names``,
  ``in_channels``, ``patch_size`` (the training patch), ``preprocess``
  (:class:`~unet_patches.data.preprocess.Preprocess` as a dict: normalisation and its statistics,
  resize, mask tables) and ``normalization`` (the same in words);
- ``int8_windows``: ``{"calibration": ..., "held_back": ...}``, float16 network-input windows
  ``(N, C, p, p)`` from which ``precision: int8`` quantizes the network and checks it
  (:mod:`unet_patches.inference.int8`), or None;
- ``calibration`` (optional; absent: not calibrated): ``{"temperature": T, ...}``, the temperature
  that calibrates the blended probabilities (:mod:`unet_patches.metrics.calibration`), with what it was
  fitted on and the figures before and after (:func:`calibration_of`);
- the run's position, which ``--resume`` continues from (:mod:`unet_patches.training.state`):
  ``optimizer``, ``scaler`` (or None), ``epoch``, ``step``, ``elapsed`` (seconds), ``best_miou``,
  ``best_epoch``, ``torch_rng``, ``history`` (one record per epoch), ``metrics`` (the last record),
  ``schedule`` (a ``plateau`` schedule's state, else empty), ``snapshots`` (snapshots written so far)
  and ``config`` (the whole resolved configuration). Files stripped for inference may lack these.

Earlier formats, which :func:`upgrade` reads: format 0 (no ``format_version``) and format 1, whose
contents grew over time: ``model_config`` without ``name`` (written before there were other
architectures: a U-Net), no ``preprocess`` (written before ``data.normalize``: those runs were
trained on images scaled by pixel type, ``range``), no ``class_names`` or ``patch_size`` (the names
``class0``, ``class1``, ... and the original's patch of 96), no ``schedule`` or ``snapshots``, no
``int8_windows``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet_patches.atomic import write_atomically
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError, cannot_write, one_line
from unet_patches.metrics.calibration import check_temperature
from unet_patches.parameters import build_typed
from unet_patches.validate import is_int

from . import ModelConfig, build_model, check_config

__all__ = [
    "CHECKPOINT_FORMAT",
    "DAMAGED",
    "load_checkpoint",
    "calibration_of",
    "load_weights",
    "model_from_checkpoint",
    "preprocess_from_checkpoint",
    "quoted",
    "save_checkpoint",
    "upgrade",
]

CHECKPOINT_FORMAT = 2
OLD_PATCH_SIZE = 96
"""The training patch of files that did not record theirs: the original's, which every run used then."""
DAMAGED = "the file was edited or damaged; use the checkpoint training wrote"
INFERENCE_KEYS = ("model_config", "model", "class_names", "in_channels", "patch_size", "preprocess", "int8_windows")
"""What every checkpoint of the current format holds, stripped ones too: what inference reads."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename.

    Raises:
        UserError: the write failed (a full disk, a quota, a file-size limit): the file that was at
            ``path`` before is untouched and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(path, lambda tmp: torch.save(state, tmp), fsync=True)
    except OSError as exc:
        raise cannot_write(path, exc, "the file there before is unchanged") from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors land on ``device``).

    Whatever the file's format, the contents come back as the current one (:func:`upgrade`), checked.

    Raises:
        UserError: the file is missing, not a checkpoint, of an unknown format version, or its contents
            do not hold together (a damaged or edited file).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass the path of a .pt file written by training")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise UserError(
            f"{path}: not a readable unet-patches checkpoint ({type(exc).__name__}); pass a best.pt or last.pt"
        ) from None
    if not isinstance(state, dict) or "model_config" not in state or "model" not in state:
        raise UserError(f"{path}: not a unet-patches checkpoint (no model_config/model); pass a best.pt or last.pt")
    version = state.get("format_version", 0)
    if not is_int(version):
        raise UserError(f"{path}: format_version = {version!r}: expected an integer; the file is damaged")
    if version > CHECKPOINT_FORMAT:
        raise UserError(
            f"{path}: checkpoint format {state['format_version']} is newer than this version reads "
            f"({CHECKPOINT_FORMAT}); upgrade unet-patches"
        )
    if not isinstance(state["model_config"], dict):
        raise UserError(
            f"{path}: model_config = {quoted(state['model_config'])}: expected a dict of model settings; {DAMAGED}"
        )
    state = upgrade(state)
    _check_contents(state, path)
    return state


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's contents of any earlier format (see the module docstring) as the current format,
    with what the old files left out filled in as those runs had it; the current format is returned as
    it is. ``state`` itself is not changed."""
    if state.get("format_version", 0) >= CHECKPOINT_FORMAT:
        return state
    state = dict(state)
    model = {"name": "unet", **state["model_config"]}
    state["model_config"] = model
    classes, channels = model.get("num_classes", 3), model.get("in_channels", state.get("in_channels", 1))
    classes = classes if is_int(classes) else 0  # a damaged value: _check_contents names it
    state["in_channels"] = channels
    state["class_names"] = state.get("class_names") or [f"class{c}" for c in range(classes)]
    state.setdefault("patch_size", OLD_PATCH_SIZE)
    if not state.get("preprocess"):
        preprocess = Preprocess(in_channels=channels, num_classes=classes, normalize="range")
        state["preprocess"] = preprocess.to_dict()
        state["normalization"] = preprocess.describe()
        if isinstance(state.get("config"), dict):  # a run trained on range-scaled images resumes so
            data = state["config"].get("data")
            state["config"] = {
                **state["config"],
                "data": {"normalize": "range", **(data if isinstance(data, dict) else {})},
            }
    for key, empty in (("schedule", {}), ("snapshots", 0), ("int8_windows", None)):
        state.setdefault(key, empty)
    state["format_version"] = CHECKPOINT_FORMAT
    return state


def _check_contents(state: dict[str, Any], path: Path) -> None:
    """What reading a checkpoint for inference needs, validated like ``parameters.json``: the model
    settings (known keys, types, ranges), the weights as named tensors, and the facts of the run
    (class names, channels, patch size, preprocessing) consistent with the model."""
    missing = [key for key in INFERENCE_KEYS if key not in state]
    if missing:
        raise UserError(f"{path}: no {', '.join(missing)} in a format {CHECKPOINT_FORMAT} checkpoint; {DAMAGED}")
    values = state["model_config"]
    config = build_typed(ModelConfig, values, f"{path}: ", "model_config.")
    try:
        check_config(config)
    except UserError as exc:
        raise UserError(f"{path}: {exc}; {DAMAGED}") from None
    weights = state["model"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise UserError(f"{path}: model: expected the network's named weight tensors; {DAMAGED}")
    names = state["class_names"]
    if not isinstance(names, list) or len(names) != config.num_classes or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: class_names = {quoted(names)}: expected {config.num_classes} names; {DAMAGED}")
    for key, low in (("patch_size", 1), ("in_channels", 1)):
        if not is_int(state[key]) or state[key] < low:
            raise UserError(f"{path}: {key} = {quoted(state[key])}: expected an integer >= {low}; {DAMAGED}")
    _check_int8_windows(state["int8_windows"], config.in_channels, path)
    calibration_of(state, path)
    pre = _preprocess(state["preprocess"], path)
    if (pre.in_channels, pre.num_classes) != (config.in_channels, config.num_classes):
        raise UserError(
            f"{path}: preprocess is for {pre.in_channels} channel(s) and {pre.num_classes} classes but "
            f"model_config for {config.in_channels} and {config.num_classes}; {DAMAGED}"
        )


def _check_int8_windows(windows: Any, channels: int, path: Path) -> None:
    if windows is None:
        return
    valid = isinstance(windows, dict) and set(windows) == {"calibration", "held_back"}
    for part in windows.values() if valid else ():
        valid = valid and isinstance(part, torch.Tensor) and part.is_floating_point()
        valid = valid and part.dim() == 4 and part.shape[0] > 0 and part.shape[1] == channels
    if not valid:
        raise UserError(
            f"{path}: int8_windows = {quoted(windows)}: expected calibration and held_back windows "
            f"(N, {channels}, h, w); {DAMAGED}"
        )


def calibration_of(state: dict[str, Any], path: str | Path = "checkpoint") -> float:
    """The temperature of a checkpoint's ``calibration`` (1.0 when it has none).

    Raises:
        UserError: ``calibration`` is not a dict with a finite ``temperature`` > 0 (``path`` named).
    """
    calibration = state.get("calibration")
    if calibration is None:
        return 1.0
    if not isinstance(calibration, dict) or "temperature" not in calibration:
        raise UserError(f"{path}: calibration = {quoted(calibration)}: expected {{'temperature': T, ...}}; {DAMAGED}")
    try:
        return check_temperature(calibration["temperature"], "calibration.temperature")
    except ValueError as exc:
        raise UserError(
            f"{path}: {exc}; {DAMAGED}, or fit it again (unet-patches calibrate {path} -o NEW.pt --folder LABELLED_DIR)"
        ) from None


def _preprocess(values: Any, path: Path) -> Preprocess:
    try:
        return Preprocess.from_dict(values)
    except UserError as exc:
        raise UserError(f"{path}: preprocess: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UserError(
            f"{path}: preprocess = {quoted(values)}: not readable ({one_line(exc, 80)}); {DAMAGED}"
        ) from None


def quoted(value: Any) -> str:
    """A value as an error message quotes it: its repr, on one line, cut at 80 characters."""
    return one_line(repr(value), 80)


def model_from_checkpoint(
    state: dict[str, Any], device: torch.device | str = "cpu", source: str | Path = "checkpoint"
) -> nn.Module:
    """The network a loaded checkpoint describes, with its weights, on ``device``, in eval mode.

    Raises:
        UserError: the weights do not fit the network of ``model_config`` (``source`` names the file).
    """
    model = build_model(state["model_config"], pretrained=False)  # the weights are in the checkpoint
    load_weights(model, state["model"], source)
    return model.to(device).eval()


def load_weights(
    model: nn.Module, weights: dict[str, Any], source: str | Path, *, fits: str = "model_config", fix: str = DAMAGED
) -> None:
    """``model.load_state_dict(weights)``, the one way weights get into a network; a mismatch is a
    ``UserError`` naming ``source``, the first missing, unexpected or mis-shaped weight, what the weights
    were meant to fit (``fits``) and the way out (``fix``)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise UserError(f"{source}: the weights do not fit {fits} ({one_line(detail, 80)}); {fix}") from None


def preprocess_from_checkpoint(state: dict[str, Any]) -> Preprocess:
    """How the network of a loaded checkpoint wants its input."""
    return Preprocess.from_dict(state["preprocess"])
