"""Segmentation metrics from one exact confusion matrix.

Scores are computed once from counts accumulated over a whole data set, never
averaged over batches. A class that appears neither in the truth nor in the
prediction has no defined IoU or Dice: it is reported as NaN and left out of the
means (the original system skipped such classes the same way).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ConfusionMatrix:
    """Counts of (true class, predicted class) pairs, int64 NumPy.

    ``matrix[t, p]`` is the number of pixels of true class ``t`` predicted as ``p``.
    Pixels whose target equals ``ignore_index`` are not counted. Batches may be NumPy arrays or torch
    tensors; tensors are counted where they are (a GPU batch sends only its ``K x K`` counts back).
    ``device`` is where :meth:`all_reduce` sums (the process group's device: CUDA under nccl).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, device: Any = "cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes = {num_classes}: expected >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = device
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: Any, target: Any) -> None:
        """Add a batch. ``prediction`` and ``target`` are class indices of the same shape."""
        if hasattr(prediction, "bincount") or hasattr(target, "bincount"):  # torch tensors
            import torch

            device = prediction.device if hasattr(prediction, "device") else target.device
            prediction = torch.as_tensor(prediction, device=device).reshape(-1).long()
            target = torch.as_tensor(target, device=device).reshape(-1).long()
            bincount = torch.bincount
        else:
            prediction = np.asarray(prediction).reshape(-1).astype(np.int64)
            target = np.asarray(target).reshape(-1).astype(np.int64)
            bincount = np.bincount
        if prediction.shape != target.shape:
            raise ValueError(f"prediction has {prediction.shape[0]} pixels but target has {target.shape[0]}")
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        k = self.num_classes
        index = target[keep] * k + prediction[keep].clip(0, k - 1)
        counts = bincount(index, minlength=k * k)
        self.matrix += np.asarray(counts.cpu() if hasattr(counts, "cpu") else counts).reshape(k, k)

    def reset(self) -> None:
        self.matrix[:] = 0

    def all_reduce(self) -> None:
        """Sum the counts over all processes of a torch.distributed job (exact)."""
        import sys

        torch = sys.modules.get("torch")  # no torch loaded: no process group either
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = torch.from_numpy(self.matrix).to(self.device)
            torch.distributed.all_reduce(counts)
            self.matrix = counts.cpu().numpy()

    def iou(self) -> np.ndarray:
        """Per-class intersection over union, NaN for classes absent from truth and prediction."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def dice(self) -> np.ndarray:
        """Per-class Dice (F1), NaN for classes absent from truth and prediction."""
        m = self.matrix.astype(np.float64)
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
        total = int(self.matrix.sum())
        return int(np.trace(self.matrix)) / total if total else float("nan")

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
