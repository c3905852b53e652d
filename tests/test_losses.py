"""Losses: hand-computed values, equivalences with torch, and the registry's errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unet_patches.errors import UserError
from unet_patches.losses import LOSSES, build_loss, loss_options

NAMES = sorted(LOSSES)


def logits_from_p1(p1):
    """Two-class logits (1, 2, 2, 2) whose softmax gives class 1 the probabilities p1 (row-major)."""
    p1 = torch.tensor(p1, dtype=torch.float64).reshape(1, 2, 2)
    return torch.stack([torch.zeros_like(p1), torch.log(p1 / (1 - p1))], dim=1).float()


# The 2x2 example: class-1 probabilities 0.8 0.6 / 0.3 0.1, target 1 1 / 0 0.
# Class 1: tp = 0.8 + 0.6 = 1.4, fp = 0.3 + 0.1 = 0.4, fn = 0.2 + 0.4 = 0.6.
# Class 0: tp = 0.7 + 0.9 = 1.6, fp = 0.2 + 0.4 = 0.6, fn = 0.3 + 0.1 = 0.4.
P1 = [0.8, 0.6, 0.3, 0.1]
TARGET = torch.tensor([[[1, 1], [0, 0]]])


@pytest.mark.parametrize(
    "name, options, per_class",
    [
        ("dice", {"smooth": 0.0}, [3.2 / 4.2, 2.8 / 3.8]),
        ("dice", {"smooth": 1.0}, [4.2 / 5.2, 3.8 / 4.8]),
        ("jaccard", {"smooth": 0.0}, [1.6 / 2.6, 1.4 / 2.4]),
        ("jaccard", {"smooth": 1.0}, [2.6 / 3.6, 2.4 / 3.4]),
        # alpha weighs fp, beta weighs fn.
        ("tversky", {"smooth": 0.0}, [1.6 / (1.6 + 0.3 * 0.6 + 0.7 * 0.4), 1.4 / (1.4 + 0.3 * 0.4 + 0.7 * 0.6)]),
        ("tversky", {"smooth": 0.0, "alpha": 0.5, "beta": 0.5}, [3.2 / 4.2, 2.8 / 3.8]),
        ("tversky", {"smooth": 0.0, "alpha": 1.0, "beta": 1.0}, [1.6 / 2.6, 1.4 / 2.4]),
    ],
)
def test_overlap_losses_on_hand_computed_2x2(name, options, per_class):
    loss = build_loss(name, 2, **options)(logits_from_p1(P1), TARGET)
    expected = 1 - sum(per_class) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_dice_ignore_index_drops_the_pixel_from_the_counts():
    target = torch.tensor([[[1, 1], [0, 255]]])
    # Without the last pixel (p1 = 0.1): class 1 tp 1.4 fp 0.3 fn 0.6; class 0 tp 0.7 fp 0.6 fn 0.3.
    expected = 1 - (2.8 / 3.7 + 1.4 / 2.3) / 2
    loss = build_loss("dice", 2, ignore_index=255, smooth=0.0)(logits_from_p1(P1), target)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_dice_class_weights_weigh_the_mean_over_classes():
    expected = (1 * (1 - 3.2 / 4.2) + 3 * (1 - 2.8 / 3.8)) / 4
    loss = build_loss("dice", 2, class_weights=[1, 3], smooth=0.0)(logits_from_p1(P1), TARGET)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_dice_without_background_averages_the_other_classes():
    loss = build_loss("dice", 2, smooth=0.0, include_background=False)(logits_from_p1(P1), TARGET)
    assert loss.item() == pytest.approx(1 - 2.8 / 3.8, abs=1e-6)


def test_ce_by_hand_with_weights_and_ignore_index():
    # Pixel a: logits (0, 0), target 0 -> -log 0.5. Pixel b: p1 = 0.8, target 1 -> -log 0.8.
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(4.0)]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    a, b = math.log(2), -math.log(0.8)
    assert build_loss("ce", 2)(logits, target).item() == pytest.approx((a + b) / 2, abs=1e-6)
    weighted = build_loss("ce", 2, class_weights=[1, 3])(logits, target)
    assert weighted.item() == pytest.approx((1 * a + 3 * b) / 4, abs=1e-6)
    ignored = build_loss("ce", 2, ignore_index=255)(logits, torch.tensor([[[0, 255]]]))
    assert ignored.item() == pytest.approx(a, abs=1e-6)


def random_batch(seed=0, n=2, k=4, h=5, w=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, h, w, generator=g) * 3, torch.randint(0, k, (n, h, w), generator=g)


@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 0.0]])
@pytest.mark.parametrize("ignore_index", [None, 3, 255])
def test_ce_equals_torch_cross_entropy(weights, ignore_index):
    logits, target = random_batch()
    if ignore_index == 255:
        target[0, 0, :] = 255
    expected = F.cross_entropy(
        logits,
        target,
        weight=None if weights is None else torch.tensor(weights),
        ignore_index=-100 if ignore_index is None else ignore_index,
    )
    loss = build_loss("ce", 4, class_weights=weights, ignore_index=ignore_index)(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 0.1]])
def test_focal_with_gamma_0_equals_ce(weights):
    logits, target = random_batch(1)
    target[1, 2, :] = 255
    focal = build_loss("focal", 4, class_weights=weights, ignore_index=255, gamma=0.0)
    ce = build_loss("ce", 4, class_weights=weights, ignore_index=255)
    assert focal(logits, target).item() == pytest.approx(ce(logits, target).item(), rel=1e-6)


def test_focal_by_hand():
    # One pixel, p_target = 0.8: (1 - 0.8) ** 2 * -log 0.8.
    logits = torch.tensor([[[[0.0]], [[math.log(4.0)]]]])
    loss = build_loss("focal", 2)(logits, torch.tensor([[[1]]]))
    assert loss.item() == pytest.approx(0.2**2 * -math.log(0.8), rel=1e-5)


def test_dice_ce_is_the_sum_of_its_terms():
    logits, target = random_batch(2)
    total = build_loss("dice_ce", 4, ignore_index=0)(logits, target)
    parts = build_loss("dice", 4, ignore_index=0)(logits, target) + build_loss("ce", 4, ignore_index=0)(logits, target)
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)
    scaled = build_loss("dice_ce", 4, dice_weight=0.0, ce_weight=2.0)(logits, target)
    assert scaled.item() == pytest.approx(2 * build_loss("ce", 4)(logits, target).item(), rel=1e-6)


# ---------------------------------------------------------------- ce_logdice
# On the 2x2 example: CE = mean of -log p_target over the four pixels, and with smooth = 1
# Dice(class 0) = (3.2 + 1) / (4.2 + 1), Dice(class 1) = (2.8 + 1) / (3.8 + 1).
CE_2X2 = -(math.log(0.8) + math.log(0.6) + math.log(0.7) + math.log(0.9)) / 4


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, CE_2X2 - math.log((4.2 / 5.2 + 3.8 / 4.8) / 2)),
        ({"smooth": 0.0}, CE_2X2 - math.log((3.2 / 4.2 + 2.8 / 3.8) / 2)),
        ({"include_background": False}, CE_2X2 - math.log(3.8 / 4.8)),
        ({"dice_weight": 2.0, "ce_weight": 0.5}, 0.5 * CE_2X2 - 2 * math.log((4.2 / 5.2 + 3.8 / 4.8) / 2)),
        # Class weights: each pixel's CE term weighted by its class, and the Dice mean over classes.
        (
            {"class_weights": [1.0, 3.0]},
            -(3 * math.log(0.8) + 3 * math.log(0.6) + math.log(0.7) + math.log(0.9)) / 8
            - math.log((1 * 4.2 / 5.2 + 3 * 3.8 / 4.8) / 4),
        ),
    ],
)
def test_ce_logdice_by_hand_on_2x2(kwargs, expected):
    loss = build_loss("ce_logdice", 2, **kwargs)(logits_from_p1(P1), TARGET)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ce_logdice_ignore_index_by_hand():
    # Last pixel (p1 = 0.1) ignored: class 0 tp 0.7 fp 0.6 fn 0.3, class 1 tp 1.4 fp 0.3 fn 0.6.
    target = torch.tensor([[[1, 1], [0, 255]]])
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.7)) / 3
    expected = ce - math.log((2.4 / 3.3 + 3.8 / 4.7) / 2)
    loss = build_loss("ce_logdice", 2, ignore_index=255)(logits_from_p1(P1), target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def numpy_ce_logdice(logits, target, weights, ignore_index, smooth, include_background):
    """ce_logdice written out in float64 numpy, for any K and any spatial shape."""
    logits, target = logits.double().numpy(), target.numpy()
    k = logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, k)
    t = target.reshape(-1)
    valid = t != ignore_index
    z, t = z[valid], t[valid]
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p, onehot = np.exp(log_p), np.eye(k)[t]
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    ce = (w[t] * -log_p[np.arange(len(t)), t]).sum() / w[t].sum()
    tp = (p * onehot).sum(axis=0)
    dice = (2 * tp + smooth) / (p.sum(axis=0) + onehot.sum(axis=0) + smooth)
    keep = w * np.array([include_background] + [True] * (k - 1))
    return ce - math.log((keep * dice).sum() / keep.sum())


@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0]])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_ce_logdice_equals_numpy(weights, include_background, smooth):
    logits, target = random_batch(8, n=2, k=3, h=4, w=6)
    target[1, 0] = 255
    expected = numpy_ce_logdice(logits, target, weights, 255, smooth, include_background)
    loss = build_loss("ce_logdice", 3, weights, 255, smooth=smooth, include_background=include_background)(
        logits, target
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ce_logdice_is_ce_minus_log_of_one_minus_dice():
    logits, target = random_batch(9)
    target[0, 1] = 255
    common = {"class_weights": [1.0, 2.0, 0.5, 1.5], "ignore_index": 255}
    dice = build_loss("dice", 4, **common)(logits, target)
    ce = build_loss("ce", 4, **common)(logits, target)
    total = build_loss("ce_logdice", 4, **common)(logits, target)
    assert total.item() == pytest.approx((ce - torch.log(1 - dice)).item(), rel=1e-5)


def test_ce_logdice_gradient_is_finite_and_matches_finite_differences():
    logits, target = random_batch(10, n=1, k=3, h=3, w=3)
    logits = (logits / 3).double().requires_grad_(True)
    loss = build_loss("ce_logdice", 3, class_weights=[1.0, 2.0, 0.5])
    loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # The loss runs in float32, so central differences with a step of 1e-2 (error ~1e-4).
    h, index = 1e-2, (0, 1, 1, 2)
    up, down = logits.detach().clone(), logits.detach().clone()
    up[index] += h
    down[index] -= h
    numeric = (loss(up, target) - loss(down, target)).item() / (2 * h)
    assert logits.grad[index].item() == pytest.approx(numeric, abs=1e-3)


def test_ce_logdice_clamps_a_dice_score_of_zero():
    # smooth = 0 and every pixel confidently wrong: the softmax gives the target class exactly 0,
    # so tp = 0 for every class and the Dice score is exactly 0; the log is clamped, not -inf.
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = (200 * F.one_hot(1 - target, 2).permute(0, 3, 1, 2).float()).requires_grad_(True)
    loss = build_loss("ce_logdice", 2, smooth=0.0, dice_weight=1.0, ce_weight=0.0)(logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-6)
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------- class weights, every CE-based loss


@pytest.mark.parametrize(
    "name, options",
    [("ce", {}), ("focal", {"gamma": 0.0}), ("dice_ce", {"dice_weight": 0.0}), ("ce_logdice", {"dice_weight": 0.0})],
)
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_class_weights_reach_the_cross_entropy_of_every_ce_based_loss(name, options, ignore_index):
    # With the other term switched off, each is torch's class-weighted cross-entropy.
    logits, target = random_batch(11)
    if ignore_index is not None:
        target[1, :2] = ignore_index
    weights = [0.5, 1.0, 2.0, 0.1]
    expected = F.cross_entropy(
        logits, target, weight=torch.tensor(weights), ignore_index=-100 if ignore_index is None else ignore_index
    )
    loss = build_loss(name, 4, class_weights=weights, ignore_index=ignore_index, **options)(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unweighted = build_loss(name, 4, ignore_index=ignore_index, **options)(logits, target)
    assert abs(loss.item() - unweighted.item()) > 1e-3


def test_focal_class_weights_by_hand():
    # Pixel a: target 0, p = 0.5; pixel b: target 1, p = 0.8; weights 1 and 3.
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(4.0)]]]])
    target = torch.tensor([[[0, 1]]])
    a, b = 0.5**2 * math.log(2), 0.2**2 * -math.log(0.8)
    loss = build_loss("focal", 2, class_weights=[1, 3])(logits, target)
    assert loss.item() == pytest.approx((1 * a + 3 * b) / 4, rel=1e-5)


def test_dice_ce_with_class_weights_and_ignore_index_is_the_sum_of_its_weighted_terms():
    logits, target = random_batch(12)
    target[0, :, 0] = 255
    common = {"class_weights": [1.0, 2.0, 0.5, 1.5], "ignore_index": 255}
    total = build_loss("dice_ce", 4, **common)(logits, target)
    parts = build_loss("dice", 4, **common)(logits, target) + build_loss("ce", 4, **common)(logits, target)
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_overlap_perfect_prediction_is_0_and_wrong_one_is_1(name, smooth):
    _, target = random_batch(3, k=3, h=16, w=16)
    target[0, 0, :3] = torch.tensor([0, 1, 2])  # every class present
    perfect = 100 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    wrong = 100 * F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float()
    loss = build_loss(name, 3, smooth=smooth)
    assert loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(wrong, target).item() == pytest.approx(1.0, abs=0.02)


def test_dice_absent_class_not_predicted_scores_perfect_and_predicted_is_penalised():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # class 2 absent
    logits = 100 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    loss = build_loss("dice", 3)
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    logits[0, 2, 0, 0] = 1000  # one pixel predicted as the absent class
    # Class 2: tp 0, fp 1 -> 1 / 2. Class 1: tp 7, fn 1 -> 15 / 16. Class 0 perfect.
    expected = 1 - (1 + 15 / 16 + 1 / 2) / 3
    assert loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_all_pixels_ignored_gives_zero_not_nan(name):
    logits, _ = random_batch(4)
    target = torch.full((2, 5, 7), 255)
    logits.requires_grad_(True)
    options = {"smooth": 0.0} if "smooth" in loss_options(name) else {}
    loss = build_loss(name, 4, ignore_index=255, **options)(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow(name):
    logits, target = random_batch(5)
    logits.requires_grad_(True)
    loss = build_loss(name, 4, class_weights=[1.0, 2.0, 0.5, 1.0], ignore_index=255)(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_computes_in_float32(name):
    logits, target = random_batch(6)
    loss = build_loss(name, 4)
    reference = loss(logits.bfloat16().float(), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits.bfloat16(), target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)


def test_registry_names_and_options():
    assert set(LOSSES) == {"ce", "dice", "dice_ce", "focal", "tversky", "jaccard", "ce_logdice"}
    assert loss_options("ce") == {}
    assert loss_options("tversky") == {"smooth": 1.0, "include_background": True, "alpha": 0.3, "beta": 0.7}
    assert loss_options("focal") == {"gamma": 2.0}
    both = {"smooth": 1.0, "include_background": True, "dice_weight": 1.0, "ce_weight": 1.0}
    assert loss_options("dice_ce") == loss_options("ce_logdice") == both
    assert isinstance(build_loss(" Dice-CE ", 3), LOSSES["dice_ce"])
    for name in NAMES:
        assert LOSSES[name].__doc__.strip()


def test_losses_is_a_registry_naming_the_setting():
    assert LOSSES.names == ("ce", "dice", "dice_ce", "focal", "tversky", "jaccard", "ce_logdice")
    with pytest.raises(UserError, match=r"^training\.loss = 'dise': unknown loss \(did you mean 'dice'\?\)"):
        build_loss("Dise", 3)


def test_unknown_name_lists_valid_names_and_closest():
    with pytest.raises(UserError) as info:
        build_loss("dise", 3)
    message = str(info.value)
    assert "'dise'" in message and "did you mean 'dice'" in message
    assert all(name in message for name in NAMES)
    assert "\n" not in message


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_classes": 1}, "num_classes = 1"),
        ({"class_weights": [1.0, 2.0]}, "class_weights"),
        ({"class_weights": [1.0, -1.0, 1.0]}, "class_weights"),
        ({"class_weights": [0.0, 0.0, 0.0]}, "class_weights"),
        ({"class_weights": [1.0, float("nan"), 1.0]}, "class_weights"),
        ({"ignore_index": "255"}, "ignore_index"),
        ({"name": "ce", "smooth": 1.0}, "smooth"),
        ({"name": "focal", "gamma": -1.0}, "gamma = -1.0"),
        ({"smooth": -1.0}, "smooth = -1.0"),
        ({"name": "tversky", "alpha": -0.1}, "alpha = -0.1"),
        ({"include_background": False, "class_weights": [1.0, 0.0, 0.0]}, "no class left"),
    ],
)
def test_bad_arguments_raise_one_line_user_error(kwargs, fragment):
    kwargs = {"name": "dice", "num_classes": 3, **kwargs}
    with pytest.raises(UserError, match=None) as info:
        build_loss(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_shape_and_class_count_mismatches_raise():
    loss = build_loss("dice_ce", 3)
    with pytest.raises(ValueError, match="expected 3 classes"):
        loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_programming_errors_are_value_errors_not_user_errors(name):
    # Wrong logits/target shapes come from the code, not the user: they keep their traceback.
    loss = build_loss(name, 3)
    for logits, target in [
        (torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long)),  # shape mismatch
        (torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)),  # class count
    ]:
        with pytest.raises(ValueError) as info:
            loss(logits, target)
        assert not isinstance(info.value, UserError)
