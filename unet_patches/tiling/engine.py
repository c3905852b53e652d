"""The runner: windows in batches through the network, blended into bands of rows.

Three parts, each testable alone (see docs/DESIGN.md):

1. placement (:mod:`.placement`): where the windows go;
2. the batched network (:meth:`TiledPredictor.forward_windows`): a batch of windows in, blended
   probabilities out, with flip test-time augmentation inside the same batch and a precision policy;
3. the merger (:class:`BandAccumulator`): weighted sums over a band of rows only. A row is
   finished as soon as no later window touches it; it is then divided by the summed weights,
   argmax-ed and handed out (:meth:`TiledPredictor.bands`).

The in-memory functions (:func:`sliding_window`, :func:`predict_labels`) run the same band
generator over an image in memory, so in-memory and streamed results are the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from unet_patches import console
from unet_patches.runtime import resolve_precision
from unet_patches.validate import require_int

from .blending import BLEND_MODES, axis_weights, weight_sums
from .merger import Band, BandAccumulator, argmax_classes, assemble
from .network import inductor_freezing, resolve_device, with_batchnorm_folded
from .padding import PADDING_MODES, PaddedRows
from .placement import axis_starts, pair, place_windows, stride_for
from .sources import ArraySource, RowSource

__all__ = ["ACTIVATIONS", "TiledPredictor", "predict_labels", "sliding_window"]

log = logging.getLogger(__name__)

ACTIVATIONS = ("softmax", "sigmoid", None)

# Flips used by test-time augmentation: none, columns, rows, both. Each is its own inverse.
_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


class TiledPredictor:
    """Sliding-window inference with a fixed network and settings; reusable across images.

    Args:
        network: maps ``(N, C, h, w)`` float to ``(N, K, h, w)`` (logits for a segmentation model).
            With ``fold_batchnorm`` (default) a network with Conv2d -> BatchNorm2d pairs is copied,
            the copy put in eval mode with the BatchNorm folded into the convolutions, and the
            network itself is left as it was. Otherwise the network itself is put in eval mode,
            moved to ``device`` and, where the precision policy says so, to channels-last memory.
        window: window size, one int or ``(h, w)``.
        overlap: fraction in [0, 1) or whole pixels; one value or ``(rows, columns)``.
        batch_size: network inputs per forward pass. With ``tta`` each window brings its three
            flipped copies into the same batch, so ``max(1, batch_size // 4)`` windows go per pass.
        blend: ``mean`` (plain average), ``gaussian`` (sigma = ``sigma_scale`` x window) or ``hann``.
        padding: ``reflect`` (default), ``constant`` (``pad_value``) or ``replicate``; used only for
            an axis shorter than the window, padded on both sides and cropped back.
        tta: average over the four flips (none, columns, rows, both), un-flipped, in probability space.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :func:`resolve_precision`);
            sums are always float32.
        activation: ``softmax`` / ``sigmoid`` over the class axis, or None to blend raw outputs.
        device: where the network runs (default: where its parameters are). Blending runs on CPU.
        compile: run the network through ``torch.compile`` with weight freezing (oneDNN weights
            pre-packed, BatchNorm and ReLU fused). On this project's CPU it was 5-10 % faster than
            eager for the 7.8 M-parameter U-Net and up to 1.8x for small ones, for a one-off 10-25 s
            compile (BENCHMARKS.md, tiled inference). Batches are padded to a fixed size so one graph
            serves every pass; if compiling fails (e.g. no C++ compiler) the network runs eagerly.

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
        fold_batchnorm: bool = True,
    ) -> None:
        place_windows((1, 1), window, overlap)  # validates window and overlap
        self.window = tuple(int(v) for v in pair(window, "window"))
        self.strides = tuple(stride_for(w, o) for w, o in zip(self.window, pair(overlap, "overlap")))
        require_int("batch_size", batch_size, 1)
        BLEND_MODES.check(blend, "blend")
        PADDING_MODES.check(padding, "padding")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: expected 'softmax', 'sigmoid' or None")
        self.blend, self.padding, self.pad_value = blend, padding, float(pad_value)
        self.activation, self.tta = activation, bool(tta)
        self.profiles = tuple(axis_weights(w, blend, sigma_scale) for w in self.window)
        self.weights = None if blend == "mean" else torch.from_numpy(np.outer(*self.profiles).astype(np.float32))
        self.n_aug = len(_FLIPS) if self.tta else 1
        self.windows_per_batch = max(1, int(batch_size) // self.n_aug)

        module = network if isinstance(network, nn.Module) else None
        self.device = resolve_device(device, module)
        self.precision = resolve_precision(precision, self.device)
        if module is not None:
            folded = with_batchnorm_folded(module) if fold_batchnorm else module
            if folded is module:
                module.eval()
            module = folded
            module.to(self.device)
            if self.precision.channels_last:
                module.to(memory_format=torch.channels_last)
            network = module
        self.compiled = bool(compile)
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
        if self.precision.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        # Weight freezing (constant-folded BatchNorm, pre-packed oneDNN weights) is what makes the
        # compiled graph fast on CPU; it is an inductor setting read when the graph is compiled,
        # i.e. on the first call, and it is set only around our own calls.
        frozen = inductor_freezing() if self.compiled else contextlib.nullcontext()
        with torch.inference_mode(), self.precision.autocast(self.device), frozen:
            if not self.compiled or self._compile_checked:
                return self.network(batch)
            try:  # the first call compiles
                out = self.network(batch)
            except Exception as exc:  # no C++ compiler, unsupported op, ...: run eagerly instead
                reason = " ".join(str(exc).split())[:200]
                log.warning("torch.compile failed (%s); running the network uncompiled", reason)
                self.network, self.compiled = self._eager, False
                out = self.network(batch)
            self._compile_checked = True
            return out

    def forward_windows(self, windows: torch.Tensor) -> np.ndarray:
        """Run ``(n, C, h, w)`` windows (``n <= windows_per_batch``) in one forward pass.

        Returns float32 ``(n, K, h, w)`` (C-contiguous, on the CPU): activation applied, flips
        averaged back when ``tta``, multiplied by the blending weights (except for ``mean``).
        """
        n = windows.shape[0]
        batch = torch.cat([windows.flip(dims) if dims else windows for dims in _FLIPS]) if self.tta else windows
        full = self.windows_per_batch * self.n_aug
        if self.compiled and batch.shape[0] < full:
            # One fixed shape, so the compiled graph is never rebuilt for the last, short batch.
            batch = torch.cat([batch, batch.new_zeros((full - batch.shape[0], *batch.shape[1:]))])
        out = self.run_network(batch)
        with torch.inference_mode():
            # A few whole-batch torch operations (vectorised, multi-threaded); the per-window
            # accumulation that follows is NumPy on plain (n, K, h, w) arrays.
            out = out[: n * self.n_aug].to("cpu", torch.float32)
            if self.activation == "softmax":
                out = torch.softmax(out, dim=1)
            elif self.activation == "sigmoid":
                out = torch.sigmoid(out)
            if self.tta:
                parts = out.split(n)
                merged = parts[0].clone()
                for dims, part in zip(_FLIPS[1:], parts[1:]):
                    merged += part.flip(dims)
                out = merged.div_(self.n_aug)
            if self.weights is not None:
                out = out * self.weights
            return out.contiguous().numpy()

    # ------------------------------------------------------------------------------------- bands

    def window_starts(self, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Window starts ``(rows, columns)`` for an image of ``size = (H, W)``, in padded coordinates."""
        (wh, ww), (sy, sx) = self.window, self.strides
        return axis_starts(max(int(size[0]), wh), wh, sy), axis_starts(max(int(size[1]), ww), ww, sx)

    def count_windows(self, size: Sequence[int]) -> int:
        """How many windows an image of ``size = (H, W)`` takes (before flips)."""
        rows, cols = self.window_starts(size)
        return len(rows) * len(cols)

    def bands(self, source: RowSource | np.ndarray, *, probs: bool = False, progress: bool = False) -> Iterator[Band]:
        """Blend windows over ``source`` and yield finished bands of rows, top to bottom.

        ``source``: a :class:`~.sources.RowSource` or a float image ``(C, H, W)``. Memory use is a
        band of rows (about ``window + stride`` rows x width x classes float32), not the image.
        """
        if not isinstance(source, RowSource):
            source = ArraySource(np.asarray(source))
        height, width = source.height, source.width
        wh, ww = self.window
        hp, wp = max(height, wh), max(width, ww)
        top, left = (hp - height) // 2, (wp - width) // 2
        ys, xs = axis_starts(hp, wh, self.strides[0]), axis_starts(wp, ww, self.strides[1])
        padded = PaddedRows(source, (hp, wp), (top, left), self.padding, self.pad_value)
        row_sums = weight_sums(hp, ys, self.profiles[0]).astype(np.float32)
        col_sums = weight_sums(wp, xs, self.profiles[1]).astype(np.float32)

        total, per_batch = len(ys) * len(xs), self.windows_per_batch
        accumulator = BandAccumulator(wp)
        bands_read: dict[int, np.ndarray] = {}
        bar = console.progress(total, "windows", "window", enabled=progress)
        try:
            for first in range(0, total, per_batch):
                # Windows in row-major order; window i is at row i // columns, column i % columns.
                batch = [divmod(i, len(xs)) for i in range(first, min(first + per_batch, total))]
                for r in [r for r in bands_read if r < batch[0][0]]:
                    del bands_read[r]
                for r, _ in batch:
                    if r not in bands_read:
                        bands_read[r] = padded.rows(int(ys[r]), wh)
                windows = np.stack([bands_read[r][:, :, xs[c] : xs[c] + ww] for r, c in batch])
                outputs = self.forward_windows(torch.from_numpy(windows))
                accumulator.add(outputs, [(int(ys[r]), int(xs[c])) for r, c in batch])
                bar.update(len(batch))
                following = first + per_batch
                # Rows above the next window's row are finished: later windows start lower down.
                stop = int(ys[following // len(xs)]) if following < total else hp
                if stop > accumulator.start:
                    band = self._finish(accumulator, stop, row_sums, col_sums, top, left, height, width, probs)
                    if band is not None:
                        yield band
        finally:
            bar.close()

    def _finish(
        self,
        accumulator: BandAccumulator,
        stop: int,
        row_sums: np.ndarray,
        col_sums: np.ndarray,
        top: int,
        left: int,
        height: int,
        width: int,
        want_probs: bool,
    ) -> Band | None:
        start = accumulator.start
        sums = accumulator.finished(stop)
        band = None
        # Crop the padding back off (padded rows/columns never reach the output).
        y0, y1 = max(start, top), min(stop, top + height)
        if y1 > y0:
            sums = sums[:, y0 - start : y1 - start, left : left + width]
            if sums.shape[0] > 256:
                raise ValueError(f"the network returns {sums.shape[0]} classes; labels are uint8 (at most 256)")
            # Divided in place: these rows of the buffer are dropped right after.
            blended = np.divide(sums, np.outer(row_sums[y0:y1], col_sums[left : left + width]), out=sums)
            labels = argmax_classes(blended)
            band = Band(y0 - top, labels, blended.copy() if want_probs else None)
        accumulator.drop(stop)
        return band

    # --------------------------------------------------------------------------------- in memory

    def probabilities(self, image: np.ndarray | torch.Tensor, progress: bool = False) -> np.ndarray:
        """Blended map float32 ``(K, H, W)`` of a float image ``(C, H, W)``."""
        image = _as_image(image)
        probs = assemble(self.bands(image, probs=True, progress=progress), image.shape[1:], with_probs=True)[1]
        assert probs is not None
        return probs

    def labels(
        self, image: np.ndarray | torch.Tensor, return_probs: bool = False, progress: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 labels ``(H, W)`` (argmax of the blended map), and the map itself if ``return_probs``."""
        image = _as_image(image)
        bands = self.bands(image, probs=return_probs, progress=progress)
        labels, probs = assemble(bands, image.shape[1:], with_probs=return_probs)
        return (labels, probs) if return_probs else labels


def _as_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float32).numpy()
    image = np.asarray(image)
    if image.ndim != 3 or 0 in image.shape:
        raise ValueError(f"image of shape {image.shape}: expected a non-empty float array (C,H,W)")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image of dtype {image.dtype}: expected float (C,H,W) in [0, 1]; convert it with imageio.image_to_array"
        )
    return image.astype(np.float32, copy=False)


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
