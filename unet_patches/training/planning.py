"""A training recipe planned for the data and the minutes: ``unet-patches plan`` and ``train --plan``.

nnU-Net plans by GPU memory; this plans by the user's minutes on the user's machine. From the data's
fingerprint (:mod:`unet_patches.data.fingerprint`) and training steps timed here, it chooses:

- the **patch**: three times the larger objects (90th percentile of their diameter), at least 96
  (the size the shipped recipe was tuned at), at most 256 and the smallest image, a multiple of 32;
- the **batch**: as many pixels per step as the shipped recipe (16 patches of 96 x 96), 4 to 32;
- the **depth**: 4 poolings for patches of 64 and more (the bottleneck still 4+ pixels wide), else 3;
- the **width**: the widest of 8, 16, 32 base channels whose timed step leaves at least
  ``MIN_STEPS`` optimizer steps in the minutes (``TRAIN_SHARE`` of them; validation and checkpoints
  take the rest): a wider network learns more from few images but needs steps to get there;
- **samples per epoch**: ``EPOCHS`` epochs in the budget, so that ``best.pt`` is chosen among that
  many full-image validations;
- the **augmentation**: the flips, and quarter turns under ``FEW_IMAGES`` images; not ``strong``,
  which lost at equal minutes on both testbeds (BENCHMARKS.md: it raises a small set's score at a
  fixed number of epochs, but in the minutes of a plan the network learns the plain images less);
- the **normalisation**: ``range`` for images that use most of an integer type's range and are
  exposed alike (their contrast is part of the signal), else ``percentile``, which holds up when
  exposure varies and stretches a 16-bit scan that uses a sliver of its range;
- the **pixel weights**: the U-Net paper's map (``unet``) when objects crowd (``CROWDED`` of them
  touch another), else none;
- the **validation**: full held-back images, about 15 % of them (2 to 8); one under 10 images,
  none under 4 (then ``best.pt`` is the last epoch and ``crossval`` is the honest estimate);
- the loss, optimizer, learning rate and schedule of the shipped file (Dice + CE, SGD, cosine with
  warm-up, stretched over the budget), which the measurements in BENCHMARKS.md chose.

Each choice carries a one-line reason; a plan is written as a whole parameters file whose ``_plan``
key holds the reasons, the fingerprint and the timings.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unet_patches import runtime
from unet_patches.data.fingerprint import Fingerprint, fingerprint_folder
from unet_patches.errors import UserError
from unet_patches.losses import build_loss
from unet_patches.models import build_model

from .config import Config
from .datasets import resolve_folder

__all__ = ["Choice", "Plan", "plan_parameters", "plan_training", "time_step"]

WIDTHS = (8, 16, 32)
MIN_STEPS = 1000
TRAIN_SHARE = 0.85
EPOCHS = 20
FEW_IMAGES = 50
CROWDED = 0.3
BASE_PIXELS = 16 * 96 * 96  # the shipped recipe's pixels per step: 16 patches of 96 x 96
MIN_PATCH = 96
MAX_PATCH = 256

StepTimer = Callable[[Config, int, int, int, int], float]


@dataclass(frozen=True)
class Choice:
    """One planned setting: ``section.key = value`` and why."""

    section: str
    key: str
    value: Any
    reason: str

    def line(self) -> str:
        return f"{self.section}.{self.key} = {self.value}: {self.reason}"


@dataclass
class Plan:
    """The planned settings of a run of ``minutes`` on the data of ``fingerprint``."""

    minutes: float
    fingerprint: Fingerprint
    choices: list[Choice] = field(default_factory=list)
    step_seconds: dict[int, float] = field(default_factory=dict)  # per base width

    def choose(self, section: str, key: str, value: Any, reason: str) -> Any:
        self.choices.append(Choice(section, key, value, reason))
        return value

    def overrides(self) -> dict[str, dict[str, Any]]:
        values: dict[str, dict[str, Any]] = {}
        for choice in self.choices:
            values.setdefault(choice.section, {})[choice.key] = choice.value
        return values

    def lines(self) -> list[str]:
        return [choice.line() for choice in self.choices]


def plan_training(config: Config, minutes: float, *, timer: StepTimer | None = None) -> Plan:
    """The plan for training ``config``'s ``training.folder`` for ``minutes`` of wall time.

    ``timer(config, width, depth, patch, batch)`` gives the seconds of one training step (default:
    :func:`time_step`, which times real steps on this machine).

    Raises:
        UserError: ``minutes`` is not positive, or the folder cannot be trained (see
            :func:`~unet_patches.data.fingerprint.fingerprint_folder`).
    """
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise UserError(f"--minutes {minutes}: expected a positive number of minutes to plan the training for")
    t = config.training
    fingerprint = fingerprint_folder(
        resolve_folder(config),
        config.data,
        patch_size=config.patches.patch_size,
        val_fraction=t.val_fraction,
        seed=t.seed,
    )
    plan = Plan(minutes, fingerprint)
    patch, batch, depth = _patch_and_batch(plan)
    steps = _width(plan, config, patch, batch, depth, timer or time_step)
    plan.choose("training", "time_budget_minutes", minutes, "the minutes asked for; the schedule is stretched to fit")
    plan.choose("training", "epochs", None, "the time budget alone ends the run")
    per_epoch = max(batch * 20, int(round(steps / EPOCHS)) * batch)
    plan.choose(
        "training",
        "samples_per_epoch",
        per_epoch,
        f"about {EPOCHS} epochs in the budget, each ending with a full-image validation that best.pt is picked by",
    )
    _augmentation(plan)
    _normalisation(plan, config)
    _pixel_weights(plan)
    _validation(plan)
    _recipe(plan, config)
    plan.choose(
        "inference",
        "tta",
        True,
        "flip test-time augmentation in validation, and for predict (pass --tta, or --params with this file): "
        "+0.011 mIoU on crowded nuclei at 5 min, for 4x the inference time (BENCHMARKS.md, the planned recipe)",
    )
    return plan


def _patch_and_batch(plan: Plan) -> tuple[int, int, int]:
    fp = plan.fingerprint
    smallest = min(fp.height[0], fp.width[0])
    large = fp.object_diameter_p90
    wanted = MIN_PATCH if large is None else max(MIN_PATCH, 32 * math.ceil(3 * large / 32))
    patch = min(wanted, MAX_PATCH, 32 * (smallest // 32) if smallest >= 32 else 16 * (smallest // 16))
    if patch < 16:
        raise UserError(f"{fp.folder}: the smallest image is {smallest} pixels across; training needs at least 16")
    objects = "no objects in the masks" if large is None else f"the larger objects are {large:.0f} px across"
    capped = " (capped by the smallest image)" if patch < min(wanted, MAX_PATCH) else ""
    plan.choose(
        "patches", "patch_size", patch, f"{objects}: a patch of about three of them, at least {MIN_PATCH}{capped}"
    )
    batch = int(min(32, max(4, 2 * round(BASE_PIXELS / patch**2 / 2))))
    plan.choose(
        "training", "batch_size", batch, f"{batch} patches of {patch} px: the pixels per step of the shipped recipe"
    )
    depth = 4 if patch >= 64 else 3
    plan.choose(
        "model",
        "depth",
        depth,
        f"{depth} poolings leave a {patch // 2**depth}-pixel bottleneck on a {patch}-pixel patch",
    )
    return patch, batch, depth


def _width(plan: Plan, config: Config, patch: int, batch: int, depth: int, timer: StepTimer) -> int:
    """The widest network that gets ``MIN_STEPS`` steps in the budget; the steps it gets."""
    budget = plan.minutes * 60 * TRAIN_SHARE
    chosen, steps = WIDTHS[0], 0
    for width in WIDTHS:
        seconds = plan.step_seconds[width] = timer(config, width, depth, patch, batch)
        fits = int(budget / max(seconds, 1e-6))
        if width == WIDTHS[0] or fits >= MIN_STEPS:
            chosen, steps = width, fits
        if fits < MIN_STEPS:
            break
    timed = ", ".join(f"{w}: {1000 * s:.0f} ms" for w, s in plan.step_seconds.items())
    reason = (
        f"the widest network with at least {MIN_STEPS} steps in {plan.minutes:g} min (about {steps}; "
        f"step times measured here, by base width: {timed})"
    )
    if steps < MIN_STEPS:
        reason = (
            f"only about {steps} steps of the narrowest network fit in {plan.minutes:g} min ({timed}); "
            "more minutes would help"
        )
    plan.choose("model", "base_width", chosen, reason)
    return steps


def _augmentation(plan: Plan) -> None:
    n = plan.fingerprint.images
    plan.choose(
        "augment",
        "preset",
        "flips",
        "flips: strong augmentation lost at equal minutes on both testbeds (BENCHMARKS.md, the planned recipe)",
    )
    if n < FEW_IMAGES:
        plan.choose("training", "rotate90", True, f"{n} images: quarter turns too, as few images show few orientations")


def _normalisation(plan: Plan, config: Config) -> None:
    fp = plan.fingerprint
    share, spread = fp.range_share, fp.exposure_spread
    if share is not None and share >= 0.5 and spread <= 0.1:
        mode = "range"
        reason = (
            f"{fp.dtype} images using {100 * share:.0f} % of their range, exposed alike (spread {spread:.2f}): "
            "their contrast is part of the signal, so the type's range is kept"
        )
    elif share is not None and share < 0.25:
        mode = "percentile"
        reason = (
            f"{fp.dtype} images using {100 * share:.0f} % of their range: each is stretched to its own "
            "1-99.8 percentiles"
        )
    else:
        mode = "percentile"
        reason = f"exposure varies from image to image (spread {spread:.2f}): each image to its own 1-99.8 percentiles"
    plan.choose("data", "normalize", mode, reason)


def _pixel_weights(plan: Plan) -> None:
    fp = plan.fingerprint
    share = fp.touching_share
    if fp.objects and share >= CROWDED:
        plan.choose(
            "training",
            "pixel_weights",
            "unet",
            f"{100 * share:.0f} % of the objects touch another: the U-Net paper's map weighs the gaps between them",
        )
    else:
        plan.choose(
            "training", "pixel_weights", "none", f"{100 * share:.0f} % of the objects touch another: no extra weight"
        )


def _validation(plan: Plan) -> None:
    n = plan.fingerprint.images
    if n < 4:
        plan.choose(
            "training",
            "val_fraction",
            0.0,
            f"{n} images are too few to hold one back: best.pt is the last epoch; `crossval` estimates the quality",
        )
        return
    held = 1 if n < 10 else min(8, max(2, round(0.15 * n)))
    plan.choose(
        "training",
        "val_fraction",
        round(held / n, 4),
        f"{held} of {n} images held back and predicted whole each epoch to pick best.pt",
    )


def _recipe(plan: Plan, config: Config) -> None:
    t = config.training
    rare = [name for name, share in plan.fingerprint.class_shares.items() if share < 0.05]
    note = f" ({', '.join(rare)} under 5 % of the pixels)" if rare else ""
    plan.choose(
        "training", "loss", t.loss, f"the shipped loss; its Dice term keeps rare and thin classes in view{note}"
    )
    plan.choose(
        "training",
        "learning_rate",
        t.learning_rate,
        f"the shipped {t.optimizer} rate with its {t.schedule} schedule and warm-up (batch 8 and 16 tied with it)",
    )


def time_step(
    config: Config, width: int, depth: int, patch: int, batch: int, repeats: int = 5, warmup: int = 2
) -> float:
    """Seconds of one training step (forward, loss, backward, optimizer step) of ``config``'s model
    at ``width`` and ``depth`` on a random batch, with the run's precision on the run's device: the
    median of ``repeats`` after ``warmup`` steps (the first steps of a process set up its kernels)."""
    device = runtime.pick_device(None)
    precision = runtime.resolve_precision(config.training.precision, device)
    model_config = config.merged({"model": {"base_width": width, "depth": depth}}).model
    model = build_model(model_config, pretrained=False).to(device)
    memory = torch.channels_last if precision.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    loss_fn = build_loss(config.training.loss, config.data.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, config.data.in_channels, patch, patch, generator=generator)
    images = images.to(device).contiguous(memory_format=memory)
    masks = torch.randint(0, config.data.num_classes, (batch, patch, patch), generator=generator).to(device)
    times = []
    for _ in range(repeats + warmup):
        started = time.perf_counter()
        with precision.autocast(device):
            logits = model(images)
        loss = loss_fn(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


def plan_parameters(config: Config, plan: Plan) -> dict[str, Any]:
    """The whole parameters file of the planned run: ``config`` with the plan merged in, and under
    ``_plan`` the reasons, the fingerprint and the timings (ignored when the file is read)."""
    values = config.merged(plan.overrides()).to_dict()
    values["_plan"] = {
        "minutes": plan.minutes,
        "choices": plan.lines(),
        "fingerprint": plan.fingerprint.to_dict(),
        "step_seconds_by_width": {str(w): round(s, 4) for w, s in plan.step_seconds.items()},
        "cpu_flags": sorted(runtime.cpu_flags()),
        "folder": str(Path(config.training.folder)),
    }
    return values
