"""Reading weight files without executing code: safetensors first, ``.bin``/``.pth`` via weights_only.

Every problem with a weight file is a :class:`read.errors.UserError` that names the file: a missing file
(``MissingFileError``), a truncated or corrupt one, an index that names a shard outside its directory, weights that
do not fit the model (``FileFormatError``), a pickle that would run code (``UnsafeFileError``).

Shard names in ``*.index.json`` must stay inside the checkpoint directory: absolute names and names with a ``..``
component are refused. Symbolic links among the files are followed (the Hugging Face cache stores every file of a
snapshot as a link into ``../../blobs/``); whatever they point to is still read only by the loaders here, which
never run code.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from read.errors import FileFormatError, MissingFileError, UnsafeFileError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refused_global(error: BaseException) -> str | None:
    """The global a ``weights_only`` load refused (e.g. "posix.system"), or None if it failed for another reason."""
    found = _GLOBAL.search(str(error))
    return found.group(1) if found else None


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load one weight file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``) onto the CPU.

    Pickle-based files are read with ``torch.load(weights_only=True)``, which refuses arbitrary objects.
    A ``{"model": state_dict}`` or ``{"state_dict": ...}`` wrapper is unwrapped.

    Raises:
        MissingFileError: no such file.
        FileFormatError: the file is truncated, corrupt, or does not hold a flat dict of tensors.
        UnsafeFileError: a pickle that names something other than tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise FileFormatError(
                f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt: download or export "
                f"it again"
            ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = refused_global(e)
        if name is not None:
            raise UnsafeFileError(
                f"{path}: refusing to load: its pickle names '{name}', and a weight file holds only tensors and "
                f"containers (nothing in it was run); use weights from a source you trust"
            ) from e
        raise FileFormatError(
            f"{path}: a weights-only load cannot read its pickle (corrupt, or it holds more than tensors and "
            f"containers; nothing in it was run)"
        ) from e
    except (RuntimeError, EOFError, OSError, KeyError) as e:
        raise FileFormatError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e}); it may be truncated or corrupt"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FileFormatError(f"{path} does not hold a flat state dict of tensors")
    return state


def shard_path(directory: Path, shard: object, index_file: Path) -> Path:
    """The file a shard name of ``index_file`` designates, refusing names that leave ``directory``.

    Raises:
        FileFormatError: the name is not a non-empty string, is absolute, or has a ``..`` component.
    """
    if not isinstance(shard, str) or not shard.strip():
        raise FileFormatError(f"{index_file}: shard name {shard!r} is not a file name")
    parts = PurePosixPath(shard.replace("\\", "/")).parts
    if PurePosixPath(shard).is_absolute() or PureWindowsPath(shard).is_absolute() or ".." in parts:
        raise FileFormatError(
            f"{index_file}: shard {shard!r} lies outside {directory}; an index may only name files inside its own "
            f"directory (the file may have been tampered with)"
        )
    return directory.joinpath(*parts)


def read_weight_map(index_file: Path) -> dict[str, str]:
    """``weight_map`` (tensor name -> shard name) of a ``*.index.json``, checked to be a mapping of strings."""
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{index_file}: invalid JSON ({e})") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise FileFormatError(f"{index_file}: no 'weight_map' object (tensor name -> shard file)")
    return weight_map


def load_sharded_state_dict(directory: str | Path) -> dict[str, Tensor]:
    """Load all weights of a (possibly sharded) Hugging Face style checkpoint directory.

    Looks for ``model.safetensors(.index.json)`` first, then ``pytorch_model(.bin|.bin.index.json)``. The shards
    an index names must lie inside ``directory`` (see :func:`shard_path`).
    """
    d = Path(directory)
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (d / index).is_file():
            weight_map = read_weight_map(d / index)
            shards = {shard_path(d, name, d / index) for name in weight_map.values()}
            state: dict[str, Tensor] = {}
            for shard in sorted(shards):
                state.update(load_state_dict_file(shard))
            return state
        if (d / single).is_file():
            return load_state_dict_file(d / single)
    raise MissingFileError(
        f"no weights in {d}: expected model.safetensors[.index.json] or pytorch_model.bin[.index.json]"
    )


def load_checked_state_dict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    *,
    required: Iterable[str] | None = None,
    hint: str = "",
) -> None:
    """Copy ``state`` into ``module`` after checking that every tensor fits.

    Arguments:
        module: the model to load into.
        state: name -> tensor, names as in ``module.state_dict()``.
        source: the file or directory the tensors come from (named in the error).
        required: the module tensors that ``state`` must provide (default: all of them).
        hint: what to do about a mismatch, appended to the error.

    Raises:
        FileFormatError: tensors of ``state`` that the module lacks, ``required`` tensors missing from ``state``,
            or tensors whose shapes differ (the first few of each are listed).
    """
    expected = module.state_dict()
    needed = set(expected) if required is None else set(required)
    missing = sorted(needed - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
        for k, v in sorted(state.items())
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} tensor(s) of another shape (e.g. {'; '.join(mismatched[:2])})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        raise FileFormatError(f"{source} does not fit the model: {', '.join(parts)}{'; ' + hint if hint else ''}")
    module.load_state_dict(dict(state), strict=False)
