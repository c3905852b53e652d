"""The Python API: a :class:`Segmenter` (a trained network and what inference needs from its
training run) and what it does: segment an array, score a folder, predict image files.

>>> segmenter = Segmenter.from_checkpoint("checkpoints/demo/best.pt")
>>> labels = predict(segmenter, image)          # image: (H, W) or (H, W, C) numpy array
"""

from .inference.segmenter import Segmenter, evaluate_folder, predict, predict_files, score_pairs

__all__ = ["Segmenter", "evaluate_folder", "predict", "predict_files", "score_pairs"]
