"""unet-patches: patch-based multiclass segmentation with tiled inference.

>>> from unet_patches import Segmenter, predict
>>> segmenter = Segmenter.from_checkpoint("checkpoints/demo/best.pt")
>>> labels = predict(segmenter, image)          # image: (H, W) or (H, W, C) numpy array

Importing the package loads the inference side only (no torch until a checkpoint is read); training
lives in :mod:`unet_patches.training` (``training.fit``, ``training.resume``). Modules of the earlier
flat layout are still importable under their old names (:mod:`unet_patches.moved`).
"""

from . import moved
from ._version import __version__
from .api import Segmenter, evaluate_folder, predict, predict_files
from .errors import UserError

__all__ = ["Segmenter", "UserError", "evaluate_folder", "predict", "predict_files", "__version__"]

moved.install()
