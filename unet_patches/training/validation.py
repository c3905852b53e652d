"""Validation on whole held-back images, as the model will be used: each image predicted by the tiled
engine (the settings of the ``inference`` section: window ``auto``, blend, padding) and scored at full
size, per image, so that the score can carry its spread.

A few fixed windows of a few images rank epochs by noise: a window may miss a class, and the
windows' loss may rise while the images are segmented better. With full-image scores, ``best.pt`` is
the epoch that predicts the held-back images best. The spread is a bootstrap interval over images
(the images resampled with replacement): with three validation images it is wide, which is the
honest answer. A class with too few validation pixels to rank epochs by is named once, with the way
out (``crossval``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet_patches import runtime
from unet_patches.files.rows import ArraySource
from unet_patches.inference.job import PredictionJob
from unet_patches.inference.predict import fit_calibration
from unet_patches.inference.segmenter import Segmenter
from unet_patches.inference.tiling.engine import TiledPredictor
from unet_patches.inference.tiling.sizing import plan_window
from unet_patches.metrics import ConfusionMatrix
from unet_patches.models import large_windows, window_multiple
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint

from .config import Config
from .datasets import HeldBack

__all__ = ["BOOTSTRAP_RESAMPLES", "MIN_CLASS_PIXELS", "bootstrap_interval", "calibrate_checkpoint", "validate_images"]

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 200
"""Resamples of the held-back images for the score's interval (5th to 95th percentile)."""
MIN_CLASS_PIXELS = 500
"""Validation pixels a class needs to rank epochs by: a few short strokes, or one small object."""


def validate_images(
    model: nn.Module, held_back: HeldBack, config: Config, patch_size: int, device: torch.device, precision: str
) -> dict[str, Any]:
    """The full-image scores of ``model`` on the held-back images: the pooled summary (``miou``,
    ``iou``, ``dice``, ...), the bootstrap interval of the mIoU (``miou_interval``) and the number of
    images (``val_images``)."""
    names = config.data.names()
    inference, grid, large = config.inference, window_multiple(config.model), large_windows(config.model)
    predictors: dict[Any, TiledPredictor] = {}
    matrices = []
    for image, mask in zip(held_back.images, held_back.masks):
        plan = plan_window(
            mask.shape, window=inference.window, overlap=inference.overlap, batch_size=inference.batch_size,
            patch=patch_size, grid=grid, large=large,
        )  # fmt: skip
        if plan not in predictors:  # a copy of the model as it is now, BatchNorm folded
            predictors[plan] = TiledPredictor(
                model, plan.window, plan.overlap, batch_size=plan.batch_size, blend=inference.blend,
                padding=inference.padding, tta=inference.tta, precision=precision, device=device,
            )  # fmt: skip
        matrix = ConfusionMatrix(len(names))
        matrix.update(predictors[plan].labels(image), mask)
        matrices.append(matrix.matrix)
    pooled = ConfusionMatrix(len(names))
    pooled.matrix = np.sum(matrices, axis=0)
    _warn_scarce(pooled, held_back, names)
    interval = bootstrap_interval(matrices, np.random.default_rng(config.training.seed))
    return {**pooled.summary(names), "miou_interval": interval, "val_images": len(matrices)}


def bootstrap_interval(matrices: list[np.ndarray], rng: np.random.Generator) -> list[float]:
    """The 5th and 95th percentile of the pooled mIoU over :data:`BOOTSTRAP_RESAMPLES` resamples of
    the images (with replacement); one image gives ``[miou, miou]``."""
    stack = np.stack(matrices)
    scores = []
    for _ in range(BOOTSTRAP_RESAMPLES if len(matrices) > 1 else 1):
        pick = rng.integers(len(matrices), size=len(matrices)) if len(matrices) > 1 else [0]
        matrix = ConfusionMatrix(stack.shape[1])
        matrix.matrix = stack[pick].sum(axis=0)
        scores.append(matrix.mean_iou())
    return [float(np.nanpercentile(scores, 5)), float(np.nanpercentile(scores, 95))]


def _warn_scarce(pooled: ConfusionMatrix, held_back: HeldBack, names: list[str]) -> None:
    """Name, once, the classes with fewer than :data:`MIN_CLASS_PIXELS` validation pixels."""
    if held_back.warned or not runtime.is_main_process():
        return
    held_back.warned = True
    counts = pooled.matrix.sum(axis=1)
    scarce = [f"{name} ({int(count)} pixels)" for name, count in zip(names, counts) if count < MIN_CLASS_PIXELS]
    if scarce:
        log.warning(
            "validation: %s in the %d held-back image(s), too few to rank epochs by; best.pt is a guess for "
            "that class: cross-validate the recipe (unet-patches crossval -k 5) or hold back more images",
            ", ".join(scarce),
            len(held_back.masks),
        )


def calibrate_checkpoint(
    path: Path, held_back: HeldBack, config: Config, device: torch.device, precision: str
) -> dict[str, Any]:
    """Fit the temperature of the checkpoint at ``path`` on the held-back images, predicted whole as
    validation predicts them (the ``inference`` settings, the run's precision), and store it in the
    file as its ``calibration`` (:func:`~unet_patches.inference.predict.fit_calibration`); returns
    the record."""
    segmenter = Segmenter.from_checkpoint(path, device=device)
    options = {**config.inference.predictor_options(), "precision": precision, "compile": False, "device": device}
    job = PredictionJob(segmenter, [mask.shape for mask in held_back.masks], **options)

    def count(counter: Any) -> None:
        for image, mask in zip(held_back.images, held_back.masks):
            job.count(ArraySource(image), mask, counter)

    source = f"{len(held_back.masks)} held-back image(s) of {config.training.folder}"
    record = fit_calibration(job, count, source=source, seed=config.training.seed)
    state = load_checkpoint(path, device="cpu")
    state["calibration"] = record
    save_checkpoint(state, path)
    return record
