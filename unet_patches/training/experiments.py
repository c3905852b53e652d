"""``unet-patches experiments GRID.json``: train several recipes on the same data and compare them.

A grid file holds ``base`` (overrides every run shares: data, epochs or time budget, seed), then either
``grid`` (axes such as model x loss, each value a label -> overrides) or ``runs`` (label -> overrides),
and ``test`` (a folder of full images and masks for the test columns)::

    {"base": {"training": {"folder": "synthetic/train", "epochs": 5}},
     "grid": {"model": {"unet": {"model": {"name": "unet"}}, "segnet": {"model": {"name": "segnet"}}},
              "loss": {"ce": {"training": {"loss": "ce"}}, "dice": {"training": {"loss": "dice"}}}},
     "test": "synthetic/test"}

Every run gets the same data, split, seed and epoch or time budget (axes may not change those), its own
``checkpoints/<run>`` and TensorBoard folder under the output folder, and one row in ``results.csv`` and
``results.md``; ``curves.png`` plots validation mIoU against training time. A finished run leaves
``results/<run>.json`` and is skipped next time; an interrupted one continues from its ``last.pt``.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_patches import console
from unet_patches.errors import UserError
from unet_patches.inference.predict import evaluate_folder
from unet_patches.inference.segmenter import Segmenter
from unet_patches.models import build_model, model_cost
from unet_patches.models.checkpoint import load_checkpoint
from unet_patches.parameters import merge

from . import resuming
from . import run as training
from .charts import line_chart
from .config import Config, load_config

__all__ = ["Plan", "read_grid", "run_experiments", "write_results"]

# Settings every run of an experiment shares; an axis that changed them would compare unlike things.
SHARED = ("data", "synthetic", "patches")
SHARED_TRAINING = (
    "folder",
    "seed",
    "val_fraction",
    "folds",
    "fold",
    "epochs",
    "time_budget_minutes",
    "samples_per_epoch",
)


@dataclass(frozen=True)
class Plan:
    """One run of an experiment: its label and its settings."""

    name: str
    config: Config


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected an object of settings sections, got {value!r}")
    return value


def _check_axis_overrides(overrides: dict[str, Any], where: str) -> None:
    for section, values in overrides.items():
        if section in SHARED:
            raise UserError(f'{where}: changes section {section!r}, which every run must share; put it in "base"')
        shared = [
            key for key in _object(values, f"{where}.{section}") if section == "training" and key in SHARED_TRAINING
        ]
        if shared:
            raise UserError(
                f"{where}: changes training.{shared[0]}, which every run must share (same data, split, seed and "
                'budget); put it in "base"'
            )


def _runs(grid: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """Run label -> overrides, from ``grid`` (the product of its axes) or ``runs``."""
    if ("grid" in grid) == ("runs" in grid):
        raise UserError(f'{path}: give either "grid" (axes of labelled overrides) or "runs" (labelled overrides)')
    if "runs" in grid:
        runs = _object(grid["runs"], f"{path}: runs")
    else:
        axes = _object(grid["grid"], f"{path}: grid")
        if not axes or not all(isinstance(v, dict) and v for v in axes.values()):
            raise UserError(f"{path}: grid: expected axes, each an object of label -> overrides")
        runs = {}
        for combo in itertools.product(*(axis.items() for axis in axes.values())):
            merged: dict[str, Any] = {}
            for label, overrides in combo:
                merged = merge(merged, _object(overrides, f"{path}: grid value {label!r}"))
            runs["-".join(label for label, _ in combo)] = merged
    for name, overrides in runs.items():
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"{path}: run label {name!r} cannot be a folder name; use letters, digits, - and _")
        _check_axis_overrides(_object(overrides, f"{path}: run {name!r}"), f"{path}: run {name!r}")
    return runs


def read_grid(path: str | Path, params: str | None, out_dir: Path, folds: int = 0) -> tuple[list[Plan], Path | None]:
    """The runs of a grid file, each validated, and the test folder (None: no test columns);
    ``folds``: every run a cross-validation of that many folds.

    Raises:
        UserError: the file is unreadable, not a grid, or a run's settings are invalid (named by run).
    """
    path = Path(path)
    try:
        grid = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the grid file ({exc.strerror}); pass an existing JSON file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
    grid = _object(grid, str(path))
    unknown = sorted(set(grid) - {"base", "runs", "grid", "test"} - {k for k in grid if k.startswith("_")})
    if unknown:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; a grid file has base, runs, grid, test"
        )
    base = _object(grid.get("base", {}), f"{path}: base")
    plans = []
    for name, overrides in _runs(grid, path).items():
        where = {
            "training": {
                "run_name": name,
                "checkpoint_dir": str(out_dir / "checkpoints"),
                "log_dir": str(out_dir / "runs"),
                **({"folds": folds} if folds else {}),
            }
        }
        try:
            config = load_config(params, merge(merge(base, overrides), where), overrides_source=f"{path}, run {name}")
        except UserError as exc:
            raise UserError(f"run {name!r}: {exc}") from None
        plans.append(Plan(name, config))
    test = grid.get("test")
    test_dir = None
    if test is not None:
        test_dir = Path(test) if Path(test).exists() else Path(plans[0].config.data.root) / test
        if not (test_dir / "images").is_dir():
            raise UserError(f"{path}: test folder {test_dir} has no images/; give a folder of images/ and masks/")
    return plans, test_dir


def _train_or_continue(plan: Plan, device: str | None) -> dict[str, Any]:
    last = Path(plan.config.training.checkpoint_dir) / plan.name / "last.pt"
    if last.is_file():
        return resuming.resume(last, device=device, progress_bars=False)
    return training.fit(plan.config, device=device, progress_bars=False)


def _crossvalidate(plan: Plan, device: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A grid cell with ``training.folds``: its cross-validation (folds finished before are skipped),
    as a training summary (the fold ensemble's folder as its checkpoint) and the row's CV columns."""
    from .crossval import DONE, run_crossval

    report = run_crossval(plan.config, device=device, progress_bars=False)
    assert report is not None, "one process trains every fold"
    cv_dir = Path(plan.config.training.checkpoint_dir) / plan.config.training.cv_name()
    folds = [json.loads((cv_dir / f"fold_{i}" / DONE).read_text()) for i in range(report["k"])]
    spread = report["fold_miou"]
    summary = {"best_checkpoint": str(cv_dir), "best_val_miou": report["pooled"]["miou"]}
    summary.update(epochs=folds[0]["epochs"], seconds=sum(float(f["seconds"]) for f in folds))
    return summary, {"folds": report["k"], "cv_fold_miou_mean": spread["mean"], "cv_fold_miou_std": spread["std"]}


