"""A prediction job over many files split between processes: which files this process predicts, and
one report of what every process did.

The share is given by ``--shard I/N`` (I counted from 0), or read from the launcher: torchrun's
``RANK`` / ``WORLD_SIZE``, or a SLURM array's ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``
(less ``SLURM_ARRAY_TASK_MIN``). The rule is stable: the input files sorted by path, file ``k`` going to
shard ``k mod N``, so every process agrees without talking to the others and the order the files were
given in does not matter. A sharded job skips images whose outputs all exist (writers put a file in
place only when it is complete), so a killed shard run again loses nothing and redoes nothing. Each
shard writes ``<out>/.shards/shard-I-of-N.json``; ``unet-patches merge-report <out>`` joins them into
``<out>/report.json`` and names the shards still missing. Under torchrun, rank 0 waits for the others
(a gloo barrier) and writes ``report.json`` itself.

One image given to several shards is split instead by rows (:func:`row_block`): shard ``i`` takes an
even share of the output's 512-row chunk rows, computes exactly the windows that touch them (the
blender's ``rows``: the halo is the windows reaching into the block from above and below) and writes
them into one store that every shard fills
(:meth:`~unet_patches.inference.job.PredictionJob.write_rows`). The result is identical to one
process's, bit for bit, when the shards run the same network choice (``precision`` and ``compile``
are decided per shard on the whole image's work; pin them to be sure).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_patches.atomic import write_atomically
from unet_patches.errors import UserError
from unet_patches.metrics.uncertainty import review_section

from .formats import OutputFormat
from .plan import output_paths
from .shared_zarr import CHUNK, SharedZarrRows

__all__ = [
    "RowBlock",
    "Shard",
    "finish_shard",
    "gather_report",
    "merge_report",
    "open_row_block",
    "row_block",
    "shard_from",
    "share",
    "write_shard_report",
]

REPORTS = ".shards"


@dataclass(frozen=True)
class Shard:
    """This process's share: shard ``index`` of ``count``, and where that was read from."""

    index: int
    count: int
    source: str = "--shard"

    def describe(self) -> str:
        return f"shard {self.index}/{self.count} ({self.source})"


def shard_from(text: str | None = None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of ``--shard I/N`` (``text``), else of the launcher's environment; None for a job
    that is not split.

    Raises:
        UserError: ``text`` is not ``I/N`` with ``0 <= I < N``, or the environment's values are not.
    """
    env = os.environ if environ is None else environ
    if text is not None:
        index, slash, count = str(text).partition("/")
        return _checked(index, count if slash else "", f"--shard {text}", "--shard")
    if int(env.get("WORLD_SIZE", "1") or 1) > 1:
        return _checked(env.get("RANK", ""), env["WORLD_SIZE"], "RANK / WORLD_SIZE", "torchrun")
    if "SLURM_ARRAY_TASK_COUNT" in env:
        task, first = env.get("SLURM_ARRAY_TASK_ID", ""), env.get("SLURM_ARRAY_TASK_MIN", "0")
        index = str(int(task) - int(first)) if task.isdigit() and first.isdigit() else task
        shard = _checked(index, env["SLURM_ARRAY_TASK_COUNT"], "SLURM_ARRAY_TASK_ID / COUNT", "SLURM array")
        return shard if shard.count > 1 else None
    return None


def _checked(index: str, count: str, what: str, source: str) -> Shard:
    if not (str(index).isdigit() and str(count).isdigit()) or not 0 <= int(index) < int(count):
        raise UserError(f"{what}: expected I/N with 0 <= I < N (shards counted from 0), e.g. --shard 0/4")
    return Shard(int(index), int(count), source)


def share(files: Sequence[Path], shard: Shard) -> list[Path]:
    """This shard's files: sorted by path, every ``count``-th from ``index``."""
    return [path for k, path in enumerate(sorted(files, key=str)) if k % shard.count == shard.index]


def write_shard_report(
    out_dir: Path,
    shard: Shard,
    written: Sequence[Path],
    skipped: Sequence[Path],
    busy: Sequence[Path] = (),
    uncertainty: Mapping[str, Any] | None = None,
) -> Path:
    """This shard's ``<out>/.shards/shard-I-of-N.json``: the files it wrote, the images it skipped
    (their outputs were all there), those it left to another prediction into the same folder
    (``busy``: one was writing them), and the review summaries of the images it wrote uncertainty
    maps of (``uncertainty``, by image)."""
    path = out_dir / REPORTS / f"shard-{shard.index}-of-{shard.count}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"shard": shard.index, "shards": shard.count, "written": [str(p) for p in written]}
    report["skipped"] = [str(p) for p in skipped]
    report["busy"] = [str(p) for p in busy]
    report["uncertainty"] = dict(uncertainty or {})
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return path


def merge_report(out_dir: str | Path) -> dict[str, Any]:
    """Join the shard reports of ``out_dir`` into ``<out>/report.json`` (written atomically); returns it.

    Raises:
        UserError: no shard reports in ``out_dir``, or reports of different shard counts.
    """
    out_dir = Path(out_dir)
    reports = []
    for path in sorted((out_dir / REPORTS).glob("shard-*-of-*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable shard report ({exc}); run that shard again") from None
    if not reports:
        raise UserError(f"{out_dir}: no shard reports in {out_dir / REPORTS}; run predict with --shard first")
    counts = {r["shards"] for r in reports}
    if len(counts) != 1:
        raise UserError(f"{out_dir}: shard reports of {sorted(counts)} shards; predict all shards with one N")
    count = counts.pop()
    done = sorted(r["shard"] for r in reports)
    merged = {
        "shards": count,
        "finished": done,
        "missing": [i for i in range(count) if i not in done],
        "written": sorted(p for r in reports for p in r["written"]),
        "skipped": sorted(p for r in reports for p in r["skipped"]),
        "busy": sorted(p for r in reports for p in r.get("busy", [])),  # reports before "busy" lack it
    }
    merged.update(
        review_section({image: summary for r in reports for image, summary in r.get("uncertainty", {}).items()})
    )
    write_atomically(out_dir / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(merged, indent=1)))
    return merged


def finish_shard(
    out_dir: Path,
    shard: Shard,
    written: Sequence[Path],
    skipped: Sequence[Path],
    busy: Sequence[Path] = (),
    uncertainty: Mapping[str, Any] | None = None,
) -> None:
    """This shard's report (:func:`write_shard_report`), then, under torchrun, the merged one
    (:func:`gather_report`)."""
    write_shard_report(out_dir, shard, written, skipped, busy, uncertainty)
    gather_report(out_dir, shard)


def gather_report(out_dir: Path, shard: Shard) -> dict[str, Any] | None:
    """Under torchrun (``MASTER_ADDR`` set, the shard read from ``RANK``/``WORLD_SIZE``): wait until
    every rank has written its report (a gloo barrier, patient for a day), then rank 0 merges them into
    ``<out>/report.json`` and returns the merged report. Otherwise nothing (run ``merge-report``)."""
    if shard.source != "torchrun" or "MASTER_ADDR" not in os.environ:
        return None
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(days=1))
    dist.barrier()
    merged = merge_report(out_dir) if shard.index == 0 else None
    dist.barrier()  # nobody leaves before the report is written
    return merged


def row_block(height: int, shard: Shard, chunk: int = CHUNK) -> tuple[int, int]:
    """Rows ``(start, stop)`` of shard ``shard`` of an image ``height`` rows high: an even share of its
    ``chunk``-row chunk rows (empty, ``start == stop``, for shards beyond the number of chunk rows)."""
    count = -(-height // chunk)
    first, last = shard.index * count // shard.count, (shard.index + 1) * count // shard.count
    return min(first * chunk, height), min(last * chunk, height)


@dataclass
class RowBlock:
    """This shard's block of rows of one image, in the stores that every shard fills: ``stores`` by
    output (``labels``, ``probs``), and ``todo``, the rows left to compute (None: an earlier run
    finished them all)."""

    stores: dict[str, SharedZarrRows]
    todo: tuple[int, int] | None


def open_row_block(
    image: Path,
    size: tuple[int, int],
    out_dir: Path,
    shard: Shard,
    fmt: OutputFormat,
    job: Mapping[str, Any],
    *,
    probs: bool,
    classes: int,
    probs_dtype: str = "uint8",
    overwrite: bool = False,
) -> RowBlock | None:
    """Open (or begin) the stores of ``fmt`` that every shard of ``job`` fills for one image of
    ``size`` (``<stem>_labels.zarr``, ``<stem>_probs.zarr``) and find this shard's rows (:func:`row_block`)
    that an earlier run did not finish; None when the shard has no rows (more shards than chunk rows).

    Raises:
        UserError: a store begun by another job (image, model or settings) without ``overwrite``.
    """
    start, stop = row_block(size[0], shard, fmt.block_rows)
    if start == stop:
        return None
    kinds = {"labels": (None, "uint8"), "probs": (classes, probs_dtype)}
    stores = {
        key: fmt.shared_store(
            path,
            *size,
            (start, stop),
            {**job, "output": key},
            classes=kinds[key][0],
            dtype=kinds[key][1],
            replace=overwrite,
        )
        for key, path in output_paths(image, out_dir, fmt, overlay=False, probs=probs).items()
    }
    todo = [r for r in (store.missing() for store in stores.values()) if r is not None]
    if not todo:
        return RowBlock(stores, None)
    first, last = min(r[0] for r in todo), max(r[1] for r in todo)
    for store in stores.values():
        store.begin_at(first)
    return RowBlock(stores, (first, last))
