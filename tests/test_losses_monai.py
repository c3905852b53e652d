"""Parity with MONAI's losses where MONAI implements the same definition.

MONAI is only the reference here (a dev dependency); the module is skipped without it. Its options
that make the definitions match ours:

- every loss: ``to_onehot_y=True`` on a (N, 1, *spatial) target, ``softmax=True`` (focal:
  ``use_softmax=True``), ``reduction="mean"``;
- overlap losses: ``batch=True`` (we sum the soft counts over the batch, one score per class) and
  ``smooth_nr = smooth_dr = smooth`` (we add ``smooth`` to numerator and denominator).

Differences, compared only where the two agree (each test says which):

- class weights in the overlap losses: MONAI takes mean(w * loss) over the classes, we take
  sum(w * loss) / sum(w); equal when the weights of the classes averaged have mean 1;
- ``ignore_index``: MONAI masks the pixels but keeps an ignored class *index* in the mean over
  classes (it scores 1 there), we drop that class; equal for an index outside [0, K) such as 255;
- Jaccard: MONAI's ``jaccard=True`` computes (2 tp + s_nr) / (2 (tp + fp + fn) + s_dr), ours
  (tp + s) / (tp + fp + fn + s); equal with s_nr = s_dr = 2 s;
- focal: MONAI's ``"mean"`` divides by every element of the (N, K, *spatial) loss, of which only
  the target class is non-zero, so ours is K times MONAI's; its class ``weight`` multiplies the
  terms without normalising (compared through ``reduction="none"``); its ``alpha`` is not used
  (our class weights play that role); with ``include_background=False`` it drops channel 0 *before*
  the softmax, a different loss, so that case is not compared;
- MONAI has no ce_logdice: it is compared with MONAI's cross-entropy - log(1 - MONAI's Dice loss).
"""

import pytest
import torch

from unet_patches.losses import build_loss

monai_losses = pytest.importorskip("monai.losses")

# (N, K, *spatial): K = 2..4, 2D and one 3D.
SHAPES = [(2, 2, 8, 8), (3, 3, 5, 7), (1, 4, 6, 6), (2, 3, 4, 5, 3)]
TOLERANCE = {"rel": 1e-5, "abs": 1e-6}


