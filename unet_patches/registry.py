"""Choices made by name: one :class:`Registry` per kind (models, losses, optimizers, schedules, blend
and padding modes, normalisation modes, output formats, precisions, ...), defined next to what it
names; an extension point is a row of one.

The settings check names against the registries, argparse takes its ``choices`` from them and the
tests hold ``docs/PARAMETERS.md`` to them, so a name is written once. A miss lists the valid names
and suggests the closest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import UserError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """An immutable, ordered mapping from names to what they name (a class, a function, a value).

    ``kind`` says what the names are ("loss", "optimizer", ...) in error messages.
    """

    def __init__(self, kind: str, entries: Mapping[str, T]) -> None:
        if not entries:
            raise ValueError(f"registry of {kind} names is empty")
        self.kind = kind
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def check(self, name: object, where: str | None = None) -> str:
        """``name`` if registered; else ``UserError`` naming ``where`` (a setting such as
        ``training.loss``, default: the kind), the valid names and the closest one."""
        if isinstance(name, str) and name in self._entries:
            return name
        label = where or self.kind
        close = difflib.get_close_matches(str(name), self.names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{label} = {name!r}: unknown {self.kind}{hint}; expected one of {', '.join(self.names)}")

    def lookup(self, name: object, where: str | None = None) -> T:
        """What ``name`` names, after :meth:`check`."""
        return self._entries[self.check(name, where)]
