"""The Python API: load a checkpoint, segment an array, score a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .imageio import image_to_array, load_pairs
from .metrics import ConfusionMatrix
from .runtime import pick_device
from .training import load_checkpoint, model_from_checkpoint


def load_model(path: str | Path, device: str | torch.device | None = "cpu") -> nn.Module:
    """Rebuild the model stored in a checkpoint, in eval mode.

    The model carries what inference needs from its training run as attributes:
    ``patch_size`` (the default window), ``class_names`` and ``in_channels``.

    Raises:
        UserError: the file is missing or not a unet-patches checkpoint.
    """
    device = pick_device(None if device is None else str(device))
    state = load_checkpoint(path, device)
    model = model_from_checkpoint(state, device)
    model.patch_size = int(state.get("patch_size", 96))
    model.class_names = list(state.get("class_names") or [f"class{c}" for c in range(model.config.num_classes)])
    model.in_channels = int(model.config.in_channels)
    return model


def _predictor(model: nn.Module, window: int | None, **options: Any):
    """A TiledPredictor whose window defaults to the training patch size stored with the model."""
    from .tiling import TiledPredictor

    if window is None:
        window = int(getattr(model, "patch_size", 96))
    return TiledPredictor(model, window, **options)


def predict(
    model: nn.Module,
    image: np.ndarray,
    *,
    window: int | None = None,
    return_probs: bool = False,
    **options: Any,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment one image with sliding windows.

    Args:
        model: a network mapping ``(N, C, h, w)`` to ``(N, K, h, w)`` logits, e.g. from :func:`load_model`.
        image: ``(H, W)`` or ``(H, W, C)`` array, uint8, uint16 or float; preprocessed as the command
            line preprocesses files (uint8 / 255, uint16 / 65535, float as is; gray repeated or colour
            averaged to the model's input channels).
        window: window size; defaults to the training patch size stored with the model.
        return_probs: also return the blended ``(K, H, W)`` float32 probabilities.
        options: keyword arguments of :class:`~unet_patches.tiling.TiledPredictor` (``overlap``,
            ``batch_size``, ``blend``, ``padding``, ``tta``, ``precision``, ``compile``, ``device``, ...);
            ``Config.inference.predictor_options()`` gives those of ``parameters.json``.

    Returns:
        ``(H, W)`` uint8 label mask, or ``(labels, probs)``.

    Raises:
        UserError: the image has an unsupported shape or dtype, or an option is invalid.
    """
    if not isinstance(image, np.ndarray):
        raise UserError(f"image of type {type(image).__name__}: expected a numpy array (H, W) or (H, W, C)")
    in_channels = int(getattr(model, "in_channels", getattr(getattr(model, "config", None), "in_channels", 1)))
    array = image_to_array(image, in_channels)
    return _predictor(model, window, **options).labels(array, return_probs=return_probs)


def evaluate_folder(
    model: nn.Module,
    folder: str | Path,
    *,
    window: int | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Full-image predictions for an ``images/`` + ``masks/`` folder scored against its masks.

    ``window`` and ``options`` are as for :func:`predict`.

    Returns ``{"miou", "mean_dice", "pixel_accuracy", "iou": {class: value}, "dice": {...}, "images": n}``
    from one confusion matrix over the whole folder (classes absent from truth and prediction are
    ``None`` and left out of the means).
    """
    from tqdm.auto import tqdm

    num_classes = int(model.config.num_classes)
    in_channels = int(model.config.in_channels)
    samples = load_pairs(folder, in_channels, num_classes)
    predictor = _predictor(model, window, **options)
    matrix = ConfusionMatrix(num_classes)
    for sample in tqdm(samples, desc="evaluate", disable=not progress, leave=False):
        matrix.update(torch.from_numpy(predictor.labels(sample.image)), torch.from_numpy(sample.mask))
    names = getattr(model, "class_names", None)
    return {**matrix.summary(names), "images": len(samples)}
