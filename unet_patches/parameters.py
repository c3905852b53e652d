"""The parameters file and typed settings: ``parameters.json`` read (:func:`read_parameters`), flags
merged into its sections (:func:`merge`), and a settings dataclass built from a dict
(:func:`build_typed`), each value checked against its type hint (ints accepted for floats,
``[low, high]`` pairs, lists, unions, null), unknown keys refused with the closest known one. Every
problem is a ``UserError`` naming the key. The sections themselves live in the rooms they configure
(``data/config.py``, ``models/config.py``, ``inference/config.py``, ``training/config.py``)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from .errors import UserError
from .validate import is_int, is_number

__all__ = ["build_typed", "coerce", "describe_type", "merge", "read_parameters"]


def read_parameters(path: str | Path) -> Any:
    """The JSON value of a parameters file.

    Raises:
        UserError: the file cannot be read or is not JSON.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(
            f"{path}: cannot read the parameter file ({exc.strerror}); pass an existing JSON file"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; pass a JSON parameter file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None


def merge(values: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``values`` with each section's keys replaced by those of ``overrides`` (neither is changed)."""
    merged = dict(values)
    for section, changes in overrides.items():
        current = merged.get(section)
        merged[section] = {**(current if isinstance(current, dict) else {}), **changes}
    return merged


def build_typed(cls: type, values: dict[str, Any], prefix: str, path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            if path and key.startswith("_"):
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{prefix}unknown key {path + key!r}{hint}; valid keys: {', '.join(known)}")
    kwargs = {}
    for name in known:
        if name not in values:
            continue
        value, hint = values[name], hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{prefix}{path + name!r} must be an object of settings, got {value!r}")
            kwargs[name] = build_typed(hint, value, prefix, f"{path}{name}.")
        else:
            kwargs[name] = coerce(value, hint, f"{prefix}{path + name!r}")
    try:
        return cls(**kwargs)
    except UserError as exc:
        raise UserError(f"{prefix}{exc}") from None


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where} = {value!r}: expected {describe_type(hint)}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in args:
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:
                if len(value) != 2:
                    raise UserError(f"{where} = {value!r}: expected a pair [low, high]")
                items = [coerce(v, a, where) for v, a in zip(value, args)]
                if items[0] > items[1]:
                    raise UserError(f"{where} = {value!r}: expected low <= high")
                return tuple(items)
            return [coerce(v, args[0], where) for v in value]
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: coerce(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if is_int(value):
            return int(value)
    elif hint is float:
        if is_number(value) and math.isfinite(value):  # JSON's NaN and Infinity are no setting's value
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where} = {value!r}: expected {describe_type(hint)}")


def describe_type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is tuple:
        return "a pair [low, high]"
    if origin is list:
        return f"a list of {describe_type(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"an object of {describe_type(typing.get_args(hint)[1])} values"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(hint, str(hint))
