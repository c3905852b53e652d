"""``unet-patches crossval``: k-fold cross-validation of a training recipe, and its report.

Fold ``i`` trains in ``<checkpoint_dir>/<run>/fold_<i>/`` on every image outside fold ``i`` and
validates on fold ``i`` (:mod:`unet_patches.data.folds` draws the folds and keeps them in
``<run>/splits.json``). The folds are independent jobs: one after the other, or shared between
processes (``--shard I/N``, torchrun's ``RANK``/``WORLD_SIZE``, a SLURM array), each process taking
folds ``I, I + N, ...``. A fold with ``fold_done.json`` is skipped; a fold with a ``last.pt`` but no
mark was interrupted and is resumed from it; so a killed cross-validation run again trains only what
is missing.

When every fold is finished, each fold's ``best.pt`` predicts its held-out images at full size (the
source images of a patch folder); the labels are kept in ``<run>/oof/<name>.png`` and scored against
the masks. The report (``<run>/cv.json``, ``<run>/cv.md``) gives each fold's scores and the overall
scores from the **pooled** confusion matrix of all out-of-fold predictions (not the mean of the fold
scores), with the spread of the fold mIoUs. The run folder is also a checkpoint for ``predict`` /
``evaluate`` / ``submit``: the K fold models averaged in one tiled pass (:mod:`unet_patches.inference.ensemble`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from unet_patches.atomic import write_atomically
from unet_patches.data.folders import Pair, find_pairs
from unet_patches.data.folds import Splits, split_units, splits_for
from unet_patches.data.imageio import write_png
from unet_patches.errors import UserError
from unet_patches.files.shards import Shard
from unet_patches.inference.predict import score_pairs
from unet_patches.inference.segmenter import Segmenter
from unet_patches.metrics import ConfusionMatrix

from .config import Config
from .datasets import resolve_folder

__all__ = ["DONE", "out_of_fold_report", "run_crossval"]

log = logging.getLogger(__name__)

DONE = "fold_done.json"
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_crossval(
    config: Config,
    *,
    shard: Shard | None = None,
    overwrite: bool = False,
    device: str | None = None,
    progress_bars: bool = True,
) -> dict[str, Any] | None:
    """Train this process's folds of ``config`` (``training.folds`` = k), then, when every fold is
    finished, write the report; returns it (None while folds are missing).

    Raises:
        UserError: ``training.folds`` is not set, or a setting, the data or a stored split is bad.
    """
    from . import resuming  # the training stack, loaded only by this command
    from . import run as training

    t = config.training
    if t.folds < 2:
        raise UserError("crossval needs -k K (training.folds) of at least 2")
    cv_dir = Path(t.checkpoint_dir) / t.cv_name()
    splits = splits_for(resolve_folder(config), t.folds, t.seed, cv_dir)
    mine = [i for i in range(t.folds) if shard is None or i % shard.count == shard.index]
    if shard is not None:
        for name in LAUNCHER_VARIABLES:  # each fold is a job of its own, not a rank of one DDP run
            os.environ.pop(name, None)
    for fold in mine:
        fold_dir = cv_dir / f"fold_{fold}"
        if overwrite:
            (fold_dir / DONE).unlink(missing_ok=True)
        if (fold_dir / DONE).is_file():
            log.info("fold %d/%d: finished before, skipped", fold + 1, t.folds)
            continue
        log.info("fold %d/%d: %d validation images", fold + 1, t.folds, len(splits.validation(fold)))
        fold_config = config.merged({"training": {"fold": fold}})
        if (fold_dir / "last.pt").is_file() and not overwrite:
            summary = resuming.resume(fold_dir / "last.pt", device=device, progress_bars=progress_bars)
        else:
            summary = training.fit(fold_config, overwrite=overwrite, device=device, progress_bars=progress_bars)
        text = json.dumps({k: v for k, v in summary.items() if k != "history"}, default=str)
        write_atomically(fold_dir / DONE, lambda tmp, text=text: Path(tmp).write_text(text))
    missing = [i for i in range(t.folds) if not (cv_dir / f"fold_{i}" / DONE).is_file()]
    if missing:
        log.info("folds still to train (other processes, or a later run): %s", missing)
        return None
    return out_of_fold_report(cv_dir, splits, device=device, progress=progress_bars)


def out_of_fold_report(
    cv_dir: Path, splits: Splits, *, device: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Each fold's ``best.pt`` on its held-out images at full size: labels to ``<cv_dir>/oof/``, scores
    per fold and from the pooled confusion matrix; ``cv.json`` and ``cv.md`` written; returns the report.

    Raises:
        UserError: the full images are gone (a patch folder's source folder moved), or a checkpoint is.
    """
    _, _, images_dir = split_units(Path(splits.folder))
    pairs = {pair.name: pair for pair in find_pairs(images_dir)} if images_dir.is_dir() else {}
    absent = sorted(set(splits.folds) - set(pairs))
    if absent:
        raise UserError(
            f"{images_dir}: the full images of the cross-validation are missing ({', '.join(absent[:3])}"
            f"{', ...' if len(absent) > 3 else ''}); the out-of-fold scores need them, put them back there"
        )
    oof = cv_dir / "oof"
    oof.mkdir(exist_ok=True)

    def keep(pair: Pair, labels: np.ndarray) -> None:
        write_atomically(oof / f"{pair.name}.png", lambda tmp: write_png(tmp, labels))

    folds, pooled = [], None
    for fold in range(splits.k):
        segmenter = Segmenter.from_checkpoint(cv_dir / f"fold_{fold}" / "best.pt", device=device)
        held_out = [pairs[name] for name in sorted(splits.validation(fold))]
        matrix = score_pairs(segmenter, held_out, progress=progress, keep=keep)
        pooled = pooled or ConfusionMatrix(segmenter.num_classes)
        pooled.matrix += matrix.matrix
        folds.append({"fold": fold, "images": len(held_out), **matrix.summary(list(segmenter.class_names))})
    assert pooled is not None  # k >= 2 folds
    report = _report(splits, folds, pooled.summary(list(segmenter.class_names)))
    write_atomically(cv_dir / "cv.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    write_atomically(cv_dir / "cv.md", lambda tmp: Path(tmp).write_text(cv_markdown(report)))
    return report


def _report(splits: Splits, folds: list[dict[str, Any]], pooled: dict[str, Any]) -> dict[str, Any]:
    scores = np.array([f["miou"] for f in folds], dtype=np.float64)
    spread = {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0}
    spread.update(min=float(scores.min()), max=float(scores.max()))
    return {
        "k": splits.k,
        "seed": splits.seed,
        "folder": splits.folder,
        "pooled": pooled,
        "fold_miou": spread,
        "folds": folds,
    }


def cv_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table: a row per fold, then the pooled out-of-fold row."""
    names = list(report["pooled"]["iou"])
    head = "| fold | images | mIoU | " + " | ".join(f"IoU {n}" for n in names) + " | mean Dice |"
    lines = [head, "|" + "---|" * (4 + len(names))]

    def row(label: str, images: Any, scores: dict[str, Any]) -> str:
        ious = " | ".join("-" if scores["iou"][n] is None else f"{scores['iou'][n]:.4f}" for n in names)
        return f"| {label} | {images} | {scores['miou']:.4f} | {ious} | {scores['mean_dice']:.4f} |"

    for fold in report["folds"]:
        lines.append(row(str(fold["fold"]), fold["images"], fold))
    total = sum(f["images"] for f in report["folds"])
    lines.append(row("**pooled out-of-fold**", total, report["pooled"]))
    spread = report["fold_miou"]
    lines += [
        "",
        f"{report['k']}-fold cross-validation of {report['folder']} (seed {report['seed']}): pooled out-of-fold "
        f"mIoU {report['pooled']['miou']:.4f}; fold mIoU {spread['mean']:.4f} +- {spread['std']:.4f} "
        f"(min {spread['min']:.4f}, max {spread['max']:.4f}).",
    ]
    return "\n".join(lines) + "\n"
