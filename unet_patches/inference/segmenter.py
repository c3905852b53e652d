"""The Python API: a :class:`Segmenter` (a trained network and what inference needs from its
training run) and what it does: segment an array, score a folder, predict image files.

>>> segmenter = Segmenter.from_checkpoint("checkpoints/demo/best.pt")
>>> labels = predict(segmenter, image)          # image: (H, W) or (H, W, C) numpy array
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_patches import console
from unet_patches.data.folders import Pair, find_pairs, read_pair
from unet_patches.data.imageio import image_to_array
from unet_patches.data.preprocess import Preprocess, resize_probabilities
from unet_patches.errors import UserError
from unet_patches.files.plan import (
    DEFAULT_STREAM_THRESHOLD_PX,
    OutputPlan,
    check_probs_dtype,
    expand_inputs,
    open_image,
    plan_outputs,
    read_whole,
    write_outputs,
)
from unet_patches.files.shards import Shard, finish_shard, predict_row_block, share
from unet_patches.files.sources import ArraySource, RowSource, image_size
from unet_patches.files.writers import Band
from unet_patches.metrics import ConfusionMatrix

from .job import settle_job
from .onnx import OnnxNetwork, blender_options, read_export
from .tiling.blender import WindowBlender
from .tiling.merger import argmax_classes, assemble
from .tiling.sizing import Window, WindowPlan, plan_window
from .tiling.sizing import describe as describe_plan

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Segmenter", "evaluate_folder", "predict", "predict_files", "score_pairs"]

log = logging.getLogger(__name__)

_PREDICTORS: weakref.WeakKeyDictionary[Any, dict[tuple, WindowBlender]] = weakref.WeakKeyDictionary()
"""Predictors kept per network (while it lives): plan and options -> predictor."""
_PREDICTORS_PER_NETWORK = 8


def _weights_version(network: Any) -> tuple[int, ...]:
    """Changes when a parameter of a torch network is changed in place, so that a kept predictor
    (which may hold a folded copy of the weights) is not used after the network was trained further."""
    parameters = getattr(network, "parameters", None)
    if parameters is None or isinstance(network, OnnxNetwork):
        return ()
    return tuple(p._version for p in parameters())


@dataclass(frozen=True)
class Segmenter:
    """A trained network (eval mode) and the facts of its training run.

    ``patch_size`` is the training patch size and ``grid`` what window sizes are made multiples of
    (``2 ** poolings``; :func:`~unet_patches.models.window_multiple`), ``large_windows`` whether window
    ``auto`` may go beyond the patch (:func:`~unet_patches.models.large_windows`); ``class_names`` has one
    name per output class; ``preprocess`` turns raw images into network input exactly as training
    did (channels, resize, normalisation and its statistics; :mod:`unet_patches.data.preprocess`) and
    decodes masks by the training run's mask tables. ``activation`` is what turns the network's
    output into probabilities: ``softmax`` for logits (a checkpoint), None for an ONNX export whose
    graph ends in the softmax. ``checkpoint`` is the file of a single checkpoint (None for an
    ensemble or an ONNX file): what ``precision: int8`` quantizes (:mod:`unet_patches.inference.int8`).
    """

    network: nn.Module | OnnxNetwork
    patch_size: int
    class_names: tuple[str, ...]
    preprocess: Preprocess
    activation: str | None = "softmax"
    grid: int = 16
    large_windows: bool = True
    checkpoint: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.preprocess.in_channels

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = "cpu") -> Segmenter:
        """Rebuild the network of a checkpoint on ``device`` (None: CUDA when present), in eval mode.

        ``path`` may also name several checkpoints (joined by commas) or a run folder (its
        ``snapshot_NN.pt`` files): their networks become one
        :class:`~unet_patches.inference.ensemble.ProbabilityEnsemble` that averages their probabilities.
        The training patch size is the first checkpoint's.

        A ``.onnx`` path is an export of ``unet-patches export``: ONNX Runtime runs it on the CPU
        (:class:`OnnxNetwork`) and its sidecar ``<path>.json`` gives the patch size,
        class names and preprocessing (:func:`~unet_patches.inference.onnx.read_export`).

        Raises:
            UserError: a file is missing or not a unet-patches checkpoint, the members of an
                ensemble differ in classes or input channels, or (ONNX) the sidecar is missing or
                incomplete, several ONNX files are named, or ``device`` is not the CPU.
        """
        if Path(path).suffix.lower() == ".onnx" and ("," not in str(path) or Path(path).exists()):
            return cls(**read_export(path, device))  # needs no torch
        try:
            from unet_patches.models.checkpoint import load_checkpoint
            from unet_patches.runtime import pick_device

            from .ensemble import ProbabilityEnsemble, checkpoint_paths
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            raise UserError(
                f"{path}: reading a checkpoint needs PyTorch, which is not installed here; export it where torch is "
                f"(unet-patches export {path} --format onnx -o model.onnx) and pass model.onnx"
            ) from None

        paths = checkpoint_paths(path)
        if any(p.suffix.lower() == ".onnx" for p in paths):
            raise UserError(f"{path}: one ONNX file at a time; ensembles need the checkpoints (.pt)")
        device = pick_device(None if device is None else str(device))
        members = [cls._one(load_checkpoint(p, device), device, p) for p in paths]
        first = members[0]
        for member, member_path in zip(members[1:], paths[1:]):
            if (member.class_names, member.preprocess) != (first.class_names, first.preprocess):
                ours, theirs = member.preprocess, first.preprocess
                raise UserError(
                    f"{member_path}: classes {list(member.class_names)} or input ({ours.describe()}, "
                    f"{ours.in_channels} channel(s)) differ from the first checkpoint's ({list(first.class_names)}, "
                    f"{theirs.describe()}, {theirs.in_channels}); ensemble checkpoints of one task only"
                )
        if len(members) == 1:
            return first
        network = ProbabilityEnsemble([m.network for m in members]).eval()
        large = all(m.large_windows for m in members)
        grid = max(m.grid for m in members)
        return replace(first, network=network, grid=grid, large_windows=large, checkpoint=None)

    @classmethod
    def _one(cls, state: dict[str, Any], device: torch.device, path: Path) -> Segmenter:
        from unet_patches.models import large_windows, window_multiple
        from unet_patches.models.checkpoint import model_from_checkpoint, preprocess_from_checkpoint

        num_classes = int(state["model_config"]["num_classes"])
        names = state.get("class_names") or [f"class{c}" for c in range(num_classes)]
        return cls(
            network=model_from_checkpoint(state, device, path),
            patch_size=int(state.get("patch_size", 96)),
            class_names=tuple(names),
            preprocess=preprocess_from_checkpoint(state),
            grid=window_multiple(state["model_config"]),
            large_windows=large_windows(state["model_config"]),
            checkpoint=path,
        )

    def predictor(self, window: int | Sequence[int] | None = None, **options: Any) -> WindowBlender:
        """A :class:`~unet_patches.inference.tiling.TiledPredictor` over this network with exactly these settings;
        ``window`` defaults to the training patch size, ``options`` are its keyword arguments
        (``activation`` defaults to this segmenter's). ``precision="int8"`` runs the checkpoint's int8
        network (:func:`~unet_patches.inference.int8.int8_network`). An ONNX network gets the torch-free
        :class:`~unet_patches.inference.tiling.WindowBlender` instead: on the CPU, in float32, uncompiled
        (:func:`~unet_patches.inference.onnx.blender_options`). :meth:`predictor_for` plans the window for
        an image instead.

        Raises:
            UserError: an invalid setting, or int8 that cannot be had (no checkpoint file, a GPU
                device, the extra missing, no calibration windows, the accuracy guard failed).
        """
        options = {"activation": self.activation, **options}
        window = self.patch_size if window is None else window
        if isinstance(self.network, OnnxNetwork):
            return WindowBlender(self.network, window, **blender_options(options))
        from .int8 import int8_network_of
        from .tiling.engine import TiledPredictor

        if options.get("precision") == "int8":
            network = int8_network_of(self, options.get("device"))
            options.update(
                precision="fp32", compile=False, inference_copy=False, device="cpu", activation=network.activation
            )
            return TiledPredictor(network, window, **options)
        return TiledPredictor(self.network, window, **options)

    def predictor_for(
        self, size: tuple[int, int], window: Window = "auto", overlap: float | str = "auto", **options: Any
    ) -> WindowBlender:
        """The predictor for an image of ``size`` ``(H, W)`` as read, its window planned at the size
        the network sees (after any ``preprocess.resize``) by :meth:`plan` (``window``: ``auto``,
        ``patch`` or a size; ``overlap``: ``auto`` or a fraction; ``batch_size`` in ``options`` counts
        windows of the training patch). Predictors are kept per network, plan and options for the rest
        of the process (:data:`_PREDICTORS`), so a compiled network is compiled once per window shape.
        ``compile`` and ``precision`` left ``auto`` are decided for this one image
        (:func:`~unet_patches.inference.job.settle_job`); a job of many images decides them once beforehand.
        """
        options.setdefault("compile", False)
        if "auto" in (options["compile"], options.get("precision", "auto")):
            options = settle_job(self, [size], window, overlap=overlap, **options)
            del options["overlap"]
        plan = self.plan(self.network_size(size), window, overlap, options.pop("batch_size", 32))
        options = {"activation": self.activation, **options}
        key = (plan, tuple(sorted((k, repr(v)) for k, v in options.items())), _weights_version(self.network))
        kept = _PREDICTORS.setdefault(self.network, {})
        if key not in kept:
            if len(kept) >= _PREDICTORS_PER_NETWORK:
                kept.pop(next(iter(kept)))  # the oldest
            log.info("tiled inference: %s", describe_plan(plan))
            kept[key] = self.predictor(plan.window, overlap=plan.overlap, batch_size=plan.batch_size, **options)
        return kept[key]

    def plan(
        self, size: tuple[int, int], window: Window = "auto", overlap: float | str = "auto", batch_size: int = 32
    ) -> WindowPlan:
        """The :class:`~unet_patches.inference.tiling.sizing.WindowPlan` of an image of network size ``size``."""
        return plan_window(
            size,
            window=window,
            overlap=overlap,
            batch_size=batch_size,
            patch=self.patch_size,
            grid=self.grid,
            large=self.large_windows,
        )

    def network_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size the network sees for an image of ``size``: ``preprocess.resize`` if set."""
        resize = self.preprocess.resize
        return (int(resize[0]), int(resize[1])) if resize is not None else (int(size[0]), int(size[1]))

    def to_input(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """A raw ``(H, W)`` / ``(H, W, C)`` image as the float32 ``(in_channels, H', W')`` network input
        (``H', W'`` = ``preprocess.resize`` if set)."""
        return self.preprocess.image(image, name)

    def bands(
        self,
        predictor: WindowBlender,
        raw: np.ndarray | RowSource,
        *,
        probs: bool = False,
        progress: bool = False,
        name: str = "image",
    ) -> Iterator[Band]:
        """Predicted bands of rows of an image at its own size.

        ``raw``: a raw image array, or a row source already prepared by
        :func:`~unet_patches.files.plan.open_image` (which is how large files stream). With
        ``preprocess.resize`` the image is resized whole, predicted, and its probabilities resized
        back bilinearly before the argmax (one band).
        """
        if self.preprocess.resize is None:
            source = raw if isinstance(raw, RowSource) else ArraySource(self.to_input(raw, name))
            yield from predictor.bands(source, probs=probs, progress=progress)
            return
        if isinstance(raw, RowSource):
            raise ValueError("a checkpoint with data.resize needs the raw image, not a row source")
        blended = resize_probabilities(
            predictor.probabilities(self.to_input(raw, name), progress), tuple(raw.shape[:2])
        )
        yield Band(0, argmax_classes(blended), blended if probs else None)

    def labels(
        self, predictor: WindowBlender, raw: np.ndarray, return_probs: bool = False, name: str = "image"
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 labels ``(H, W)`` of a raw image at its own size (and the probabilities); ``name``
        (the file) starts error messages about the image."""
        bands = self.bands(predictor, raw, probs=return_probs, name=name)
        labels, probs = assemble(bands, raw.shape[:2], with_probs=return_probs)
        return (labels, probs) if return_probs else labels


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
            per pass) and keyword arguments of :class:`~unet_patches.inference.tiling.TiledPredictor` (``blend``,
            ``padding``, ``tta``, ``precision``, ``compile``, ``device``, ...);
            ``Config.inference.predictor_options()`` gives those of ``parameters.json``. The predictor
            is kept for later calls with the same settings and window (:meth:`Segmenter.predictor_for`).

    Returns:
        ``(H, W)`` uint8 label mask, or ``(labels, probs)``.

    Raises:
        UserError: the image has an unsupported shape or dtype, or an option is invalid.
    """
    if not isinstance(image, np.ndarray):
        raise UserError(f"image of type {type(image).__name__}: expected a numpy array (H, W) or (H, W, C)")
    predictor = segmenter.predictor_for(image.shape[:2], window, **options)
    return segmenter.labels(predictor, image, return_probs=return_probs)


def evaluate_folder(
    segmenter: Segmenter, folder: str | Path, *, window: Window = "auto", progress: bool = False, **options: Any
) -> dict[str, Any]:
    """Full-image predictions for an ``images/`` + ``masks/`` folder scored against its masks.

    ``window`` and ``options`` are as for :func:`predict`. Images are read and masks decoded as the
    training run did (its mask tables, page); scores are at each image's own size, also for a
    checkpoint trained with ``data.resize``.

    Returns ``{"miou", "mean_dice", "pixel_accuracy", "iou": {class: value}, "dice": {...}, "images": n,
    "pixels": n}`` from one confusion matrix over the whole folder (classes absent from truth and
    prediction are ``None`` and left out of the means).
    """
    pairs = find_pairs(folder)
    matrix = score_pairs(segmenter, pairs, window=window, progress=progress, **options)
    pixels = int(matrix.matrix.sum())  # every mask pixel is a class index, so each is counted once
    return {**matrix.summary(list(segmenter.class_names)), "images": len(pairs), "pixels": pixels}


def score_pairs(
    segmenter: Segmenter,
    pairs: Sequence[Pair],
    *,
    window: Window = "auto",
    progress: bool = False,
    keep: Callable[[Pair, np.ndarray], None] | None = None,
    **options: Any,
) -> ConfusionMatrix:
    """Full-image predictions of image/mask ``pairs`` counted into one confusion matrix;
    ``keep(pair, labels)`` is handed each prediction (e.g. to save it)."""
    pre = segmenter.preprocess
    if "auto" in (options.get("compile", "auto"), options.get("precision", "auto")):  # for all the pairs
        sizes = [image_size(pair.image, pre.page) for pair in pairs]
        options = settle_job(segmenter, sizes, window, **options)
    matrix = ConfusionMatrix(segmenter.num_classes)
    bar = console.progress(len(pairs), "evaluate", "image", enabled=progress)
    for pair in pairs:
        raw, mask = read_pair(pair, pre)
        predictor = segmenter.predictor_for(raw.shape[:2], window, **options)
        labels = segmenter.labels(predictor, raw, name=str(pair.image))
        if keep is not None:
            keep(pair, labels)
        matrix.update(labels, mask)
        bar.update(1)
    bar.close()
    return matrix


def predict_files(
    segmenter: Segmenter,
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    window: Window = "auto",
    probs: bool = False,
    overlay: bool = True,
    overwrite: bool = False,
    stream_threshold_px: int = DEFAULT_STREAM_THRESHOLD_PX,
    output_format: str = "auto",
    shard: Shard | None = None,
    level: int = 0,
    probs_dtype: str = "uint8",
    progress: bool = True,
    **options: Any,
) -> list[Path]:
    """Segment image files and write their outputs to ``out_dir``; returns the written paths.

    ``inputs`` are files, folders (their images) or glob patterns (:func:`~unet_patches.files.plan.expand_inputs`).
    For each ``<stem>`` this writes ``<stem>_labels.png`` (``.tif`` for images above
    ``stream_threshold_px`` pixels, which are streamed with bounded memory), ``<stem>_overlay.png``
    (``overlay``) and ``<stem>_probs.npy`` (``probs``); ``output_format`` (``png``, ``tiff``, ``ome-tiff``,
    ``zarr``; :data:`~unet_patches.files.plan.OUTPUT_FORMATS`) chooses instead. ``window`` and
    ``options`` are as for :func:`predict`. ``level`` is the pyramid level of TIFF and Zarr inputs;
    ``probs_dtype`` how a Zarr store keeps probabilities (``uint8``: ``round(255 p)``, or ``float16``).
    ``shard`` (:func:`~unet_patches.files.shards.shard_from`) predicts only this process's share of the files,
    skips images whose outputs all exist, and writes the shard's report; one image given to several
    shards is split by rows into one shared Zarr store (:func:`~unet_patches.files.shards.predict_row_block`).

    Raises:
        UserError: a missing or unreadable input, or an output that exists without ``overwrite``;
            every input and output is checked before anything is written.
    """
    files = expand_inputs(inputs)
    by_rows = shard is not None and len(files) == 1 and shard.count > 1  # one image over shards: Zarr
    if probs:
        check_probs_dtype(probs_dtype, "zarr" if by_rows else output_format)
    if by_rows:
        return predict_row_block(
            segmenter, files[0], Path(out_dir), shard, window=window, probs=probs, probs_dtype=probs_dtype,
            overwrite=overwrite, output_format=output_format, level=level, progress=progress, options=options,
        )  # fmt: skip
    files = files if shard is None else share(files, shard)
    plans = plan_outputs(
        files, out_dir, overlay=overlay, probs=probs, overwrite=overwrite, stream_threshold_px=stream_threshold_px,
        page=segmenter.preprocess.page, level=level, output_format=output_format,
        skip_finished=shard is not None,  # a sharded job skips images already predicted
    )  # fmt: skip
    options = settle_job(segmenter, [plan.size for plan in plans], window, **options)
    written: list[Path] = []
    bar = console.progress(len(plans), "predict", "image", enabled=progress and len(plans) > 1)
    for plan in plans:
        predictor = segmenter.predictor_for(plan.size, window, **options)
        windows_bar = progress and (plan.large or predictor.count_windows(plan.size) >= 1024)
        written.extend(_predict_file(segmenter, predictor, plan, level, probs_dtype, windows_bar))
        log.info("%s -> %s", plan.image, ", ".join(str(p) for p in plan.outputs.values()))
        bar.update(1)
    bar.close()
    if shard is not None:
        planned = {plan.image for plan in plans}
        finish_shard(Path(out_dir), shard, written, [f for f in files if f not in planned])
    return written


def _predict_file(
    segmenter: Segmenter, predictor: WindowBlender, plan: OutputPlan, level: int, probs_dtype: str, bar: bool
) -> list[Path]:
    """One image of :func:`predict_files` into the files of its ``plan``; returns them."""
    want_probs = "probs" in plan.outputs
    if segmenter.preprocess.resize is None:
        with open_image(plan.image, segmenter.preprocess, plan.large, level) as source:
            bands = segmenter.bands(predictor, source, probs=want_probs, progress=bar)
            return write_outputs(bands, source, plan.outputs, probs_dtype)
    raw = read_whole(plan.image, segmenter.preprocess.page, level)
    display = ArraySource(image_to_array(raw, segmenter.in_channels, str(plan.image)))
    bands = segmenter.bands(predictor, raw, probs=want_probs, progress=bar)
    return write_outputs(bands, display, plan.outputs, probs_dtype)
