"""The one exception type the command line turns into a clean message."""


class UserError(ValueError):
    """Bad input from the user: a file, a value or a setting.

    The message is one line that names the file or value, says what was
    expected and how to fix it. The command-line tools print it and exit
    with status 2 instead of showing a traceback.
    """
