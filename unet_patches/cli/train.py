"""``train`` and ``python train.py``: flags to settings, then ``training.fit`` or ``resuming.resume``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unet_patches.data.pixel_weights import PIXEL_WEIGHTS
from unet_patches.errors import UserError
from unet_patches.losses import LOSSES
from unet_patches.models import MODELS
from unet_patches.runtime import TRAINING_PRECISIONS
from unet_patches.training.augment import PRESETS
from unet_patches.training.optim import OPTIMIZERS, SCHEDULES

from .flags import add_data_settings, add_params, config_from_args, overrides_from, setting

__all__ = ["add_crossval", "add_plan", "add_train", "add_train_arguments", "run_plan", "run_train"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    setting(p, "-e", "--epochs", key="training.epochs", type=int, help="number of epochs")
    setting(p, "-b", "--batch-size", key="training.batch_size", type=int, help="batch size")
    setting(p, "-l", "--learning-rate", key="training.learning_rate", type=float, help="base learning rate")
    p.add_argument("-c", "--load", metavar="CKPT", help="start from the weights of this checkpoint")
    setting(
        p,
        "-f",
        "--folder",
        key="training.folder",
        help="data under data.root: a patch folder (from `unet-patches patches`) or an images/+masks/ folder "
        "sampled on the fly",
    )
    p.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue a run from its last.pt, exactly, with the settings stored in it; with -e N it is "
        "extended to N epochs (the schedule planned anew over N), with --run-name it continues in a new folder",
    )
    setting(
        p,
        "--time-budget",
        key="training.time_budget_minutes",
        type=float,
        metavar="MINUTES",
        help="train for this many minutes, the schedule stretched to fit; without -e the budget alone ends "
        "the run, with -e whichever comes first",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="plan the recipe for the data in -f and the minutes of --time-budget first (as `unet-patches plan` "
        "does), then train it; other flags given override the plan",
    )
    _add_recipe_settings(p)
    setting(p, "--seed", key="training.seed", type=int, help="random seed")
    _add_fold_settings(p)
    add_data_settings(p)
    setting(p, "--augment", key="augment.preset", choices=PRESETS.names, help="strong augmentation preset")
    setting(p, "--workers", key="training.num_workers", type=int, help="DataLoader worker processes")
    setting(
        p,
        "--run-name",
        key="training.run_name",
        help="name of the run folder under checkpoints/ and runs/; null gives <folder>_b<batch>",
    )
    p.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds checkpoints")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--json", action="store_true", help="print the run summary as one JSON object at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_params(p)


def _add_recipe_settings(p: argparse.ArgumentParser) -> None:
    """The flags of the recipe: precision, model, loss and pixel weights, optimizer and schedule."""
    setting(p, "--precision", key="training.precision", choices=TRAINING_PRECISIONS.names, help="autocast precision")
    setting(p, "--model", key="model.name", choices=MODELS.names, help="network architecture")
    setting(
        p,
        "--encoder-weights",
        key="model.encoder_weights",
        metavar="PATH",
        help="a local torchvision VGG-16(-BN) state dict for the encoder of vgg16_unet / segnet (never downloaded)",
    )
    setting(p, "--loss", key="training.loss", choices=LOSSES.names, help="loss")
    setting(
        p,
        "--pixel-weights",
        key="training.pixel_weights",
        choices=PIXEL_WEIGHTS.names,
        help="unet: weigh each pixel's loss by the U-Net paper's map, heavy where objects nearly touch",
    )
    setting(p, "--optimizer", key="training.optimizer", choices=OPTIMIZERS.names, help="optimizer")
    setting(p, "--schedule", key="training.schedule", choices=SCHEDULES.names, help="learning-rate schedule")
    setting(
        p,
        "--warmup",
        key="training.warmup_fraction",
        type=float,
        metavar="FRACTION",
        help="linear warm-up over this fraction of the run (0: none)",
    )


def _add_fold_settings(p: argparse.ArgumentParser) -> None:
    help_fold = "train fold I (from 0) of a k-fold cross-validation (with --folds K or training.folds), in <run>/fold_I"
    setting(p, "--fold", key="training.fold", type=int, metavar="I", help=help_fold)
    setting(p, "--folds", key="training.folds", type=int, metavar="K", help="k-fold cross-validation: K folds")


def add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a U-Net (same flags as train.py)",
        description="Train a multiclass U-Net with the settings of parameters.json, overridden by flags. "
        "Checkpoints go to <checkpoint_dir>/<run>/ (last.pt each epoch, best.pt by validation "
        "mIoU), TensorBoard logs to <log_dir>/<run>/.",
    )
    add_train_arguments(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from unet_patches.runtime import cleanup_distributed, is_main_process
    from unet_patches.training import resuming
    from unet_patches.training import run as training

    overrides = overrides_from(args)
    if args.resume:
        _check_resume_flags(args, overrides)
    training_flags = overrides.get("training", {})
    if "time_budget_minutes" in training_flags and "epochs" not in training_flags:
        training_flags["epochs"] = None  # "train for N minutes", whatever training.epochs says
    config = _planned(args, overrides) if args.plan else None
    try:
        if args.resume:
            resumed = overrides.get("training", {})
            summary = resuming.resume(
                args.resume,
                epochs=resumed.get("epochs"),
                run_name=resumed.get("run_name"),
                overwrite=args.overwrite,
                device=args.device,
                progress_bars=not args.no_progress,
            )
        else:
            summary = training.fit(
                config or config_from_args(args, overrides),
                init_weights=args.load,
                overwrite=args.overwrite,
                device=args.device,
                progress_bars=not args.no_progress,
            )
        main_process = is_main_process()  # ask before the process group is gone
    finally:
        cleanup_distributed()
    if main_process:
        _print_training_summary(summary, args.json)
    return 0


def _planned(args: argparse.Namespace, overrides: dict[str, dict[str, Any]]) -> Any:
    """``train --plan``: the settings with the plan for ``--time-budget`` minutes merged in, and the
    flags given merged over the plan; the plan's reasons printed."""
    from unet_patches.runtime import distributed_env
    from unet_patches.training.planning import plan_training

    if args.resume:
        raise UserError("--plan starts a new run; drop --resume (a resumed run keeps the settings it was planned with)")
    if distributed_env():
        raise UserError(
            "--plan under torchrun would time steps in every process; plan first with `unet-patches plan DATA_DIR "
            "--minutes M -o plan.json`, then torchrun ... train --params plan.json"
        )
    config = config_from_args(args, overrides)
    minutes = config.training.time_budget_minutes
    if not minutes:
        raise UserError("--plan needs the minutes to plan for: add --time-budget MINUTES")
    plan = plan_training(config, minutes)
    print(f"planned for {minutes:g} min on {plan.fingerprint.folder}:")
    for line in plan.lines():
        print(f"  {line}")
    return config.merged(plan.overrides()).merged(overrides)


