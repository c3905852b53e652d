"""The tiled-inference engine over a torch network: :class:`TiledPredictor` is the band loop of
:class:`~.blender.WindowBlender` with a torch module as its network (a copy for inference, device,
precision policy, ``torch.compile``). :func:`sliding_window` and :func:`predict_labels` run it over an
image in memory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from unet_patches.errors import one_line
from unet_patches.runtime import keep_freed_memory, resolve_precision

from .blender import FLIPS, WindowBlender
from .network import inductor_freezing, resolve_device
from .network import inference_copy as make_inference_copy

__all__ = ["TiledPredictor", "predict_labels", "sliding_window"]

log = logging.getLogger(__name__)


class TiledPredictor(WindowBlender):
    """Sliding-window inference over a torch network with fixed settings; reusable across images.

    Args:
        network: a torch module or function mapping ``(N, C, h, w)`` float tensors to ``(N, K, h, w)``
            (logits for a segmentation model; a function gets contiguous NCHW batches).
            With ``inference_copy`` (default) a network with Conv2d -> BatchNorm2d pairs or U-Net
            decoder levels is copied, and the copy put in eval mode with the BatchNorm folded into
            the convolutions and the levels fed without concatenating (:func:`~.network.inference_copy`);
            the network itself is left as it was. Otherwise the network itself is put in eval mode,
            moved to ``device`` and, where the precision policy says so, to channels-last memory.
        window, overlap, batch_size, blend, sigma_scale, padding, pad_value, tta, activation: as for
            :class:`~.blender.WindowBlender`.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :func:`resolve_precision`);
            sums are always float32.
        device: where the network runs (default: where its parameters are). Blending runs on CPU.
        compile: run the network through ``torch.compile`` with weight freezing (oneDNN weights
            pre-packed, BatchNorm and ReLU fused): faster passes for a one-off compile per window
            shape (:mod:`unet_patches.inference.compiling` decides when that pays). Batches are padded
            to a fixed size so one graph serves every pass; if compiling fails (e.g. no C++ compiler)
            the network runs eagerly.

    Raises ``UserError`` for invalid settings.
    """

    def __init__(
        self,
        network: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        window: int | Sequence[int],
        overlap: float | int | Sequence[float | int] = 0.5,
        *,
        batch_size: int = 32,
        blend: str = "mean",
        sigma_scale: float = 0.125,
        padding: str = "reflect",
        pad_value: float = 0.0,
        tta: bool = False,
        precision: str = "auto",
        activation: str | None = "softmax",
        device: str | torch.device | None = None,
        compile: bool = False,
        inference_copy: bool = True,
        strip_columns: int | None = None,
    ) -> None:
        super().__init__(
            None,
            window,
            overlap,
            batch_size=batch_size,
            blend=blend,
            sigma_scale=sigma_scale,
            padding=padding,
            pad_value=pad_value,
            tta=tta,
            activation=activation,
            strip_columns=strip_columns,
        )
        module = network if isinstance(network, nn.Module) else None
        self.device = resolve_device(device, module)
        self.precision = resolve_precision(precision, self.device)
        keep_freed_memory()  # passes allocate their activations afresh: keep those pages mapped
        if module is not None:
            rewritten = make_inference_copy(module) if inference_copy else module
            if rewritten is module:
                module.eval()
            module = rewritten
            module.to(self.device)
            if self.precision.channels_last:
                module.to(memory_format=torch.channels_last)
            network = module
        # Channels-last input is for torch modules; a plain function (an OpenVINO network) gets NCHW.
        self.channels_last = self.precision.channels_last and module is not None
        self.compiled = bool(compile)
        # A module's forward allocates its outputs; a plain function may reuse an array it returns.
        self.new_outputs = module is not None or bool(getattr(network, "new_outputs", False))
        self._eager = network
        self._compile_checked = False
        # Static shapes: batches are padded to one size, and dynamic shapes do not mix with freezing.
        self.network = torch.compile(network, dynamic=False) if compile else network
        log.debug(
            "tiled inference: window %s, stride %s, %s blending, precision %s (asked %s) on %s, compile=%s",
            self.window,
            self.strides,
            blend,
            self.precision.name,
            precision,
            self.device,
            self.compiled,
        )

    # ----------------------------------------------------------------------------------- network

    def run_network(self, batch: torch.Tensor) -> torch.Tensor:
        """The bare forward pass: ``batch`` moved to the device (channels-last when the precision
        policy says so), the network under ``inference_mode`` and autocast; raw outputs back."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        # Weight freezing (constant-folded BatchNorm, pre-packed oneDNN weights) is what makes the
        # compiled graph fast on CPU; it is an inductor setting read when the graph is compiled,
        # i.e. on the first call, and it is set only around our own calls.
        frozen = inductor_freezing() if self.compiled else contextlib.nullcontext()
        with torch.inference_mode(), self.precision.autocast(self.device), frozen:
            if not self.compiled or self._compile_checked:
                return self.network(batch)
            start = time.perf_counter()
            try:  # the first call compiles
                out = self.network(batch)
            except Exception as exc:  # no C++ compiler, unsupported op, ...: run eagerly instead
                reason = one_line(exc, 200)
                log.warning("torch.compile failed (%s); running the network uncompiled", reason)
                self.network, self.compiled = self._eager, False
                out = self.network(batch)
            self._compile_checked = True
            if self.compiled:
                seconds = time.perf_counter() - start
                log.info("compiled the network for %dx%d windows in %.1f s (one-off)", *self.window, seconds)
            return out

    def forward_windows(self, windows: np.ndarray) -> np.ndarray:
        """As :meth:`WindowBlender.forward_windows
        <unet_patches.inference.tiling.blender.WindowBlender.forward_windows>`, with the flips, activation and
        weights as a few whole-batch torch operations: fused and multi-threaded, where NumPy's took
        as long as the network itself for a narrow U-Net (2x the whole prediction's time)."""
        n = windows.shape[0]
        tensor = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        batch = torch.cat([tensor.flip(dims) if dims else tensor for dims in FLIPS]) if self.tta else tensor
        full = self.windows_per_batch * self.n_aug
        if self.compiled and batch.shape[0] < full:
            # One fixed shape, so the compiled graph is never rebuilt for the last, short batch.
            batch = torch.cat([batch, batch.new_zeros((full - batch.shape[0], *batch.shape[1:]))])
        out = self.run_network(batch)
        with torch.inference_mode():
            # Contiguous in the network's dtype first (half the bytes under bf16 autocast), then the
            # activation straight into float32: one pass over a channels-last bf16 output instead of
            # three (float32 copy, softmax, contiguous copy).
            out = out[: n * self.n_aug].to("cpu").contiguous()
            if self.activation == "softmax":
                out = torch.softmax(out, dim=1, dtype=torch.float32)
            elif self.activation == "sigmoid":
                out = torch.sigmoid(out.float())
            elif self.new_outputs or self.tta:  # the merger makes its sums in it: it must be this call's own
                out = out.float()  # (the flips' average below is a new tensor)
            else:
                out = out.to(torch.float32, copy=True)
            if self.tta:
                parts = out.split(n)
                merged = parts[0].clone()
                for dims, part in zip(FLIPS[1:], parts[1:]):
                    merged += part.flip(dims)
                out = merged.div_(self.n_aug)
            if self.weights is not None:  # in place: `out` is this call's own tensor by now
                out = out.mul_(torch.from_numpy(self.weights))
            return out.contiguous().numpy()


def sliding_window(
    image: np.ndarray | torch.Tensor,
    network: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    window: int | Sequence[int],
    overlap: float | int | Sequence[float | int] = 0.5,
    *,
    progress: bool = False,
    **options: object,
) -> np.ndarray:
    """Blend ``activation(network(window))`` over a float image ``(C, H, W)``; float32 ``(K, H, W)``.

    ``options`` are :class:`TiledPredictor`'s. Raises ``UserError`` for invalid settings.
    """
    predictor = TiledPredictor(network, window, overlap, **options)  # type: ignore[arg-type]
    return predictor.probabilities(image, progress=progress)


def predict_labels(
    image: np.ndarray | torch.Tensor,
    network: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    window: int | Sequence[int],
    overlap: float | int | Sequence[float | int] = 0.5,
    *,
    return_probs: bool = False,
    progress: bool = False,
    **options: object,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 label map ``(H, W)`` of a float image ``(C, H, W)``; with ``return_probs`` also the
    float32 ``(K, H, W)`` blended probabilities. ``options`` are :class:`TiledPredictor`'s."""
    predictor = TiledPredictor(network, window, overlap, **options)  # type: ignore[arg-type]
    return predictor.labels(image, return_probs=return_probs, progress=progress)
