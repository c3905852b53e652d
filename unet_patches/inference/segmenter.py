"""A trained network and what inference needs from its training run: :class:`Segmenter`, read from a
checkpoint, an ensemble of checkpoints or an exported ONNX file. What it predicts, and how, is a
:class:`~unet_patches.inference.job.PredictionJob`.

>>> segmenter = Segmenter.from_checkpoint("checkpoints/demo/best.pt")
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_patches.data.preprocess import Preprocess
from unet_patches.errors import UserError

from .onnx import OnnxNetwork, read_export
from .tiling.sizing import Window, WindowPlan, plan_window

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Segmenter"]


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
    ``temperature`` calibrates the blended probabilities (:mod:`unet_patches.metrics.calibration`; 1: as the
    network gives them): what a job writes and returns as probabilities, never the labels.
    """

    network: nn.Module | OnnxNetwork
    patch_size: int
    class_names: tuple[str, ...]
    preprocess: Preprocess
    activation: str | None = "softmax"
    grid: int = 16
    large_windows: bool = True
    checkpoint: Path | None = None
    temperature: float = 1.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.preprocess.in_channels

    @property
    def is_onnx(self) -> bool:
        """Whether ONNX Runtime runs the network (on the CPU, in float32, never compiled)."""
        return isinstance(self.network, OnnxNetwork)

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
        network = ProbabilityEnsemble([m.network for m in members], [m.temperature for m in members]).eval()
        large = all(m.large_windows for m in members)
        grid = max(m.grid for m in members)
        return replace(first, network=network, grid=grid, large_windows=large, checkpoint=None, temperature=1.0)

    @classmethod
    def _one(cls, state: dict[str, Any], device: torch.device, path: Path) -> Segmenter:
        from unet_patches.models import large_windows, window_multiple
        from unet_patches.models.checkpoint import calibration_of, model_from_checkpoint, preprocess_from_checkpoint

        return cls(
            network=model_from_checkpoint(state, device, path),
            patch_size=int(state["patch_size"]),
            class_names=tuple(state["class_names"]),
            preprocess=preprocess_from_checkpoint(state),
            grid=window_multiple(state["model_config"]),
            large_windows=large_windows(state["model_config"]),
            checkpoint=path,
            temperature=calibration_of(state, path),
        )

    def plan(
        self, size: tuple[int, int], window: Window = "auto", overlap: float | str = "auto", batch_size: int = 32
    ) -> WindowPlan:
        """The :class:`~unet_patches.inference.tiling.sizing.WindowPlan` of an image of ``size`` as read
        (planned at the size the network sees, :meth:`network_size`); ``batch_size`` counts windows
        of the training patch."""
        return plan_window(
            self.network_size(size),
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

    def identity(self) -> str:
        """What names the model: its file (path, size, modification time) for a checkpoint or an ONNX
        export, else a digest of the network's weights (an ensemble)."""
        path = self.checkpoint or getattr(self.network, "path", None)
        if path is not None:
            stat = Path(path).stat()
            return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        digest = hashlib.sha256()
        state = getattr(self.network, "state_dict", None)
        for name, value in (state() if state is not None else {}).items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().reshape(-1).double().numpy().tobytes())
        return f"{type(self.network).__name__}:{digest.hexdigest()}"