def add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="plan a training recipe for a data folder and a number of minutes on this machine",
        description="Read DATA_DIR once (image sizes and count, pixel type and range, exposure, class shares, "
        "object size, thickness and crowding from the masks), time training steps of 3 network widths here, and "
        "write a parameters file whose patch, batch, width and depth, samples per epoch, augmentation, "
        "normalisation, pixel weights and validation are chosen for the data and the minutes, each with a "
        "one-line reason (printed, and kept under _plan in the file). Train it with `unet-patches train "
        "--params PLAN.json`, or plan and train at once with `unet-patches train -f DATA_DIR --plan "
        "--time-budget M`.",
    )
    p.add_argument(
        "folder",
        metavar="DATA_DIR",
        help="images/ + masks/ or the Kaggle layout; relative paths are also tried under data.root",
    )
    p.add_argument("--minutes", type=float, required=True, help="the training time to plan for (wall clock)")
    p.add_argument("-o", "--output", required=True, metavar="PLAN.json", help="the parameters file to write")
    p.add_argument("--overwrite", action="store_true", help="replace PLAN.json if it exists")
    add_data_settings(p)
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object instead of its reasons")
    add_params(p)
    p.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from unet_patches.atomic import write_atomically
    from unet_patches.training.planning import plan_parameters, plan_training

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise UserError(f"{output}: exists; pass --overwrite to replace it, or choose another -o")
    if not output.parent.is_dir():
        raise UserError(f"{output.parent}: folder not found; create it, or choose another -o")
    overrides = overrides_from(args)
    overrides.setdefault("training", {})["folder"] = args.folder
    config = config_from_args(args, overrides)
    if args.params and Path(args.params).resolve() == output.resolve():
        raise UserError(f"{output}: is the --params file this plan starts from; write the plan to another file")
    plan = plan_training(config, args.minutes)
    values = plan_parameters(config, plan)
    write_atomically(output, lambda tmp: tmp.write_text(json.dumps(values, indent=2) + "\n"))
    if args.json:
        print(json.dumps(values["_plan"]))
        return 0
    print(f"planned {args.minutes:g} min of training on {plan.fingerprint.folder} ({plan.fingerprint.images} images):")
    for line in plan.lines():
        print(f"  {line}")
    print(f"wrote {output}; train it with: unet-patches train --params {output}")
    return 0


