"""Segmentation losses, picked by name.

A small core of pure functions does the work: `flatten_inputs` turns logits
and targets into float32 (N, K, P) logits, (N, P) targets and a (N, P) mask of
the pixels that count; `pixel_nll` and `weighted_pixel_mean` give cross-entropy
and focal loss; `soft_counts` gives soft true/false positives and false
negatives per class, which `dice_score`, `jaccard_score` and `tversky_score`
turn into a per-class score. Each loss module holds its settings and chains
these; the overlap losses differ only in their `score` step.

Shared conventions of every loss here:

- input: logits (N, K, *spatial) in any float dtype, targets int64 (N, *spatial);
  the loss is computed in float32 (also under bfloat16 autocast) and returned
  as a float32 scalar;
- ``ignore_index`` pixels count nowhere: not in cross-entropy, focal, or the
  soft counts of the overlap losses; if ``ignore_index`` is itself a class
  index that class also drops out of the overlap losses' mean over classes;
- ``class_weights`` (K,) weigh each pixel by its target class in cross-entropy
  and focal (normalised by the summed weight, like `torch.nn.functional.cross_entropy`),
  and weigh each class in the overlap losses' mean over classes;
- a batch in which every pixel is ignored gives a loss of 0, not NaN.

Targets must hold values in [0, K) or ``ignore_index``; they are not checked
here, because that would force a device synchronisation on every step (the
datasets check the masks once when they are built).

Errors: loss names and options come from the user's settings and raise
`UserError`; logits and targets of the wrong shape or class count are a
programming error and raise plain `ValueError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unet_patches.errors import UserError
from unet_patches.registry import Registry
from unet_patches.validate import is_int, require_int, require_number

# ------------------------------------------------------------ pure functions


def flatten_inputs(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Bring logits and targets to the flat layout the other functions use.

    Args:
        logits: (N, K, *spatial), any float dtype.
        target: (N, *spatial) integer class indices.
        ignore_index: target value whose pixels count nowhere, or None.

    Returns:
        logits float32 (N, K, P), target int64 (N, P) with ignored pixels set
        to 0 (so it is a valid index), valid bool (N, P).

    Raises:
        ValueError: the shapes do not match (a programming error, not bad user input).
    """
    if logits.ndim < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} and target of shape {tuple(target.shape)}; "
            "expected logits (N, K, H, W) and target (N, H, W)"
        )
    n, k = logits.shape[:2]
    logits = logits.float().reshape(n, k, -1)
    target = target.long().reshape(n, -1)
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
        target = torch.where(valid, target, torch.zeros_like(target))
    return logits, target, valid


def pixel_nll(logits: Tensor, target: Tensor) -> Tensor:
    """-log softmax(logits)[target] per pixel: logits (N, K, P), target (N, P) -> (N, P)."""
    return -F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


def weighted_pixel_mean(values: Tensor, target: Tensor, valid: Tensor, class_weights: Tensor | None) -> Tensor:
    """Mean of per-pixel ``values`` (N, P) over valid pixels, each weighted by its class.

    sum(w[target] * values) / sum(w[target]) over valid pixels, the reduction of
    `torch.nn.functional.cross_entropy`; 0 when no pixel carries weight.
    """
    weight = valid.float()
    if class_weights is not None:
        weight = weight * class_weights[target]
    # clamp rather than branch: no device synchronisation, and 0 / tiny = 0.
    return (weight * values).sum() / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)


def soft_counts(probs: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives, false positives and false negatives per class.

    Summed over the batch and all valid pixels ("batch" statistics: one score
    per class for the whole batch, stable when a patch misses a class).

    Args:
        probs: (N, K, P) class probabilities.
        target: (N, P) class indices.
        valid: (N, P) bool, pixels that count.

    Returns:
        tp, fp, fn, each float32 (K,).
    """
    k = probs.shape[1]
    mask = valid.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target, k).permute(0, 2, 1).to(probs.dtype) * mask
    probs = probs * mask
    tp = (probs * onehot).sum(dim=(0, 2))
    fp = probs.sum(dim=(0, 2)) - tp
    fn = onehot.sum(dim=(0, 2)) - tp
    return tp, fp, fn


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, and 1 where the denominator is 0 (nothing to get wrong)."""
    safe = denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
    return torch.where(denominator > 0, numerator / safe, torch.ones_like(numerator))


def dice_score(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float) -> Tensor:
    """Soft Dice per class: (2 tp + s) / (2 tp + fp + fn + s)."""
    return _ratio(2 * tp + smooth, 2 * tp + fp + fn + smooth)


def jaccard_score(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float) -> Tensor:
    """Soft Jaccard (IoU) per class: (tp + s) / (tp + fp + fn + s)."""
    return _ratio(tp + smooth, tp + fp + fn + smooth)


def tversky_score(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float, alpha: float, beta: float) -> Tensor:
    """Tversky index per class: (tp + s) / (tp + alpha fp + beta fn + s).

    alpha = beta = 0.5 is Dice, alpha = beta = 1 is Jaccard; beta > alpha
    penalises missed pixels more than false alarms.
    """
    return _ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth)


