"""The band loop of tiled inference, for any network that maps a NumPy batch of windows to NumPy
outputs (an ONNX Runtime session, or the torch engine's :class:`~.engine.TiledPredictor`). No torch.

Three parts, each testable alone (see docs/DESIGN.md):

1. placement (:mod:`.placement`): where the windows go;
2. the batched network (:meth:`WindowBlender.forward_windows`): a batch of windows in, blended
   probabilities out, with flip test-time augmentation inside the same batch;
3. the merger (:class:`~.merger.RowMerger`): weighted sums of one window row at a time, each
   window's pixels finished as soon as no later window touches them (argmax-ed, or divided by the
   summed weights when probabilities are asked for) and handed out as bands of rows
   (:meth:`WindowBlender.bands`).

The in-memory methods (:meth:`~WindowBlender.probabilities`, :meth:`~WindowBlender.labels`) run the
same band generator over an image in memory, so in-memory and streamed results are the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unet_patches import console
from unet_patches.files.sources import ArraySource, RowSource
from unet_patches.files.writers import Band
from unet_patches.validate import require_int

from .merger import RowMerger, argmax_classes, assemble
from .padding import PADDING_MODES, PaddedRows
from .placement import axis_starts, column_strips, pair, place_windows, stride_for
from .weights import BLEND_MODES, axis_weights, weight_sums

__all__ = ["ACTIVATIONS", "STRIP_COLUMNS", "WindowBlender"]

log = logging.getLogger(__name__)

ACTIVATIONS = ("softmax", "sigmoid", None)

STRIP_COLUMNS = 4096
"""About how many columns an image is worked in at a time when it is more than twice as wide (see
:meth:`WindowBlender.bands`)."""

# Flips used by test-time augmentation: none, columns, rows, both. Each is its own inverse.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


class WindowBlender:
    """Sliding-window inference with a fixed network and settings; reusable across images.

    Args:
        network: maps a float32 batch ``(N, C, h, w)`` to ``(N, K, h, w)`` outputs (NumPy in and out;
            logits for a segmentation model). :class:`~.engine.TiledPredictor` runs a torch module instead.
        window: window size, one int or ``(h, w)``.
        overlap: fraction in [0, 1) or whole pixels; one value or ``(rows, columns)``.
        batch_size: network inputs per forward pass. With ``tta`` each window brings its three
            flipped copies into the same batch, so ``max(1, batch_size // 4)`` windows go per pass.
        blend: ``mean`` (plain average), ``gaussian`` (sigma = ``sigma_scale`` x window) or ``hann``.
        padding: ``reflect`` (default), ``constant`` (``pad_value``) or ``replicate``; used only for
            an axis shorter than the window, padded on both sides and cropped back.
        tta: average over the four flips (none, columns, rows, both), un-flipped, in probability space.
        activation: ``softmax`` / ``sigmoid`` over the class axis, or None to blend raw outputs.
        strip_columns: an image more than twice this wide is worked in column strips about this
            wide, which keeps memory from growing with the width (:meth:`bands`); None:
            :data:`STRIP_COLUMNS`, 0: never.

    Sums are float32. Raises ``UserError`` for invalid settings.
    """

    def __init__(
        self,
        network: Callable[[np.ndarray], np.ndarray] | None,
        window: int | Sequence[int],
        overlap: float | int | Sequence[float | int] = 0.5,
        *,
        batch_size: int = 32,
        blend: str = "mean",
        sigma_scale: float = 0.125,
        padding: str = "reflect",
        pad_value: float = 0.0,
        tta: bool = False,
        activation: str | None = "softmax",
        strip_columns: int | None = None,
    ) -> None:
        place_windows((1, 1), window, overlap)  # validates window and overlap
        self.window = tuple(int(v) for v in pair(window, "window"))
        self.strides = tuple(stride_for(w, o) for w, o in zip(self.window, pair(overlap, "overlap")))
        require_int("batch_size", batch_size, 1)
        BLEND_MODES.check(blend, "blend")
        PADDING_MODES.check(padding, "padding")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: expected 'softmax', 'sigmoid' or None")
        self.network: Any = network
        # Whether each call returns arrays of its own (ONNX Runtime, OpenVINO); else outputs the
        # merger makes its sums in are copied first (see forward_windows).
        self.new_outputs = bool(getattr(network, "new_outputs", False))
        self.blend, self.padding, self.pad_value = blend, padding, float(pad_value)
        self.activation, self.tta = activation, bool(tta)
        self.profiles = tuple(axis_weights(w, blend, sigma_scale) for w in self.window)
        self.weights = None if blend == "mean" else np.outer(*self.profiles).astype(np.float32)
        self.n_aug = len(FLIPS) if self.tta else 1
        self.windows_per_batch = max(1, int(batch_size) // self.n_aug)
        if strip_columns is not None:
            require_int("strip_columns", strip_columns, 0)
        self.strip_columns = strip_columns

    # ----------------------------------------------------------------------------------- network

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """The network's raw float32 outputs ``(N, K, h, w)`` for a float32 batch ``(N, C, h, w)``."""
        return np.asarray(self.network(batch), dtype=np.float32)

    def forward_windows(self, windows: np.ndarray) -> np.ndarray:
        """Run ``(n, C, h, w)`` windows (``n <= windows_per_batch``) in one forward pass.

        Returns a float32 array ``(n, K, h, w)`` of the caller's own (C-contiguous; the merger makes its
        sums in it; a network's output is copied for it unless the network has ``new_outputs = True``):
        activation applied, flips averaged back when ``tta``, multiplied by the blending weights
        (except for ``mean``).
        """
        n = windows.shape[0]
        batch = np.concatenate([np.flip(windows, axes) for axes in FLIPS]) if self.tta else windows
        out = self.run_batch(np.ascontiguousarray(batch, dtype=np.float32))[: n * self.n_aug]
        if self.activation is None and not self.tta and self.weights is None and not self.new_outputs:
            return np.array(out, dtype=np.float32, order="C")  # a copy: the network may reuse its array
        if self.activation == "softmax":
            out = _softmax(out)
        elif self.activation == "sigmoid":
            out = 0.5 * (1.0 + np.tanh(0.5 * out, dtype=np.float32))  # sigmoid without overflow
        if self.tta:
            merged = out[:n].copy()
            for k, axes in enumerate(FLIPS[1:], start=1):
                merged += np.flip(out[k * n : (k + 1) * n], axes)
            out = np.divide(merged, self.n_aug, out=merged)
        if self.weights is not None:
            out = out * self.weights
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------------------------------- bands

    def window_starts(self, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Window starts ``(rows, columns)`` for an image of ``size = (H, W)``, in padded coordinates."""
        (wh, ww), (sy, sx) = self.window, self.strides
        return axis_starts(max(int(size[0]), wh), wh, sy), axis_starts(max(int(size[1]), ww), ww, sx)

    def count_windows(self, size: Sequence[int]) -> int:
        """How many windows an image of ``size = (H, W)`` takes (before flips)."""
        rows, cols = self.window_starts(size)
        return len(rows) * len(cols)

    def bands(
        self,
        source: RowSource | np.ndarray,
        *,
        probs: bool = False,
        progress: bool = False,
        rows: tuple[int, int] | None = None,
    ) -> Iterator[Band]:
        """Blend windows over ``source`` and yield finished bands of rows, top to bottom.

        ``source``: a :class:`~.sources.RowSource` or a float image ``(C, H, W)``. Memory use is a
        window row, not the image: its input rows, a batch of window outputs, the overlap rows carried
        to the next window row (overlap x width x classes float32) and the finished band. An image
        wider than about ``strip_columns`` is worked in column strips (:meth:`_strip_bands`), so that
        only one strip holds a window row and the others keep their overlap rows.
        ``rows = (start, stop)``: only those rows, computed from exactly the windows that touch them,
        in the same batches as for the whole image, so they equal the whole image's rows bit for bit
        (a huge image split between processes; at most one batch of extra windows is run).
        """
        grid = _Grid.of(self, source if isinstance(source, RowSource) else ArraySource(np.asarray(source)))
        lo, hi = (0, grid.height) if rows is None else (max(0, int(rows[0])), min(grid.height, int(rows[1])))
        if lo >= hi:
            return
        # Window rows touching padded rows top + lo .. top + hi.
        wh, ys = self.window[0], grid.ys
        row_range = int(np.searchsorted(ys + wh, grid.top + lo, "right")), int(np.searchsorted(ys, grid.top + hi))
        strips = self.strips(grid.xs)
        count = (row_range[1] - row_range[0]) * sum(j1 - j0 for j0, j1, _, _ in strips)
        bar = console.progress(count, "windows", "window", enabled=progress)
        crop = (grid.top + lo, grid.top + hi, grid.top)
        try:
            if len(strips) == 1:
                yield from self._packed_bands(grid, row_range, crop, probs, bar)
                return
            parts = [self._strip_bands(grid, strip, row_range, crop, probs, bar) for strip in strips]
            yield from _joined(parts, [(c0, c1) for _, _, c0, c1 in strips])
        finally:
            bar.close()

    def strips(self, xs: np.ndarray) -> list[tuple[int, int, int, int]]:
        """The column strips of a row of windows at ``xs`` (see :func:`~.placement.column_strips`):
        about ``strip_columns`` wide, a whole number of batches of windows each; one for a narrow image."""
        stride, width = self.strides[1], self.window[1]
        columns = STRIP_COLUMNS if self.strip_columns is None else self.strip_columns
        if columns == 0 or len(xs) < 3 or len(xs) * stride <= 2 * columns:
            return [(0, len(xs), 0, int(xs[-1]) + width)]
        spacing = int(np.diff(xs).min())  # windows are spread evenly, at most a stride apart
        least = max(-(-columns // stride), -(-width // spacing) + 1)
        count = max(1, round(len(xs) / least))
        per_strip = -(-(len(xs) + count - 1) // count)
        per_strip = -(-per_strip // self.windows_per_batch) * self.windows_per_batch
        return column_strips(xs, width, per_strip)

    def _packed_bands(
        self, grid: _Grid, row_range: tuple[int, int], crop: tuple[int, int, int], want_probs: bool, bar: Any
    ) -> Iterator[Band]:
        """Bands over the whole width, the windows in row-major order in full batches that may
        span window rows (batches start at multiples of the batch size, counted over the image)."""
        ys, xs, (wh, _) = grid.ys, grid.xs, self.window
        first_row, last_row = row_range
        begin, end = first_row * len(xs), last_row * len(xs)
        total, per_batch = len(ys) * len(xs), self.windows_per_batch
        merger = RowMerger(xs, self.window, sums=want_probs)
        columns = (grid.left, grid.left + grid.width)
        bands_read: dict[int, np.ndarray] = {}
        for first in range(begin - begin % per_batch, end, per_batch):
            # Windows in row-major order; window i is at row i // columns, column i % columns.
            batch = [divmod(i, len(xs)) for i in range(first, min(first + per_batch, total))]
            outputs = self.forward_windows(_windows(batch, bands_read, grid.padded, ys, xs, self.window))
            # Only the windows of this range (the batch may reach beyond it at either end).
            keep = slice(max(begin - first, 0), min(end - first, len(batch)))
            outputs, batch = outputs[keep], batch[keep]
            bar.update(len(batch))
            # Window row by window row: a row's band is finished by its last window.
            done = 0
            while done < len(batch):
                row, column = batch[done]
                stop_at = next((i for i in range(done, len(batch)) if batch[i][0] != row), len(batch))
                y = int(ys[row])
                if column == 0:
                    # Rows above the next window row are finished: later windows start lower down.
                    merger.begin_row(y, int(ys[row + 1]) if row + 1 < last_row else y + wh)
                merger.add(outputs[done:stop_at])
                if batch[stop_at - 1][1] == len(xs) - 1:
                    band = self._finish(merger, grid.row_sums, grid.col_sums, (*crop, *columns), want_probs)
                    if band is not None:
                        yield band
                done = stop_at

    def _strip_bands(
        self,
        grid: _Grid,
        strip: tuple[int, int, int, int],
        row_range: tuple[int, int],
        crop: tuple[int, int, int],
        want_probs: bool,
        bar: Any,
    ) -> Iterator[Band]:
        """Bands of the columns of one strip, window row by window row, each row's windows in
        batches of their own. Between bands the strip holds only the sums of the rows that the next
        window row adds to (the overlap), not its input, outputs or the rest of the band."""
        first_window, end_window, first_column, end_column = strip
        (wh, ww), per_batch = self.window, self.windows_per_batch
        xs = grid.xs[first_window:end_window]
        offset = int(xs[0])
        span = int(xs[-1]) + ww - offset
        merger = RowMerger(xs - offset, self.window, sums=want_probs)
        col_sums = grid.col_sums[offset : offset + span]
        columns = (first_column - offset, end_column - offset)
        for r in range(*row_range):
            y = int(grid.ys[r])
            merger.begin_row(y, int(grid.ys[r + 1]) if r + 1 < row_range[1] else y + wh)
            rows = grid.padded.rows(y, wh, (offset, offset + span))
            for k in range(0, len(xs), per_batch):
                starts = [int(x) - offset for x in xs[k : k + per_batch]]
                merger.add(self.forward_windows(np.stack([rows[:, :, x : x + ww] for x in starts])))
                bar.update(len(starts))
            del rows
            band = self._finish(merger, grid.row_sums, col_sums, (*crop, *columns), want_probs)
            if band is not None:
                handed = [band]
                del band
                yield handed.pop()  # so that this frame does not keep the band while it waits

    def _finish(
        self,
        merger: RowMerger,
        row_sums: np.ndarray,
        col_sums: np.ndarray,
        crop: tuple[int, int, int, int, int],
        want_probs: bool,
    ) -> Band | None:
        """The rows the merger's window row finished, as a band cropped to ``crop = (first padded
        row, end padded row, top padding, first column, end column)`` (columns of the merger, whose
        weight sums ``col_sums`` are); None if none of its rows are in the crop."""
        row_lo, row_hi, top, col_lo, col_hi = crop
        start, stop = merger.row, merger.stop
        finished = merger.finished()
        # Crop the padding (and rows outside the range asked for) back off.
        y0, y1 = max(start, row_lo), min(stop, row_hi)
        if y1 <= y0:
            return None
        rows = slice(y0 - start, y1 - start)
        if not want_probs:  # every class of a pixel has the same weight sum, so the argmax needs no division
            return Band(y0 - top, finished[rows, col_lo:col_hi], None)
        sums = finished[:, rows, col_lo:col_hi]  # the merger's new array: divided in place
        blended = np.divide(sums, np.outer(row_sums[y0:y1], col_sums[col_lo:col_hi]), out=sums)
        return Band(y0 - top, argmax_classes(blended), blended)

    # --------------------------------------------------------------------------------- in memory

    def probabilities(self, image: Any, progress: bool = False) -> np.ndarray:
        """Blended map float32 ``(K, H, W)`` of a float image ``(C, H, W)``."""
        image = _as_image(image)
        probs = assemble(self.bands(image, probs=True, progress=progress), image.shape[1:], with_probs=True)[1]
        assert probs is not None
        return probs

    def labels(
        self, image: Any, return_probs: bool = False, progress: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 labels ``(H, W)`` (argmax of the blended map), and the map itself if ``return_probs``."""
        image = _as_image(image)
        bands = self.bands(image, probs=return_probs, progress=progress)
        labels, probs = assemble(bands, image.shape[1:], with_probs=return_probs)
        return (labels, probs) if return_probs else labels


@dataclass
class _Grid:
    """One image's windows: the source padded to at least the window, the window starts in padded
    coordinates, and the blending weight sums along each padded axis."""

    height: int
    width: int
    top: int
    left: int
    ys: np.ndarray
    xs: np.ndarray
    padded: PaddedRows
    row_sums: np.ndarray
    col_sums: np.ndarray

    @classmethod
    def of(cls, blender: WindowBlender, source: RowSource) -> _Grid:
        height, width = source.height, source.width
        hp, wp = max(height, blender.window[0]), max(width, blender.window[1])
        top, left = (hp - height) // 2, (wp - width) // 2
        ys, xs = blender.window_starts((height, width))
        padded = PaddedRows(source, (hp, wp), (top, left), blender.padding, blender.pad_value)
        row_sums = weight_sums(hp, ys, blender.profiles[0]).astype(np.float32)
        col_sums = weight_sums(wp, xs, blender.profiles[1]).astype(np.float32)
        return cls(height, width, top, left, ys, xs, padded, row_sums, col_sums)


def _joined(parts: list[Iterator[Band]], columns: list[tuple[int, int]]) -> Iterator[Band]:
    """The bands of neighbouring column strips (``parts``, over ``columns``), which finish the same
    rows at each step, as whole bands; each strip's piece is copied in as soon as it comes."""
    while True:
        band = None
        for part, (first, end) in zip(parts, columns):
            piece = next(part, None)
            if piece is None:
                return
            if band is None:
                rows = piece.labels.shape[0]
                probs = (
                    None if piece.probs is None else np.empty((piece.probs.shape[0], rows, columns[-1][1]), np.float32)
                )
                band = Band(piece.start, np.empty((rows, columns[-1][1]), np.uint8), probs)
            assert piece.start == band.start
            band.labels[:, first:end] = piece.labels
            if band.probs is not None:
                band.probs[:, :, first:end] = piece.probs
            del piece
        yield band


def _windows(
    batch: list[tuple[int, int]],
    bands_read: dict[int, np.ndarray],
    padded: PaddedRows,
    ys: np.ndarray,
    xs: np.ndarray,
    window: tuple[int, int],
) -> np.ndarray:
    """The windows ``(row, column)`` of ``batch`` as one array, reading each window row's band of
    padded rows once (``bands_read``: kept until the batches have moved below it)."""
    for r in [r for r in bands_read if r < batch[0][0]]:
        del bands_read[r]
    for r, _ in batch:
        if r not in bands_read:
            bands_read[r] = padded.rows(int(ys[r]), window[0])
    return np.stack([bands_read[r][:, :, xs[c] : xs[c] + window[1]] for r, c in batch])


def _as_image(image: Any) -> np.ndarray:
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or 0 in image.shape:
        raise ValueError(f"image of shape {image.shape}: expected a non-empty float array (C,H,W)")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image of dtype {image.dtype}: expected float (C,H,W) in [0, 1]; convert it with imageio.image_to_array"
        )
    return image.astype(np.float32, copy=False)


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the class axis of ``(n, K, h, w)``, into a new float32 array."""
    out = scores - scores.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out
