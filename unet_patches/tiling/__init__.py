"""Sliding-window (tiled) inference: window placement -> batched network -> merger.

- :mod:`.placement`: evenly spread windows whose last one ends at the border;
- :mod:`.blending`: mean / gaussian / hann weights (separable, strictly positive);
- :mod:`.engine`: :class:`TiledPredictor` (batches, flip TTA, precision, band-wise merging),
  :func:`sliding_window`, :func:`predict_labels`;
- :mod:`.sources` / :mod:`.writers`: images read and written a band of rows at a time;
- :mod:`.files`: :func:`predict_files`, the command line's ``predict``.
"""

from .blending import BLEND_MODES, axis_weights, blend_weights
from .engine import (
    PADDING_MODES,
    PRECISIONS,
    Band,
    Precision,
    TiledPredictor,
    cpu_has_fast_bf16,
    pad_indices,
    predict_labels,
    resolve_precision,
    sliding_window,
)
from .files import DEFAULT_STREAM_THRESHOLD_PX, expand_inputs, output_paths, predict_files
from .placement import axis_starts, check_coverage, place_windows
from .sources import ArraySource, RawSource, RowSource, TiffSource
from .writers import NpyWriter, PngWriter, TiffWriter

__all__ = [
    "BLEND_MODES",
    "DEFAULT_STREAM_THRESHOLD_PX",
    "PADDING_MODES",
    "PRECISIONS",
    "ArraySource",
    "Band",
    "NpyWriter",
    "PngWriter",
    "Precision",
    "RawSource",
    "RowSource",
    "TiffSource",
    "TiffWriter",
    "TiledPredictor",
    "axis_starts",
    "axis_weights",
    "blend_weights",
    "check_coverage",
    "cpu_has_fast_bf16",
    "expand_inputs",
    "output_paths",
    "pad_indices",
    "place_windows",
    "predict_files",
    "predict_labels",
    "resolve_precision",
    "sliding_window",
]
