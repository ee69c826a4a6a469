"""What trains and what stays frozen (docs/reference.md#what-trains), decided in one place.

* LoRA adapters on the language model's ``lora.target_modules`` (q_proj, v_proj by default), never inside the
  CLIP tower, the projector, SAM or the head (LoRA is injected into the language model only);
* ``embed_tokens`` and ``lm_head`` in full (``lora.train_embeddings="full"``, the reference), or only their rows
  for the tokens added to the base vocabulary (``"new_rows"``, see :class:`NewTokenRows`), or neither (``"none"``);
* SAM's mask decoder and the ``[SEG]`` head;
* frozen: CLIP, the projector, SAM's image and prompt encoders (the image encoder trains only when
  ``model.train_sam_image_encoder`` is set), and the base LM weights;
* any group named in ``model.train_extra`` (:data:`GROUPS` names) trains in full on top of the above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from read.config import ReadConfig
from read.model.read_model import ReadModel

# Parameter groups in the order they are reported.
GROUPS = (
    "embed_tokens",
    "lm_layers",
    "lm_norm",
    "lm_head",
    "vision_tower",
    "projector",
    "sam_image_encoder",
    "sam_prompt_encoder",
    "sam_mask_decoder",
    "seg_projector",
    "lora",
    "new_rows",
)


def group_of(name: str) -> str:
    """The :data:`GROUPS` entry of a ``ReadModel`` parameter name (raises ValueError for an unknown name)."""
    if ".lora_" in name:
        return "lora"
    if name.endswith(".rows") and ("embed_tokens." in name or name.startswith("llava.lm_head.")):
        return "new_rows"
    prefixes = (
        ("llava.model.language_model.embed_tokens.", "embed_tokens"),
        ("llava.model.language_model.layers.", "lm_layers"),
        ("llava.model.language_model.norm.", "lm_norm"),
        ("llava.lm_head.", "lm_head"),
        ("llava.model.vision_tower.", "vision_tower"),
        ("llava.model.multi_modal_projector.", "projector"),
        ("sam.image_encoder.", "sam_image_encoder"),
        ("sam.prompt_encoder.", "sam_prompt_encoder"),
        ("sam.mask_decoder.", "sam_mask_decoder"),
        ("seg_projector.", "seg_projector"),
        ("query_head.", "seg_projector"),
    )
    for prefix, group in prefixes:
        if name.startswith(prefix):
            return group
    raise ValueError(f"parameter {name!r} belongs to no known group")


def trainable_groups(cfg: ReadConfig) -> tuple[str, ...]:
    """The parameter groups that train (:func:`set_trainable` sets ``requires_grad`` from this
    list): the reference's set, ``sam_image_encoder`` with ``model.train_sam_image_encoder``, and
    ``model.train_extra``."""
    groups = ["sam_mask_decoder", "seg_projector", "lora"]
    if cfg.lora.train_embeddings == "full":
        groups += ["embed_tokens", "lm_head"]
    elif cfg.lora.train_embeddings == "new_rows":
        groups.append("new_rows")
    if cfg.model.train_sam_image_encoder:
        groups.append("sam_image_encoder")
    groups += [g for g in cfg.model.train_extra if g not in groups]
    return tuple(groups)


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
    """Set ``requires_grad`` on every parameter: a parameter trains when its group (:func:`group_of`)
    is one of :func:`trainable_groups`, the single list that the memory estimates count as well.
    Returns the sorted trainable parameter names."""
    groups = set(trainable_groups(cfg))
    if "new_rows" in groups and not any(isinstance(m, NewTokenRows) for m in model.modules()):
        raise ValueError(
            "lora.train_embeddings='new_rows' but embed_tokens/lm_head are not split: call "
            "split_new_token_rows (prepare_for_training does) first"
        )
    for name, p in model.named_parameters():
        p.requires_grad_(group_of(name) in groups)
    return trainable_parameter_names(model)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def prepare_for_training(model: ReadModel, cfg: ReadConfig) -> list[str]:
    """LoRA + trainability + gradient checkpointing, as configured. Returns the trainable names."""
    apply_lora(model, cfg)
    if cfg.lora.train_embeddings == "new_rows":
        split_new_token_rows(model, cfg)
    names = set_trainable(model, cfg)
    if cfg.model.gradient_checkpointing:
        model.llava.model.language_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter (and every :class:`NewTokenRows` split) into its base layer and remove the wrapper
    modules, leaving the standard layout; returns how many modules were merged."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and hasattr(module, "get_base_layer"):
            module.merge()
            base = module.get_base_layer()
        elif isinstance(module, NewTokenRows):
            base = module.merged()
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
        merged += 1
    return merged


# ----------------------------------------------------------------------------------------------------------
# training only the new token rows (lora.train_embeddings="new_rows")


class NewTokenRows(nn.Module):
    """A frozen ``nn.Embedding`` or output ``nn.Linear`` whose rows for a few token ids are a separate, small
    trainable parameter.

    Not in READ (docs/reference.md#options-that-read-does-not-have-off-by-default). The reference trains the whole
    ``embed_tokens`` and ``lm_head`` (2 x V x H parameters, 262M for 7B, each with fp32 AdamW state). Only the
    rows of the added tokens (``[SEG]``, ``<im_start>``, ``<im_end>``, ``<image>``) start untrained, so
    ``lora.train_embeddings="new_rows"`` trains just those:
    ``rows`` is (n_new, H) and the optimiser state is n_new x H. The base rows of the vocabulary stay as in the
    base model, unlike the reference. Both directions avoid any V x H temporary: the embedding overwrites the
    looked-up vectors of the new ids, and the output layer overwrites the n_new logit columns with
    ``x @ rows.T`` (no gradient for the frozen V x H weight is ever formed). :meth:`merged` writes the rows back
    into a plain layer, so checkpoints keep the standard layout (``merge_lora`` calls it).

    Arguments:
        base: the layer to wrap, weight (V, H); frozen by the wrapper.
        token_ids: the n_new row indices to train.
    """

    def __init__(self, base: nn.Embedding | nn.Linear, token_ids: list[int]) -> None:
        super().__init__()
        if not isinstance(base, (nn.Embedding, nn.Linear)):
            raise TypeError(f"NewTokenRows wraps nn.Embedding or nn.Linear, got {type(base).__name__}")
        num_rows = base.weight.shape[0]
        if not token_ids or len(set(token_ids)) != len(token_ids) or not all(0 <= i < num_rows for i in token_ids):
            raise ValueError(f"token_ids must be distinct row indices in [0, {num_rows}), got {token_ids}")
        base.weight.requires_grad_(False)
        self.base_layer = base
        ids = torch.tensor(token_ids, dtype=torch.long, device=base.weight.device)
        self.register_buffer("token_ids", ids, persistent=False)
        self.rows = nn.Parameter(base.weight.detach()[ids].clone())  # (n_new, H)

    def forward(self, x: Tensor) -> Tensor:
        """Arguments: x: (..., ) token ids for an embedding, (..., H) features for an output layer.

        Returns: (..., H) embeddings or (..., V) logits."""
        out = self.base_layer(x)
        if isinstance(self.base_layer, nn.Embedding):
            hit = x.unsqueeze(-1) == self.token_ids  # (..., n_new)
            new = F.embedding(hit.long().argmax(-1), self.rows)  # (..., H)
            return torch.where(hit.any(-1, keepdim=True), new.to(out.dtype), out)
        bias = None if self.base_layer.bias is None else self.base_layer.bias[self.token_ids]
        new = F.linear(x, self.rows, bias)  # (..., n_new)
        # in place: the frozen matmul saved its input, not its output
        return out.index_copy_(-1, self.token_ids, new.to(out.dtype))

    @torch.no_grad()
    def merged(self) -> nn.Embedding | nn.Linear:
        """The base layer with ``rows`` written into its weight (the wrapper should be dropped afterwards)."""
        weight = self.base_layer.weight
        weight.index_copy_(0, self.token_ids, self.rows.to(weight.dtype))
        return self.base_layer


def split_new_token_rows(model: ReadModel, cfg: ReadConfig) -> list[int]:
    """Wrap ``embed_tokens`` and ``lm_head`` in :class:`NewTokenRows` for the rows after the base vocabulary
    (ids ``model.text.vocab_size`` .. V-1). Returns those ids."""
    lm = model.llava.model.language_model
    if isinstance(lm.embed_tokens, NewTokenRows):
        raise ValueError("embed_tokens is already split into new rows")
    total, base_vocab = lm.embed_tokens.weight.shape[0], cfg.model.text.vocab_size
    if not 0 < base_vocab < total:
        raise ValueError(
            f"lora.train_embeddings='new_rows' needs 0 < model.text.vocab_size < the number of embedding rows; "
            f"got model.text.vocab_size={base_vocab} for {total} rows"
        )
    ids = list(range(base_vocab, total))
    lm.embed_tokens = NewTokenRows(lm.embed_tokens, ids)
    model.llava.lm_head = NewTokenRows(model.llava.lm_head, ids)
    return ids
