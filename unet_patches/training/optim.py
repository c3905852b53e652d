"""Optimizers and learning-rate schedules by name, the warm-up, and :class:`RunClock`, the position
in a run (steps and seconds against the epoch limit and the time budget) that the schedule follows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from unet_patches.registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULES", "RunClock", "Schedule", "build_optimizer", "set_learning_rate"]


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


@dataclass
class Schedule:
    """A learning-rate schedule: the multiplier of the base rate at each point of the run.

    ``name`` picks the curve from ``SCHEDULES``; ``warmup`` is a linear warm-up over that fraction of
    the run, multiplying any curve. ``step`` multiplies by ``gamma`` after every ``step_fraction``;
    ``cosine_restarts`` runs ``cycles`` cosine cycles (SGDR), each ``cycle_growth`` times as long as
    the one before, filling the run; ``plateau`` multiplies by ``gamma`` each time the validation
    score has not improved for ``patience`` epochs (:meth:`observe`). Only ``plateau`` has state
    (:meth:`state_dict`), which checkpoints keep so that a resumed run continues exactly.
    """

    name: str
    step_fraction: float = 0.3
    gamma: float = 0.1
    warmup: float = 0.0
    cycles: int = 4
    cycle_growth: float = 1.0
    patience: int = 3
    reductions: int = 0
    best: float = -math.inf
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        SCHEDULES.check(self.name, "training.schedule")

    def factor(self, progress: float) -> float:
        """Multiplier of the base learning rate at ``progress`` in [0, 1] of the run."""
        progress = min(max(progress, 0.0), 1.0)
        factor = SCHEDULES[self.name](progress, self)
        if self.warmup > 0 and progress < self.warmup:
            factor *= (progress + 1e-3) / self.warmup
        return factor

    def cycle_bounds(self) -> list[float]:
        """Ends of the ``cosine_restarts`` cycles as fractions of the run (the last is 1)."""
        lengths = [self.cycle_growth**k for k in range(self.cycles)]
        total, ends, done = sum(lengths), [], 0.0
        for length in lengths:
            done += length
            ends.append(done / total)
        ends[-1] = 1.0
        return ends

    def cycle(self, progress: float) -> int:
        """How many ``cosine_restarts`` cycles have ended at ``progress`` (0 for other schedules)."""
        if self.name != "cosine_restarts":
            return 0
        return sum(progress >= end - 1e-9 for end in self.cycle_bounds())

    def observe(self, score: float) -> None:
        """Tell the schedule the epoch's validation score (higher is better); ``plateau`` reacts."""
        if self.name != "plateau":
            return
        if score > self.best:
            self.best, self.bad_epochs = score, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.reductions, self.bad_epochs = self.reductions + 1, 0

    def state_dict(self) -> dict[str, float]:
        return {"reductions": self.reductions, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.reductions, self.best, self.bad_epochs = int(state["reductions"]), state["best"], int(state["bad_epochs"])


def _step(progress: float, s: Schedule) -> float:
    # The epsilon keeps 0.3 * k from landing just below a boundary in floating point.
    return s.gamma ** math.floor(progress / s.step_fraction + 1e-9)


def _cosine(progress: float, s: Schedule) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _cosine_restarts(progress: float, s: Schedule) -> float:
    start = 0.0
    for end in s.cycle_bounds():
        if progress < end or end == 1.0:
            return 0.5 * (1.0 + math.cos(math.pi * min((progress - start) / (end - start), 1.0)))
        start = end
    return 0.0  # not reached: the last cycle ends at 1


def _poly(progress: float, s: Schedule) -> float:
    return (1.0 - progress) ** 0.9


def _constant(progress: float, s: Schedule) -> float:
    return 1.0


def _plateau(progress: float, s: Schedule) -> float:
    return s.gamma**s.reductions


SCHEDULES: Registry[Callable[[float, Schedule], float]] = Registry(
    "schedule",
    {
        "step": _step,
        "cosine": _cosine,
        "cosine_restarts": _cosine_restarts,
        "poly": _poly,
        "constant": _constant,
        "plateau": _plateau,
    },
)
"""Schedule name -> ``factor(progress, schedule)``, the multiplier of the base rate."""


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class RunClock:
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
