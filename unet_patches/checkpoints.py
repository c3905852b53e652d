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
  ``preprocess`` (:class:`~unet_patches.preprocess.Preprocess` as a dict: normalisation and its
  statistics, resize, mask tables; ``normalization`` repeats it in words): what inference needs, so
  ``predict`` needs nothing but the file. Files without ``preprocess`` (written before it existed)
  read as ``range`` normalisation, which is what they were trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .atomic import write_atomically
from .errors import UserError
from .models import build_model
from .preprocess import Preprocess

if TYPE_CHECKING:
    from .config import Config
    from .optim import Progress

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_state",
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
    if state.get("format_version", 0) > CHECKPOINT_FORMAT:
        raise UserError(
            f"{path}: checkpoint format {state['format_version']} is newer than this version reads "
            f"({CHECKPOINT_FORMAT}); upgrade unet-patches"
        )
    return state


def model_from_checkpoint(state: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The network a loaded checkpoint describes, with its weights, on ``device``, in eval mode."""
    model = build_model(state["model_config"], pretrained=False)  # the weights are in the checkpoint
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def preprocess_from_checkpoint(state: dict[str, Any]) -> Preprocess:
    """How the checkpoint's network wants its input (``range`` for files older than the key)."""
    config = state["model_config"]
    if state.get("preprocess"):
        return Preprocess.from_dict(state["preprocess"])
    in_channels = int(config.get("in_channels", state.get("in_channels", 1)))
    return Preprocess(in_channels=in_channels, num_classes=int(config["num_classes"]), normalize="range")
