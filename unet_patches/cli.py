"""``unet-patches``: generate, patches, train, predict, evaluate.

Settings come from code defaults < ``parameters.json`` (``--params``) < flags. A settings flag is
absent from the parsed arguments unless it was given (``argparse.SUPPRESS``); the given ones are
merged into the file's values before validation (:func:`overrides_from`). Bad input
ends the program with exit status 2 and one line naming the file or value, what was
expected, and how to fix it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import UserError
from .losses import LOSSES
from .optim import OPTIMIZERS, SCHEDULES
from .runtime import PRECISIONS
from .tiling.blending import BLEND_MODES
from .tiling.padding import PADDING_MODES

log = logging.getLogger("unet_patches")
PROG = "unet-patches"
DEFAULT_PARAMS = "parameters.json"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- settings flags: only the flags actually given override parameters.json -----------------------


def _setting(parser: argparse.ArgumentParser, *flags: str, key: str, help: str, **kwargs: Any) -> None:
    """A flag that overrides the setting ``key`` (``section.name``); absent unless given."""
    parser.add_argument(*flags, dest=key, default=argparse.SUPPRESS, help=f"{help} (default: {key})", **kwargs)


def _switch(parser: argparse.ArgumentParser, flag: str, *, key: str, value: bool, help: str) -> None:
    """A flag without a value that sets the boolean setting ``key`` to ``value``."""
    parser.add_argument(flag, dest=key, action="store_const", const=value, default=argparse.SUPPRESS, help=help)


def overrides_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings flags that were given, as ``{section: {key: value}}``."""
    overrides: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." in dest:
            section, key = dest.split(".", 1)
            overrides.setdefault(section, {})[key] = list(value) if isinstance(value, list) else value
    return overrides


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        metavar="JSON",
        default=None,
        help=f"settings file (default: ./{DEFAULT_PARAMS} when present, else built-in defaults)",
    )


def params_path(path: str | None) -> str | None:
    """``path``, else ``./parameters.json`` when it exists, else None (the code defaults)."""
    if path is None and Path(DEFAULT_PARAMS).is_file():
        return DEFAULT_PARAMS
    return path


def _config(args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    return load_config(params_path(args.params), overrides_from(args) if overrides is None else overrides)


# --- generate -----------------------------------------------------------------------------------


def _generate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="write a synthetic data set (lines and ellipses on noise)",
        description="Write train/ and test/ folders of images/ and masks/ PNGs of synthetic data: "
        "lines (class 1) and ellipses (class 2) of random gray on a noisy background.",
    )
    p.add_argument("-o", "--out", default=None, help="output folder (default: <data.root>/synthetic)")
    _setting(p, "--n-train", key="synthetic.n_train", type=int, help="training images")
    _setting(p, "--n-test", key="synthetic.n_test", type=int, help="test images")
    _setting(p, "--seed", key="synthetic.seed", type=int, help="random seed")
    _setting(p, "--height", key="synthetic.height", type=int, help="image height in pixels")
    _setting(p, "--width", key="synthetic.width", type=int, help="image width in pixels")
    _setting(p, "--lines", key="synthetic.lines", type=int, nargs=2, metavar=("MIN", "MAX"), help="lines per image")
    _setting(
        p, "--ellipses", key="synthetic.ellipses", type=int, nargs=2, metavar=("MIN", "MAX"), help="ellipses per image"
    )
    _setting(
        p,
        "--shape-gray",
        key="synthetic.shape_gray",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="shape intensity range",
    )
    _setting(
        p,
        "--background-mean",
        key="synthetic.background_mean",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="background mean range",
    )
    _setting(p, "--noise-std", key="synthetic.noise_std", type=float, help="background noise standard deviation")
    p.add_argument("--overwrite", action="store_true", help="replace train/ and test/ in a non-empty output folder")
    _add_params(p)
    p.set_defaults(run=_generate)


def _generate(args: argparse.Namespace) -> int:
    from .synthetic import generate_dataset

    config = _config(args)
    s = config.synthetic
    out = Path(args.out) if args.out else Path(config.data.root) / "synthetic"
    summary = generate_dataset(
        out, n_train=s.n_train, n_test=s.n_test, seed=s.seed, spec=s.spec(), overwrite=args.overwrite
    )
    shares = ", ".join(f"{n} {100 * v:.1f} %" for n, v in zip(summary["class_names"], summary["class_shares"]))
    print(f"wrote {s.n_train} training and {s.n_test} test images to {out} ({shares})")
    return 0


# --- patches ------------------------------------------------------------------------------------


