"""A restricted unpickler for the ``refs(<splitBy>).p`` annotation files.

Those files are plain lists of dicts of strings and numbers, but ``pickle.load`` would run any callable a file names.
:func:`load_pickle` resolves only a short allow-list of harmless built-in types and raises
:class:`UnsafePickleError` (naming the file and the global) for anything else.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

from read.errors import FileFormatError, MissingFileError, UnsafeFileError

__all__ = ["PickleFormatError", "UnsafePickleError", "load_pickle", "loads_restricted"]

# The only globals a pickle of built-in containers and scalars may reference (protocols 0-5, Python 2 and 3
# names; Python 2 names are mapped by ``fix_imports``).
_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("_codecs", "encode"),  # how protocols 0-2 store ``bytes`` (a string and its encoding name)
}

# Encodings tried in order for Python 2 ``str`` objects: ASCII is what the reference (Python 3 ``pickle.load``)
# uses; the others accept the occasional non-ASCII sentence.
_PY2_STR_ENCODINGS = ("ASCII", "utf-8", "latin1")


class UnsafePickleError(UnsafeFileError, pickle.UnpicklingError):
    """A pickle references a global outside the allow-list."""


class PickleFormatError(FileFormatError, pickle.UnpicklingError):
    """A file is not a valid pickle (truncated or corrupt)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str, encoding: str) -> None:
        super().__init__(file, fix_imports=True, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 name of the builtins module
            module = "builtins"
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load global '{module}.{name}'; only built-in containers and scalars "
            "are allowed in annotation pickles"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed (got {pid!r})")


def loads_restricted(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list; ``source`` names the data in error messages.

    Raises:
        UnsafePickleError: the pickle references a disallowed global.
        pickle.UnpicklingError: the data is not a valid pickle (message names ``source``).
    """
    last_error: Exception | None = None
    for encoding in _PY2_STR_ENCODINGS:
        try:
            return _RestrictedUnpickler(io.BytesIO(data), source, encoding).load()
        except UnicodeDecodeError as e:
            last_error = e
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated or corrupt pickles raise assorted exception types
            raise PickleFormatError(f"{source}: not a valid pickle ({type(e).__name__}: {e})") from e
    raise PickleFormatError(f"{source}: cannot decode Python 2 strings ({last_error})")


def load_pickle(path: str | os.PathLike) -> Any:
    """Read a pickle file of built-in containers and scalars.

    Arguments:
        path: the ``.p`` file.

    Returns:
        The unpickled object (lists, dicts, tuples, sets, str, bytes, numbers, bool, None).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: the file references a disallowed global (e.g. ``os.system``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"pickle file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    return loads_restricted(data, source=path)
