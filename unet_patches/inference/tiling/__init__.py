"""Sliding-window (tiled) inference, the algorithm: window placement -> batched network -> merger.

- :mod:`.placement`: evenly spread windows whose last one ends at the border; column strips;
- :mod:`.sizing`: the window of an image (``auto``, ``patch`` or a size) and windows per pass;
- :mod:`.weights`: the blend modes (mean / gaussian / hann weight profiles, separable, strictly positive);
- :mod:`.padding`: padding modes for an axis shorter than the window;
- :mod:`.merger`: weighted window outputs summed window row by window row, finished pixels argmax-ed;
- :mod:`.blender`: :class:`WindowBlender`, the band loop (windows in batches, flip TTA, activation,
  column strips) for any network that maps a NumPy batch to NumPy outputs; no torch;
- :mod:`.engine`: :class:`TiledPredictor`, the blender over a torch network (device, precision,
  compile), :func:`sliding_window`, :func:`predict_labels`;
- :mod:`.network`: the network prepared for inference (BatchNorm folded, decoder concatenations split).

Images are read and written a band of rows at a time by :mod:`unet_patches.files`. Importing this
package does not import torch: the torch engine's names are loaded on first use.
"""

from .blender import WindowBlender
from .padding import PADDING_MODES, pad_indices
from .placement import axis_starts, check_coverage, place_windows
from .weights import BLEND_MODES, axis_weights, blend_weights

__all__ = [
    "BLEND_MODES",
    "PADDING_MODES",
    "TiledPredictor",
    "WindowBlender",
    "axis_starts",
    "axis_weights",
    "blend_weights",
    "check_coverage",
    "pad_indices",
    "place_windows",
    "predict_labels",
    "sliding_window",
]

_ENGINE = ("TiledPredictor", "predict_labels", "sliding_window")


def __getattr__(name: str) -> object:
    if name in _ENGINE:  # the torch engine, imported when first asked for
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
