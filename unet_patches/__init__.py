"""unet-patches: patch-based multiclass segmentation with tiled inference."""

__version__ = "0.1.0"
