"""Run-length text of a binary mask, as Kaggle segmentation competitions want it.

Pixels are numbered from 1 in **column-major** order (down the first column, then down the next:
``mask.ravel(order="F")``); the text is space-separated ``start length`` pairs, one per run of
foreground pixels, in increasing order, and the empty string for an empty mask.

>>> encode(np.array([[0, 1], [1, 1], [0, 0]]))  # column-major: 0 1 0 | 1 1 0
'2 1 4 2'
>>> decode("2 1 4 2", (3, 2)).tolist()
[[0, 1], [1, 1], [0, 0]]
"""

from __future__ import annotations

import re

import numpy as np

from unet_patches.errors import UserError

__all__ = ["decode", "encode"]

_INTEGER = re.compile(r"[+-]?[0-9]+")
# Parsed numbers are clipped to this before arithmetic so that absurd values cannot overflow int64;
# messages show the text as given.
_CLIP = 2**48


def encode(mask: np.ndarray) -> str:
    """The run-length text of a 2-D mask: 1-based, column-major ``start length`` pairs.

    Args:
        mask: ``(H, W)`` bool array, or numbers that are all 0 or 1.

    Returns:
        ``"start length start length ..."``, or ``""`` when no pixel is set.

    Raises:
        ValueError: ``mask`` is not 2-D or holds values other than 0 and 1 (a caller's bug).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode needs a 2-D mask (H, W), got shape {mask.shape}")
    if mask.dtype != bool:
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise ValueError("encode needs a mask of 0 and 1 (or bool); threshold or compare labels first")
        mask = mask.astype(bool)
    flat = mask.ravel(order="F").view(np.uint8)
    # Runs begin and end where the zero-padded sequence changes value.
    changes = np.flatnonzero(np.diff(flat, prepend=0, append=0))
    starts, stops = changes[0::2], changes[1::2]
    pairs = np.stack([starts + 1, stops - starts], axis=1)
    return " ".join(map(str, pairs.ravel().tolist()))


def decode(text: str, shape: tuple[int, int], where: str = "run-length text") -> np.ndarray:
    """The mask of run-length ``text``: uint8 ``(H, W)`` of 0 and 1.

    Args:
        text: space-separated ``start length`` pairs (1-based, column-major), ``""`` for an empty mask.
        shape: ``(H, W)`` of the mask.
        where: what the text is (a file and row), to start error messages.

    Raises:
        UserError: a number that is not an integer, an odd count of numbers, a start < 1, a
            length < 1, a run past the last pixel, or runs that overlap or are out of order; the
            message names the offending pair.
        ValueError: ``shape`` is not two integers >= 0 (a caller's bug).
    """
    if len(shape) != 2 or not all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape):
        raise ValueError(f"decode needs shape (H, W) of two integers >= 0, got {shape!r}")
    height, width = int(shape[0]), int(shape[1])
    total = height * width
    tokens = _tokens(text, where)
    clipped = [_clipped_int(t) for t in tokens]
    values = np.array(clipped, dtype=np.int64).reshape(-1, 2)
    starts, lengths = values[:, 0], values[:, 1]
    ends = starts + lengths - 1  # last pixel of each run, 1-based

    k = _first(starts < 1)
    if k is not None:
        raise _bad_run(where, tokens, k, "start < 1; pixels are numbered from 1")
    k = _first(lengths < 1)
    if k is not None:
        raise _bad_run(where, tokens, k, "length < 1; every run covers at least one pixel")
    k = _first(ends > total)
    if k is not None:
        ending = f"ends at pixel {ends[k]}" if ends[k] < _CLIP else "ends"
        problem = f"{ending}, past the last pixel ({total}) of a {height}x{width} (HxW) mask"
        raise _bad_run(where, tokens, k, problem)
    k = _first(starts[1:] <= ends[:-1])
    if k is not None:
        problem = (
            f"starts at or before the end of the previous run (pixel {ends[k]}); "
            "runs must be in increasing order and must not overlap"
        )
        raise _bad_run(where, tokens, k + 1, problem)
    # +1 where a run starts, -1 just after it ends; the running sum is the mask.
    steps = np.zeros(total + 1, dtype=np.int32)
    steps[starts - 1] += 1
    steps[ends] -= 1
    flat = np.cumsum(steps[:-1], dtype=np.int32).astype(np.uint8)
    return np.ascontiguousarray(flat.reshape((height, width), order="F"))


def _clipped_int(token: str) -> int:
    """An integer token clipped to +-_CLIP; digits beyond 18 (after leading zeros) are past the clip
    anyway, and ``int()`` refuses numbers of over 4300 digits."""
    digits = token.lstrip("+-").lstrip("0")
    if len(digits) > 18:
        return -_CLIP if token.startswith("-") else _CLIP
    return max(-_CLIP, min(_CLIP, int(token)))


def _tokens(text: str, where: str) -> list[str]:
    if not isinstance(text, str):
        raise UserError(f"{where}: {type(text).__name__} {text!r}: expected text of 'start length' pairs")
    tokens = text.split()
    for i, token in enumerate(tokens):
        if not _INTEGER.fullmatch(token):
            raise UserError(
                f"{where}: {token!r} (number {i + 1}) is not an integer; expected space-separated 'start length' pairs"
            )
    if len(tokens) % 2:
        raise UserError(
            f"{where}: {len(tokens)} numbers, an odd count (start {tokens[-1]} has no length); "
            "expected 'start length' pairs"
        )
    return tokens


def _first(bad: np.ndarray) -> int | None:
    """The index of the first true entry, or None."""
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def _bad_run(where: str, tokens: list[str], k: int, problem: str) -> UserError:
    return UserError(f"{where}: run {k + 1} ('{tokens[2 * k]} {tokens[2 * k + 1]}'): {problem}")
