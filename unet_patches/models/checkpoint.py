"""Checkpoint files: what one holds (:func:`checkpoint_state`), atomic writing, safe reading, and
rebuilding the network it describes.

A checkpoint is a ``dict`` saved with ``torch.save`` and read with ``weights_only=True``. Format 1
(the only one so far) holds:

- ``format_version``: 1;
- ``model_config``: :class:`~unet_patches.models.ModelConfig` as a dict (files written before the
  ``name`` key existed rebuild as a U-Net), ``model``: the weights (unwrapped from DDP);
- ``optimizer``, ``scaler`` (or None), ``epoch``, ``step``, ``elapsed`` (seconds), ``best_miou``,
  ``best_epoch``, ``torch_rng``, ``history`` (one record per epoch), ``metrics`` (the last record),
  ``schedule`` (the state of a ``plateau`` schedule) and ``snapshots`` (snapshots written so far):
  what ``--resume`` needs to continue exactly (files without the last two continue with a fresh
  schedule state);
- ``config``: the whole resolved configuration; ``class_names``, ``in_channels``, ``patch_size`` and
  ``preprocess`` (:class:`~unet_patches.data.preprocess.Preprocess` as a dict: normalisation and its
  statistics, resize, mask tables; ``normalization`` repeats it in words): what inference needs, so
  ``predict`` needs nothing but the file. Files without ``preprocess`` (written before it existed)
  read as ``range`` normalisation, which is what they were trained with;
- ``int8_windows``: ``{"calibration": ..., "held_back": ...}``, float16 network-input windows
  ``(N, C, p, p)`` (:func:`~unet_patches.training.datasets.int8_windows`) from which ``precision: int8`` quantizes
  the network and checks it (:mod:`unet_patches.inference.int8`); None or absent in files written before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unet_patches.atomic import write_atomically
from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError, one_line
from unet_patches.parameters import build_typed
from unet_patches.validate import is_int, is_number

from . import ModelConfig, build_model, check_config

if TYPE_CHECKING:
    from unet_patches.training.config import Config
    from unet_patches.training.optim import Progress

__all__ = [
    "CHECKPOINT_FORMAT",
    "DAMAGED",
    "check_resumable",
    "checkpoint_state",
    "load_weights",
    "load_checkpoint",
    "model_from_checkpoint",
    "preprocess_from_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1


def checkpoint_state(
    *,
    config: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: Progress,
    epoch: int,
    best_miou: float,
    best_epoch: int | None,
    history: list[dict[str, Any]],
    patch_size: int,
    preprocess: Preprocess,
    schedule: dict[str, float] | None = None,
    snapshots: int = 0,
    int8_windows: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds after ``epoch`` (``model`` already unwrapped from DDP)."""
    return {
        "format_version": CHECKPOINT_FORMAT,
        "model_config": config.model.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": progress.step,
        "elapsed": progress.seconds(),
        "best_miou": best_miou,
        "best_epoch": best_epoch,
        "torch_rng": torch.get_rng_state(),
        "config": config.to_dict(),
        "class_names": config.data.names(),
        "in_channels": config.data.in_channels,
        "patch_size": patch_size,
        "preprocess": preprocess.to_dict(),
        "normalization": preprocess.describe(),
        "history": history,
        "metrics": history[-1] if history else {},
        "schedule": schedule or {},
        "snapshots": snapshots,
        "int8_windows": int8_windows,
    }


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: torch.save(state, tmp), fsync=True)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors land on ``device``).

    Raises:
        UserError: the file is missing, not a checkpoint, or of an unknown format version.
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
    _check_contents(state, path)
    return state


DAMAGED = "the file was edited or damaged; use the checkpoint training wrote"


def _check_contents(state: dict[str, Any], path: Path) -> None:
    """What reading a checkpoint for inference needs, validated like ``parameters.json``: the model
    settings (known keys, types, ranges), the weights as named tensors, and the facts of the run
    (class names, channels, patch size, preprocessing) consistent with the model."""
    values = state["model_config"]
    if not isinstance(values, dict):
        raise UserError(f"{path}: model_config = {_quoted(values)}: expected a dict of model settings; {DAMAGED}")
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
    names = state.get("class_names")
    if names is not None and (
        not isinstance(names, list) or len(names) != config.num_classes or not all(isinstance(n, str) for n in names)
    ):
        raise UserError(f"{path}: class_names = {_quoted(names)}: expected {config.num_classes} names; {DAMAGED}")
    for key, low in (("patch_size", 1), ("in_channels", 1)):
        if key in state and (not is_int(state[key]) or state[key] < low):
            raise UserError(f"{path}: {key} = {_quoted(state[key])}: expected an integer >= {low}; {DAMAGED}")
    _check_int8_windows(state.get("int8_windows"), config.in_channels, path)
    if state.get("preprocess") is not None:
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
            f"{path}: int8_windows = {_quoted(windows)}: expected calibration and held_back windows "
            f"(N, {channels}, h, w); {DAMAGED}"
        )


def _preprocess(values: Any, path: Path) -> Preprocess:
    try:
        return Preprocess.from_dict(values)
    except UserError as exc:
        raise UserError(f"{path}: preprocess: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UserError(
            f"{path}: preprocess = {_quoted(values)}: not readable ({one_line(exc, 80)}); {DAMAGED}"
        ) from None


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """What ``--resume`` reads beyond :func:`load_checkpoint`'s checks: the run's position, optimizer
    state, history, RNG state and stored configuration.

    Raises:
        UserError: a key is missing or of the wrong type (a ``best.pt`` of an old run, or a damaged file).
    """
    expected: dict[str, tuple[Callable[[Any], bool], str]] = {
        "epoch": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        "step": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        "elapsed": (lambda v: is_number(v) and v >= 0, "seconds >= 0"),
        "best_miou": (is_number, "a number"),
        "best_epoch": (lambda v: v is None or is_int(v), "an integer or null"),
        "optimizer": (lambda v: isinstance(v, dict) and "state" in v and "param_groups" in v, "an optimizer state"),
        "history": (lambda v: isinstance(v, list), "a list of epoch records"),
        "torch_rng": (lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8, "a torch RNG state"),
        "config": (lambda v: isinstance(v, dict), "the run's settings"),
    }
    for key, (valid, what) in expected.items():
        if key not in state:
            raise UserError(f"{path}: no {key}; --resume needs a last.pt written by training (not an export)")
        if not valid(state[key]):
            raise UserError(f"{path}: {key} = {_quoted(state[key])}: expected {what}; {DAMAGED}")


def _quoted(value: Any) -> str:
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


def load_weights(model: nn.Module, weights: dict[str, Any], source: str | Path) -> None:
    """``model.load_state_dict(weights)``; a mismatch is a ``UserError`` naming ``source`` and the first
    missing, unexpected or mis-shaped weight."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise UserError(f"{source}: the weights do not fit model_config ({one_line(detail, 80)}); {DAMAGED}") from None


def preprocess_from_checkpoint(state: dict[str, Any]) -> Preprocess:
    """How the checkpoint's network wants its input (``range`` for files older than the key)."""
    config = state["model_config"]
    if state.get("preprocess"):
        return Preprocess.from_dict(state["preprocess"])
    in_channels = int(config.get("in_channels", state.get("in_channels", 1)))
    return Preprocess(in_channels=in_channels, num_classes=int(config["num_classes"]), normalize="range")
