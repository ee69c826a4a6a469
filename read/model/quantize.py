"""4/8-bit weights for the language model through bitsandbytes (GPU only; CLIP, SAM and the head stay as they are,
like LISA's ``llm_int8_skip_modules=["visual_model"]``)."""

from __future__ import annotations

import torch
from torch import nn

from read.errors import ConfigError, MissingPackageError
from read.model.read_model import ReadModel


def quantize_language_model(model: ReadModel, bits: int, device: torch.device) -> int:
    """Replace every ``nn.Linear`` of the LM's decoder layers by a bitsandbytes layer and move it to ``device``.

    Returns the number of layers replaced. Raises ConfigError off CUDA and MissingPackageError without bitsandbytes.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if device.type != "cuda":
        raise ConfigError(f"{bits}-bit loading needs a CUDA device (bitsandbytes); got {device}")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise MissingPackageError(f"{bits}-bit loading needs bitsandbytes: pip install bitsandbytes") from e
    layers = model.llava.model.language_model.layers
    replaced = 0
    for name, module in list(layers.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        if bits == 8:
            q = bnb.nn.Linear8bitLt(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                has_fp16_weights=False,
                threshold=6.0,
            )
            q.weight = bnb.nn.Int8Params(
                module.weight.data.to(torch.float16), requires_grad=False, has_fp16_weights=False
            )
        else:
            q = bnb.nn.Linear4bit(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                compute_dtype=torch.bfloat16,
                quant_type="nf4",
            )
            q.weight = bnb.nn.Params4bit(module.weight.data.to(torch.float16), requires_grad=False, quant_type="nf4")
        if module.bias is not None:
            q.bias = nn.Parameter(module.bias.data, requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(layers.get_submodule(parent_name) if parent_name else layers, child, q.to(device))
        replaced += 1
    return replaced
