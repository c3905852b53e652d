"""A prediction job: one network and one set of settings, decided once for all the images of the job
(:class:`PredictionJob`), then run image by image: arrays, labelled pairs, files, or one image's block
of rows among several processes. ``predict``, ``evaluate``, ``submit``, sharded and row-block
prediction and serving all go through one.

What is decided once, before any image (so that a job runs wholly one way):

- ``precision: auto`` becomes ``int8`` where :func:`~unet_patches.inference.int8.int8_for_job` says so
  (a CPU with int8 dot products, an int8 network cached or worth building for the job's size);
- ``compile: auto`` becomes true or false (:func:`~unet_patches.inference.compiling.decide_compile`);
- the window plan of each image size (:meth:`Segmenter.plan`), and a predictor per plan, kept for the
  rest of the job (so a compiled network is compiled once per window shape).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from unet_patches import console
from unet_patches.data.folders import Pair, read_pair
from unet_patches.data.preprocess import resize_image, resize_probabilities
from unet_patches.files.claims import take_claim
from unet_patches.files.plan import OutputPlan, open_array, open_image, remove_stale_parts, write_outputs
from unet_patches.files.rows import RowSource
from unet_patches.files.shards import RowBlock
from unet_patches.files.writers import Band
from unet_patches.metrics import ConfusionMatrix
from unet_patches.metrics.calibration import CalibrationCounts, PixelSample, apply_temperature
from unet_patches.metrics.uncertainty import UncertaintyTally
from unet_patches.runtime import PRECISIONS

from .compiling import PlannedWork, decide_compile
from .config import check_compile
from .int8 import int8_for_job, int8_network_of
from .onnx import blender_options
from .segmenter import Segmenter
from .tiling.blender import WindowBlender
from .tiling.merger import argmax_classes, assemble
from .tiling.placement import place_windows
from .tiling.sizing import Window, WindowPlan, check_window
from .tiling.sizing import describe as describe_plan

__all__ = ["PREDICTORS_KEPT", "Calibration", "PredictionJob", "WrittenFiles"]

log = logging.getLogger(__name__)

PREDICTORS_KEPT = 8
"""Predictors a job keeps, the last used: images of many sizes get windows of many shapes."""


class WrittenFiles(list):
    """The files a job of files wrote (a list of paths), and in ``busy`` the input images it left to
    other predictions into the same folder: one was writing them, or had written them since this job
    was planned (:mod:`~unet_patches.files.claims`). ``uncertainty``: for each image written with an
    uncertainty map, its review summary (:meth:`~unet_patches.metrics.uncertainty.UncertaintyTally.summary`)."""

    def __init__(self, files: Sequence[Path] = ()) -> None:
        super().__init__(files)
        self.busy: list[Path] = []
        self.uncertainty: dict[str, dict[str, Any]] = {}


class Calibration:
    """What :meth:`PredictionJob.score` counts of the blended probabilities besides the labels:
    :class:`~unet_patches.metrics.calibration.CalibrationCounts` of the probabilities as the network
    gives them (``before``) and as calibrated by ``temperature`` (``after``; the same counts when it is 1).
    A :class:`~unet_patches.metrics.calibration.PixelSample` can be counted into the same way."""

    def __init__(self, num_classes: int, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self.before = CalibrationCounts(num_classes)
        self.after = self.before if temperature == 1.0 else CalibrationCounts(num_classes)

    def update(self, probs: np.ndarray, target: np.ndarray, labels: np.ndarray) -> None:
        self.before.update(probs, target, labels)
        if self.after is not self.before:
            self.after.update(apply_temperature(probs, self.temperature), target, labels)

    def summary(self, class_names: list[str]) -> dict[str, Any]:
        """``ece``, ``nll``, ``brier``, ``ece_per_class`` calibrated; the same with ``_uncalibrated``;
        ``temperature``, and the ``reliability`` bins of both."""
        after, before = self.after.summary(class_names), self.before.summary(class_names)
        figures = {key: after[key] for key in ("ece", "nll", "brier", "ece_per_class")}
        figures.update({f"{key}_uncalibrated": before[key] for key in ("ece", "nll", "brier", "ece_per_class")})
        reliability = {"calibrated": self.after.reliability(), "uncalibrated": self.before.reliability()}
        return {**figures, "temperature": self.temperature, "reliability": reliability}


class PredictionJob:
    """Predictions of one segmenter with one set of settings, for images of ``sizes`` (as read).

    Args:
        segmenter: the network and what inference needs (:class:`~.segmenter.Segmenter`).
        sizes: ``(H, W)`` of the job's images, for the decisions made once (int8 under ``precision:
            auto``, ``compile: auto``); none: a job of images not known yet (int8 only when cached,
            never compiled under ``auto``).
        window, overlap, batch_size: the window plan (:func:`~.tiling.sizing.plan_window`): ``auto``,
            ``patch`` or a size; ``auto`` or a fraction; windows of the training patch per pass.
        precision, compile, device: how the network runs (``auto`` decided here).
        engine: further keyword arguments of the predictor (:class:`~.tiling.engine.TiledPredictor`:
            ``blend``, ``padding``, ``tta``, ``sigma_scale``, ...; ``activation`` defaults to the
            segmenter's).

    Raises:
        UserError: an invalid setting, or int8 asked for and not to be had.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        sizes: Sequence[tuple[int, int]] = (),
        *,
        window: Window = "auto",
        overlap: float | str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        compile: bool | str = "auto",
        device: Any = None,
        **engine: Any,
    ) -> None:
        self.segmenter = segmenter
        self.window, self.overlap, self.batch_size = check_window(window), overlap, batch_size
        self.device = device
        self.engine = {"activation": segmenter.activation, **engine}
        self.predictors: OrderedDict[WindowPlan, WindowBlender] = OrderedDict()
        self.precision, self.compile = PRECISIONS.check(precision, "precision"), False
        choice = check_compile(compile, "compile")
        work = cache(lambda: self.planned_work(sizes))
        if precision == "auto" and not segmenter.is_onnx:
            if int8_for_job(segmenter, lambda: work().pixels, device):
                self.precision = "int8"
        if segmenter.is_onnx:  # a precision or device ONNX Runtime cannot give is refused now
            blender_options({"precision": self.precision, "device": device})
            self.compile = choice is True  # asked for: the blender says it cannot (blender_options)
        elif self.precision == "int8":  # built (or refused) now, before any file is written
            int8_network_of(segmenter, device)
        else:
            trials: dict[WindowPlan, WindowBlender] = {}

            def trial(size: tuple[int, int]) -> WindowBlender:
                plan = self.plan(size)
                trials[plan] = self._build(plan, compile=False)
                return trials[plan]

            self.compile = decide_compile(choice, work, trial, segmenter.in_channels)
            if not self.compile:
                self.predictors.update(trials)  # the eager trial predictor serves the job

    # --- plans and predictors -----------------------------------------------------------------

    def plan(self, size: tuple[int, int]) -> WindowPlan:
        """The window plan of an image of ``size`` as read."""
        return self.segmenter.plan(size, self.window, self.overlap, self.batch_size)

    def planned_work(self, sizes: Sequence[tuple[int, int]]) -> PlannedWork:
        """The windows that images of ``sizes`` take, per size and window shape."""
        work = PlannedWork()
        for size in sizes:
            plan = self.plan(size)
            rows, columns = place_windows(self.segmenter.network_size(size), plan.window, plan.overlap)
            count = len(rows) * len(columns)
            work.windows[tuple(size)] += count
            work.shapes.add(plan.window)
            work.pixels += count * plan.window[0] * plan.window[1]
        return work

    def predictor(self, size: tuple[int, int]) -> WindowBlender:
        """The predictor of an image of ``size`` as read: that of its window plan."""
        return self.predictor_of(self.plan(size))

    def predictor_of(self, plan: WindowPlan) -> WindowBlender:
        """The predictor for windows of ``plan``, made once per plan; the :data:`PREDICTORS_KEPT` used
        last are kept (each holds its own copy of the network)."""
        if plan in self.predictors:
            self.predictors.move_to_end(plan)
            return self.predictors[plan]
        log.info("tiled inference: %s", describe_plan(plan))
        if len(self.predictors) >= PREDICTORS_KEPT:
            self.predictors.popitem(last=False)
        self.predictors[plan] = self._build(plan, self.compile)
        return self.predictors[plan]

    def _build(self, plan: WindowPlan, compile: bool) -> WindowBlender:
        """A predictor over the network for windows of ``plan``: the torch-free blender for an ONNX
        network, else the torch engine (over the int8 network under ``precision: int8``)."""
        options = {"overlap": plan.overlap, "batch_size": plan.batch_size, **self.engine}
        network = self.segmenter.network
        if self.segmenter.is_onnx:
            settings = {"precision": self.precision, "compile": compile, "device": self.device}
            return WindowBlender(network, plan.window, **blender_options({**options, **settings}))
        from .tiling.engine import TiledPredictor

        if self.precision == "int8":
            network = int8_network_of(self.segmenter, self.device)
            settings = {"precision": "fp32", "compile": False, "inference_copy": False, "device": "cpu"}
            return TiledPredictor(network, plan.window, **{**options, **settings, "activation": network.activation})
        settings = {"precision": self.precision, "compile": compile, "device": self.device}
        return TiledPredictor(network, plan.window, **options, **settings)

    # --- one image ----------------------------------------------------------------------------

    def bands(
        self,
        source: RowSource,
        *,
        probs: bool = False,
        progress: bool = False,
        rows: tuple[int, int] | None = None,
        calibrated: bool = True,
    ) -> Iterator[Band]:
        """Predicted bands of rows of an image opened by :func:`~unet_patches.files.plan.open_image` or
        :func:`~unet_patches.files.plan.open_array` (``rows``: only those). With ``probs`` the bands
        carry the blended probabilities, calibrated by the segmenter's temperature (``calibrated``;
        the labels are the same either way). With ``preprocess.resize`` the image is resized whole,
        predicted, and its probabilities resized back bilinearly before the argmax (one band)."""
        temperature = self.segmenter.temperature if calibrated else 1.0
        for band in self._raw_bands(source, probs, progress, rows):
            if band.probs is not None and temperature != 1.0:
                band = Band(band.start, band.labels, apply_temperature(band.probs, temperature))
            yield band

    def _raw_bands(
        self, source: RowSource, probs: bool, progress: bool, rows: tuple[int, int] | None
    ) -> Iterator[Band]:
        size = (source.height, source.width)
        predictor = self.predictor(size)
        pre = self.segmenter.preprocess
        if pre.resize is None:
            yield from predictor.bands(source, probs=probs, progress=progress, rows=rows)
            return
        if rows is not None:
            raise ValueError("a checkpoint with data.resize predicts whole images, not blocks of rows")
        network_input = pre.finish(resize_image(source.read_rows(0, source.height), pre.resize))
        blended = resize_probabilities(predictor.probabilities(network_input, progress), size)
        yield Band(0, argmax_classes(blended), blended if probs else None)

    def labels(
        self, image: np.ndarray, *, return_probs: bool = False, name: str = "image"
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 labels ``(H, W)`` of a raw ``(H, W)`` / ``(H, W, C)`` image (and its blended
        probabilities); ``name`` (the file) starts error messages about the image."""
        source = open_array(image, self.segmenter.preprocess, name)
        labels, probs = assemble(self.bands(source, probs=return_probs), image.shape[:2], with_probs=return_probs)
        return (labels, probs) if return_probs else labels

    def score(
        self,
        pairs: Sequence[Pair],
        *,
        progress: bool = False,
        keep: Callable[[Pair, np.ndarray], None] | None = None,
        calibration: Calibration | PixelSample | None = None,
    ) -> ConfusionMatrix:
        """Full-image predictions of image/mask ``pairs`` counted into one confusion matrix;
        ``keep(pair, labels)`` is handed each prediction (e.g. to save it). With ``calibration`` the
        blended probabilities are counted into it too, band by band (:meth:`count`)."""
        matrix = ConfusionMatrix(self.segmenter.num_classes)
        bar = console.progress(len(pairs), "evaluate", "image", enabled=progress)
        for pair in pairs:
            raw, mask = read_pair(pair, self.segmenter.preprocess)
            name = str(pair.image)
            if calibration is None:
                labels = self.labels(raw, name=name)
            else:
                labels = self.count(open_array(raw, self.segmenter.preprocess, name), mask, calibration)
            if keep is not None:
                keep(pair, labels)
            matrix.update(labels, mask)
            bar.update(1)
        bar.close()
        return matrix

    def count(self, source: RowSource, mask: np.ndarray, calibration: Calibration | PixelSample) -> np.ndarray:
        """The labels of an opened image, its blended (uncalibrated) probabilities counted against
        ``mask`` into ``calibration`` band by band (the whole probabilities are never held)."""
        labels = np.empty((source.height, source.width), dtype=np.uint8)
        for band in self.bands(source, probs=True, calibrated=False):
            rows = slice(band.start, band.start + band.labels.shape[0])
            labels[rows] = band.labels
            calibration.update(band.probs, mask[rows], band.labels)
        return labels

    def write(
        self,
        plan: OutputPlan,
        *,
        level: int = 0,
        probs_dtype: str = "uint8",
        progress: bool = False,
        review: dict[str, dict[str, Any]] | None = None,
    ) -> list[Path] | None:
        """One image of a job of files into the files of its ``plan``; returns them, or None when
        another process holds the image's claim or wrote its outputs since the job was planned
        (:mod:`~unet_patches.files.claims`). A progress bar of windows is shown (``progress``) for
        a streamed image or one of 1024 windows or more. With an ``uncertainty`` output, the image's
        review summary goes into ``review`` under the image's path."""
        # Opened first: an image that cannot be read is refused before anything is written.
        with open_image(plan.image, self.segmenter.preprocess, plan.large, level) as source:
            claim = take_claim(plan.outputs)
            if claim is None:
                log.warning("%s: skipped, another prediction is writing %s", plan.image, plan.outputs["labels"])
                return None
            with claim:
                appeared = [p for p in plan.outputs.values() if p.exists() and p not in plan.existing]
                if appeared:
                    log.warning("%s: skipped, another prediction has written %s", plan.image, appeared[0])
                    return None
                remove_stale_parts(plan.outputs.values())
                bar = progress and (plan.large or self.predictor(plan.size).count_windows(plan.size) >= 1024)
                probs = "probs" in plan.outputs or "uncertainty" in plan.outputs
                tally = None
                if "uncertainty" in plan.outputs:
                    tally = UncertaintyTally(source.height, source.width, list(self.segmenter.class_names))
                bands = self.bands(source, probs=probs, progress=bar)
                written = write_outputs(bands, source, plan.outputs, plan.format, probs_dtype, tally)
        if tally is not None and review is not None:
            review[str(plan.image)] = tally.summary()
        log.info("%s -> %s", plan.image, ", ".join(str(p) for p in written))
        return written

    def write_all(
        self, plans: Sequence[OutputPlan], *, level: int = 0, probs_dtype: str = "uint8", progress: bool = False
    ) -> WrittenFiles:
        """:meth:`write` of every plan, with a progress bar of images when there are several."""
        written = WrittenFiles()
        bar = console.progress(len(plans), "predict", "image", enabled=progress and len(plans) > 1)
        for plan in plans:
            files = self.write(
                plan, level=level, probs_dtype=probs_dtype, progress=progress, review=written.uncertainty
            )
            if files is None:
                written.busy.append(plan.image)
            else:
                written.extend(files)
            bar.update(1)
        bar.close()
        return written

    def write_block(
        self, image: Path, block: RowBlock, *, probs: bool, level: int = 0, progress: bool = False
    ) -> list[Path]:
        """The rows left to do of one image's block (:func:`~unet_patches.files.shards.open_row_block`)
        predicted into the stores that every shard fills; returns the stores."""
        assert block.todo is not None, "a block finished by an earlier run has nothing to predict"
        with open_image(image, self.segmenter.preprocess, large=True, level=level) as source:
            for band in self.bands(source, probs=probs, progress=progress, rows=block.todo):
                block.stores["labels"].write(band.labels)
                if probs:
                    block.stores["probs"].write(band.probs)
        return [store.close() for store in block.stores.values()]
