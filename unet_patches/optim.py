"""Optimizers and learning-rate schedules by name, the warm-up, and :class:`Progress`, the position
in a run (steps and seconds against the epoch limit and the time budget) that the schedule follows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULES", "Progress", "build_optimizer", "lr_factor", "set_learning_rate"]


def _sgd(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _adam(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry(
    "optimizer", {"sgd": _sgd, "adam": _adam, "adamw": _adamw}
)
"""Optimizer name -> ``builder(params, lr, momentum, weight_decay)``; only SGD uses ``momentum``."""


def build_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Raises ``UserError`` for an unknown name (listing the valid ones)."""
    return OPTIMIZERS.lookup(name, "training.optimizer")(params, lr, momentum, weight_decay)


def _step(progress: float, step_fraction: float, gamma: float) -> float:
    # The epsilon keeps 0.3 * k from landing just below a boundary in floating point.
    return gamma ** math.floor(progress / step_fraction + 1e-9)


def _cosine(progress: float, step_fraction: float, gamma: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _poly(progress: float, step_fraction: float, gamma: float) -> float:
    return (1.0 - progress) ** 0.9


def _constant(progress: float, step_fraction: float, gamma: float) -> float:
    return 1.0


SCHEDULES: Registry[Callable[[float, float, float], float]] = Registry(
    "schedule", {"step": _step, "cosine": _cosine, "poly": _poly, "constant": _constant}
)
"""Schedule name -> ``factor(progress, step_fraction, gamma)``, the multiplier of the base rate."""


def lr_factor(
    schedule: str, progress: float, step_fraction: float = 0.3, gamma: float = 0.1, warmup: float = 0.0
) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of the run.

    ``step`` is the original's schedule: x ``gamma`` after every ``step_fraction`` of the run
    (x0.1 at 30 %, 60 %, 90 %). ``cosine`` anneals to 0, ``poly`` is nnU-Net's (1 - p) ** 0.9.
    A linear warm-up over the first ``warmup`` fraction multiplies any of them.

    Raises ``UserError`` for an unknown schedule name.
    """
    progress = min(max(progress, 0.0), 1.0)
    factor = SCHEDULES.lookup(schedule, "training.schedule")(progress, step_fraction, gamma)
    if warmup > 0 and progress < warmup:
        factor *= (progress + 1e-3) / warmup
    return factor


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Progress:
    """Where a run is: steps taken, time spent, and the limits that end it.

    The schedule follows whichever limit is nearer: the epoch count or the time budget,
    so a time budget stretches (or squeezes) the schedule to fit it. ``total_steps=None``
    (no epoch limit) leaves the budget alone in charge.
    """

    total_steps: int | None
    budget_seconds: float | None = None
    step: int = 0
    elapsed: float = 0.0  # seconds spent in earlier sessions of a resumed run
    _started: float = 0.0
    _clock: float = 0.0  # seconds as agreed by all ranks at the last sync()

    def start(self) -> None:
        self._started = time.monotonic()
        self.sync()

    def seconds(self) -> float:
        return self.elapsed + time.monotonic() - self._started

    def sync(self) -> None:
        """Read the clock once for all ranks (the slowest rank's time), so that under DDP every
        rank takes the same number of steps and the same learning rates under a time budget."""
        self._clock = self.seconds()
        if self.budget_seconds is not None and torch.distributed.is_initialized():
            clock = torch.tensor([self._clock], dtype=torch.float64)
            torch.distributed.all_reduce(clock, op=torch.distributed.ReduceOp.MAX)
            self._clock = float(clock)

    def fraction(self) -> float:
        by_steps = 0.0 if self.total_steps is None else self.step / max(self.total_steps, 1)
        if self.budget_seconds is None:
            return by_steps
        return max(by_steps, self._clock / self.budget_seconds)

    def done(self) -> bool:
        return self.fraction() >= 1.0