def _run_one(plan: Plan, test_dir: Path | None, device: str | None) -> dict[str, Any]:
    started = time.monotonic()
    if plan.config.training.folds:  # best_val_miou is then the pooled out-of-fold mIoU
        summary, cv_columns = _crossvalidate(plan, device)
    else:
        summary, cv_columns = _train_or_continue(plan, device), {}
    train_seconds = summary["seconds"]
    config = plan.config
    row: dict[str, Any] = {
        "run": plan.name,
        "model": config.model.name,
        "loss": config.training.loss,
        "optimizer": config.training.optimizer,
        "schedule": config.training.schedule,
        **dict(zip(("parameters", "mflop_per_pixel"), _cost(config))),
        "best_val_miou": summary["best_val_miou"],
        **cv_columns,
        "epochs": summary["epochs"],
        "train_seconds": round(train_seconds, 1),
    }
    if test_dir is not None:
        segmenter = Segmenter.from_checkpoint(summary["best_checkpoint"], device=device)
        timer = time.monotonic()
        scores = evaluate_folder(segmenter, test_dir, **config.inference.predictor_options())
        seconds = time.monotonic() - timer
        row.update(test_miou=scores["miou"], **{f"iou_{k}": v for k, v in scores["iou"].items()})
        row["inference_mpx_per_s"] = round(scores["pixels"] / 1e6 / max(seconds, 1e-9), 3)
    row["wall_seconds"] = round(time.monotonic() - started, 1)
    return row


def _cost(config: Config) -> tuple[int, float]:
    parameters, mflop = model_cost(build_model(config.model, pretrained=False), config.patches.patch_size)
    return parameters, round(mflop, 4)


def run_experiments(
    grid_path: str | Path,
    out_dir: str | Path,
    *,
    params: str | None = None,
    device: str | None = None,
    progress: bool = True,
    folds: int = 0,
) -> list[dict[str, Any]]:
    """Train and score every run of the grid not yet finished (``folds``: each as a cross-validation,
    its row with the pooled out-of-fold mIoU and the spread of the folds); write the tables and chart."""
    out_dir = Path(out_dir)
    plans, test_dir = read_grid(grid_path, params, out_dir, folds)
    from .datasets import resolve_folder

    for plan in plans:  # before anything is written
        if not resolve_folder(plan.config).is_dir():
            raise UserError(
                f"{grid_path}: run {plan.name!r}: data folder {plan.config.training.folder} not found; check "
                "training.folder in the grid's base or the parameters file"
            )
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    bar = console.progress(len(plans), "experiments", "run", enabled=progress)
    rows = []
    for plan in plans:
        done = results / f"{plan.name}.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
        else:
            row = _run_one(plan, test_dir, device)
            done.write_text(json.dumps(row, indent=1) + "\n")
            rows.append(row)
        bar.update(1)
    bar.close()
    write_results(rows, out_dir, [plan.name for plan in plans])
    return rows


def write_results(rows: list[dict[str, Any]], out_dir: Path, names: list[str]) -> None:
    """``results.csv``, ``results.md`` and ``curves.png`` (validation mIoU against training time)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    series = {}
    for name in names:
        last = out_dir / "checkpoints" / name / "last.pt"
        if last.is_file():
            history = load_checkpoint(last)["history"]
            series[name] = [(h["seconds"], h["miou"]) for h in history if "miou" in h]
    line_chart(
        out_dir / "curves.png",
        series,
        x_label="training seconds",
        y_label="validation mIoU",
        title="validation mIoU against training time",
    )


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
