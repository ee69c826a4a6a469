"""How the command-line tools end on an error: one line for a user's mistake, the traceback for a bug.

Every entry point (``train_ds.py``, ``eval.py``, ``chat.py``, ``scripts/export_model.py``, ``scripts/check_data.py``,
...) runs its ``main`` through :func:`run_main`. A :class:`read.errors.UserError` (a missing or corrupt file, a bad
config value, an unsafe checkpoint, a full disk) is printed to stderr as ``error: <message>`` and the process exits
with status 1 (``scripts/check_data.py``: 2). Any other exception is a bug and propagates with its traceback.
``--debug`` (see :func:`add_debug_flag`) or the environment variable ``READ_DEBUG=1`` shows the traceback of user
errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from read.errors import ConfigError, UserError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "READ_DEBUG"
USER_ERROR_EXIT = 1


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` to ``parser`` (read by :func:`run_main`, which sees the raw arguments)."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"on an error, show the full traceback instead of one line (also: {DEBUG_ENV}=1)",
    )


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """Fail early (before any work) if ``path`` cannot become a writable directory.

    Raises:
        ConfigError: ``path`` or one of its parents is a file, or the nearest existing parent is not writable.
    """
    target = os.path.abspath(os.fspath(path))
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == target else f"lies under {existing}, which is a file"
        raise ConfigError(f"{option} {path} {what}, not a directory: choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {existing} is not writable: choose another {option}")


def debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` among the arguments, or ``READ_DEBUG`` set to anything but "" / "0"."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_main(
    main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *, error_status: int = USER_ERROR_EXIT
) -> int:
    """Run ``main(argv)`` and turn its outcome into an exit status.

    Arguments:
        main: the tool's entry point; it returns an exit status (an int), or anything else for success.
        argv: the arguments (default ``sys.argv[1:]``).
        error_status: the status after a user error (1; ``scripts/check_data.py`` uses 2, its "unusable").

    Returns:
        ``main``'s status (0 when it returned something else), or ``error_status`` after printing a user error as
        one line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = main(args)
    except UserError as e:
        if debug_requested(args):
            raise
        print(f"error: {str(e).strip()}", file=sys.stderr, flush=True)
        return error_status
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
