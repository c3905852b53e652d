"""Progress while commands run: a tqdm bar on a terminal, a periodic one-line status when output
goes to a file or a pipe (a redrawn bar would fill a log with carriage-return frames).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["StatusLine", "progress"]

log = logging.getLogger("unet_patches")

STATUS_EVERY_SECONDS = 30.0


class StatusLine:
    """The file-friendly stand-in for a tqdm bar: the same ``update`` / ``set_postfix`` / ``close``,
    and at most one log line every ``every`` seconds (``desc: n/total unit, postfix``)."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = STATUS_EVERY_SECONDS) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n = 0
        self.postfix = ""
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            of = "" if self.total is None else f"/{self.total}"
            log.info("%s: %d%s %s%s", self.desc, self.n, of, self.unit, f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        pass


def progress(total: int | None, desc: str, unit: str = "it", enabled: bool = True, stream: TextIO | None = None) -> Any:
    """A progress display for ``total`` steps: a tqdm bar when ``stream`` (default stderr) is a
    terminal, else a :class:`StatusLine`; a silent bar when not ``enabled``."""
    from tqdm.auto import tqdm

    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, disable=True)
    if stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream)
    return StatusLine(total, desc, unit)
