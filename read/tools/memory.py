"""Analytic parameter counts and a rough memory estimate for a READ config, without building the model.

Parameter counts are exact: they follow the layer shapes of transformers' ``LlavaForConditionalGeneration``
(LLaMA + CLIP + projector), pip ``segment_anything`` and the ``[SEG]`` head, and a test checks them against built
models. Memory is an estimate for one training (or evaluation) step of one process:

* weights: every parameter at ``model.dtype``, except SAM's prompt encoder (fp32) and LoRA adapters, which PEFT
  creates in the dtype of the layer they wrap;
* gradients and optimiser state for the trainable parameters only (:func:`optimizer_bytes` gives the rules for
  plain ``torch.optim.AdamW`` and for DeepSpeed ZeRO stages 0-3 with optional optimiser offload);
* activations kept for backward in the language model, with and without gradient checkpointing, counted from
  what autograd saves in transformers' LLaMA decoder layer when the base weights are frozen (the counts are
  listed in :func:`lm_layer_activation_bytes`); the LM logits and the loss's log-softmax;
* the largest transient of the frozen encoders, which run without autograd: SAM's global-attention blocks
  materialise (heads, T, T) attention maps for T = (image_size / 16)^2 tokens.

Everything below the parameter counts is an approximation (allocator caching, fragmentation, cuBLAS workspaces,
temporary buffers of fused kernels and AdamW's foreach temporaries are not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from read.config import ModelConfig, ReadConfig, SamConfig, TextConfig, VisionConfig
from read.model.trainable import GROUPS, group_of, trainable_groups

if TYPE_CHECKING:
    from torch import nn

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Number of SAM mask tokens (3 multimask outputs + 1), the IoU head's width, and the prompt encoder's mask
# channels: fixed by pip segment_anything's Sam constructor arguments used in read.model.sam.build_sam.
_SAM_MASK_TOKENS = 4
_SAM_IOU_HIDDEN = 256
_SAM_MASK_IN_CHANS = 16

# ----------------------------------------------------------------------------------------------------------
# parameter counts


def lm_layer_params(t: TextConfig) -> int:
    """One LLaMA decoder layer: q/k/v/o projections (no bias), the SwiGLU MLP and two RMSNorms."""
    head_dim = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    attention = 2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * kv
    mlp = 3 * t.hidden_size * t.intermediate_size
    return attention + mlp + 2 * t.hidden_size


def vision_tower_params(v: VisionConfig) -> int:
    """transformers' ``CLIPVisionModel``: class token, patch conv (no bias), position table, pre-LayerNorm, the
    encoder layers (biased q/k/v/out, two LayerNorms, fc1/fc2) and the (unused but present) post-LayerNorm."""
    h, i = v.hidden_size, v.intermediate_size
    embeddings = h + 3 * v.patch_size**2 * h + (v.num_patches + 1) * h
    layer = 4 * (h * h + h) + 2 * 2 * h + (h * i + i) + (i * h + h)
    return embeddings + 2 * h + v.num_hidden_layers * layer + 2 * h


def projector_params(m: ModelConfig) -> int:
    """``mlp2x_gelu``: Linear(C_v, H), GELU, Linear(H, H); ``linear``: Linear(C_v, H)."""
    cv, h = m.vision.hidden_size, m.text.hidden_size
    if m.projector_type == "linear":
        return cv * h + h
    return cv * h + h + h * h + h


def sam_image_encoder_params(s: SamConfig) -> int:
    """pip ``ImageEncoderViT`` with absolute and decomposed relative positions (window blocks have (2w-1, d)
    tables, global blocks (2g-1, d) with g = image_size / patch_size) and the conv neck (no conv biases)."""
    e, c = s.encoder_embed_dim, s.prompt_embed_dim
    g = s.image_size // s.patch_size
    head_dim = e // s.encoder_num_heads
    total = 3 * s.patch_size**2 * e + e + g * g * e
    for i in range(s.encoder_depth):
        side = g if (i in s.encoder_global_attn_indexes or s.encoder_window_size == 0) else s.encoder_window_size
        total += 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + 2 * (2 * side - 1) * head_dim
        total += 2 * e + (e * 4 * e + 4 * e) + (4 * e * e + e)
    return total + e * c + 2 * c + 9 * c * c + 2 * c


def sam_prompt_encoder_params(s: SamConfig) -> int:
    """pip ``PromptEncoder``: 4 point embeddings, not-a-point, no-mask and the mask-downscaling convs. The random
    positional-encoding matrix (2, C/2) is a buffer, not counted (:func:`sam_prompt_encoder_buffers`)."""
    c, m = s.prompt_embed_dim, _SAM_MASK_IN_CHANS
    q = m // 4
    downscaling = (4 * q + q) + 2 * q + (q * m * 4 + m) + 2 * m + (m * c + c)
    return 4 * c + c + c + downscaling


def sam_prompt_encoder_buffers(s: SamConfig) -> int:
    """Elements of the prompt encoder's positional-encoding buffer (2 x C/2)."""
    return 2 * (s.prompt_embed_dim // 2)


def _sam_attention_params(c: int, downsample: int) -> int:
    inner = c // downsample
    return 3 * (c * inner + inner) + (inner * c + c)


def _mlp_params(dims: list[int]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def sam_mask_decoder_params(s: SamConfig) -> int:
    """pip ``MaskDecoder`` with a ``TwoWayTransformer`` (self-attention at full width, cross-attention at half),
    the IoU/mask tokens, the transposed-conv upscaling and the hypernetwork / IoU MLPs."""
    c = s.prompt_embed_dim
    block = (
        _sam_attention_params(c, 1)
        + 2 * _sam_attention_params(c, 2)
        + (c * s.decoder_mlp_dim + s.decoder_mlp_dim + s.decoder_mlp_dim * c + c)
        + 4 * 2 * c
    )
    transformer = s.decoder_depth * block + _sam_attention_params(c, 2) + 2 * c
    tokens = c + _SAM_MASK_TOKENS * c
    upscaling = (c * (c // 4) * 4 + c // 4) + 2 * (c // 4) + ((c // 4) * (c // 8) * 4 + c // 8)
    hyper = _SAM_MASK_TOKENS * _mlp_params([c, c, c, c // 8])
    iou = _mlp_params([c, _SAM_IOU_HIDDEN, _SAM_IOU_HIDDEN, _SAM_MASK_TOKENS])
    return transformer + tokens + upscaling + hyper + iou


def seg_projector_params(m: ModelConfig) -> int:
    """``[SEG]`` head: Linear(H, H), ReLU, Linear(H, out_dim)."""
    h = m.text.hidden_size
    return h * h + h + h * m.out_dim + m.out_dim


def query_head_params(cfg: ReadConfig, vocab_size: int) -> int:
    """Linear(out_dim, vocab) of the optional query-word loss (only when ``loss.query_weight > 0``), counted with the
    ``[SEG]`` head."""
    return (cfg.model.out_dim + 1) * vocab_size if cfg.loss.query_weight > 0 else 0


def lora_params(cfg: ReadConfig) -> int:
    """LoRA A (r x in) and B (out x r) for every target projection of every LM layer (0 when disabled)."""
    if not cfg.lora.enabled:
        return 0
    t = cfg.model.text
    h, i = t.hidden_size, t.intermediate_size
    kv = t.num_key_value_heads * (h // t.num_attention_heads)
    shapes = {  # (in, out) of each LLaMA projection
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    unknown = [n for n in cfg.lora.target_modules if n not in shapes]
    if unknown:
        raise ValueError(f"lora.target_modules: cannot count {unknown}; known LLaMA projections are {list(shapes)}")
    per_layer = sum(cfg.lora.r * (shapes[n][0] + shapes[n][1]) for n in cfg.lora.target_modules)
    return t.num_hidden_layers * per_layer


def num_new_tokens(cfg: ReadConfig, vocab_size: int) -> int:
    """Rows after the base vocabulary (``model.text.vocab_size``): the added tokens."""
    return max(vocab_size - cfg.model.text.vocab_size, 0)


def count_parameters(cfg: ReadConfig, vocab_size: int, *, with_adapters: bool = True) -> dict[str, int]:
    """Parameter count of every group in :data:`read.model.trainable.GROUPS`.

    Arguments:
        cfg: the config (``model`` sizes, ``lora``).
        vocab_size: total embedding rows (base vocabulary + added tokens).
        with_adapters: count LoRA and the split new-token rows as :func:`read.model.trainable.prepare_for_training`
            adds them; False gives the model as built (and as saved after merging).

    Returns:
        group -> count. With ``lora.train_embeddings="new_rows"`` the (n_new, H) rows of embed_tokens and lm_head
        are counted in ``new_rows``, on top of the full base matrices (the wrapper keeps both).
    """
    m = cfg.model
    h = m.text.hidden_size
    counts = {
        "embed_tokens": vocab_size * h,
        "lm_layers": m.text.num_hidden_layers * lm_layer_params(m.text),
        "lm_norm": h,
        "lm_head": vocab_size * h,
        "vision_tower": vision_tower_params(m.vision),
        "projector": projector_params(m),
        "sam_image_encoder": sam_image_encoder_params(m.sam),
        "sam_prompt_encoder": sam_prompt_encoder_params(m.sam),
        "sam_mask_decoder": sam_mask_decoder_params(m.sam),
        "seg_projector": seg_projector_params(m) + query_head_params(cfg, vocab_size),
        "lora": lora_params(cfg) if with_adapters else 0,
        "new_rows": 0,
    }
    if with_adapters and cfg.lora.train_embeddings == "new_rows":
        counts["new_rows"] = 2 * num_new_tokens(cfg, vocab_size) * h
    return counts


def count_trainable(cfg: ReadConfig, vocab_size: int) -> int:
    """Trainable parameters after ``prepare_for_training``."""
    counts = count_parameters(cfg, vocab_size)
    return sum(counts[g] for g in trainable_groups(cfg))


def measured_parameter_counts(model: nn.Module, trainable_only: bool = False) -> dict[str, int]:
    """Per-group parameter counts of a built ``ReadModel`` (same keys as :func:`count_parameters`); with
    ``trainable_only`` only the parameters that require grad."""
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        counts[group_of(name)] += p.numel()
    return counts


# ----------------------------------------------------------------------------------------------------------
# memory


@dataclass
class StepShape:
    """The shape of one step's inputs.

    Attributes:
        batch_size: images per step.
        rows_per_image: query rows (conversations) per image.
        seq_len: padded token length of a row, image placeholders included.
        masks_per_row: ``[SEG]`` tokens (predicted masks) per row.
    """

    batch_size: int = 2
    rows_per_image: int = 1
    seq_len: int = 700
    masks_per_row: int = 1

    @property
    def rows(self) -> int:
        return self.batch_size * self.rows_per_image


@dataclass
class MemoryEstimate:
    """Bytes per process for one step. ``peak`` = weights + gradients + optimiser + the larger of the encoder
    transient and the step's activations (the encoders run before the language model)."""

    params: dict[str, int]
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    encoder_transient: int
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + max(self.activations, self.encoder_transient)

    def rows(self) -> list[tuple[str, int]]:
        """(label, bytes) pairs for printing."""
        return [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer),
            ("activations (LM, logits, masks)", self.activations),
            ("encoder transient (no autograd)", self.encoder_transient),
            ("peak estimate", self.peak),
        ]


def weight_bytes(cfg: ReadConfig, vocab_size: int, with_adapters: bool = True) -> int:
    """Parameter bytes: ``model.dtype`` everywhere except SAM's prompt encoder and its PE buffer (fp32);
    ``with_adapters`` as in :func:`count_parameters`."""
    b = _DTYPE_BYTES[cfg.model.dtype]
    counts = count_parameters(cfg, vocab_size, with_adapters=with_adapters)
    fp32 = counts["sam_prompt_encoder"] + sam_prompt_encoder_buffers(cfg.model.sam)
    return b * (sum(counts.values()) - counts["sam_prompt_encoder"]) + 4 * fp32


def optimizer_bytes(
    cfg: ReadConfig,
    trainable: int,
    *,
    optimizer: str = "torch",
    zero_stage: int = 0,
    world_size: int = 1,
    offload_optimizer: bool = False,
) -> tuple[int, int]:
    """(gradient bytes, optimiser bytes) on one device for ``trainable`` parameters.

    Arguments:
        optimizer: "torch" = ``torch.optim.AdamW`` on the parameters as they are (gradients and both moments in
            the parameter dtype, no master copy); "deepspeed" = DeepSpeed mixed precision: gradients in the
            parameter dtype, an fp32 master copy and two fp32 moments (12 bytes per parameter) partitioned over
            ``world_size`` from ZeRO stage 1 on, fp32 gradient partitions from stage 2 on (4 / world_size bytes)
            and the low-precision gradients partitioned too at stage 3. In fp32 there is no master copy (8 bytes
            of moments per parameter).
        offload_optimizer: master copy, moments and fp32 gradient partitions live in CPU memory (0 here).
    """
    b = _DTYPE_BYTES[cfg.model.dtype]
    if optimizer == "torch":
        return b * trainable, 2 * b * trainable
    if optimizer != "deepspeed":
        raise ValueError(f"optimizer must be 'torch' or 'deepspeed', got {optimizer!r}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0..3, got {zero_stage}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shard = world_size if zero_stage >= 1 else 1
    grads = b * trainable // (world_size if zero_stage == 3 else 1)
    if b < 4 and zero_stage >= 2 and not offload_optimizer:
        grads += 4 * trainable // world_size
    state = 12 if b < 4 else 8  # fp32 training needs no master copy
    opt = 0 if offload_optimizer else state * trainable // shard
    return grads, opt


def lm_layer_activation_bytes(cfg: ReadConfig, tokens: int, seq_len: int, device: str = "cuda") -> int:
    """Bytes autograd keeps per LLaMA decoder layer for ``tokens`` tokens in rows of ``seq_len``, with frozen
    base weights (frozen linears save nothing) and activations in ``model.dtype`` (b bytes). Per token:

    * the two RMSNorm inputs, kept in fp32: 2 x 4H;
    * LoRA: with ``lora.dropout == 0`` the normalised input (b*H, shared by the targets); otherwise, per target
      module, the dropped-out input (b*H) and the dropout mask (1 byte per element on CUDA, b on the CPU); plus
      the r-wide LoRA A output of each target (b*r);
    * attention, SDPA / flash kernels: rotated q and k, v and the output, b*(2H + 2*kv), and the fp32
      log-sum-exp (4 per head); per row the (L, L) padding mask SDPA keeps, b*L^2 (none for flash_attention_2).
      "eager": q, k and v, b*(H + 2*kv), and the fp32 softmax (plus its b-byte copy when b < 4), per head and key;
    * SwiGLU MLP: gate output, SiLU output and up output, 3 x b*I.

    The RoPE tables are shared by all layers and not counted here. Checked against the storages autograd saves
    (``torch.autograd.graph.saved_tensors_hooks``) on the CPU.
    """
    t, b = cfg.model.text, _DTYPE_BYTES[cfg.model.dtype]
    h, heads = t.hidden_size, t.num_attention_heads
    kv = t.num_key_value_heads * (h // heads)
    per_token = 2 * 4 * h + 3 * b * t.intermediate_size
    if cfg.lora.enabled:
        targets = len(cfg.lora.target_modules)
        mask_bytes = 1 if device == "cuda" else b
        per_token += b * h if cfg.lora.dropout == 0 else targets * (b + mask_bytes) * h
        per_token += targets * b * cfg.lora.r
    rows = tokens // max(seq_len, 1)
    if cfg.model.attn_implementation == "eager":
        per_token += b * (h + 2 * kv) + (4 + (b if b < 4 else 0)) * heads * seq_len
        return per_token * tokens
    per_token += b * (2 * h + 2 * kv) + 4 * heads
    padding_mask = 0 if cfg.model.attn_implementation == "flash_attention_2" else b * seq_len * seq_len * rows
    return per_token * tokens + padding_mask


def activation_bytes(
    cfg: ReadConfig, vocab_size: int, shape: StepShape, training: bool = True, device: str = "cuda"
) -> int:
    """Activation bytes of one step, roughly (see :func:`lm_layer_activation_bytes`).

    Training without checkpointing keeps every layer's activations; with ``model.gradient_checkpointing`` each
    layer keeps only its input (b*H per token) and one layer is recomputed at a time. On top: the embeddings and
    the final norm's fp32 input, the logits (b*V per token, held by the output), the loss's fp32 log-softmax
    (4*V per token) and its gradient during backward (4*V), SasP's gathered image-token states (N x H per
    ``[SEG]``) and SAM's mask decoder with the mask losses (about 30 maps of (C_p, 64, 64) per mask, measured).
    Evaluation keeps no activations: one layer's working set, the logits and about 8 decoder maps per mask.
    """
    t, b = cfg.model.text, _DTYPE_BYTES[cfg.model.dtype]
    tokens = shape.rows * shape.seq_len
    masks = shape.rows * shape.masks_per_row
    layer = lm_layer_activation_bytes(cfg, tokens, shape.seq_len, device)
    logits = b * vocab_size * tokens
    s = cfg.model.sam
    decoder_map = s.prompt_embed_dim * (s.image_size // s.patch_size) ** 2 * b
    sasp = b * cfg.model.vision.num_patches * t.hidden_size * masks if cfg.sasp.enabled else 0
    if not training:
        return layer + logits + 8 * decoder_map * masks
    if cfg.model.gradient_checkpointing:
        lm = t.num_hidden_layers * b * t.hidden_size * tokens + layer
    else:
        lm = t.num_hidden_layers * layer
    edges = b * t.hidden_size * tokens + 4 * t.hidden_size * tokens
    return lm + edges + logits + 2 * 4 * vocab_size * tokens + sasp + 30 * decoder_map * masks


def encoder_transient_bytes(cfg: ReadConfig, shape: StepShape) -> int:
    """Largest working set of the frozen encoders (no autograd): pip SAM's global-attention block holds three
    (B x heads, T, T) maps at once while it adds the decomposed relative positions (scores, scores + rel_h, and
    the sum with rel_w), T = (image_size / patch_size)^2, plus its (B, T, 4E) MLP activations. All B images go
    through the encoder together. Measured on the CPU (peak RSS): within 5% for the bench_mid_cpu config."""
    s, b = cfg.model.sam, _DTYPE_BYTES[cfg.model.dtype]
    tokens = (s.image_size // s.patch_size) ** 2
    has_global = bool(s.encoder_global_attn_indexes) or s.encoder_window_size == 0
    side = tokens if has_global else s.encoder_window_size**2
    windows = 1 if has_global else tokens // side
    attention = 3 * shape.batch_size * s.encoder_num_heads * windows * side * side * b
    return attention + 6 * shape.batch_size * tokens * s.encoder_embed_dim * b


def estimate_memory(
    cfg: ReadConfig,
    vocab_size: int,
    shape: StepShape,
    *,
    training: bool = True,
    optimizer: str = "torch",
    zero_stage: int = 0,
    world_size: int = 1,
    offload_optimizer: bool = False,
    device: str = "cuda",
) -> MemoryEstimate:
    """Memory of one training (or evaluation) step on one device; see the module docstring for what is counted.

    Arguments:
        cfg, vocab_size: the model (``model.dtype``, ``model.gradient_checkpointing``, ``lora``, ...).
        shape: batch geometry.
        training: False = a no-grad evaluation step (no gradients, optimiser or saved activations).
        optimizer, zero_stage, world_size, offload_optimizer: see :func:`optimizer_bytes`.
        device: "cuda" or "cpu" (dropout masks are bool on CUDA, float on the CPU).
    """
    params = count_parameters(cfg, vocab_size, with_adapters=True)
    trainable = count_trainable(cfg, vocab_size)
    weights = weight_bytes(cfg, vocab_size)
    notes = []
    if training:
        grads, opt = optimizer_bytes(
            cfg,
            trainable,
            optimizer=optimizer,
            zero_stage=zero_stage,
            world_size=world_size,
            offload_optimizer=offload_optimizer,
        )
        if optimizer == "deepspeed" and zero_stage == 3:
            weights //= world_size
            notes.append("ZeRO-3: weights partitioned; one layer is gathered at a time (not counted)")
    else:
        grads = opt = 0
    return MemoryEstimate(
        params=params,
        trainable=trainable if training else 0,
        weights=weights,
        gradients=grads,
        optimizer=opt,
        activations=activation_bytes(cfg, vocab_size, shape, training=training, device=device),
        encoder_transient=encoder_transient_bytes(cfg, shape),
        notes=notes,
    )


def format_bytes(n: float) -> str:
    """``1536 -> '1.50 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
