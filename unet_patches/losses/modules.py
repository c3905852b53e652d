"""The loss modules: each holds its settings (K, class weights, ignore index, its own options) and
chains the pure functions of `.functional`; the overlap losses differ only in their `score` step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unet_patches.errors import UserError
from unet_patches.validate import require_number

from .functional import (
    class_mean,
    dice_score,
    flatten_inputs,
    jaccard_score,
    pixel_nll,
    safe_log,
    soft_counts,
    tversky_score,
    weighted_pixel_mean,
)


class SegmentationLoss(nn.Module):
    """Base of the losses: holds K, the class weights and the ignore index.

    ``forward(logits (N, K, *spatial), target (N, *spatial), weights (N, *spatial) or None) -> float32
    scalar``: ``weights`` are pixel weights (:mod:`unet_patches.data.pixel_weights`), each pixel's term
    multiplied by its weight (in the overlap losses, its share of the soft counts). It raises
    ``ValueError`` when the logits do not have ``num_classes`` channels or the target's or weights'
    shape does not match (a programming error: build the loss with the model's ``num_classes``).
    """

    def __init__(
        self, num_classes: int, class_weights: Sequence[float] | None = None, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32)
        # A non-persistent buffer follows the module across .to(device) but
        # stays out of state dicts.
        self.register_buffer("class_weights", weights, persistent=False)

    def _check_classes(self, logits: Tensor) -> None:
        if logits.ndim < 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)}; expected {self.num_classes} classes "
                "on dim 1, build the loss with the model's num_classes"
            )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"


class CrossEntropyLoss(SegmentationLoss):
    """Cross-entropy, optionally class-weighted."""

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check_classes(logits)
        logits, target, counts = flatten_inputs(logits, target, self.ignore_index, weights)
        return weighted_pixel_mean(pixel_nll(logits, target), target, counts, self.class_weights)


class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_target) ** gamma.

    The class weights play the role of the paper's alpha; gamma = 0 gives
    cross-entropy exactly.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        gamma: float = 2.0,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        self.gamma = require_number("gamma", gamma, 0)

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check_classes(logits)
        logits, target, counts = flatten_inputs(logits, target, self.ignore_index, weights)
        nll = pixel_nll(logits, target)
        # The clamp keeps the gradient finite for gamma < 1 where p_target == 1.
        focal = (1 - torch.exp(-nll)).clamp_min(torch.finfo(nll.dtype).tiny) ** self.gamma * nll
        return weighted_pixel_mean(focal, target, counts, self.class_weights)


class OverlapLoss(SegmentationLoss):
    """1 - a soft overlap score on softmax probabilities, averaged over classes.

    Subclasses override `score`. Counts are summed over the whole batch, one
    score per class. ``smooth`` is added to numerator and denominator.

    Absent classes: a class absent from the target and not predicted has
    tp = fp = fn ~ 0, so it scores ~1 (loss ~0) with the default smooth = 1:
    nothing was there and nothing was predicted, which is right. A class absent
    from the target but predicted scores smooth / (fp + smooth), close to 0, so
    false alarms are penalised. With smooth = 0, an exactly empty class scores 1
    instead of 0/0.

    Args:
        smooth: >= 0, default 1.
        include_background: keep class 0 in the mean over classes (default True).
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        smooth: float = 1.0,
        include_background: bool = True,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        self.smooth = require_number("smooth", smooth, 0)
        self.include_background = bool(include_background)
        keep = torch.ones(num_classes)
        if not include_background:
            keep[0] = 0
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            keep[ignore_index] = 0
        if self.class_weights is not None:
            keep = keep * self.class_weights
        if keep.sum() <= 0:
            raise UserError(
                "no class left to average over: background excluded, ignore_index and zero class "
                "weights remove the rest; include the background or give a class a positive weight"
            )
        self.register_buffer("class_mean_weights", keep, persistent=False)

    def score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        """Per-class score in [0, 1] from (K,) soft counts; 1 is perfect."""
        raise NotImplementedError

    def mean_score(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """The score averaged over the classes (weighted, background and ignored class left out as set)."""
        self._check_classes(logits)
        logits, target, counts = flatten_inputs(logits, target, self.ignore_index, weights)
        tp, fp, fn = soft_counts(logits.softmax(dim=1), target, counts)
        return class_mean(self.score(tp, fp, fn), self.class_mean_weights)

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        return 1 - self.mean_score(logits, target, weights)


class DiceLoss(OverlapLoss):
    """Soft multiclass Dice loss: 1 - mean over classes of (2 tp + s) / (2 tp + fp + fn + s)."""

    def score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return dice_score(tp, fp, fn, self.smooth)


class JaccardLoss(OverlapLoss):
    """Soft Jaccard (IoU) loss: 1 - mean over classes of (tp + s) / (tp + fp + fn + s)."""

    def score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return jaccard_score(tp, fp, fn, self.smooth)


class TverskyLoss(OverlapLoss):
    """Tversky loss (Salehi et al., 2017): alpha weighs false positives, beta false negatives.

    Defaults alpha = 0.3, beta = 0.7 favour recall, as in the paper; 0.5 / 0.5 is Dice.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        smooth: float = 1.0,
        include_background: bool = True,
        alpha: float = 0.3,
        beta: float = 0.7,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index, smooth, include_background)
        self.alpha = require_number("alpha", alpha, 0)
        self.beta = require_number("beta", beta, 0)
        if self.alpha + self.beta == 0:
            raise UserError(
                f"alpha = {alpha!r}, beta = {beta!r}: expected non-negative numbers, not both 0, "
                "such as alpha = 0.3, beta = 0.7"
            )

    def score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return tversky_score(tp, fp, fn, self.smooth, self.alpha, self.beta)


class _DiceAndCE(SegmentationLoss):
    """Base of the losses made of a soft Dice term and a cross-entropy term.

    Class weights and the ignore index apply to both terms; ``smooth`` and ``include_background``
    to the Dice term only (cross-entropy always counts every class), as in MONAI's ``DiceCELoss``.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        smooth: float = 1.0,
        include_background: bool = True,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        self.dice_weight = require_number("dice_weight", dice_weight, 0)
        self.ce_weight = require_number("ce_weight", ce_weight, 0)
        self.dice = DiceLoss(num_classes, class_weights, ignore_index, smooth, include_background)
        self.ce = CrossEntropyLoss(num_classes, class_weights, ignore_index)


class DiceCELoss(_DiceAndCE):
    """dice_weight * Dice + ce_weight * cross-entropy (nnU-Net's default); both 1 by default.

    Class weights and the ignore index apply to both terms.
    """

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        dice, ce = self.dice(logits, target, weights), self.ce(logits, target, weights)
        return self.dice_weight * dice + self.ce_weight * ce


class CELogDiceLoss(_DiceAndCE):
    """Cross-entropy - log(soft Dice), smoothing 1: the lung X-ray write-up's "BCE + log(Dice)", multiclass.

    ``ce_weight * CE - dice_weight * log(mean soft Dice score)``, both weights 1 by default. The
    soft Dice score is `DiceLoss`'s (batch counts, class weights, ignore index and
    ``include_background`` the same), averaged over the classes before the log. The smoothing keeps
    the score above 0; a score of exactly 0 (smooth = 0) is clamped, giving about 87 instead of inf.
    Near a perfect score -log(Dice) ~ 1 - Dice; far from it the log pushes harder than Dice.
    """

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        dice, ce = self.dice.mean_score(logits, target, weights), self.ce(logits, target, weights)
        return self.ce_weight * ce - self.dice_weight * safe_log(dice)
