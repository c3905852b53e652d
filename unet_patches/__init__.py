"""unet-patches: patch-based multiclass segmentation with tiled inference.

>>> from unet_patches import load_model, predict
>>> model = load_model("checkpoints/demo/best.pt")
>>> labels = predict(model, image)          # image: (H, W) or (H, W, C) numpy array
"""

__version__ = "0.1.0"

from .api import evaluate_folder, load_model, predict  # noqa: E402
from .errors import UserError  # noqa: E402

__all__ = ["UserError", "evaluate_folder", "load_model", "predict", "__version__"]
