"""``unet-patches``: generate, patches, inspect, train, predict, evaluate, submit, export, experiments.

Settings come from code defaults < ``parameters.json`` (``--params``) < flags. A settings flag is
absent from the parsed arguments unless it was given (``argparse.SUPPRESS``); the given ones are
merged into the file's values before validation (:func:`overrides_from`). Bad input
ends the program with exit status 2 and one line naming the file or value, what was
expected, and how to fix it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..errors import UserError
from .experiments import add_experiments
from .export import add_export
from .flags import DEFAULT_PARAMS, Parser, params_path
from .inference import add_evaluate, add_predict
from .inspect import add_inspect
from .prepare import add_generate, add_patches
from .submit import add_submit
from .train import add_train, add_train_arguments, run_train

__all__ = ["DEFAULT_PARAMS", "PROG", "build_parser", "main", "params_path", "run_guarded", "train_main"]

log = logging.getLogger("unet_patches")
PROG = "unet-patches"


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="Patch-based multiclass segmentation: synthetic data, random patches, "
        "U-Net training and sliding-window inference for images of any size.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in (
        add_generate,
        add_patches,
        add_inspect,
        add_train,
        add_predict,
        add_evaluate,
        add_submit,
        add_export,
        add_experiments,
    ):
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
