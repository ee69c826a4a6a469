"""Reading weight files without executing code: safetensors first, ``.bin``/``.pth`` via weights_only."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load one weight file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``) onto the CPU.

    Pickle-based files are read with ``torch.load(weights_only=True)``, which refuses arbitrary objects.
    A ``{"model": state_dict}`` or ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read {path} as a weights-only checkpoint: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def load_sharded_state_dict(directory: str | Path) -> dict[str, Tensor]:
    """Load all weights of a (possibly sharded) Hugging Face style checkpoint directory.

    Looks for ``model.safetensors(.index.json)`` first, then ``pytorch_model(.bin|.bin.index.json)``.
    """
    d = Path(directory)
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (d / index).is_file():
            weight_map = json.loads((d / index).read_text())["weight_map"]
            state: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(load_state_dict_file(d / shard))
            return state
        if (d / single).is_file():
            return load_state_dict_file(d / single)
    raise FileNotFoundError(
        f"no weights in {d}: expected model.safetensors[.index.json] or pytorch_model.bin[.index.json]"
    )
