"""The one exception type the command line turns into a clean message."""


class UserError(ValueError):
    """Bad input from the user: a file, a value or a setting.

    The message is one line that names the file or value, says what was
    expected and how to fix it. The command-line tools print it and exit
    with status 2 instead of showing a traceback.
    """


def one_line(what: object, limit: int | None = None) -> str:
    """``what`` (an exception's message, or any text) on one line with runs of blanks collapsed,
    cut to ``limit`` characters; an exception without a message gives its type's name. For quoting
    a library's error, or a value, inside a one-line message."""
    text = " ".join(str(what).split()) or (type(what).__name__ if isinstance(what, BaseException) else "")
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def cannot_write(path: object, exc: BaseException, kept: str = "") -> UserError:
    """The one-line error of a write to ``path`` that failed (a full disk, a quota, a file-size limit,
    a folder made read-only): the path, the system's reason, what was kept (``kept``, e.g. "the
    file there before is unchanged"; by default, that no partial file is left), and what to do."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc, 160)
    return UserError(
        f"{path}: cannot write ({reason}); {kept or 'no partial file is left'}; "
        "free some space or write elsewhere, then run the command again"
    )
