"""Reading a JSON object from a file, with the file named in every error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from read.errors import FileFormatError, MissingFileError


def read_json_object(path: str | Path, *, missing_hint: str = "", damaged_hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``.

    Arguments:
        path: the file.
        missing_hint: appended to the error when the file does not exist (e.g. what is incomplete).
        damaged_hint: appended to the error when the file is not a JSON object (e.g. what to do instead).

    Raises:
        MissingFileError: the file does not exist.
        FileFormatError: the file is not UTF-8 JSON, or its top level is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found" + (f": {missing_hint}" if missing_hint else ""))
    tail = f"; {damaged_hint}" if damaged_hint else ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FileFormatError(f"{path}: invalid JSON ({err}){tail}") from err
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}: expected a JSON object, got {type(data).__name__}{tail}")
    return data
