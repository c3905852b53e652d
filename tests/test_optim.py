"""Optimizers and schedules by name, the warm-up, and the run's progress clock."""

import pytest
import torch

from unet_patches.errors import UserError
from unet_patches.optim import OPTIMIZERS, SCHEDULES, Progress, build_optimizer, lr_factor


def test_step_schedule_is_the_originals():
    # x0.1 after 30 % of the run and every 30 % after that.
    assert lr_factor("step", 0.0) == 1.0
    assert lr_factor("step", 0.29) == 1.0
    assert lr_factor("step", 0.3) == pytest.approx(0.1)
    assert lr_factor("step", 0.6) == pytest.approx(0.01)
    assert lr_factor("step", 0.95) == pytest.approx(0.001)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0)
    assert lr_factor("poly", 0.5) == pytest.approx(0.5**0.9)
    assert lr_factor("constant", 0.7, warmup=0.1) == 1.0
    assert lr_factor("constant", 0.05, warmup=0.1) == pytest.approx(0.51)


def test_without_an_epoch_limit_the_budget_alone_drives_the_schedule():
    progress = Progress(total_steps=None, budget_seconds=100.0)
    progress.step, progress._clock = 10**6, 25.0
    assert progress.fraction() == 0.25 and not progress.done()
    progress._clock = 100.0
    assert progress.done()
    capped = Progress(total_steps=40, budget_seconds=100.0)
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
        lr_factor("cosin", 0.5)
    assert set(SCHEDULES.names) == {"step", "cosine", "poly", "constant"}
