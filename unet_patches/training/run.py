"""Training: a run in named steps, over the loops of :mod:`.loops` (:func:`train_one_epoch`, :func:`evaluate`).

:func:`fit` starts a run and :func:`.resuming.resume` continues one from its checkpoint; both build
the run (:func:`build_run`), loop over epochs and save a checkpoint after each (:func:`train_run`).
``train.py`` and ``unet-patches train`` only parse flags and call them.

Reproducibility: the weights are initialised from ``training.seed``; the order of samples in epoch
``e`` comes from a sampler seeded with ``(seed, e)``; on-the-fly patches are drawn from
``(seed, e, index)``. So the whole run is a function of the seed, whatever the number of DataLoader
workers, and a resumed run continues exactly where it stopped.

Under ``torchrun`` each rank trains on its shard, metrics are summed over ranks, and only rank 0
logs and writes files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet_patches import console, runtime
from unet_patches.errors import UserError
from unet_patches.losses import build_loss
from unet_patches.models import build_model, describe
from unet_patches.models.checkpoint import load_checkpoint, load_weights, save_checkpoint

from . import run_folder
from .augment import build_augmenter
from .config import Config, save_config
from .datasets import int8_windows, make_datasets, make_loader, resolve_class_weights, set_epoch
from .loops import NonFiniteGradients, evaluate, train_one_epoch
from .optim import RunClock, build_optimizer
from .runlog import RunLog
from .state import Run, save_epoch
from .validation import calibrate_checkpoint, validate_images

__all__ = ["build_run", "fit", "run_name_for", "train_run"]

log = logging.getLogger(__name__)


def run_name_for(config: Config) -> str:
    """``training.run_name``, or ``<folder>_b<batch_size>`` as the original named its runs; a fold of
    a cross-validation (``training.fold``) in its ``fold_<i>`` subfolder."""
    t = config.training
    return t.cv_name() if t.fold is None else f"{t.cv_name()}/fold_{t.fold}"


def build_run(
    config: Config, device: str | None = None, init_weights: str | Path | None = None, *, pretrained: bool = True
) -> Run:
    """Data, model (optionally with the weights of ``init_weights``), loss, optimizer and loaders.

    Raises:
        UserError: bad data, a checkpoint that does not fit the model, or no training batches.
    """
    t = config.training
    device_ = runtime.init_distributed(runtime.pick_device(device))
    precision = runtime.resolve_precision(t.precision, device_)
    sources = make_datasets(config)
    torch.manual_seed(t.seed)
    model = build_model(config.model, pretrained=pretrained and init_weights is None).to(device_)
    if runtime.is_main_process():
        log.info("model: %s", describe(model, sources.patch_size))
    if init_weights is not None:
        loaded = load_checkpoint(init_weights, device_)
        fix = f"the checkpoint's model is {loaded['model_config']}; match the model settings"
        load_weights(model, loaded["model"], init_weights, fits="the model in parameters.json", fix=fix)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    class_weights = resolve_class_weights(config, sources)
    loss_fn = build_loss(t.loss, config.data.num_classes, class_weights=class_weights).to(device_)
    optimizer = build_optimizer(t.optimizer, model.parameters(), t.learning_rate, t.momentum, t.weight_decay)
    scaler = torch.amp.GradScaler(device_.type) if precision.scaler else None
    train_model: nn.Module = model
    if torch.distributed.is_initialized():
        device_ids = [device_.index] if device_.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    train_loader = make_loader(sources.train, t.batch_size, train=True, seed=t.seed, num_workers=t.num_workers)
    val_loader = None
    if sources.val:
        val_loader = make_loader(sources.val, t.batch_size, train=False, seed=t.seed, num_workers=t.num_workers)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UserError(f"{sources.folder}: no training batches; add data or lower training.batch_size")
    budget = t.time_budget_minutes * 60 if t.time_budget_minutes else None
    clock = RunClock(None if t.epochs is None else steps_per_epoch * t.epochs, budget_seconds=budget)
    run_dir = Path(t.checkpoint_dir) / run_name_for(config)
    return Run(
        config,
        device_,
        precision,
        sources,
        model,
        train_model,
        loss_fn,
        optimizer,
        scaler,
        train_loader,
        val_loader,
        clock,
        config.schedule(),
        run_dir,
        build_augmenter(config.augment.preset, config.augment.overrides()),
        int8_windows=int8_windows(sources) if runtime.is_main_process() else None,
    )


def fit(
    config: Config,
    *,
    init_weights: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    progress_bars: bool = True,
) -> dict[str, Any]:
    """Train a new model as ``config`` says; return a summary (best mIoU, checkpoint paths, ...).

    ``init_weights`` loads the model weights of a checkpoint before the first step. Without
    ``overwrite`` a run folder that already holds checkpoints is refused.
    """
    run_dir = Path(config.training.checkpoint_dir) / run_name_for(config)
    held = run_folder.held_checkpoints(run_dir)
    if held and not overwrite:
        resume = f"continue with --resume {run_dir / 'last.pt'}, " if "last.pt" in held else ""
        raise UserError(
            f"{run_dir} already holds checkpoints ({run_folder.listed(held)}): {resume}start again with "
            "--overwrite, or choose another --run-name"
        )
    if held and init_weights is not None and Path(init_weights).resolve().parent == run_dir.resolve():
        raise UserError(
            f"{init_weights}: --load reads a checkpoint of the run folder that --overwrite would replace; "
            "copy it elsewhere first or choose another --run-name"
        )
    run = build_run(config, device, init_weights)
    if runtime.is_main_process():
        run_folder.remove_interrupted_writes(run_dir)
        run_folder.clear(run_dir, held)
    return train_run(run, progress_bars)


def _diverged(run: Run, exc: NonFiniteGradients) -> UserError:
    """The one-line error of a run whose gradients stopped being finite: where, what is kept, how on."""
    t = run.config.training
    last = run.run_dir / "last.pt"
    kept = f"{last} (epoch {run.epoch}) is the last good checkpoint" if last.exists() else "no checkpoint was written"
    return UserError(
        f"training.learning_rate = {t.learning_rate:g}: training diverged in epoch {run.epoch + 1} ({exc}); the step "
        f"was not taken and {kept}; lower the learning rate, train with --precision fp32, or set "
        "training.grad_clip (e.g. 1.0)"
    )


def train_run(run: Run, progress_bars: bool) -> dict[str, Any]:
    """The epoch loop: train, validate, record, save; then the summary."""
    main = runtime.is_main_process()
    runlog = _start_records(run) if main else None
    run.clock.start()
    epochs = run.config.training.epochs
    calibration = None
    try:
        while not run.finished():
            set_epoch(run.train_loader, run.epoch)
            desc = f"epoch {run.epoch + 1}" + ("" if epochs is None else f"/{epochs}")
            bar = console.progress(len(run.train_loader), desc, "step", enabled=main and progress_bars)
            try:
                train_loss = train_one_epoch(
                    run.train_model,
                    run.train_loader,
                    run.loss_fn,
                    run.optimizer,
                    run.clock,
                    run.set_lr,
                    device=run.device,
                    precision=run.precision,
                    scaler=run.scaler,
                    bar=bar,
                    after_step=run.after_step,
                    augment=run.augmenter,
                    grad_clip=run.config.training.grad_clip,
                )
            except NonFiniteGradients as exc:
                bar.close()
                raise _diverged(run, exc) from None
            bar.close()
            run.epoch += 1
            record, first_batch = _validate(run, train_loss)
            run.schedule.observe(_score(record))
            improved = _score(record) > run.best
            if improved:
                run.best, run.best_epoch = _score(record), run.epoch
            if runlog is not None:
                runlog.epoch(record, first_batch, improved)
                save_epoch(run, improved)
            runtime.barrier()
        if run.schedule.name == "cosine_restarts" and run.snapshots < run.schedule.cycles:
            run.save_snapshot()  # a time budget ends the last cycle between two steps
        if runlog is not None:
            calibration = _calibrate(run, runlog)
    finally:
        if runlog is not None:
            runlog.close()
    return _summary(run, calibration)


def _start_records(run: Run) -> RunLog:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run.config, run.run_dir / "config.json")
    log.info("data: %s", run.sources.description)
    log.info(
        "model: %s, precision %s on %s, %d process(es)",
        run.config.model.to_dict(),
        run.precision.name,
        run.device,
        runtime.world_size(),
    )
    return RunLog(Path(run.config.training.log_dir) / run.run_dir.name, run.config.training.log_images_every)


def _validate(run: Run, train_loss: float) -> tuple[dict[str, Any], tuple | None]:
    """The epoch's record (appended to the history) and the first validation batch."""
    record: dict[str, Any] = {
        "epoch": run.epoch,
        "step": run.clock.step,
        "train_loss": train_loss,
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": round(run.clock.seconds(), 1),
    }
    run.clock.sync()
    first_batch = None
    if torch.distributed.is_initialized():
        # BatchNorm running statistics drift apart per rank; validate rank 0's model, the one saved.
        for buffer in run.model.buffers():
            torch.distributed.broadcast(buffer, 0)
    if run.val_loader is not None:
        num_classes = run.config.data.num_classes
        val_loss, matrix, first_batch = evaluate(
            run.model, run.val_loader, run.loss_fn, num_classes, device=run.device, precision=run.precision
        )
        record.update(val_loss=val_loss, **matrix.summary(run.config.data.names()))
    if run.sources.held_back is not None:  # whole images: what best.pt is chosen on
        record.update(_full_image_scores(run))
    run.history.append(record)
    return record, first_batch


