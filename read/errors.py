"""The error type for problems a user causes or can fix.

Bad input (a missing or corrupt file, a degenerate annotation, a config key of the wrong type, a checkpoint that
does not match its config) raises :class:`UserError` or a subclass. The command-line entry points print such an error
as one line, ``error: <message>``, and exit non-zero; the message names the file concerned and, where it helps, what
to do about it. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or settings, reported as one line by the command-line tools."""
