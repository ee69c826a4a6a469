"""The error types for problems a user causes or can fix.

Bad input (a missing or corrupt file, a degenerate annotation, a config key of the wrong type, a checkpoint that
does not match its config) raises :class:`UserError` or a subclass. The command-line entry points print such an error
as one line, ``error: <message>``, and exit with status 1 (``read.cli.run_main``); the message names the file
concerned and, where it helps, what to do about it. Anything else is a bug and keeps its traceback.

The subclasses also derive from the built-in exception that the same condition raised before (``ValueError``,
``FileNotFoundError``, ...), so code that catches those keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or settings, reported as one line by the command-line tools."""


class ConfigError(UserError, ValueError):
    """A config file, config key or command-line setting is wrong: unreadable YAML, an unknown key, a value of the
    wrong type or out of range, settings that contradict each other."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory that the settings name does not exist."""


class FileFormatError(UserError, ValueError):
    """A file exists but cannot be used: corrupt or truncated, in an unexpected layout, or not matching the model
    or config it is meant for."""


class UnsafeFileError(FileFormatError):
    """A file would run code if it were loaded (a pickle that names a callable outside the allow-list). It was
    refused while being read; nothing in it ran."""


class DiskFullError(UserError, OSError):
    """A write failed because the device (or the user's quota) is full."""


class MissingPackageError(UserError, ImportError):
    """A setting needs an optional package that is not installed."""
