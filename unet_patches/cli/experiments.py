"""``experiments``: train the runs of a grid file on the same data and write the comparison table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .flags import add_params, params_path

__all__ = ["add_experiments"]


def add_experiments(sub: Any) -> None:
    p = sub.add_parser(
        "experiments",
        help="train several recipes on the same data and write a comparison table",
        description="Train every run of GRID.json (a grid of model x loss x ... overrides, or a list of runs) on "
        "the same data, split, seed and budget, score each on the test folder, and write results.csv, results.md "
        "and curves.png (validation mIoU against training time). Finished runs are skipped and an interrupted "
        "run continues from its last.pt, so the command can be run again after a crash.",
    )
    p.add_argument("grid", help="the grid file (see docs/EXPERIMENTS.md)")
    p.add_argument("-o", "--out", help="output folder (default: experiments/<grid file name>)")
    p.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="run every cell as a K-fold cross-validation: its row gets the pooled out-of-fold mIoU "
        "(best_val_miou), the mean and spread of the fold mIoUs, and the fold ensemble's test mIoU",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_params(p)
    p.set_defaults(run=_experiments)


def _experiments(args: argparse.Namespace) -> int:
    from unet_patches.training.experiments import run_experiments

    out = Path(args.out) if args.out else Path("experiments") / Path(args.grid).stem
    run_experiments(
        args.grid,
        out,
        params=params_path(args.params),
        device=args.device,
        progress=not args.no_progress,
        folds=args.folds,
    )
    print((out / "results.md").read_text(), end="")
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and {out / 'curves.png'}")
    return 0
