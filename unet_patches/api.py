"""The Python API: a :class:`Segmenter` (a trained network and what inference needs from its
training run) and what it does: segment an array, score a folder, predict image files; a
:class:`PredictionJob` for many images with one set of settings.

>>> segmenter = Segmenter.from_checkpoint("checkpoints/demo/best.pt")
>>> labels = predict(segmenter, image)          # image: (H, W) or (H, W, C) numpy array
>>> job = PredictionJob(segmenter, window="auto", tta=True)   # settled once, predictors kept
>>> labels = [job.labels(image) for image in images]
>>> labels, probs = predict(segmenter, image, return_probs=True)   # probabilities calibrated
>>> uncertainty = normalised_entropy(probs)     # (H, W) in [0, 1]: where to look
"""

from .inference.job import PredictionJob
from .inference.predict import evaluate_folder, predict, predict_files, score_pairs
from .inference.segmenter import Segmenter
from .metrics.calibration import apply_temperature
from .metrics.uncertainty import normalised_entropy, review_order

__all__ = [
    "PredictionJob",
    "Segmenter",
    "apply_temperature",
    "evaluate_folder",
    "normalised_entropy",
    "predict",
    "predict_files",
    "review_order",
    "score_pairs",
]
