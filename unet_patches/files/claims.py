"""Which process writes an image's outputs, when several predictions share an output folder.

Before writing the files of one image, a prediction takes the image's claim: an exclusive lock
(``flock``) on ``.<labels file name>.lock`` in the output folder, held until the image's files are
in place or thrown away. A process that finds the claim held skips the image (another process is
writing it) and says so; a process killed while holding it loses the lock with its life, so the next
run takes the claim and removes the temporary files the killed run left (only then: the ``.part``
files of an image whose claim is held are another process's work in progress).

The lock file is removed by its holder when the image is done. A process that opened it just before
(and gets the lock once it is released) finds that the name no longer leads to the file it locked,
and tries again with a fresh one: so two processes never both hold an image's claim.

Where ``fcntl`` is missing (Windows), claims always succeed: predictions into one folder must then
not run side by side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks between processes (see the module docstring)
    fcntl = None  # type: ignore[assignment]

__all__ = ["Claim", "claim_path", "take_claim"]

_ATTEMPTS = 8


def claim_path(labels: str | Path) -> Path:
    """The lock file of the image whose labels go to ``labels``: ``.<name>.lock`` beside it."""
    labels = Path(labels)
    return labels.with_name(f".{labels.name}.lock")


class Claim:
    """The held claim on one image's outputs; :meth:`release` (or leaving a ``with`` block) gives it up."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: see the module docstring)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take_claim(outputs: Mapping[str, Path]) -> Claim | None:
    """The claim on the image whose files ``outputs`` names (key ``labels``), or None when another
    living process holds it."""
    path = claim_path(outputs["labels"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        return Claim(path, None)
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # the holder before us removed it when it finished
            same = False
        if same:
            return Claim(path, fd)
        os.close(fd)  # a file its holder removed: try again with the one under the name now
    raise RuntimeError(f"{path}: could not take the claim in {_ATTEMPTS} attempts; the lock file keeps changing")
