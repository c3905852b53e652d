"""Optimizers and schedules by name, the warm-up, and the run's progress clock."""

import math

import pytest
import torch

from unet_patches.errors import UserError
from unet_patches.training.optim import OPTIMIZERS, SCHEDULES, RunClock, Schedule, build_optimizer


def test_step_schedule_is_the_originals():
    # x0.1 after 30 % of the run and every 30 % after that.
    assert Schedule("step").factor(0.0) == 1.0
    assert Schedule("step").factor(0.29) == 1.0
    assert Schedule("step").factor(0.3) == pytest.approx(0.1)
    assert Schedule("step").factor(0.6) == pytest.approx(0.01)
    assert Schedule("step").factor(0.95) == pytest.approx(0.001)
    assert Schedule("cosine").factor(1.0) == pytest.approx(0.0)
    assert Schedule("poly").factor(0.5) == pytest.approx(0.5**0.9)
    assert Schedule("constant", warmup=0.1).factor(0.7) == 1.0
    assert Schedule("constant", warmup=0.1).factor(0.05) == pytest.approx(0.51)


def test_without_an_epoch_limit_the_budget_alone_drives_the_schedule():
    progress = RunClock(total_steps=None, budget_seconds=100.0)
    progress.step, progress._clock = 10**6, 25.0
    assert progress.fraction() == 0.25 and not progress.done()
    progress._clock = 100.0
    assert progress.done()
    capped = RunClock(total_steps=40, budget_seconds=100.0)
    capped.step, capped._clock = 30, 25.0
    assert capped.fraction() == 0.75  # with both limits the nearer one leads


@pytest.mark.parametrize("name", OPTIMIZERS.names)
def test_every_optimizer_builds_and_steps(name):
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer(name, [parameter], lr=0.1, momentum=0.9, weight_decay=0.0)
    parameter.sum().backward()
    optimizer.step()
    assert torch.all(parameter < 1)


def test_unknown_names_list_the_valid_ones_and_suggest_the_closest():
    with pytest.raises(UserError, match=r"training.optimizer = 'adamm'.*did you mean 'adam'.*sgd, adam, adamw"):
        build_optimizer("adamm", [torch.nn.Parameter(torch.ones(1))], 0.1, 0.9, 0.0)
    with pytest.raises(UserError, match=r"training.schedule = 'cosin'.*did you mean 'cosine'"):
        Schedule("cosin")
    assert set(SCHEDULES.names) == {"step", "cosine", "cosine_restarts", "poly", "constant", "plateau"}


def test_cosine_restarts_cycles_fill_the_run_and_grow():
    schedule = Schedule("cosine_restarts", cycles=3, cycle_growth=2.0)
    # Lengths 1, 2, 4 sevenths of the run.
    assert schedule.cycle_bounds() == pytest.approx([1 / 7, 3 / 7, 1.0])
    assert schedule.factor(0.0) == 1.0 and schedule.factor(1 / 7 - 1e-9) == pytest.approx(0.0, abs=1e-6)
    assert schedule.factor(1 / 7) == pytest.approx(1.0)  # the restart
    assert schedule.factor(2 / 7) == pytest.approx(0.5)  # half-way through the second cycle
    assert schedule.factor(1.0) == pytest.approx(0.0)
    assert [schedule.cycle(p) for p in (0.0, 0.1, 1 / 7, 0.5, 1.0)] == [0, 0, 1, 2, 3]
    warm = Schedule("cosine_restarts", cycles=2, warmup=0.1)
    assert warm.factor(0.05) == pytest.approx(0.51 * 0.5 * (1 + math.cos(math.pi * 0.1)))  # warm-up multiplies it


def test_plateau_reduces_after_patience_epochs_without_improvement():
    schedule = Schedule("plateau", gamma=0.5, patience=2)
    for score in (0.5, 0.6, 0.6, 0.59):  # two epochs without a new best
        schedule.observe(score)
    assert schedule.factor(0.3) == 0.5 and schedule.reductions == 1
    schedule.observe(0.7)  # a new best resets the count
    schedule.observe(0.69)
    assert schedule.factor(0.9) == 0.5
    restored = Schedule("plateau", gamma=0.5, patience=2)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict()
    assert Schedule("cosine").cycle(0.99) == 0  # only cosine_restarts has cycles
