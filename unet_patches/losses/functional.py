"""The pure functions the losses chain: flat inputs, per-pixel terms, soft counts, overlap scores.

`flatten_inputs` turns logits and targets into float32 (N, K, P) logits, (N, P) targets and a
(N, P) mask of the pixels that count; `pixel_nll` and `weighted_pixel_mean` give cross-entropy and
focal loss; `soft_counts` gives soft true/false positives and false negatives per class, which
`dice_score`, `jaccard_score` and `tversky_score` turn into a per-class score; `class_mean` averages
a per-class tensor and `safe_log` takes the log of a score that may come out as 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def flatten_inputs(
    logits: Tensor, target: Tensor, ignore_index: int | None, weights: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Bring logits and targets to the flat layout the other functions use.

    Args:
        logits: (N, K, *spatial), any float dtype.
        target: (N, *spatial) integer class indices.
        ignore_index: target value whose pixels count nowhere, or None.
        weights: (N, *spatial) pixel weights (:mod:`unet_patches.data.pixel_weights`), or None (all 1).

    Returns:
        logits float32 (N, K, P), target int64 (N, P) with ignored pixels set to 0 (so it is a
        valid index), and how much each pixel counts, float32 (N, P): its weight, 0 if ignored.

    Raises:
        ValueError: the shapes do not match (a programming error, not bad user input).
    """
    if logits.ndim < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} and target of shape {tuple(target.shape)}; "
            "expected logits (N, K, H, W) and target (N, H, W)"
        )
    if weights is not None and weights.shape != target.shape:
        raise ValueError(f"pixel weights of shape {tuple(weights.shape)}; expected the target's {tuple(target.shape)}")
    n, k = logits.shape[:2]
    logits = logits.float().reshape(n, k, -1)
    target = target.long().reshape(n, -1)
    counts = torch.ones(target.shape, dtype=torch.float32, device=target.device)
    if weights is not None:
        counts = weights.float().reshape(n, -1)
    if ignore_index is not None:
        valid = target != ignore_index
        counts = counts * valid
        target = torch.where(valid, target, torch.zeros_like(target))
    return logits, target, counts


def pixel_nll(logits: Tensor, target: Tensor) -> Tensor:
    """-log softmax(logits)[target] per pixel: logits (N, K, P), target (N, P) -> (N, P)."""
    return -F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


def weighted_pixel_mean(values: Tensor, target: Tensor, counts: Tensor, class_weights: Tensor | None) -> Tensor:
    """Mean of per-pixel ``values`` (N, P), each pixel weighted by how much it counts (``counts``: its
    pixel weight, 0 if ignored) and by its class.

    sum(c * w[target] * values) / sum(c * w[target]), the reduction of
    `torch.nn.functional.cross_entropy`; 0 when no pixel carries weight.
    """
    weight = counts.float()
    if class_weights is not None:
        weight = weight * class_weights[target]
    # clamp rather than branch: no device synchronisation, and 0 / tiny = 0.
    return (weight * values).sum() / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)


def soft_counts(probs: Tensor, target: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives, false positives and false negatives per class.

    Summed over the batch and all pixels, each by how much it counts ("batch" statistics: one score
    per class for the whole batch, stable when a patch misses a class).

    Args:
        probs: (N, K, P) class probabilities.
        target: (N, P) class indices.
        counts: (N, P) how much each pixel counts: its pixel weight, 0 if ignored (bool works too).

    Returns:
        tp, fp, fn, each float32 (K,).
    """
    k = probs.shape[1]
    weight = counts.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(target, k).permute(0, 2, 1).to(probs.dtype)
    weighted = probs * weight  # each pixel counted once, by its weight
    tp = (weighted * onehot).sum(dim=(0, 2))
    fp = weighted.sum(dim=(0, 2)) - tp
    fn = (onehot * weight).sum(dim=(0, 2)) - tp
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


def safe_log(x: Tensor) -> Tensor:
    """log(x) for x >= 0, with x clamped to the smallest normal float32 so that 0 gives -87, not -inf."""
    return torch.log(x.clamp_min(torch.finfo(torch.float32).tiny))