def add_crossval(sub: Any) -> None:
    p = sub.add_parser(
        "crossval",
        help="k-fold cross-validation: train every fold, then score the pooled out-of-fold predictions",
        description="Split the training images into K folds by group (source image; subject in the Kaggle "
        "layout), kept in <checkpoint_dir>/<run>/splits.json; train fold I in <run>/fold_I on the other "
        "folds; then predict every image with the model that did not train on it and write <run>/cv.json "
        "and <run>/cv.md (per fold, and from the pooled confusion matrix). Finished folds are skipped and "
        "interrupted ones resumed; --shard I/N (or torchrun / a SLURM array) shares the folds between "
        "processes. The run folder then predicts as the ensemble of its K fold models.",
    )
    p.add_argument("-k", "--k-folds", type=int, required=True, metavar="K", help="number of folds (at least 2)")
    p.add_argument("--shard", metavar="I/N", help="train only folds I, I+N, ... (I from 0)")
    add_train_arguments(p)
    p.set_defaults(run=run_crossval)


def run_crossval(args: argparse.Namespace) -> int:
    from unet_patches.files.shards import shard_from
    from unet_patches.training.crossval import run_crossval as crossval

    if args.resume or args.load:
        raise UserError("crossval resumes interrupted folds by itself; drop --resume / -c (and rerun the command)")
    overrides = overrides_from(args)
    overrides.setdefault("training", {})["folds"] = args.k_folds
    if overrides["training"].get("fold") is not None:
        raise UserError("crossval trains every fold; for one fold use unet-patches train --folds K --fold I")
    shard = shard_from(args.shard)
    report = crossval(
        _planned(args, overrides) if args.plan else config_from_args(args, overrides),
        shard=shard,
        overwrite=args.overwrite,
        device=args.device,
        progress_bars=not args.no_progress,
    )
    if report is None:
        print("cross-validation: this process's folds are trained; run crossval again when all are, for the report")
    elif args.json:
        print(json.dumps(report))
    else:
        pooled, spread = report["pooled"], report["fold_miou"]
        print(
            f"{report['k']}-fold cross-validation: pooled out-of-fold mIoU {pooled['miou']:.4f}; fold mIoU "
            f"{spread['mean']:.4f} +- {spread['std']:.4f} (report: cv.md, cv.json beside splits.json)"
        )
    return 0


RESUME_FLAGS = {"epochs": "-e", "run_name": "--run-name"}
"""The settings ``--resume`` takes beside the stored ones: a longer run, a new run folder."""


def _check_resume_flags(args: argparse.Namespace, overrides: dict[str, dict[str, Any]]) -> None:
    others = [f"{s}.{k}" for s, keys in overrides.items() for k in keys if s != "training" or k not in RESUME_FLAGS]
    if not args.load and not others:
        return
    given = "-c/--load" if args.load else "settings flags (" + ", ".join(others) + ")"
    raise UserError(
        f"--resume with {given}: --resume continues a run exactly, with the settings stored in its checkpoint "
        "(-e extends it, --run-name continues it in a new folder); drop the other flags, or start a new run "
        "from its weights with -c/--load"
    )


def _print_training_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
        return
    best = summary["best_val_miou"]
    print(
        f"trained {summary['epochs']} epochs ({summary['steps']} steps, {summary['seconds']:.0f} s, "
        f"{summary['precision']}); best validation mIoU "
        f"{'n/a' if best is None else f'{best:.4f}'} at epoch {summary['best_epoch']}; "
        f"checkpoint {summary['best_checkpoint']}"
    )