def _full_image_scores(run: Run) -> dict[str, Any]:
    """The held-back images predicted whole by rank 0 (:mod:`.validation`), its scores sent to every
    rank, which all need them for the schedule and the choice of ``best.pt``."""
    scores = [None]
    if runtime.is_main_process():
        patch = run.sources.patch_size
        held_back = run.sources.held_back
        scores[0] = validate_images(run.model, held_back, run.config, patch, run.device, run.precision.name)
        run.model.train()
    if torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(scores, src=0)
    return scores[0]


def _calibrate(run: Run, runlog: RunLog) -> dict[str, Any] | None:
    """At the end of the run (rank 0): the temperature of ``best.pt`` and ``last.pt`` fitted on the
    held-back images and stored in the files, logged; the records by checkpoint (``last.pt`` of the
    best epoch gets ``best.pt``'s). Without held-back images nothing is fitted (``unet-patches calibrate
    --folder`` can)."""
    held_back = run.sources.held_back
    if held_back is None:
        log.info("calibration: no held-back images to fit a temperature on; fit one with unet-patches calibrate "
                 "CHECKPOINT -o NEW.pt --folder LABELLED_DIR")  # fmt: skip
        return None
    records: dict[str, Any] = {}
    for which in ("best", "last"):
        path = run.run_dir / f"{which}.pt"
        if not path.exists():
            continue
        if which == "last" and run.best_epoch == run.epoch and "best" in records:
            records[which] = records["best"]  # the same weights: the same fit
            state = load_checkpoint(path, device="cpu")
            state["calibration"] = records[which]
            save_checkpoint(state, path)
        else:
            records[which] = calibrate_checkpoint(path, held_back, run.config, run.device, run.precision.name)
        runlog.calibration(which, records[which], run.epoch)
    return records


def _score(record: dict[str, Any]) -> float:
    """Validation mIoU; without a validation set, the negated training loss."""
    return record.get("miou", -record["train_loss"])


def _summary(run: Run, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "run": run.run_dir.name,
        "run_dir": str(run.run_dir),
        "best_checkpoint": str(run.run_dir / "best.pt"),
        "last_checkpoint": str(run.run_dir / "last.pt"),
        "best_val_miou": run.best if run.val_loader is not None else None,
        "best_epoch": run.best_epoch,
        "epochs": run.epoch,
        "steps": run.clock.step,
        "seconds": run.clock.seconds(),
        "precision": run.precision.name,
        "data": run.sources.description,
        "history": run.history,
        "calibration": calibration,
    }
