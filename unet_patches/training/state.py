"""A training run's state: what it works with (:class:`Run`), what a checkpoint saves of it
(:func:`run_state`, :func:`save_epoch`, snapshots) and how a checkpoint puts it back (:func:`restore`,
after :func:`check_resumable`). The checkpoint file itself (format, reading, writing, upgrading older
files) is :mod:`unet_patches.models.checkpoint`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unet_patches import runtime
from unet_patches.errors import UserError
from unet_patches.models.checkpoint import CHECKPOINT_FORMAT, DAMAGED, load_weights, quoted, save_checkpoint
from unet_patches.validate import is_int, is_number

from .augment import BatchAugmenter
from .config import Config
from .datasets import DataSources
from .optim import RunClock, Schedule, set_learning_rate

__all__ = ["Run", "check_resumable", "restore", "run_state", "save_epoch"]


@dataclass
class Run:
    """Everything one training run works with, built by :func:`build_run`."""

    config: Config
    device: torch.device
    precision: runtime.Precision
    sources: DataSources
    model: nn.Module  # the network itself: saved, validated
    train_model: nn.Module  # the network, wrapped in DistributedDataParallel under torchrun
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    clock: RunClock
    schedule: Schedule
    run_dir: Path
    augmenter: BatchAugmenter | None = None
    epoch: int = 0
    snapshots: int = 0  # snapshot_NN.pt files written (cosine_restarts: one per finished cycle)
    best: float = -1.0
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    int8_windows: dict[str, torch.Tensor] | None = None  # kept in checkpoints (rank 0); data.int8_windows

    def set_lr(self, fraction: float) -> None:
        set_learning_rate(self.optimizer, self.config.training.learning_rate * self.schedule.factor(fraction))

    def after_step(self) -> None:
        """Keep a snapshot of the model each time a ``cosine_restarts`` cycle ends (rank 0 writes it)."""
        if self.schedule.cycle(self.clock.fraction()) > self.snapshots:
            self.save_snapshot()

    def save_snapshot(self) -> None:
        self.snapshots += 1
        if runtime.is_main_process():
            state = run_state(self)
            save_checkpoint(state, self.run_dir / f"snapshot_{self.snapshots:02d}.pt")

    def finished(self) -> bool:
        epochs = self.config.training.epochs
        return (epochs is not None and self.epoch >= epochs) or self.clock.done()


def run_state(run: Run) -> dict[str, Any]:
    """Everything a checkpoint of ``run`` holds after its last epoch (:mod:`unet_patches.models.checkpoint`
    lists the keys)."""
    config, preprocess = run.config, run.sources.preprocess
    return {
        "format_version": CHECKPOINT_FORMAT,
        "model_config": config.model.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "epoch": run.epoch,
        "step": run.clock.step,
        "elapsed": run.clock.seconds(),
        "best_miou": run.best,
        "best_epoch": run.best_epoch,
        "torch_rng": torch.get_rng_state(),
        "config": config.to_dict(),
        "class_names": config.data.names(),
        "in_channels": config.data.in_channels,
        "patch_size": run.sources.patch_size,
        "preprocess": preprocess.to_dict(),
        "normalization": preprocess.describe(),
        "history": run.history,
        "metrics": run.history[-1] if run.history else {},
        "schedule": run.schedule.state_dict() or {},
        "snapshots": run.snapshots,
        "int8_windows": run.int8_windows,
    }


def save_epoch(run: Run, improved: bool) -> None:
    """One epoch's checkpoints, ``best.pt`` before ``last.pt``: a crash between the two leaves a
    ``last.pt`` whose best epoch is on disk (the epoch is then redone on resume, and rewrites it)."""
    state = run_state(run)
    if improved:
        save_checkpoint(state, run.run_dir / "best.pt")
    save_checkpoint(state, run.run_dir / "last.pt")


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """What ``--resume`` reads beyond :func:`load_checkpoint`'s checks: the run's position, optimizer
    state, history, RNG state and stored configuration.

    Raises:
        UserError: a key is missing or of the wrong type (a ``best.pt`` of an old run, or a damaged file).
    """
    expected: dict[str, tuple[Callable[[Any], bool], str]] = {
        "epoch": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        "step": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        "elapsed": (lambda v: is_number(v) and v >= 0, "seconds >= 0"),
        "best_miou": (is_number, "a number"),
        "best_epoch": (lambda v: v is None or is_int(v), "an integer or null"),
        "optimizer": (lambda v: isinstance(v, dict) and "state" in v and "param_groups" in v, "an optimizer state"),
        "history": (lambda v: isinstance(v, list), "a list of epoch records"),
        "torch_rng": (lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8, "a torch RNG state"),
        "config": (lambda v: isinstance(v, dict), "the run's settings"),
    }
    for key, (valid, what) in expected.items():
        if key not in state:
            raise UserError(f"{path}: no {key}; --resume needs a last.pt written by training (not an export)")
        if not valid(state[key]):
            raise UserError(f"{path}: {key} = {quoted(state[key])}: expected {what}; {DAMAGED}")


def restore(run: Run, state: dict[str, Any], source: str | Path = "checkpoint") -> None:
    """Put a run back where its checkpoint ``state`` left it: weights, optimizer, scaler, schedule
    position, epoch, best score, history and the RNG."""
    load_weights(run.model, state["model"], source)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"{source}: optimizer state does not fit the model ({exc}); {DAMAGED}") from None
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.epoch = state["epoch"]
    run.clock.step, run.clock.elapsed = state["step"], state["elapsed"]
    run.best, run.best_epoch = state["best_miou"], state["best_epoch"]
    run.history = list(state["history"])
    if state["schedule"]:  # a schedule that keeps a state (plateau)
        run.schedule.load_state_dict(state["schedule"])
    run.snapshots = int(state["snapshots"])
    torch.set_rng_state(state["torch_rng"].cpu())
