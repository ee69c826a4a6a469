"""What trains and what stays frozen (SPEC 1.5), decided in one place.

* LoRA adapters on the language model's ``lora.target_modules`` (q_proj, v_proj by default), never inside the
  CLIP tower, the projector, SAM or the head (LoRA is injected into the language model only);
* ``embed_tokens`` and ``lm_head`` in full (``lora.train_embeddings="full"``, the reference);
* SAM's mask decoder and the ``[SEG]`` head;
* frozen: CLIP, the projector, SAM's image and prompt encoders (the image encoder trains only when
  ``model.train_sam_image_encoder`` is set), and the base LM weights.
"""

from __future__ import annotations

from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from read.config import ReadConfig
from read.model.read_model import ReadModel


def apply_lora(model: ReadModel, cfg: ReadConfig) -> None:
    """Inject LoRA adapters into the language model in place (no-op when ``lora.enabled`` is false)."""
    lora = cfg.lora
    if not lora.enabled:
        return
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    inject_adapter_in_model(peft_cfg, model.llava.model.language_model)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def set_trainable(model: ReadModel, cfg: ReadConfig) -> list[str]:
    """Set ``requires_grad`` on every parameter; returns the sorted trainable parameter names."""
    for p in model.parameters():
        p.requires_grad_(False)
    lm = model.llava.model.language_model
    groups: list[nn.Module] = [model.sam.mask_decoder, model.seg_projector]
    if cfg.lora.train_embeddings == "full":
        groups += [lm.embed_tokens, model.llava.lm_head]
    if cfg.model.train_sam_image_encoder:
        groups.append(model.sam.image_encoder)
    for module in groups:
        for p in module.parameters():
            p.requires_grad_(True)
    for name, p in lm.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)
    return trainable_parameter_names(model)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def prepare_for_training(model: ReadModel, cfg: ReadConfig) -> list[str]:
    """LoRA + trainability + gradient checkpointing, as configured. Returns the trainable names."""
    apply_lora(model, cfg)
    names = set_trainable(model, cfg)
    if cfg.model.gradient_checkpointing:
        model.llava.model.language_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and remove the adapter modules; returns how many."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and hasattr(module, "get_base_layer"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged
