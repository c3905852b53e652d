"""What a :class:`~.segmenter.Segmenter` does, each through one
:class:`~unet_patches.inference.job.PredictionJob`: segment an array (:func:`predict`), score a
labelled folder (:func:`evaluate_folder`, :func:`score_pairs`), predict image files into an output
folder (:func:`predict_files`: sharded between processes, or one image split by rows). These are the
Python API (:mod:`unet_patches.api`) and what the command line calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_patches.atomic import write_atomically
from unet_patches.data.folders import Pair, find_pairs
from unet_patches.errors import UserError
from unet_patches.files.formats import OUTPUT_FORMATS, check_probs_dtype
from unet_patches.files.plan import DEFAULT_STREAM_THRESHOLD_PX, expand_inputs, plan_outputs
from unet_patches.files.shards import Shard, finish_shard, open_row_block, share
from unet_patches.files.sources import image_size
from unet_patches.metrics import ConfusionMatrix
from unet_patches.metrics.calibration import PixelSample, fit_temperature
from unet_patches.metrics.uncertainty import review_section

from .job import Calibration, PredictionJob, WrittenFiles
from .segmenter import Segmenter
from .tiling.sizing import Window

__all__ = ["evaluate_folder", "fit_calibration", "predict", "predict_files", "score_pairs"]


def predict(
    segmenter: Segmenter, image: np.ndarray, *, window: Window = "auto", return_probs: bool = False, **options: Any
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment one image with sliding windows.

    Args:
        segmenter: from :meth:`Segmenter.from_checkpoint`.
        image: ``(H, W)`` or ``(H, W, C)`` array, uint8, uint16 or float, as read from a file;
            preprocessed as training did (``segmenter.preprocess``: channels, resize, normalisation).
        window: ``auto`` (sized for speed), ``patch`` (the training patch) or a size in pixels;
            see :mod:`unet_patches.inference.tiling.sizing`.
        return_probs: also return the blended ``(K, H, W)`` float32 probabilities.
        options: ``overlap`` (``auto`` or a fraction), ``batch_size`` (windows of the training patch
            per pass), ``precision``, ``compile`` (default false here: one image rarely repays it),
            ``device`` and the predictor's keyword arguments (``blend``, ``padding``, ``tta``, ...);
            ``Config.inference.predictor_options()`` gives those of ``parameters.json``. Each call
            is a job of its own, which prepares its copy of the network; for many images make one
            :class:`PredictionJob` and call its ``labels``.

    Returns:
        ``(H, W)`` uint8 label mask, or ``(labels, probs)``.

    Raises:
        UserError: the image has an unsupported shape or dtype, or an option is invalid.
    """
    if not isinstance(image, np.ndarray):
        raise UserError(f"image of type {type(image).__name__}: expected a numpy array (H, W) or (H, W, C)")
    job = PredictionJob(segmenter, [image.shape[:2]], window=window, **{"compile": False, **options})
    return job.labels(image, return_probs=return_probs)


def evaluate_folder(
    segmenter: Segmenter,
    folder: str | Path,
    *,
    window: Window = "auto",
    progress: bool = False,
    calibration: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Full-image predictions for an ``images/`` + ``masks/`` folder scored against its masks.

    ``window`` and ``options`` are as for :func:`predict` (``compile`` defaults to ``auto``). Images
    are read and masks decoded as the training run did (its mask tables, page); scores are at each
    image's own size, also for a checkpoint trained with ``data.resize``.

    Returns ``{"miou", "mean_dice", "pixel_accuracy", "iou": {class: value}, "dice": {...}, "images": n,
    "pixels": n}`` from one confusion matrix over the whole folder (classes absent from truth and
    prediction are ``None`` and left out of the means).

    With ``calibration`` it also says how far the probabilities can be believed, counted over every
    pixel (:mod:`unet_patches.metrics.calibration`): ``ece``, ``nll``, ``brier`` and ``ece_per_class`` of the
    probabilities as written (calibrated by the model's temperature), the same keys with
    ``_uncalibrated`` for the network's own, ``temperature``, and the ``reliability`` bins of both.
    """
    pairs = find_pairs(folder)
    counts = Calibration(segmenter.num_classes, segmenter.temperature) if calibration else None
    matrix = score_pairs(segmenter, pairs, window=window, progress=progress, calibration=counts, **options)
    pixels = int(matrix.matrix.sum())  # every mask pixel is a class index, so each is counted once
    names = list(segmenter.class_names)
    scores = {**matrix.summary(names), "images": len(pairs), "pixels": pixels}
    return scores if counts is None else {**scores, **counts.summary(names)}


def score_pairs(
    segmenter: Segmenter,
    pairs: Sequence[Pair],
    *,
    window: Window = "auto",
    progress: bool = False,
    keep: Callable[[Pair, np.ndarray], None] | None = None,
    calibration: Calibration | PixelSample | None = None,
    **options: Any,
) -> ConfusionMatrix:
    """Full-image predictions of image/mask ``pairs`` in one job, counted into one confusion matrix;
    ``keep(pair, labels)`` is handed each prediction (e.g. to save it); ``calibration`` counts the
    probabilities too (:meth:`PredictionJob.score`)."""
    sizes = [image_size(pair.image, segmenter.preprocess.page) for pair in pairs]
    job = PredictionJob(segmenter, sizes, window=window, **options)
    return job.score(pairs, progress=progress, keep=keep, calibration=calibration)


def fit_calibration(
    job: PredictionJob, count: Callable[[Calibration | PixelSample], Any], *, source: str, seed: int = 0
) -> dict[str, Any]:
    """The temperature that calibrates ``job``'s blended probabilities on labelled images, and the
    figures before and after: the ``calibration`` record a checkpoint keeps.

    ``count(counter)`` predicts the labelled images with ``job`` and counts their probabilities into
    ``counter`` (:meth:`PredictionJob.score` or :meth:`PredictionJob.count`); it is called twice: the
    first pass samples pixels (:class:`~unet_patches.metrics.calibration.PixelSample`) and the
    temperature is fitted on them (:func:`~unet_patches.metrics.calibration.fit_temperature`), the
    second counts every pixel with and without it, so that the figures are exact. ``source`` says
    what the images were (kept in the record)."""
    classes = job.segmenter.num_classes
    sample = PixelSample(classes, seed=seed)
    count(sample)
    temperature = fit_temperature(*sample.arrays())
    counts = Calibration(classes, temperature)
    count(counts)
    figures = ("ece", "nll", "brier")
    before, after = counts.before.summary(), counts.after.summary()
    return {
        "temperature": temperature,
        "fitted_on": source,
        "pixels": counts.after.pixels,
        "sample_pixels": sample.size,
        "before": {key: before[key] for key in figures},
        "after": {key: after[key] for key in figures},
    }


def predict_files(
    segmenter: Segmenter,
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    window: Window = "auto",
    probs: bool = False,
    overlay: bool = True,
    overwrite: bool = False,
    uncertainty: bool = False,
    stream_threshold_px: int = DEFAULT_STREAM_THRESHOLD_PX,
    output_format: str = "auto",
    shard: Shard | None = None,
    level: int = 0,
    probs_dtype: str = "uint8",
    progress: bool = True,
    **options: Any,
) -> WrittenFiles:
    """Segment image files and write their outputs to ``out_dir``; returns the written paths.

    ``inputs``: files, folders or glob patterns (:func:`~unet_patches.files.plan.expand_inputs`). Each
    ``<stem>`` gets ``<stem>_labels.png`` (``.tif`` above ``stream_threshold_px`` pixels: streamed),
    ``<stem>_overlay.png`` (``overlay``) and ``<stem>_probs.npy`` (``probs``), or the files of
    ``output_format`` (:data:`~unet_patches.files.formats.OUTPUT_FORMATS`; ``probs_dtype``: ``uint8`` or
    ``float16`` where it keeps either). ``uncertainty``: ``<stem>_uncertainty`` too, and each image's review
    summary in ``OUT/report.json`` (:func:`write_review_report`) and the list's ``uncertainty``. ``level``: the
    pyramid level of TIFF and Zarr inputs. ``window``, ``options``: as for :func:`evaluate_folder`.
    ``shard`` (:func:`~unet_patches.files.shards.shard_from`): only this process's share of the files,
    images whose outputs all exist skipped, a shard report written; one image given to several shards is
    split by rows (:meth:`PredictionJob.write_block`).

    Several predictions may write into one ``out_dir`` at once: each image is written by one of
    them (:mod:`~unet_patches.files.claims`); the returned list's ``busy`` names the images this one
    left to the others.

    Raises:
        UserError: a missing or unreadable input, or an output that exists without ``overwrite``;
            every input and output is checked before anything is written.
    """
    files, out_dir = expand_inputs(inputs), Path(out_dir)
    common = {"probs": probs, "overwrite": overwrite, "level": level}
    report = _check_review_report(files, out_dir, shard, uncertainty, overwrite)
    if shard is not None and len(files) == 1 and shard.count > 1:  # one image over several shards
        rows = {"progress": progress, "window": window, **common}
        return _predict_rows(segmenter, files[0], out_dir, shard, output_format, probs_dtype, **rows, **options)
    if probs:
        check_probs_dtype(probs_dtype, output_format)
    files = files if shard is None else share(files, shard)
    skip = shard is not None  # a sharded job skips images already predicted
    plans = plan_outputs(
        files,
        out_dir,
        overlay=overlay,
        stream_threshold_px=stream_threshold_px,
        page=segmenter.preprocess.page,
        output_format=output_format,
        skip_finished=skip,
        uncertainty=uncertainty,
        **common,
    )
    written = WrittenFiles()
    if plans:  # a sharded job run again may find every image done: nothing to settle
        job = PredictionJob(segmenter, [plan.size for plan in plans], window=window, **options)
        written = job.write_all(plans, level=level, probs_dtype=probs_dtype, progress=progress)
    if shard is not None:
        skipped = [f for f in files if f not in {plan.image for plan in plans}]
        finish_shard(out_dir, shard, written, skipped, written.busy, written.uncertainty)
    elif report is not None:
        write_review_report(report, written)
    return written


def _check_review_report(
    files: Sequence[Path], out_dir: Path, shard: Shard | None, uncertainty: bool, overwrite: bool
) -> Path | None:
    """Where a prediction with uncertainty maps writes its review report (None: nowhere, or in the
    shard's report), checked before any work.

    Raises:
        UserError: one image split over shards (its maps are not written that way yet), or a
            ``report.json`` that exists without ``overwrite``.
    """
    if not uncertainty:
        return None
    if shard is not None and len(files) == 1 and shard.count > 1:
        raise UserError(
            f"{files[0]}: --uncertainty is not written yet for one image split over {shard.count} shards; "
            "predict the image in one process (or several images, one per shard)"
        )
    report = out_dir / "report.json"
    if shard is None and report.exists() and not overwrite:
        raise UserError(f"{report}: already exists; pass --overwrite to replace it, or choose another output folder")
    return None if shard is not None else report


def write_review_report(path: Path, written: WrittenFiles) -> None:
    """``path`` (``OUT/report.json`` of a prediction with uncertainty maps, :mod:`unet_patches.metrics.uncertainty`:
    the normalised entropy of the calibrated probabilities as uint8): the files written, the images left
    to another prediction, each image's review summary and the images in review order."""
    report = {
        "written": [str(p) for p in written],
        "busy": [str(p) for p in written.busy],
        "uncertainty": {},
        "review": [],
    }
    report.update(review_section(written.uncertainty))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))


def _predict_rows(
    segmenter: Segmenter,
    image: Path,
    out_dir: Path,
    shard: Shard,
    output_format: str,
    probs_dtype: str,
    *,
    probs: bool,
    overwrite: bool,
    level: int,
    progress: bool,
    window: Window,
    **options: Any,
) -> WrittenFiles:
    """Shard ``shard``'s rows of one image into the stores every shard fills; writes the shard report.
    The job is settled only when some of its rows are left to compute.

    Raises:
        UserError: a format whose stores cannot be shared, a checkpoint that resizes images, or a
            store begun by another job without ``overwrite``.
    """
    shared = [fmt for fmt in OUTPUT_FORMATS.values() if fmt.shared]
    fmt = shared[0] if output_format == "auto" else OUTPUT_FORMATS.lookup(output_format, "output format")
    if not fmt.shared:
        raise UserError(
            f"--format {output_format}: one image split over {shard.count} shards is written as one store "
            f"that every shard fills in; use --format {' or '.join(f.name for f in shared)}, or predict the "
            "image in one process"
        )
    if probs:
        check_probs_dtype(probs_dtype, fmt.name)
    if segmenter.preprocess.resize is not None:
        raise UserError(
            f"{image}: the checkpoint resizes images (data.resize), which needs the image whole; "
            "predict it in one process"
        )
    size = image_size(image, segmenter.preprocess.page, level)
    identity = {"image": str(image.resolve()), "page": segmenter.preprocess.page, "level": level, "size": list(size)}
    identity.update(model=segmenter.identity(), window=repr(window), options=repr(sorted(options.items())))
    block = open_row_block(
        image,
        size,
        out_dir,
        shard,
        fmt,
        identity,
        probs=probs,
        classes=segmenter.num_classes,
        probs_dtype=probs_dtype,
        overwrite=overwrite,
    )
    if block is None or block.todo is None:  # no rows for this shard, or all finished by an earlier run
        finish_shard(out_dir, shard, [], [] if block is None else [image])
        return WrittenFiles()
    job = PredictionJob(segmenter, [size], window=window, **options)
    written = job.write_block(image, block, probs=probs, level=level, progress=progress)
    finish_shard(out_dir, shard, written, [])
    return WrittenFiles(written)