def batch(shape, seed=0, ignored=False):
    """Random logits (N, K, *spatial) and targets (N, *spatial); ``ignored``: a few pixels set to 255."""
    g = torch.Generator().manual_seed(seed)
    n, k, *spatial = shape
    logits = torch.randn(shape, generator=g) * 2
    target = torch.randint(0, k, (n, *spatial), generator=g)
    if ignored:
        target.view(-1)[torch.randperm(target.numel(), generator=g)[: target.numel() // 5]] = 255
    return logits, target


def mean_one_weights(k, include_background, seed=0):
    """Positive class weights whose averaged classes have mean weight 1 (where MONAI and we agree)."""
    g = torch.Generator().manual_seed(seed)
    w = 0.2 + torch.rand(k, generator=g, dtype=torch.float64) * 2
    first = 0 if include_background else 1
    w[first:] /= w[first:].mean()
    return [float(x) for x in w]


def overlap_options(smooth, include_background):
    return {
        "include_background": include_background,
        "to_onehot_y": True,
        "softmax": True,
        "batch": True,
        "reduction": "mean",
        "smooth_nr": smooth,
        "smooth_dr": smooth,
    }


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
def test_dice_matches_monai(shape, include_background, smooth):
    logits, target = batch(shape, 1)
    k = shape[1]
    reference = monai_losses.DiceLoss(**overlap_options(smooth, include_background))
    loss = build_loss("dice", k, smooth=smooth, include_background=include_background)
    assert loss(logits, target).item() == pytest.approx(reference(logits, target.unsqueeze(1)).item(), **TOLERANCE)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_with_class_weights_and_ignore_index_matches_monai(shape, include_background):
    # Weights with mean 1 over the averaged classes; MONAI takes only those classes' weights.
    logits, target = batch(shape, 2, ignored=True)
    k = shape[1]
    weights = mean_one_weights(k, include_background, seed=k)
    monai_weights = weights if include_background else weights[1:]
    reference = monai_losses.DiceLoss(
        **overlap_options(1.0, include_background), weight=monai_weights, ignore_index=255
    )
    loss = build_loss("dice", k, weights, 255, include_background=include_background)
    assert loss(logits, target).item() == pytest.approx(reference(logits, target.unsqueeze(1)).item(), **TOLERANCE)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
def test_jaccard_matches_monai_with_doubled_smoothing(shape, include_background, smooth):
    logits, target = batch(shape, 3)
    k = shape[1]
    reference = monai_losses.DiceLoss(**overlap_options(2 * smooth, include_background), jaccard=True)
    loss = build_loss("jaccard", k, smooth=smooth, include_background=include_background)
    assert loss(logits, target).item() == pytest.approx(reference(logits, target.unsqueeze(1)).item(), **TOLERANCE)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("alpha, beta", [(0.3, 0.7), (0.5, 0.5), (0.8, 0.1)])
@pytest.mark.parametrize("ignored", [False, True])
def test_tversky_matches_monai(shape, include_background, alpha, beta, ignored):
    # MONAI's Tversky takes no class weights; ignore_index 255 is a sentinel, where both agree.
    logits, target = batch(shape, 4, ignored=ignored)
    k = shape[1]
    reference = monai_losses.TverskyLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        alpha=alpha,
        beta=beta,
        smooth_nr=1.0,
        smooth_dr=1.0,
        batch=True,
        reduction="mean",
        ignore_index=255 if ignored else None,
    )
    loss = build_loss(
        "tversky", k, ignore_index=255, smooth=1.0, include_background=include_background, alpha=alpha, beta=beta
    )
    assert loss(logits, target).item() == pytest.approx(reference(logits, target.unsqueeze(1)).item(), **TOLERANCE)


def monai_dice_ce(include_background, weights=None, lambda_dice=1.0, lambda_ce=1.0):
    return monai_losses.DiceCELoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        reduction="mean",
        smooth_nr=1.0,
        smooth_dr=1.0,
        weight=None if weights is None else torch.tensor(weights),
        lambda_dice=lambda_dice,
        lambda_ce=lambda_ce,
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dice_weight, ce_weight", [(1.0, 1.0), (0.3, 2.0)])
def test_dice_ce_matches_monai(shape, include_background, weighted, dice_weight, ce_weight):
    # MONAI's DiceCELoss has no ignore_index. Its weight goes to the cross-entropy as is (same as
    # ours) and to the Dice term as weight[1:] without background (mean 1 there, see above).
    logits, target = batch(shape, 5)
    k = shape[1]
    weights = mean_one_weights(k, include_background, seed=k + 1) if weighted else None
    reference = monai_dice_ce(include_background, weights, dice_weight, ce_weight)
    loss = build_loss(
        "dice_ce", k, weights, include_background=include_background, dice_weight=dice_weight, ce_weight=ce_weight
    )
    assert loss(logits, target).item() == pytest.approx(reference(logits, target.unsqueeze(1)).item(), **TOLERANCE)


def monai_focal(gamma, weights=None, reduction="mean", ignore_index=None):
    return monai_losses.FocalLoss(
        include_background=True,
        to_onehot_y=True,
        use_softmax=True,
        gamma=gamma,
        weight=weights,
        reduction=reduction,
        ignore_index=ignore_index,
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_is_k_times_monai_mean(shape, gamma):
    # MONAI's mean runs over N * K * pixels elements, only the target class's non-zero: ours is K times it.
    logits, target = batch(shape, 6)
    k = shape[1]
    reference = monai_focal(gamma)(logits, target.unsqueeze(1))
    loss = build_loss("focal", k, gamma=gamma)(logits, target)
    assert loss.item() == pytest.approx(k * reference.item(), **TOLERANCE)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("ignored", [False, True])
def test_focal_with_class_weights_and_ignore_index_matches_monai_terms(shape, gamma, ignored):
    # MONAI multiplies each term by its class weight and masks ignored pixels; reduction "none" gives
    # those terms, whose sum over the sum of the valid pixels' weights is our weighted mean.
    logits, target = batch(shape, 7, ignored=ignored)
    k = shape[1]
    weights = [0.5 + i for i in range(k)]
    terms = monai_focal(gamma, weights, "none", 255 if ignored else None)(logits, target.unsqueeze(1))
    valid = target != 255
    weight_sum = torch.tensor(weights, dtype=torch.float64)[target[valid]].sum().item()
    loss = build_loss("focal", k, weights, 255, gamma=gamma)(logits, target)
    assert loss.item() == pytest.approx(terms.double().sum().item() / weight_sum, **TOLERANCE)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_logdice_matches_monai_ce_minus_log_dice(shape, include_background, weighted):
    logits, target = batch(shape, 8)
    k = shape[1]
    weights = mean_one_weights(k, include_background, seed=k + 2) if weighted else None
    ce = monai_dice_ce(include_background, weights, lambda_dice=0.0)(logits, target.unsqueeze(1))
    dice_weights = weights if weights is None or include_background else weights[1:]
    dice = monai_losses.DiceLoss(**overlap_options(1.0, include_background), weight=dice_weights)(
        logits, target.unsqueeze(1)
    )
    expected = (ce - torch.log(1 - dice)).item()
    loss = build_loss("ce_logdice", k, weights, include_background=include_background)(logits, target)
    assert loss.item() == pytest.approx(expected, **TOLERANCE)
