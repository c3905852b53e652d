"""``unet-patches``: generate, patches, train, predict, evaluate.

Settings come from code defaults < ``parameters.json`` (``--params``) < flags. Bad input
ends the program with exit status 2 and one line naming the file or value, what was
expected, and how to fix it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import UserError

log = logging.getLogger("unet_patches")
PROG = "unet-patches"
DEFAULT_PARAMS = "parameters.json"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", metavar="JSON", default=None,
        help=f"settings file (default: ./{DEFAULT_PARAMS} when present, else built-in defaults)",
    )


def _config(args: argparse.Namespace):
    from .config import load_config

    path = args.params
    if path is None and Path(DEFAULT_PARAMS).is_file():
        path = DEFAULT_PARAMS
    return load_config(path)


# --- generate -----------------------------------------------------------------------------------


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="write a synthetic data set (lines and ellipses on noise)",
                       description="Write train/ and test/ folders of images/ and masks/ PNGs of synthetic data: "
                                   "lines (class 1) and ellipses (class 2) of random gray on a noisy background.")
    p.add_argument("-o", "--out", default=None, help="output folder (default: <data.root>/synthetic)")
    p.add_argument("--n-train", type=int, help="training images (default: synthetic.n_train)")
    p.add_argument("--n-test", type=int, help="test images (default: synthetic.n_test)")
    p.add_argument("--seed", type=int, help="random seed (default: synthetic.seed)")
    p.add_argument("--height", type=int, help="image height in pixels (default 400)")
    p.add_argument("--width", type=int, help="image width in pixels (default 200)")
    p.add_argument("--lines", type=int, nargs=2, metavar=("MIN", "MAX"), help="lines per image (default 1 9)")
    p.add_argument("--ellipses", type=int, nargs=2, metavar=("MIN", "MAX"), help="ellipses per image (default 1 9)")
    p.add_argument("--shape-gray", type=float, nargs=2, metavar=("LOW", "HIGH"), help="shape intensity range (default 0.0 0.7)")
    p.add_argument("--background-mean", type=float, nargs=2, metavar=("LOW", "HIGH"), help="background mean range (default 0.7 0.9)")
    p.add_argument("--noise-std", type=float, help="background noise standard deviation (default 0.1)")
    p.add_argument("--overwrite", action="store_true", help="replace train/ and test/ in a non-empty output folder")
    _add_params(p)
    p.set_defaults(run=_generate)


def _generate(args: argparse.Namespace) -> int:
    from .synthetic import generate_dataset

    config = _config(args).replace(
        "synthetic", n_train=args.n_train, n_test=args.n_test, seed=args.seed, height=args.height, width=args.width,
        lines=_pair(args.lines), ellipses=_pair(args.ellipses), shape_gray=_pair(args.shape_gray),
        background_mean=_pair(args.background_mean), noise_std=args.noise_std,
    )
    s = config.synthetic
    out = Path(args.out) if args.out else Path(config.data.root) / "synthetic"
    summary = generate_dataset(out, n_train=s.n_train, n_test=s.n_test, seed=s.seed, spec=s.spec(), overwrite=args.overwrite)
    shares = ", ".join(f"{n} {100 * v:.1f} %" for n, v in zip(summary["class_names"], summary["class_shares"]))
    print(f"wrote {s.n_train} training and {s.n_test} test images to {out} ({shares})")
    return 0


def _pair(values):
    return tuple(values) if values is not None else None


# --- patches ------------------------------------------------------------------------------------


def _patches_parser(sub) -> None:
    p = sub.add_parser("patches", help="cut random patches (with flips) from an images/+masks/ folder",
                       description="Cut random windows fully inside each image, keep those with foreground, store "
                                   "each in 4 flip variants as OUT/images/pN.png + OUT/masks/pN.png, with "
                                   "OUT/manifest.json recording each patch's source image.")
    p.add_argument("source", help="folder with images/ and masks/ (e.g. data/synthetic/train)")
    p.add_argument("-o", "--out", default=None, help="output folder (default: <data.root>/patches_s<size>)")
    p.add_argument("-s", "--size", type=int, help="patch size (default: patches.patch_size)")
    p.add_argument("-n", "--per-image", type=int, help="random windows per image (default: patches.per_image)")
    p.add_argument("--all-windows", action="store_true", help="keep windows without foreground too")
    p.add_argument("--no-flips", action="store_true", help="store each window once instead of 4 flip variants")
    p.add_argument("--resize-width", type=int, help="resize images to this width first (the original used 256)")
    p.add_argument("--seed", type=int, help="random seed (default: patches.seed)")
    p.add_argument("--overwrite", action="store_true", help="replace patches in a non-empty output folder")
    _add_params(p)
    p.set_defaults(run=_patches)


def _patches(args: argparse.Namespace) -> int:
    from .patches import extract_patches

    config = _config(args).replace(
        "patches", patch_size=args.size, per_image=args.per_image, resize_width=args.resize_width, seed=args.seed,
        foreground_only=False if args.all_windows else None, flips=False if args.no_flips else None,
    )
    c = config.patches
    out = Path(args.out) if args.out else Path(config.data.root) / f"patches_s{c.patch_size}"
    summary = extract_patches(
        args.source, out, patch_size=c.patch_size, per_image=c.per_image, foreground_only=c.foreground_only,
        flips=c.flips, resize_width=c.resize_width, seed=c.seed, overwrite=args.overwrite,
        in_channels=config.data.in_channels, num_classes=config.data.num_classes,
    )
    print(
        f"kept {summary['windows_kept']} of {summary['windows_drawn']} windows from {summary['sources']} images; "
        f"wrote {len(list((out / 'images').glob('p*.png')))} patches to {out}"
    )
    return 0


# --- train --------------------------------------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-e", "--epochs", type=int, help="number of epochs (default: training.epochs)")
    p.add_argument("-b", "--batch-size", type=int, help="batch size (default: training.batch_size)")
    p.add_argument("-l", "--learning-rate", type=float, help="learning rate (default: training.learning_rate)")
    p.add_argument("-c", "--load", metavar="CKPT", help="start from the weights of this checkpoint")
    p.add_argument("-f", "--folder", help="data under data.root: a patch folder (from `unet-patches patches`) "
                                          "or an images/+masks/ folder sampled on the fly (default: training.folder)")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run from its last.pt (exactly)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train for this many minutes, the schedule stretched to fit; without -e the budget alone ends "
                        "the run, with -e whichever comes first (default: training.time_budget_minutes)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="default: training.precision")
    p.add_argument("--loss", help="loss name: ce, dice, dice_ce, focal, tversky, jaccard (default: training.loss)")
    p.add_argument("--optimizer", help="sgd, adam or adamw (default: training.optimizer)")
    p.add_argument("--schedule", help="step, cosine, poly or constant (default: training.schedule)")
    p.add_argument("--seed", type=int, help="random seed (default: training.seed)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: training.num_workers)")
    p.add_argument("--run-name", help="name of the run folder under checkpoints/ and runs/ (default: <folder>_b<batch>)")
    p.add_argument("--overwrite", action="store_true", help="start again in a run folder that already holds checkpoints")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--json", action="store_true", help="print the run summary as one JSON object at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_params(p)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a U-Net (same flags as train.py)",
                       description="Train a multiclass U-Net with the settings of parameters.json, overridden by flags. "
                                   "Checkpoints go to <checkpoint_dir>/<run>/ (last.pt each epoch, best.pt by validation "
                                   "mIoU), TensorBoard logs to <log_dir>/<run>/.")
    add_train_arguments(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .runtime import cleanup_distributed, is_main_process
    from .training import fit

    config = _config(args).replace(
        "training", epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        folder=args.folder, time_budget_minutes=args.time_budget, precision=args.precision, loss=args.loss,
        optimizer=args.optimizer, schedule=args.schedule, seed=args.seed, num_workers=args.workers,
        run_name=args.run_name,
    )
    if args.time_budget is not None and args.epochs is None:
        config = config.set("training", epochs=None)  # "train for N minutes", whatever training.epochs says
    if args.resume and args.load:
        raise UserError("--resume and -c/--load both given: --resume continues a run, --load starts a new one from weights; pick one")
    try:
        summary = fit(
            config, resume=args.resume, init_weights=args.load, overwrite=args.overwrite, device=args.device,
            progress_bars=not args.no_progress,
        )
        main_process = is_main_process()  # ask before the process group is gone
    finally:
        cleanup_distributed()
    if main_process:
        if args.json:
            print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
        else:
            best = summary["best_val_miou"]
            print(
                f"trained {summary['epochs']} epochs ({summary['steps']} steps, {summary['seconds']:.0f} s, "
                f"{summary['precision']}); best validation mIoU "
                f"{'n/a' if best is None else f'{best:.4f}'} at epoch {summary['best_epoch']}; "
                f"checkpoint {summary['best_checkpoint']}"
            )
    return 0


# --- predict / evaluate -------------------------------------------------------------------------


def _add_inference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=int, help="window size (default: the checkpoint's training patch size)")
    p.add_argument("--overlap", type=float, help="window overlap, fraction in [0, 1) (default: inference.overlap)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: inference.batch_size)")
    p.add_argument("--blend", choices=("mean", "gaussian", "hann"), help="how overlapping windows are weighted (default: inference.blend)")
    p.add_argument("--padding", choices=("reflect", "constant"), help="padding for images smaller than a window (default: inference.padding)")
    p.add_argument("--tta", action="store_true", default=None, help="flip test-time augmentation (4 flips, batched together)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="default: inference.precision")
    p.add_argument("--compile", action="store_true", default=None,
                   help="run the network through torch.compile: 10-30 s to compile, then faster passes; worth it "
                        "for many or large images (default: inference.compile)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    _add_params(p)


def _inference_options(args: argparse.Namespace) -> dict:
    return _config(args).replace(
        "inference", overlap=args.overlap, batch_size=args.batch_size, blend=args.blend, padding=args.padding,
        tta=args.tta, precision=args.precision, compile=args.compile,
    ).inference.predictor_options()


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="segment images of any size with sliding windows",
                       description="Segment image files, folders or glob patterns with overlapping windows whose "
                                   "softmax probabilities are blended, then argmax. Writes <name>_labels.png (or .tif "
                                   "for very large images), <name>_overlay.png and, with --probs, one probability map "
                                   "per class. Large TIFFs are streamed band by band with bounded memory.")
    p.add_argument("checkpoint", help="a best.pt / last.pt written by training")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--probs", action="store_true", help="also write per-class probability maps")
    p.add_argument("--no-overlay", action="store_true", help="do not write colour overlays")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_inference(p)
    p.set_defaults(run=_predict)


def _predict(args: argparse.Namespace) -> int:
    from .api import load_model
    from .tiling import predict_files

    model = load_model(args.checkpoint, device=args.device)
    options = _inference_options(args)
    written = predict_files(
        model, args.inputs, args.out, window=args.window or model.patch_size, in_channels=model.in_channels,
        device=args.device, probs=args.probs, overlay=not args.no_overlay, overwrite=args.overwrite,
        progress=not args.no_progress, **options,
    )
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score full-image predictions against masks",
                       description="Predict every image of DATA_DIR/images with sliding windows and score against "
                                   "DATA_DIR/masks: per-class IoU and Dice and their means from one confusion matrix "
                                   "over the whole folder. Classes absent from truth and prediction are left out.")
    p.add_argument("checkpoint", help="a best.pt / last.pt written by training")
    p.add_argument("data_dir", help="folder with images/ and masks/")
    p.add_argument("--json", action="store_true", help="print one JSON object (miou, iou, dice, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_inference(p)
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate_folder, load_model

    model = load_model(args.checkpoint, device=args.device)
    scores = evaluate_folder(model, args.data_dir, window=args.window, device=args.device,
                             progress=not args.no_progress and not args.json, **_inference_options(args))
    if args.json:
        print(json.dumps(scores))
        return 0
    print(f"{scores['images']} images, window {args.window or model.patch_size}")
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

    parser = Parser(prog=PROG, description="Patch-based multiclass segmentation: synthetic data, random patches, "
                                           "U-Net training and sliding-window inference for images of any size.")
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