def _patches_parser(sub: Any) -> None:
    p = sub.add_parser(
        "patches",
        help="cut random patches (with flips) from an images/+masks/ folder",
        description="Cut random windows fully inside each image, keep those with foreground, store "
        "each in 4 flip variants as OUT/images/pN.png + OUT/masks/pN.png, with "
        "OUT/manifest.json recording each patch's source image.",
    )
    p.add_argument("source", help="folder with images/ and masks/ (e.g. data/synthetic/train)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: <data.root>/patches_s<size>)")
    _setting(p, "-s", "--size", key="patches.patch_size", type=int, help="patch size")
    _setting(p, "-n", "--per-image", key="patches.per_image", type=int, help="random windows per image")
    _switch(p, "--all-windows", key="patches.foreground_only", value=False, help="keep windows without foreground too")
    _switch(p, "--no-flips", key="patches.flips", value=False, help="store each window once instead of 4 flip variants")
    _setting(
        p,
        "--resize-width",
        key="patches.resize_width",
        type=int,
        help="resize images to this width first (the original used 256)",
    )
    _setting(p, "--seed", key="patches.seed", type=int, help="random seed")
    p.add_argument("--overwrite", action="store_true", help="replace patches in a non-empty output folder")
    _add_params(p)
    p.set_defaults(run=_patches)


def _patches(args: argparse.Namespace) -> int:
    from .patches import extract_patches

    config = _config(args)
    c = config.patches
    out = Path(args.out) if args.out else Path(config.data.root) / f"patches_s{c.patch_size}"
    summary = extract_patches(
        args.source,
        out,
        patch_size=c.patch_size,
        per_image=c.per_image,
        foreground_only=c.foreground_only,
        flips=c.flips,
        resize_width=c.resize_width,
        seed=c.seed,
        overwrite=args.overwrite,
        in_channels=config.data.in_channels,
        num_classes=config.data.num_classes,
    )
    print(
        f"kept {summary['windows_kept']} of {summary['windows_drawn']} windows from {summary['sources']} images; "
        f"wrote {summary['patches']} patches to {out}"
    )
    return 0


