"""``inspect``: report on a data folder before training (pairs, sizes, pixel types, mask values, the
split) and list every problem training would stop on; exit status 2 when there is one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from unet_patches.errors import UserError

from .flags import add_data_settings, add_params, config_from_args, overrides_from, setting

__all__ = ["add_inspect"]


def add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="report on a data folder and list every problem before training",
        description="Read every image and mask of DATA_DIR once (through the decode cache) and report: "
        "counts and unmatched files, sizes, pixel types, channels and value ranges, raw mask values and "
        "class shares after the mask tables, and the training / validation split. Every problem "
        "training would stop on is listed; the exit status is 2 when there is one.",
    )
    p.add_argument(
        "folder",
        metavar="DATA_DIR",
        help="images/ + masks/, X.tif + X_mask.tif (Kaggle) or a patch folder; relative paths are also "
        "tried under data.root, as training.folder is",
    )
    setting(p, "-s", "--size", key="patches.patch_size", type=int, help="patch size")
    setting(p, "--val-fraction", key="training.val_fraction", type=float, help="share held back for validation")
    setting(p, "--seed", key="training.seed", type=int, help="random seed of the split")
    add_data_settings(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    add_params(p)
    p.set_defaults(run=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from unet_patches.data.inspection import format_report, inspect_folder
    from unet_patches.training.datasets import resolve_folder

    overrides = overrides_from(args)
    overrides.setdefault("training", {})["folder"] = args.folder
    config = config_from_args(args, overrides)
    folder = resolve_folder(config)
    if not folder.is_dir():
        tried = f", nor {folder} under data.root" if str(folder) != args.folder else ""
        raise UserError(f"{args.folder}: data folder not found{tried}; check the path")
    t = config.training
    report = inspect_folder(
        folder, config.data, patch_size=config.patches.patch_size, val_fraction=t.val_fraction, seed=t.seed
    )
    print(json.dumps(report.to_dict()) if args.json else format_report(report))
    if report.problems:  # the report is on stdout; the error line on stderr, as for every command
        more = f" (and {len(report.problems) - 1} more in the report)" if len(report.problems) > 1 else ""
        print(f"unet-patches inspect: error: {report.problems[0]}{more}", file=sys.stderr)
        return 2
    return 0
