"""Sliding-window (tiled) inference: window placement -> batched network -> merger.

- :mod:`.placement`: evenly spread windows whose last one ends at the border;
- :mod:`.blending`: mean / gaussian / hann weights (separable, strictly positive);
- :mod:`.blender`: :class:`WindowBlender`, the band loop (windows in batches, flip TTA, activation,
  band-wise merging) for any network that maps a NumPy batch to NumPy outputs; no torch;
- :mod:`.engine`: :class:`TiledPredictor`, the blender over a torch network (device, precision,
  compile), :func:`sliding_window`, :func:`predict_labels`;
- :mod:`.network`: the network prepared (BatchNorm folded, device, compile setting);
- :mod:`.padding`: padding modes for an axis shorter than the window;
- :mod:`.merger`: weighted sums over a band of rows, finished rows as labels and probabilities;
- :mod:`.sources` / :mod:`.writers`: images read and written a band of rows at a time;
- :mod:`.files`: inputs expanded, outputs planned and written band by band (``api.predict_files``
  and the command line's ``predict`` are built on them).

Importing this package does not import torch: the torch engine's names are loaded on first use.
"""

from .blender import WindowBlender
from .blending import BLEND_MODES, axis_weights, blend_weights
from .files import (
    DEFAULT_STREAM_THRESHOLD_PX,
    OutputPlan,
    expand_inputs,
    open_image,
    output_paths,
    plan_outputs,
    write_outputs,
)
from .merger import Band
from .padding import PADDING_MODES, pad_indices
from .placement import axis_starts, check_coverage, place_windows
from .sources import ArraySource, RawSource, RowSource, TiffSource
from .writers import NpyWriter, PngWriter, TiffWriter

__all__ = [
    "BLEND_MODES",
    "DEFAULT_STREAM_THRESHOLD_PX",
    "PADDING_MODES",
    "ArraySource",
    "Band",
    "NpyWriter",
    "OutputPlan",
    "PngWriter",
    "RawSource",
    "RowSource",
    "TiffSource",
    "TiffWriter",
    "WindowBlender",
    "TiledPredictor",
    "axis_starts",
    "axis_weights",
    "blend_weights",
    "check_coverage",
    "expand_inputs",
    "output_paths",
    "pad_indices",
    "open_image",
    "place_windows",
    "plan_outputs",
    "predict_labels",
    "sliding_window",
    "write_outputs",
]


_ENGINE = ("TiledPredictor", "predict_labels", "sliding_window")


def __getattr__(name: str) -> object:
    if name in _ENGINE:  # the torch engine, imported when first asked for
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
