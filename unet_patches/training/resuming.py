"""Continuing a run from its ``last.pt``: exactly (``--resume``), extended to more epochs (``-e``),
or in a new run folder (``--run-name``). The run is rebuilt from the configuration stored in the
checkpoint (:func:`.training.build_run`), put back where the checkpoint left it (:func:`restore`) and
trained on by :func:`.training.train_run`; a resumed run ends with the weights an uninterrupted one
would have had."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from unet_patches import runtime
from unet_patches.errors import UserError
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint

from . import run_folder
from .config import Config, config_from_dict
from .run import build_run, run_name_for, train_run
from .state import Run, check_resumable, restore, run_state

__all__ = ["resume"]

log = logging.getLogger(__name__)


def resume(
    checkpoint: str | Path,
    *,
    epochs: int | None = None,
    run_name: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
    progress_bars: bool = True,
) -> dict[str, Any]:
    """Continue the run of ``checkpoint`` (its ``last.pt``) exactly, with the configuration stored in it.

    ``epochs`` extends the run to that many epochs in all (a finished run too): the schedule is planned
    anew over the new length, as if the run had been planned that long from its start, and the jump
    in learning rate is logged. ``run_name`` continues the run in a new run folder (a fork): its
    checkpoints are copied there and the original folder is left as it is; ``overwrite`` lets the fork
    replace a run already in that folder.
    """
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    check_resumable(state, checkpoint)
    config = config_from_dict(state["config"], source=f"{checkpoint} (stored config)")
    if epochs is not None:
        _check_extension(config, state, epochs, checkpoint)
        config = config.merged({"training": {"epochs": epochs}})
    source_dir = checkpoint.parent
    if run_name is not None:
        config = config.merged({"training": {"run_name": run_name}})
    run_dir = Path(config.training.checkpoint_dir) / run_name_for(config)
    forked = run_dir.resolve() != source_dir.resolve()
    held = run_folder.held_checkpoints(run_dir) if forked else []
    if held and not overwrite:
        raise UserError(
            f"{run_dir} already holds checkpoints ({run_folder.listed(held)}): replace them with --overwrite, "
            "or choose another --run-name"
        )
    if overwrite and not forked:
        raise UserError(f"--overwrite with --resume {checkpoint}: it would replace the run being resumed; drop it")
    if not forked and runtime.is_main_process():
        run_folder.tidy(run_dir, state)
    run = build_run(config, device, pretrained=False)  # the weights come from the checkpoint
    restore(run, state, checkpoint)
    if epochs is not None:
        _log_extension(run, state)
    if forked:
        _fork(run, source_dir, held, state)
    if run.finished():
        log.info("%s: the run has finished (%d epochs); extend it with -e N", checkpoint, run.epoch)
    return train_run(run, progress_bars)


def _check_extension(config: Config, state: dict[str, Any], epochs: int, checkpoint: Path) -> None:
    """Refuse an ``-e`` that cannot extend the run of ``state``."""
    t = config.training
    if epochs <= state["epoch"]:
        raise UserError(
            f"-e {epochs}: {checkpoint} has trained {state['epoch']} epochs already; "
            f"pass more than {state['epoch']} to extend the run"
        )
    if t.schedule == "cosine_restarts":
        raise UserError(
            f"-e {epochs}: {checkpoint} uses training.schedule = cosine_restarts, whose cycles and snapshots were "
            f"planned for {t.epochs} epochs; start a new run from its weights with -c/--load instead"
        )
    if t.time_budget_minutes is not None and state["elapsed"] >= t.time_budget_minutes * 60:
        raise UserError(
            f"-e {epochs}: {checkpoint} was ended by its time budget of {t.time_budget_minutes:g} minutes, which "
            "-e does not lift; start a new run from its weights with -c/--load instead"
        )


def _log_extension(run: Run, state: dict[str, Any]) -> None:
    """Say what extending the run does to its schedule: planned anew over the new length."""
    old_epochs = state["config"]["training"].get("epochs")
    old_total = None if old_epochs is None else len(run.train_loader) * old_epochs
    before = run.schedule.factor(1.0 if not old_total else run.clock.step / old_total)
    now = run.schedule.factor(run.clock.fraction())
    lr = run.config.training.learning_rate
    log.info(
        "extending the run from %s to %d epochs: the %s schedule is planned anew over %d epochs, so the "
        "learning rate goes from %.3g to %.3g at epoch %d",
        "no epoch limit" if old_epochs is None else old_epochs,
        run.config.training.epochs,
        run.schedule.name,
        run.config.training.epochs,
        lr * before,
        lr * now,
        run.epoch + 1,
    )


def _fork(run: Run, source_dir: Path, held: list[str], state: dict[str, Any]) -> None:
    """Make ``run.run_dir`` the folder of a run continued from ``source_dir``, which is left as it is
    (:func:`.run_folder.fork`), with a last.pt written at once, so that a fork killed before its first
    epoch resumes from its own folder."""
    if runtime.is_main_process():
        run_folder.fork(source_dir, run.run_dir, held, state)
        save_checkpoint(run_state(run), run.run_dir / "last.pt")
        log.info("continuing the run of %s in %s (the original folder is unchanged)", source_dir, run.run_dir)
    runtime.barrier()
