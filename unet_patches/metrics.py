"""Segmentation metrics from one exact confusion matrix.

Scores are computed once from counts accumulated over a whole data set, never
averaged over batches. A class that appears neither in the truth nor in the
prediction has no defined IoU or Dice: it is reported as NaN and left out of the
means (the original system skipped such classes the same way).
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Counts of (true class, predicted class) pairs.

    ``matrix[t, p]`` is the number of pixels of true class ``t`` predicted as ``p``.
    Pixels whose target equals ``ignore_index`` are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, device: torch.device | str = "cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes = {num_classes}: expected >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch. ``prediction`` and ``target`` are class indices of the same shape."""
        prediction = torch.as_tensor(prediction, device=self.matrix.device).reshape(-1).long()
        target = torch.as_tensor(target, device=self.matrix.device).reshape(-1).long()
        if prediction.shape != target.shape:
            raise ValueError(f"prediction has {prediction.numel()} pixels but target has {target.numel()}")
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        k = self.num_classes
        index = target[keep] * k + prediction[keep].clamp(0, k - 1)
        self.matrix += torch.bincount(index, minlength=k * k).reshape(k, k)

    def reset(self) -> None:
        self.matrix.zero_()

    def all_reduce(self) -> None:
        """Sum the counts over all processes of a torch.distributed job (exact)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def iou(self) -> np.ndarray:
        """Per-class intersection over union, NaN for classes absent from truth and prediction."""
        m = self.matrix.double().cpu().numpy()
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def dice(self) -> np.ndarray:
        """Per-class Dice (F1), NaN for classes absent from truth and prediction."""
        m = self.matrix.double().cpu().numpy()
        tp = np.diag(m)
        total = m.sum(0) + m.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, 2 * tp / total, np.nan)

    def mean_iou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def mean_dice(self) -> float:
        dice = self.dice()
        return float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan")

    def pixel_accuracy(self) -> float:
        m = self.matrix.double()
        total = float(m.sum())
        return float(m.diag().sum()) / total if total else float("nan")

    def summary(self, class_names: list[str] | None = None) -> dict:
        """Scores as plain Python values (NaN becomes None), ready for JSON."""
        names = class_names or [str(c) for c in range(self.num_classes)]

        def clean(values: np.ndarray) -> dict[str, float | None]:
            return {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, values)}

        return {
            "miou": self.mean_iou(),
            "mean_dice": self.mean_dice(),
            "pixel_accuracy": self.pixel_accuracy(),
            "iou": clean(self.iou()),
            "dice": clean(self.dice()),
        }
