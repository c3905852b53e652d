"""Segmentation losses, picked by name.

- `.functional`: a small core of pure functions that does the work: flat
  inputs, per-pixel cross-entropy and focal terms, soft counts per class and the
  Dice / Jaccard / Tversky scores made from them;
- `.modules`: the losses, `nn.Module` subclasses each holding its settings and
  chaining those functions; the overlap losses differ only in their `score`
  step, and ``dice_ce`` / ``ce_logdice`` combine cross-entropy with soft Dice;
- here: the `LOSSES` registry, `build_loss` and `loss_options`. Every name of
  the two submodules is importable from here too.

Shared conventions of every loss here:

- input: logits (N, K, *spatial) in any float dtype, targets int64 (N, *spatial);
  the loss is computed in float32 (also under bfloat16 autocast) and returned
  as a float32 scalar;
- ``ignore_index`` pixels count nowhere: not in cross-entropy, focal, or the
  soft counts of the overlap losses; if ``ignore_index`` is itself a class
  index that class also drops out of the overlap losses' mean over classes;
- ``class_weights`` (K,) weigh each pixel by its target class in cross-entropy
  and focal, and in the cross-entropy term of ``dice_ce`` and ``ce_logdice``
  (normalised by the summed weight, like `torch.nn.functional.cross_entropy`),
  and weigh each class in the overlap scores' mean over classes;
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

from unet_patches.errors import UserError
from unet_patches.registry import Registry
from unet_patches.validate import is_int, require_int

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
from .modules import (
    CELogDiceLoss,
    CrossEntropyLoss,
    DiceCELoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    OverlapLoss,
    SegmentationLoss,
    TverskyLoss,
)

__all__ = [
    "LOSSES",
    "CELogDiceLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "OverlapLoss",
    "SegmentationLoss",
    "TverskyLoss",
    "build_loss",
    "class_mean",
    "dice_score",
    "flatten_inputs",
    "jaccard_score",
    "loss_options",
    "pixel_nll",
    "safe_log",
    "soft_counts",
    "tversky_score",
    "weighted_pixel_mean",
]

LOSSES: Registry[Callable[..., SegmentationLoss]] = Registry(
    "loss",
    {
        "ce": CrossEntropyLoss,
        "dice": DiceLoss,
        "dice_ce": DiceCELoss,
        "focal": FocalLoss,
        "tversky": TverskyLoss,
        "jaccard": JaccardLoss,
        "ce_logdice": CELogDiceLoss,
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
            losses, ``gamma`` for focal, ``alpha``/``beta`` for tversky,
            ``dice_weight``/``ce_weight`` for dice_ce and ce_logdice
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
