"""Writing a file so that readers see the old file or the whole new one, never a part: the content
goes to a temporary file beside the target, which is then renamed over it."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import one_line

__all__ = ["named", "write_atomically"]


def _torch_write_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return "PytorchStreamWriter" in text or "file write failed" in text or "inline_container" in text


def named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` (a failed write) as raised for ``path``: the file the user asked for, which the command
    line names in its one-line message, rather than a temporary file or no file at all."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path)) if exc.errno else exc


def write_atomically(path: str | Path, write: Callable[[Path], object], *, fsync: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, then rename it to ``path``.

    The file gets the usual permissions (``0o666`` less the umask; ``mkstemp`` makes 0600 files).
    ``fsync`` flushes it to disk before the rename (checkpoints: hours of work). If anything fails,
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a size limit: named by the file meant, not the temporary one
        tmp.unlink(missing_ok=True)
        raise named(exc, path) from None
    except RuntimeError as exc:  # torch.save / torch.jit.save report a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        if not _torch_write_failure(exc):
            raise
        raise OSError(errno.EIO, f"write failed: {one_line(exc, 120)}", str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:  # the rename itself reaches the disk with the folder's entry
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
