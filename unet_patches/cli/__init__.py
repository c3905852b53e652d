"""``unet-patches``: generate, patches, inspect, train, crossval, predict, evaluate, submit, export,
calibrate, experiments, merge-report.

Settings come from code defaults < ``parameters.json`` (``--params``) < flags. A settings flag is
absent from the parsed arguments unless it was given (``argparse.SUPPRESS``); the given ones are
merged into the file's values before validation (:func:`overrides_from`). Bad input
ends the program with exit status 2 and one line naming the file or value, what was
expected, and how to fix it.

Without PyTorch installed, the command line offers ``predict``, ``evaluate`` and ``submit`` for ONNX
exports (the deployment commands); the others say they need PyTorch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from unet_patches.errors import UserError, one_line

from .flags import DEFAULT_PARAMS, Parser, params_path
from .inference import add_evaluate, add_merge_report, add_predict
from .submit import add_submit

__all__ = ["DEFAULT_PARAMS", "PROG", "build_parser", "main", "params_path", "run_guarded", "train_main"]

log = logging.getLogger("unet_patches")
PROG = "unet-patches"
TORCH_COMMANDS = ("generate", "patches", "inspect", "plan", "train", "crossval", "export", "calibrate", "experiments")
NO_TORCH = (
    "PyTorch is not installed here: {command} needs it (pip install torch==2.13.0). Without it, predict, "
    "evaluate and submit run ONNX exports (unet-patches export CHECKPOINT --format onnx, where torch is)"
)


def torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_parser(with_torch: bool | None = None) -> argparse.ArgumentParser:
    """Every command; without torch (``with_torch`` False, default: whether it imports) only the
    deployment commands, which run ONNX exports."""
    from unet_patches._version import __version__

    with_torch = torch_installed() if with_torch is None else with_torch
    description = (
        "Patch-based multiclass segmentation: synthetic data, random patches, "
        "U-Net training and sliding-window inference for images of any size."
    )
    if not with_torch:
        description += " PyTorch is not installed: predict, evaluate and submit run ONNX exports."
    parser = Parser(prog=PROG, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    if with_torch:
        from .experiments import add_experiments
        from .export import add_calibrate, add_export
        from .inspect import add_inspect
        from .prepare import add_generate, add_patches
        from .train import add_crossval, add_plan, add_train

        adders = (add_generate, add_patches, add_inspect, add_plan, add_train, add_crossval, add_predict)
        adders += (add_evaluate,)
        adders += (add_submit, add_export, add_calibrate, add_experiments, add_merge_report)
    else:
        adders = (add_predict, add_evaluate, add_submit, add_merge_report)
    for add in adders:
        add(sub)
    return parser


def run_guarded(run: Callable[[], int], prog: str = PROG) -> int:
    """Run a command; user errors become one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return run()
    except UserError as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        print(f"{prog}: error: {NO_TORCH.format(command=prog)}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (a training run can be continued with --resume <run>/last.pt)", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker arrives re-raised with
    the worker's whole traceback in its message; its last line is the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return one_line(text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with_torch = torch_installed()
    if not with_torch and argv and argv[0] in TORCH_COMMANDS:
        print(f"{PROG} {argv[0]}: error: {NO_TORCH.format(command=argv[0])}", file=sys.stderr)
        return 2
    args = build_parser(with_torch).parse_args(argv)
    return run_guarded(lambda: args.run(args), f"{PROG} {args.command}")


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python train.py``: the original's entry point, same flags as ``unet-patches train``."""
    if not torch_installed():
        print(f"train.py: error: {NO_TORCH.format(command='training')}", file=sys.stderr)
        return 2
    from .train import add_train_arguments, run_train

    parser = Parser(prog="train.py", description="Train a multiclass U-Net on patches (see unet-patches train --help).")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: run_train(args), "train.py")
