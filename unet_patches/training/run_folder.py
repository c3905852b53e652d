"""A run folder's checkpoints between runs: what it holds, clearing it for ``--overwrite``, tidying it
after a crash (temporary files of interrupted writes, a ``best.pt`` that disagrees with ``last.pt``),
and copying a run into a new folder for ``--resume --run-name``. Rank 0 calls these."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from unet_patches.atomic import write_atomically
from unet_patches.models.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["clear", "fork", "held_checkpoints", "listed", "remove_interrupted_writes", "tidy"]

log = logging.getLogger(__name__)


def held_checkpoints(run_dir: Path) -> list[str]:
    """Names of the ``.pt`` files in ``run_dir`` (none if it does not exist), sorted."""
    return sorted(p.name for p in run_dir.glob("*.pt")) if run_dir.is_dir() else []


def listed(names: list[str]) -> str:
    """The first three names, and ``...`` for more (for messages)."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def clear(run_dir: Path, held: list[str]) -> None:
    """Remove the checkpoints of an earlier run that ``--overwrite`` replaces: its snapshots must not
    join the new run's ensemble."""
    for name in held:
        if name in ("best.pt", "last.pt") or name.startswith("snapshot_"):
            (run_dir / name).unlink(missing_ok=True)
            log.info("removed %s of the earlier run (--overwrite)", run_dir / name)


def remove_interrupted_writes(run_dir: Path) -> None:
    """Remove the temporary files of checkpoint writes that a crash interrupted (each said in a warning)."""
    for stale in sorted(run_dir.glob(".*.pt.*.tmp")) if run_dir.is_dir() else []:
        stale.unlink(missing_ok=True)
        log.warning("removed %s, left by an interrupted checkpoint write", stale)


def tidy(run_dir: Path, last: dict[str, Any]) -> None:
    """Before a resume from ``last`` (the state of ``run_dir/last.pt``): remove interrupted writes and
    make ``best.pt`` agree with ``last.pt`` (each step said in a warning)."""
    remove_interrupted_writes(run_dir)
    best_path = run_dir / "best.pt"
    best_epoch = last["best_epoch"]
    if best_epoch is None:
        return
    held = load_checkpoint(best_path)["epoch"] if best_path.is_file() else None
    if held == best_epoch or (held is not None and held > last["epoch"]):
        return  # consistent, or written just before a crash in an epoch that is now redone
    if best_epoch == last["epoch"]:
        save_checkpoint(last, best_path)
        log.warning("%s held epoch %s, not the best epoch %s: rewritten from last.pt", best_path, held, best_epoch)
    else:
        log.warning(
            "%s holds epoch %s but last.pt records the best epoch as %s (a crash between the two writes); "
            "it is replaced when a later epoch scores higher",
            best_path,
            held,
            best_epoch,
        )


def fork(source_dir: Path, run_dir: Path, held: list[str], last: dict[str, Any]) -> None:
    """Make ``run_dir`` the folder of the run of ``source_dir`` continued from ``last``, leaving
    ``source_dir`` as it is: an earlier run there (``held``, ``--overwrite``) removed, the source's
    ``best.pt`` and snapshots copied (atomically) and the copy tidied against ``last``."""
    clear(run_dir, held)
    run_dir.mkdir(parents=True, exist_ok=True)
    for source in [source_dir / "best.pt", *sorted(source_dir.glob("snapshot_*.pt"))]:
        if source.is_file():
            write_atomically(run_dir / source.name, lambda tmp, source=source: shutil.copyfile(source, tmp), fsync=True)
    tidy(run_dir, last)
