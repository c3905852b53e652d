"""unet-patches: patch-based multiclass segmentation with tiled inference.

>>> from unet_patches import Segmenter, predict
>>> segmenter = Segmenter.from_checkpoint("checkpoints/demo/best.pt")
>>> labels = predict(segmenter, image)          # image: (H, W) or (H, W, C) numpy array

Importing the package loads the inference side only; training lives in ``unet_patches.training``.
"""

__version__ = "0.1.0"

from .api import Segmenter, evaluate_folder, predict, predict_files  # noqa: E402
from .errors import UserError  # noqa: E402

__all__ = ["Segmenter", "UserError", "evaluate_folder", "predict", "predict_files", "__version__"]

# torch itself is imported only where a checkpoint is read or a torch network runs, so the package,
# its inference API and its command line work with ONNX exports where torch is not installed.
