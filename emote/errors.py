"""The one exception type a user sees: its message is printed as one line by the CLI."""


class EmoteError(Exception):
    """A mistake the user can fix (bad input, missing file, mismatched artifact).

    The message names what failed (the file, the tensor, the option) and, where
    one exists, the option or command that fixes it. The CLI prints it on one
    line and exits with status 2; it never shows a traceback for these.
    """