def class_mean(per_class: Tensor, class_weights: Tensor) -> Tensor:
    """Weighted mean of a (K,) tensor: sum(w * x) / sum(w)."""
    return (class_weights * per_class).sum() / class_weights.sum()


# ------------------------------------------------------------------- modules


class SegmentationLoss(nn.Module):
    """Base of the losses: holds K, the class weights and the ignore index.

    ``forward(logits (N, K, *spatial), target (N, *spatial)) -> float32 scalar``; it raises
    ``ValueError`` when the logits do not have ``num_classes`` channels or the target's shape does
    not match (a programming error: build the loss with the model's ``num_classes``).
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

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        self._check_classes(logits)
        logits, target, valid = flatten_inputs(logits, target, self.ignore_index)
        return weighted_pixel_mean(pixel_nll(logits, target), target, valid, self.class_weights)


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

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        self._check_classes(logits)
        logits, target, valid = flatten_inputs(logits, target, self.ignore_index)
        nll = pixel_nll(logits, target)
        # The clamp keeps the gradient finite for gamma < 1 where p_target == 1.
        focal = (1 - torch.exp(-nll)).clamp_min(torch.finfo(nll.dtype).tiny) ** self.gamma * nll
        return weighted_pixel_mean(focal, target, valid, self.class_weights)


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

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        self._check_classes(logits)
        logits, target, valid = flatten_inputs(logits, target, self.ignore_index)
        tp, fp, fn = soft_counts(logits.softmax(dim=1), target, valid)
        return class_mean(1 - self.score(tp, fp, fn), self.class_mean_weights)


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


class DiceCELoss(SegmentationLoss):
    """dice_weight * Dice + ce_weight * cross-entropy (nnU-Net's default); both 1 by default.

    Class weights and the ignore index apply to both terms.
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

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        dice, ce = self.dice(logits, target), self.ce(logits, target)
        return self.dice_weight * dice + self.ce_weight * ce


# ------------------------------------------------------------------ registry

LOSSES: Registry[Callable[..., SegmentationLoss]] = Registry(
    "loss",
    {
        "ce": CrossEntropyLoss,
        "dice": DiceLoss,
        "dice_ce": DiceCELoss,
        "focal": FocalLoss,
        "tversky": TverskyLoss,
        "jaccard": JaccardLoss,
    },
)
"""Loss name -> constructor. The first docstring line of each says what it is."""

_COMMON = ("num_classes", "class_weights", "ignore_index")


def loss_options(name: str) -> dict[str, object]:
    """The extra options a loss accepts, with their defaults (for help text)."""
    parameters = inspect.signature(LOSSES[name]).parameters
    return {key: p.default for key, p in parameters.items() if key not in _COMMON}


def build_loss(
    name: str,
    num_classes: int,
    class_weights: Sequence[float] | None = None,
    ignore_index: int | None = None,
    **options: object,
) -> SegmentationLoss:
    """Build a loss by name (see `LOSSES`).

    Args:
        name: one of ``LOSSES``; case and '-' vs '_' do not matter.
        num_classes: K >= 2, background included.
        class_weights: K non-negative numbers, not all 0 (for example
            `class_weights.median_frequency_weights`), or None.
        ignore_index: target value to leave out, or None.
        **options: that loss's own settings, e.g. ``smooth`` for the overlap
            losses, ``gamma`` for focal, ``alpha``/``beta`` for tversky
            (see `loss_options`).

    Returns:
        An `nn.Module` mapping logits (N, K, H, W) and int64 targets (N, H, W)
        to a float32 scalar.

    Raises:
        UserError: an unknown name (listing the valid ones and the closest),
            an option that loss does not take, or a value out of range.
    """
    key = str(name).strip().lower().replace("-", "_")
    constructor = LOSSES.lookup(key, "training.loss")
    num_classes = require_int("num_classes", num_classes, 2)  # background counts as a class
    if class_weights is not None:
        weights = [float(w) for w in class_weights]
        if (
            len(weights) != num_classes
            or any(not w >= 0 or w == float("inf") for w in weights)
            or not any(w > 0 for w in weights)
        ):
            raise UserError(
                f"class_weights = {weights}: expected {num_classes} finite numbers >= 0, not all 0, one per class"
            )
        class_weights = weights
    if ignore_index is not None and not is_int(ignore_index):
        raise UserError(f"ignore_index = {ignore_index!r}: expected an integer such as 255, or None")
    accepted = loss_options(key)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(
            f"loss {key!r} does not take option(s) {', '.join(unknown)}; expected any of: "
            f"{', '.join(accepted) or 'none'}"
        )
    ignore_index = None if ignore_index is None else int(ignore_index)
    return constructor(num_classes, class_weights, ignore_index, **options)
