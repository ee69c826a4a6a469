"""Reading DeepSpeed checkpoint files without running code.

DeepSpeed reads its own files with ``torch.load(weights_only=False)`` (``engine.load_checkpoint`` through its torch
checkpoint engine, and ``zero_to_fp32``), and a pickle loaded that way can call any function it names, so a
tampered ``mp_rank_00_model_states.pt`` would run code on resume or export. Here every such file is read with
``weights_only=True``, which rebuilds only tensors, storages, built-in containers and scalars, plus an explicit
allow-list of the few DeepSpeed types its checkpoints hold (listed from real checkpoints written by DeepSpeed's
engine with this project's configs: ZeRO-2 with and without optimizer offload, ZeRO-3, in fp32, bf16 and fp16):

* ``deepspeed.runtime.fp16.loss_scaler.LossScaler`` (``DynamicLossScaler`` with fp16): the optimizer's loss scaler;
* ``deepspeed.runtime.zero.config.ZeroStageEnum``: the ZeRO stage;
* ``deepspeed.utils.tensor_fragment.fragment_address``: ZeRO-1/2 parameter slice mappings (two integers).

Two layers, both used by resume (``train_ds.py --resume``) and export (``scripts/export_model.py``):

1. :func:`scan_checkpoint` lists the globals in the pickle of every ``.pt`` file of a checkpoint directory (a static
   read of the pickle, no object is built) and refuses the checkpoint if any file names something else, before any
   model is built;
2. :func:`weights_only_loads` routes every ``torch.load`` made inside it (DeepSpeed's included) through
   :func:`load_file`, a ``weights_only=True`` load with the allow-list, so nothing can run even for a pickle that
   the static scan cannot see through.

A refused file raises :class:`read.errors.UnsafeFileError` and a truncated or corrupt one
:class:`read.errors.FileFormatError`; both name the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from read.errors import FileFormatError, UnsafeFileError

_torch_load = torch.load  # the real loader; torch.load itself is swapped inside weights_only_loads()
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch names the global a weights-only load refused


def deepspeed_checkpoint_types() -> list[type]:
    """The DeepSpeed classes a checkpoint of this project may hold, besides what ``weights_only`` accepts anyway."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _allowed_names() -> str:
    names = [t.__name__ for t in deepspeed_checkpoint_types()]
    return f"DeepSpeed's {', '.join(names[:-1])} and {names[-1]}"


def _refuse(path: str, what: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"{path}: refusing to load this checkpoint file: {what}; a DeepSpeed checkpoint holds only tensors, "
        f"containers, numbers and {_allowed_names()}. The file may have been tampered with (nothing in it was run): "
        f"use a checkpoint from a source you trust"
    )


def load_file(path: str | os.PathLike, map_location: Any = None, *, mmap: bool | None = None, **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)`` with the DeepSpeed allow-list and errors that name the file.

    Raises:
        UnsafeFileError: the pickle names a global outside the allow-list, or uses instructions a weights-only
            load does not run.
        FileFormatError: the file is truncated, corrupt or not a torch checkpoint.
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    try:
        with torch.serialization.safe_globals(deepspeed_checkpoint_types()):
            return _torch_load(path, map_location=map_location, weights_only=True, mmap=mmap, **kwargs)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found:
            raise _refuse(name, f"its pickle names '{found.group(1)}'") from e
        if "Weights only load failed" in str(e):
            raise _refuse(name, "its pickle holds instructions that a weights-only load refuses") from e
        raise FileFormatError(f"{name}: not a readable torch checkpoint ({e}); the file may be truncated") from e
    except (RuntimeError, EOFError, OSError, KeyError) as e:
        raise FileFormatError(
            f"{name}: not a readable torch checkpoint ({type(e).__name__}: {e}); the file may be truncated or "
            f"corrupt: copy it again, or resume / export from another checkpoint"
        ) from e


def scan_checkpoint(directory: str | os.PathLike) -> list[Path]:
    """Check every ``.pt`` file under ``directory`` without building any object from it.

    Each file must be a zip archive written by ``torch.save`` (as DeepSpeed and this project write them) whose
    pickle names only globals that a weights-only load accepts or that the allow-list adds.

    Returns:
        the files checked.

    Raises:
        UnsafeFileError: a file names another global (the first one is reported).
        FileFormatError: a file is not a ``torch.save`` zip archive, or is truncated.
    """
    files = sorted(Path(directory).rglob("*.pt"))
    with torch.serialization.safe_globals(deepspeed_checkpoint_types()):
        for path in files:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except ValueError as e:  # not a zip archive: a plain pickle or a legacy-format file
                raise _refuse(str(path), "it is not a zip archive written by torch.save (a raw pickle?)") from e
            except (RuntimeError, OSError, EOFError) as e:
                raise FileFormatError(
                    f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e}); the file may be truncated "
                    f"or corrupt: copy it again, or use another checkpoint"
                ) from e
            if unsafe:
                raise _refuse(str(path), f"its pickle names {', '.join(repr(u) for u in unsafe)}")
    return files


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block, every ``torch.load`` call (DeepSpeed's ``weights_only=False`` ones included) is
    :func:`load_file`. Not thread-safe: meant to wrap one checkpoint load on the main thread."""
    previous = torch.load

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
             mmap: bool | None = None, **kwargs: Any) -> Any:  # fmt: skip
        return load_file(f, map_location, mmap=mmap, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = previous
