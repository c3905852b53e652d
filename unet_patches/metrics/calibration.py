"""Calibrated probabilities: temperature scaling of the blended probabilities, fitted by negative
log-likelihood, and the figures that say how far probabilities can be believed (expected calibration
error, NLL, Brier score), counted exactly over every evaluated pixel.

Where the temperature applies. The tiled engine averages the softmax probabilities of overlapping
windows (and flips, and ensemble members) into one ``p`` per pixel, and the labels are its argmax. The
temperature ``T`` acts on that ``p``: ``q_k = p_k ** (1/T) / sum_j p_j ** (1/T)``, which is the
softmax of ``log p / T``. It is monotone in every pixel, so **calibration never changes a label**
(labels are taken from ``p`` before it is applied), and the fit is on exactly what is written.
``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens under-confident ones.

The figures (:class:`CalibrationCounts`) come from sums over pixels (streamed, band by band), never
a per-pixel list:

- ``ece``: expected calibration error of the winning class, :data:`ECE_BINS` equal-width bins of its
  probability: ``sum_b n_b / N * |accuracy_b - confidence_b|``;
- ``ece_per_class``: the same for each class ``k`` over all pixels, binned by ``p_k`` and compared
  with how often the truth is ``k`` (class-wise ECE);
- ``nll``: mean ``-log p_true`` (``p`` clamped at 1e-12);
- ``brier``: mean ``sum_k (p_k - [k = true])**2`` (0 best, 2 worst).

The temperature is fitted (:func:`fit_temperature`) on a uniform random sample of at most
:data:`SAMPLE_PIXELS` labelled pixels (:class:`PixelSample`): a one-dimensional convex problem in
``1/T``, solved by bisection on its derivative within ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ECE_BINS",
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "SAMPLE_PIXELS",
    "CalibrationCounts",
    "PixelSample",
    "apply_temperature",
    "check_temperature",
    "fit_temperature",
    "reliability_diagram",
]

ECE_BINS = 15
"""Equal-width bins of a probability for the expected calibration error (the usual definition)."""
SAMPLE_PIXELS = 1 << 20
"""Labelled pixels at most that a temperature is fitted on (a uniform random sample of them)."""
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
"""The range a fitted temperature is kept in."""
PROB_FLOOR = 1e-12
"""The smallest probability a logarithm is taken of (NLL, the fit, :func:`apply_temperature`)."""
BLOCK_PX = 1 << 18
"""Pixels :func:`apply_temperature` works at a time."""


def check_temperature(value: Any, where: str) -> float:
    """``value`` as a temperature (a finite number > 0); a ``ValueError`` naming ``where`` otherwise
    (callers turn it into their own one-line error)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where} = {value!r}: expected a finite number > 0")
    return float(value)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``probs`` ``(K, ...)`` (classes first) calibrated by ``temperature``: the softmax of
    ``log(probs) / temperature``, float32, worked :data:`BLOCK_PX` pixels at a time (a wide band needs
    only small temporaries). The argmax over the classes is unchanged. A temperature of 1 returns
    ``probs`` itself."""
    if temperature == 1.0:
        return probs
    classes = probs.shape[0]
    flat = np.asarray(probs).reshape(classes, -1)
    out = np.empty(flat.shape, dtype=np.float32)
    inverse = np.float32(1.0 / temperature)
    for start in range(0, flat.shape[1], BLOCK_PX):
        block = slice(start, start + BLOCK_PX)
        logits = np.log(np.maximum(flat[:, block], np.float32(PROB_FLOOR), dtype=np.float32))
        logits *= inverse
        logits -= logits.max(axis=0, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=0, keepdims=True)
        out[:, block] = logits
    return out.reshape(probs.shape)


class CalibrationCounts:
    """Sums over labelled pixels from which ECE (top-label and per class), NLL and Brier follow exactly.

    ``update(probs, target, labels)`` adds pixels: ``probs`` ``(K, ...)`` probabilities, ``target``
    ``(...)`` true classes (pixels outside ``0..K-1`` are not counted), ``labels`` the predicted classes
    (default: the argmax of ``probs``). Counts of several processes or images add (:meth:`add`).
    """

    def __init__(self, num_classes: int, bins: int = ECE_BINS) -> None:
        self.num_classes, self.bins = int(num_classes), int(bins)
        self.count = np.zeros(self.bins)  # pixels whose winning probability falls in bin b
        self.confidence = np.zeros(self.bins)  # the sum of that probability
        self.correct = np.zeros(self.bins)  # how many of them are right
        self.class_count = np.zeros((self.num_classes, self.bins))  # pixels whose p_k falls in bin b
        self.class_prob = np.zeros((self.num_classes, self.bins))  # the sum of p_k
        self.class_hits = np.zeros((self.num_classes, self.bins))  # how many are truly of class k
        self.nll_sum = 0.0
        self.brier_sum = 0.0
        self.pixels = 0

    def _bin(self, values: np.ndarray) -> np.ndarray:
        return np.minimum((values * self.bins).astype(np.int64), self.bins - 1).clip(0)

    def update(self, probs: np.ndarray, target: np.ndarray, labels: np.ndarray | None = None) -> None:
        k = self.num_classes
        probs = np.asarray(probs).reshape(k, -1)
        target = np.asarray(target).reshape(-1).astype(np.int64)
        if probs.shape[1] != target.size:
            raise ValueError(f"probabilities of {probs.shape[1]} pixels for a target of {target.size}")
        keep = (target >= 0) & (target < k)
        if not keep.all():
            probs, target = probs[:, keep], target[keep]
            labels = None if labels is None else np.asarray(labels).reshape(-1)[keep]
        if target.size == 0:
            return
        probs = probs.astype(np.float64)
        labels = probs.argmax(0) if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)
        columns = np.arange(target.size)
        winning = probs[labels, columns]
        where = self._bin(winning)
        self.count += np.bincount(where, minlength=self.bins)
        self.confidence += np.bincount(where, weights=winning, minlength=self.bins)
        self.correct += np.bincount(where, weights=(labels == target).astype(np.float64), minlength=self.bins)
        for c in range(k):
            where = self._bin(probs[c])
            self.class_count[c] += np.bincount(where, minlength=self.bins)
            self.class_prob[c] += np.bincount(where, weights=probs[c], minlength=self.bins)
            self.class_hits[c] += np.bincount(where, weights=(target == c).astype(np.float64), minlength=self.bins)
        true_prob = probs[target, columns]
        self.nll_sum += float(-np.log(np.maximum(true_prob, PROB_FLOOR)).sum())
        self.brier_sum += float(((probs**2).sum(0) - 2 * true_prob + 1).sum())
        self.pixels += int(target.size)

    def add(self, other: CalibrationCounts) -> None:
        """Add the counts of ``other`` (of the same classes and bins)."""
        for name in ("count", "confidence", "correct", "class_count", "class_prob", "class_hits"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.nll_sum += other.nll_sum
        self.brier_sum += other.brier_sum
        self.pixels += other.pixels

    def ece(self) -> float:
        return float(np.abs(self.correct - self.confidence).sum() / self.pixels) if self.pixels else float("nan")

    def ece_per_class(self) -> np.ndarray:
        if not self.pixels:
            return np.full(self.num_classes, np.nan)
        return np.abs(self.class_hits - self.class_prob).sum(1) / self.pixels

    def nll(self) -> float:
        return self.nll_sum / self.pixels if self.pixels else float("nan")

    def brier(self) -> float:
        return self.brier_sum / self.pixels if self.pixels else float("nan")

    def reliability(self) -> list[dict[str, float | int | None]]:
        """The bins of the winning class's probability: their range, pixels, mean confidence and
        accuracy (None in an empty bin): what a reliability diagram draws."""
        rows = []
        for b in range(self.bins):
            n = int(self.count[b])
            rows.append(
                {
                    "low": b / self.bins,
                    "high": (b + 1) / self.bins,
                    "pixels": n,
                    "confidence": float(self.confidence[b] / n) if n else None,
                    "accuracy": float(self.correct[b] / n) if n else None,
                }
            )
        return rows

    def summary(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """``ece``, ``nll``, ``brier``, ``ece_per_class`` (by class name) and ``pixels``, plain values."""
        names = class_names or [str(c) for c in range(self.num_classes)]
        return {
            "ece": self.ece(),
            "nll": self.nll(),
            "brier": self.brier(),
            "ece_per_class": {n: float(v) for n, v in zip(names, self.ece_per_class())},
            "pixels": self.pixels,
        }


class PixelSample:
    """A uniform random sample of at most ``limit`` labelled pixels from images added one by one:
    their log-probabilities ``(N, K)`` and true classes, for :func:`fit_temperature`.

    Each pixel is kept with a probability that halves whenever the sample outgrows ``limit`` (the
    pixels kept so far are thinned by the same rule), so every pixel seen has the same chance of being
    in the end, whatever the order and size of the images. Seeded: the same images give the same sample.
    """

    def __init__(self, num_classes: int, limit: int = SAMPLE_PIXELS, seed: int = 0) -> None:
        self.num_classes, self.limit = int(num_classes), int(limit)
        self.rng = np.random.default_rng(seed)
        self.rate = 1.0
        self.log_probs: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.draws: list[np.ndarray] = []
        self.size = 0

    def update(self, probs: np.ndarray, target: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Pixels of ``probs`` ``(K, ...)`` with their true classes ``target`` ``(...)``; pixels outside
        ``0..K-1`` are left out (``labels`` is not needed: the signature is that of the counts, so that
        a prediction job can fill either)."""
        k = self.num_classes
        probs = np.asarray(probs).reshape(k, -1)
        target = np.asarray(target).reshape(-1).astype(np.int64)
        draw = self.rng.random(target.size)
        keep = (draw < self.rate) & (target >= 0) & (target < k)
        self.log_probs.append(np.log(np.maximum(probs[:, keep].T, PROB_FLOOR)).astype(np.float32))
        self.targets.append(target[keep])
        self.draws.append(draw[keep])
        self.size += int(keep.sum())
        while self.size > self.limit:
            self.rate /= 2
            for i, draw in enumerate(self.draws):
                kept = draw < self.rate
                self.log_probs[i], self.targets[i], self.draws[i] = (
                    self.log_probs[i][kept],
                    self.targets[i][kept],
                    draw[kept],
                )
            self.size = sum(t.size for t in self.targets)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The sample: log-probabilities ``(N, K)`` float32 and true classes ``(N,)`` int64."""
        if not self.targets:
            return np.zeros((0, self.num_classes), np.float32), np.zeros(0, np.int64)
        return np.concatenate(self.log_probs), np.concatenate(self.targets)


def _nll_slope(beta: float, log_probs: np.ndarray, target: np.ndarray) -> float:
    """d/d(beta) of the mean NLL of ``softmax(beta * log_probs)``: E_q[z] - z_true (increasing in beta)."""
    z = log_probs.astype(np.float64) * beta
    z -= z.max(1, keepdims=True)
    q = np.exp(z)
    q /= q.sum(1, keepdims=True)
    expected = (q * log_probs).sum(1)
    return float((expected - log_probs[np.arange(target.size), target]).mean())


def fit_temperature(log_probs: np.ndarray, target: np.ndarray) -> float:
    """The temperature ``T`` that minimises the mean negative log-likelihood of
    ``softmax(log_probs / T)`` for the true classes ``target``, within ``[MIN_TEMPERATURE,
    MAX_TEMPERATURE]``. The NLL is convex in ``1/T``; its derivative is bisected (60 halvings of the
    range of ``log(1/T)``). No pixels: 1."""
    if target.size == 0:
        return 1.0
    low, high = math.log(1 / MAX_TEMPERATURE), math.log(1 / MIN_TEMPERATURE)
    if _nll_slope(math.exp(low), log_probs, target) >= 0:
        return MAX_TEMPERATURE
    if _nll_slope(math.exp(high), log_probs, target) <= 0:
        return MIN_TEMPERATURE
    for _ in range(60):
        middle = (low + high) / 2
        if _nll_slope(math.exp(middle), log_probs, target) < 0:
            low = middle
        else:
            high = middle
    return float(1 / math.exp((low + high) / 2))


def reliability_diagram(path: str | Path, after: list[dict], before: list[dict] | None = None, title: str = "") -> None:
    """A reliability diagram as a PNG at ``path``: per bin of the winning class's probability, the
    accuracy (bars: calibrated, ``after``; outlines: uncalibrated, ``before``) against the diagonal of
    perfect calibration, with each bin's share of the pixels underneath. ``after``/``before`` are
    :meth:`CalibrationCounts.reliability` rows."""
    from PIL import Image, ImageDraw

    size, margin, strip = 420, 50, 60
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin + strip), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = margin, margin, margin + size, margin + size

    def x_of(value: float) -> float:
        return left + size * value

    def y_of(value: float) -> float:
        return bottom - size * value

    draw.rectangle([left, top, right, bottom], outline="black")
    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        draw.line([x_of(tick), bottom, x_of(tick), bottom + 4], fill="black")
        draw.text((x_of(tick) - 8, bottom + 6), f"{tick:.1f}", fill="black")
        draw.line([left - 4, y_of(tick), left, y_of(tick)], fill="black")
        draw.text((6, y_of(tick) - 6), f"{tick:.1f}", fill="black")
    total = max(sum(row["pixels"] for row in after), 1)
    for row in after:
        if row["accuracy"] is not None:
            draw.rectangle(
                [x_of(row["low"]) + 1, y_of(row["accuracy"]), x_of(row["high"]) - 1, bottom], fill=(31, 119, 180)
            )
        share = row["pixels"] / total
        draw.rectangle(
            [
                x_of(row["low"]) + 1,
                bottom + 40 + strip * (1 - share) * 0.6,
                x_of(row["high"]) - 1,
                bottom + 40 + strip * 0.6,
            ],
            fill=(150, 150, 150),
        )
    for row in before or []:
        if row["accuracy"] is not None:
            draw.rectangle(
                [x_of(row["low"]) + 3, y_of(row["accuracy"]), x_of(row["high"]) - 3, bottom],
                outline=(214, 39, 40),
                width=2,
            )
    draw.line([x_of(0), y_of(0), x_of(1), y_of(1)], fill="black", width=1)
    legend = "blue: calibrated accuracy" + ("; red outline: uncalibrated" if before else "")
    draw.text((left, 8), title or "reliability: accuracy against confidence", fill="black")
    draw.text((left, 24), legend, fill="black")
    draw.text((left + size // 2 - 90, bottom + 20), "probability of the winning class", fill="black")
    draw.text((left, bottom + 40 + strip * 0.6 + 4), "grey: share of pixels per bin", fill="black")
    image.save(path, format="PNG")