# --- train --------------------------------------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _setting(p, "-e", "--epochs", key="training.epochs", type=int, help="number of epochs")
    _setting(p, "-b", "--batch-size", key="training.batch_size", type=int, help="batch size")
    _setting(p, "-l", "--learning-rate", key="training.learning_rate", type=float, help="base learning rate")
    p.add_argument("-c", "--load", metavar="CKPT", help="start from the weights of this checkpoint")
    _setting(
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
        help="continue an interrupted run from its last.pt, exactly, with the settings stored in it",
    )
    _setting(
        p,
        "--time-budget",
        key="training.time_budget_minutes",
        type=float,
        metavar="MINUTES",
        help="train for this many minutes, the schedule stretched to fit; without -e the budget alone ends "
        "the run, with -e whichever comes first",
    )
    _setting(p, "--precision", key="training.precision", choices=PRECISIONS.names, help="autocast precision")
    _setting(p, "--loss", key="training.loss", choices=LOSSES.names, help="loss")
    _setting(p, "--optimizer", key="training.optimizer", choices=OPTIMIZERS.names, help="optimizer")
    _setting(p, "--schedule", key="training.schedule", choices=SCHEDULES.names, help="learning-rate schedule")
    _setting(
        p,
        "--warmup",
        key="training.warmup_fraction",
        type=float,
        metavar="FRACTION",
        help="linear warm-up over this fraction of the run (0: none)",
    )
    _setting(p, "--seed", key="training.seed", type=int, help="random seed")
    _setting(p, "--workers", key="training.num_workers", type=int, help="DataLoader worker processes")
    _setting(
        p,
        "--run-name",
        key="training.run_name",
        help="name of the run folder under checkpoints/ and runs/; null gives <folder>_b<batch>",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="start again in a run folder that already holds checkpoints"
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--json", action="store_true", help="print the run summary as one JSON object at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    _add_params(p)


def _train_parser(sub: Any) -> None:
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
    from . import training
    from .runtime import cleanup_distributed, is_main_process

    overrides = overrides_from(args)
    if args.resume and (args.load or overrides):
        given = (
            "-c/--load"
            if args.load
            else "settings flags (" + ", ".join(f"{s}.{k}" for s, keys in overrides.items() for k in keys) + ")"
        )
        raise UserError(
            f"--resume with {given}: --resume continues a run exactly, with the settings stored in its checkpoint; "
            "drop the other flags, or start a new run from its weights with -c/--load"
        )
    training_flags = overrides.get("training", {})
    if "time_budget_minutes" in training_flags and "epochs" not in training_flags:
        training_flags["epochs"] = None  # "train for N minutes", whatever training.epochs says
    try:
        if args.resume:
            summary = training.resume(args.resume, device=args.device, progress_bars=not args.no_progress)
        else:
            summary = training.fit(
                _config(args, overrides),
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


# --- predict / evaluate -------------------------------------------------------------------------


def _add_inference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=int, help="window size (default: the checkpoint's training patch size)")
    _setting(p, "--overlap", key="inference.overlap", type=float, help="window overlap, a fraction in [0, 1)")
    _setting(p, "--batch-size", key="inference.batch_size", type=int, help="windows per forward pass")
    _setting(
        p, "--blend", key="inference.blend", choices=BLEND_MODES.names, help="how overlapping windows are weighted"
    )
    _setting(
        p,
        "--padding",
        key="inference.padding",
        choices=PADDING_MODES.names,
        help="padding for images smaller than a window",
    )
    _switch(
        p,
        "--tta",
        key="inference.tta",
        value=True,
        help="flip test-time augmentation (4 flips, batched together) (default: inference.tta)",
    )
    _setting(p, "--precision", key="inference.precision", choices=PRECISIONS.names, help="autocast precision")
    _switch(
        p,
        "--compile",
        key="inference.compile",
        value=True,
        help="run the network through torch.compile: 10-30 s to compile, then faster passes; worth it "
        "for many or large images (default: inference.compile)",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    _add_params(p)


def _inference_options(args: argparse.Namespace) -> dict[str, Any]:
    return _config(args).inference.predictor_options()


def _predict_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images of any size with sliding windows",
        description="Segment image files, folders or glob patterns with overlapping windows whose "
        "softmax probabilities are blended, then argmax. Writes <name>_labels.png (or .tif "
        "for very large images), <name>_overlay.png and, with --probs, one probability map "
        "per class. Large TIFFs are streamed band by band with bounded memory.",
    )
    p.add_argument("checkpoint", help="a best.pt / last.pt written by training")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--probs", action="store_true", help="also write per-class probability maps")
    p.add_argument("--no-overlay", action="store_true", help="do not write colour overlays")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    _add_inference(p)
    p.set_defaults(run=_predict)


def _predict(args: argparse.Namespace) -> int:
    from .api import Segmenter, predict_files

    options = _inference_options(args)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device)
    written = predict_files(
        segmenter,
        args.inputs,
        args.out,
        window=args.window,
        probs=args.probs,
        overlay=not args.no_overlay,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **options,
    )
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score full-image predictions against masks",
        description="Predict every image of DATA_DIR/images with sliding windows and score against "
        "DATA_DIR/masks: per-class IoU and Dice and their means from one confusion matrix "
        "over the whole folder. Classes absent from truth and prediction are left out.",
    )
    p.add_argument("checkpoint", help="a best.pt / last.pt written by training")
    p.add_argument("data_dir", help="folder with images/ and masks/")
    p.add_argument("--json", action="store_true", help="print one JSON object (miou, iou, dice, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    _add_inference(p)
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .api import Segmenter, evaluate_folder

    options = _inference_options(args)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device)
    scores = evaluate_folder(
        segmenter, args.data_dir, window=args.window, progress=not args.no_progress and not args.json, **options
    )
    if args.json:
        print(json.dumps(scores))
        return 0
    print(f"{scores['images']} images, window {args.window or segmenter.patch_size}")
    print(f"{'class':<14}{'IoU':>8}{'Dice':>8}")
    for name in scores["iou"]:
        iou, dice = scores["iou"][name], scores["dice"][name]
        print(f"{name:<14}{_fmt(iou):>8}{_fmt(dice):>8}")
    print(f"{'mean':<14}{scores['miou']:>8.4f}{scores['mean_dice']:>8.4f}")
    return 0


def _fmt(value: float | None) -> str:
    return "absent" if value is None else f"{value:.4f}"


# --- entry points -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(
        prog=PROG,
        description="Patch-based multiclass segmentation: synthetic data, random patches, "
        "U-Net training and sliding-window inference for images of any size.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in (_generate_parser, _patches_parser, _train_parser, _predict_parser, _evaluate_parser):
        add(sub)
    return parser


def run_guarded(run: Callable[[], int], prog: str = PROG) -> int:
    """Run a command; user errors become one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return run()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (a training run can be continued with --resume <run>/last.pt)", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.run(args), f"{PROG} {args.command}")


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python train.py``: the original's entry point, same flags as ``unet-patches train``."""
    parser = Parser(prog="train.py", description="Train a multiclass U-Net on patches (see unet-patches train --help).")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: run_train(args), "train.py")


if __name__ == "__main__":
    sys.exit(main())
