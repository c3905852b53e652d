"""The shared argument checks: one place for "is this an integer >= 1", "a number in [0, 1)", ...

Every check raises :class:`~unet_patches.errors.UserError` whose message starts with the name of
the setting and its value (``training.batch_size = 0: expected an integer >= 1``), so callers pass
the name the user knows (a ``parameters.json`` key, a flag, an argument). Use them where a value can
come from the user; internal invariants raise ``ValueError`` or ``AssertionError`` instead.
"""

from __future__ import annotations

import math
import numbers

from .errors import UserError

__all__ = ["is_int", "is_number", "require_int", "require_number", "require_pair"]


def is_int(value: object) -> bool:
    """An integer (Python or NumPy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number (Python or NumPy int or float), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an ``int``; it must be an integer and at least ``minimum``."""
    if not is_int(value) or (minimum is not None and value < minimum):  # type: ignore[operator]
        bound = "" if minimum is None else f" >= {minimum}"
        raise UserError(f"{name} = {value!r}: expected an integer{bound}")
    return int(value)  # type: ignore[arg-type]


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def require_number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float``; it must be a real number within the (optionally open) bounds."""
    ok = is_number(value) and math.isfinite(value)  # type: ignore[arg-type]
    if ok and low is not None:
        ok = value > low if low_open else value >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = value < high if high_open else value <= high  # type: ignore[operator]
    if not ok:
        raise UserError(f"{name} = {value!r}: expected a finite number {_interval(low, high, low_open, high_open)}")
    return float(value)  # type: ignore[arg-type]


def require_pair(
    name: str, value: object, *, integer: bool, low: float, high: float | None = None, low_open: bool = False
) -> tuple:
    """``value`` as a ``(low, high)`` tuple of integers or numbers within bounds, first <= second."""
    kind = "integers" if integer else "numbers"
    expected = f"expected a pair [low, high] of {kind} {_interval(low, high, low_open, False)} with low <= high"
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise UserError(f"{name} = {value!r}: {expected}")
    first, second = value
    check = is_int if integer else is_number
    ok = check(first) and check(second)
    if ok:
        ok = (first > low if low_open else first >= low) and first <= second
        ok = ok and (high is None or second <= high)
    if not ok:
        raise UserError(f"{name} = {value!r}: {expected}")
    return (first, second)
