"""The parameter dtypes the project supports, in one table: config names, command-line precision names and the
torch dtypes they stand for."""

from __future__ import annotations

import torch

# config name (``model.dtype``, ``--dtype``) -> torch dtype
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# command-line precision name (``--precision``, ``train.precision``) -> config name
PRECISIONS: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_dtype(value: str | torch.dtype) -> torch.dtype:
    """The torch dtype for a config name ("bfloat16"), a precision name ("bf16") or a torch dtype.

    Raises:
        ValueError: an unsupported name or dtype, with the choices.
    """
    if isinstance(value, torch.dtype):
        if value not in DTYPES.values():
            raise ValueError(f"dtype {value} is not supported; use one of {list(DTYPES)}")
        return value
    name = PRECISIONS.get(value, value)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; use one of {list(DTYPES) + list(PRECISIONS)}")
    return DTYPES[name]


def dtype_name(value: str | torch.dtype) -> str:
    """The config name ("float32", "bfloat16", "float16") of a dtype given in any form :func:`resolve_dtype` takes."""
    dtype = resolve_dtype(value)
    return next(name for name, d in DTYPES.items() if d == dtype)
