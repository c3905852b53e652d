"""What rank 0 records about a training run: TensorBoard scalars, the input | prediction | truth
panel of the first validation batch, and one log line per epoch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_patches.data.imageio import PALETTE

__all__ = ["RunLog", "image_panel"]

log = logging.getLogger(__name__)


def image_panel(images: torch.Tensor, predictions: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Rows of input | prediction | truth as one (H, W, 3) uint8 picture.

    ``images`` float (N, C, h, w) in [0, 1] (3 channels shown as RGB, others averaged to gray);
    ``predictions`` and ``masks`` integer (N, h, w) class indices.
    """
    rows = []
    for image, prediction, mask in zip(images, predictions, masks):
        if image.shape[0] == 3:
            picture = image.permute(1, 2, 0).clamp(0, 1).numpy()
        else:
            picture = np.repeat(image.mean(0).clamp(0, 1).numpy()[..., None], 3, axis=2)
        picture = (picture * 255).astype(np.uint8)
        rows.append(np.concatenate([picture, PALETTE[prediction.numpy()], PALETTE[mask.numpy()]], axis=1))
    return np.concatenate(rows, axis=0)


class RunLog:
    """TensorBoard logs under ``log_dir`` and the epoch lines on the ``unet_patches`` logger."""

    def __init__(self, log_dir: str | Path, images_every: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.images_every = images_every

    def epoch(self, record: dict[str, Any], first_batch: tuple | None, improved: bool) -> None:
        """Record one epoch: ``record`` as kept in the checkpoint's history; ``first_batch`` is
        ``(images, predictions, masks)`` of the first validation batch, or None."""
        epoch, writer = record["epoch"], self.writer
        writer.add_scalar("loss/train", record["train_loss"], epoch)
        writer.add_scalar("lr", record["lr"], epoch)
        if "miou" in record:
            writer.add_scalar("loss/val", record["val_loss"], epoch)
            writer.add_scalar("miou/val", record["miou"], epoch)
            for bound, value in zip(("low", "high"), record.get("miou_interval", ())):
                writer.add_scalar(f"miou/val_{bound}", value, epoch)
            for metric in ("iou", "dice"):
                for name, value in record[metric].items():
                    if value is not None:
                        writer.add_scalar(f"{metric}/{name}", value, epoch)
        if first_batch is not None and self.images_every and epoch % self.images_every == 0:
            writer.add_image("val/input_prediction_truth", image_panel(*first_batch), epoch, dataformats="HWC")
        writer.flush()
        miou, validation = record.get("miou"), ""
        if miou is not None:
            validation = f", val loss {record['val_loss']:.4f}, val mIoU {miou:.4f}"
        if "miou_interval" in record:  # whole held-back images, with the bootstrap interval over them
            low, high = record["miou_interval"]
            validation += f" ({low:.4f}-{high:.4f} over {record['val_images']} whole images)"
        log.info(
            "epoch %d: train loss %.4f%s, lr %.2g, %.0f s%s",
            epoch,
            record["train_loss"],
            validation,
            record["lr"],
            record["seconds"],
            " (best)" if improved else "",
        )

    def calibration(self, which: str, record: dict[str, Any], epoch: int) -> None:
        """The temperature fitted for checkpoint ``which`` (``best`` or ``last``) at the end of the run
        and its figures before and after, as TensorBoard scalars (``calibration/<which>_ece_before``,
        ...) and one log line."""
        self.writer.add_scalar(f"calibration/{which}_temperature", record["temperature"], epoch)
        for stage in ("before", "after"):
            for metric, value in record[stage].items():
                self.writer.add_scalar(f"calibration/{which}_{metric}_{stage}", value, epoch)
        self.writer.flush()
        before, after = record["before"], record["after"]
        log.info(
            "calibration of %s.pt: temperature %.3f on %d held-back pixels: ECE %.4f -> %.4f, NLL %.4f -> %.4f, "
            "Brier %.4f -> %.4f",
            which,
            record["temperature"],
            record["pixels"],
            before["ece"],
            after["ece"],
            before["nll"],
            after["nll"],
            before["brier"],
            after["brier"],
        )

    def close(self) -> None:
        self.writer.close()
