"""Assembling READ models: random-weight models of any size, real weights from local files, and the
``save_pretrained`` / ``from_pretrained`` round trip of a whole READ model.

Nothing here touches the network: paths must be local.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from read.config import ModelConfig, ReadConfig, fill_saved_defaults
from read.errors import ConfigError, FileFormatError, MissingFileError
from read.json_io import read_json_object
from read.model.dtypes import resolve_dtype
from read.model.read_model import ReadModel
from read.model.sam import build_sam, keep_prompt_encoder_fp32, load_sam_checkpoint
from read.model.weights import load_checked_state_dict, load_state_dict_file

logger = logging.getLogger(__name__)

CONFIG_NAME = "read_config.json"
WEIGHTS_NAME = "model.safetensors"


class LinearProjector(nn.Module):
    """LISA-7B-v1's single-Linear vision projector (no transformers equivalent)."""

    def __init__(self, vision_hidden: int, text_hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_hidden, text_hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)


def build_seg_projector(hidden_size: int, out_dim: int) -> nn.Sequential:
    """The ``[SEG]`` head: Linear(H, H), ReLU, Linear(H, out_dim), Dropout(0). Indices 0 and 2 hold the
    weights, as ``text_hidden_fcs.0.{0,2}`` in the released checkpoints."""
    return nn.Sequential(
        nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, out_dim), nn.Dropout(0.0)
    )


def build_llava_config(cfg: ModelConfig, vocab_size: int, image_token_id: int) -> LlavaConfig:
    """transformers LlavaConfig for the sizes in ``cfg`` and the full vocabulary (base + extra tokens)."""
    t, v = cfg.text, cfg.vision
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        projection_dim=v.hidden_size,
        hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=v.feature_layer,
        vision_feature_select_strategy="default",
        image_seq_length=v.num_patches,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config._attn_implementation = cfg.attn_implementation
    return config


def build_point_prompter(cfg: ReadConfig) -> nn.Module | None:
    """SasP from the config, or None for the LISA baseline."""
    if not cfg.sasp.enabled:
        return None
    from read.model.sasp import SasP

    return SasP(cfg.sasp, clip_size=cfg.model.vision.image_size)


def build_read_model(cfg: ReadConfig, vocab_size: int, *, seg_token_id: int, image_token_id: int) -> ReadModel:
    """A READ model with random weights (tests, the synthetic default, or before loading a checkpoint).

    Arguments:
        cfg: the full config; ``cfg.model`` gives the sizes, ``cfg.sasp`` the point prompter.
        vocab_size: total vocabulary (base + ``[SEG]``, ``<im_start>``, ``<im_end>``, ``<image>``).
        seg_token_id, image_token_id: ids from the tokenizer.
    """
    llava = LlavaForConditionalGeneration(build_llava_config(cfg.model, vocab_size, image_token_id))
    if cfg.model.projector_type == "linear":
        llava.model.multi_modal_projector = LinearProjector(cfg.model.vision.hidden_size, cfg.model.text.hidden_size)
    model = ReadModel(
        llava,
        build_sam(cfg.model.sam),
        build_seg_projector(cfg.model.text.hidden_size, cfg.model.out_dim),
        build_point_prompter(cfg),
        cfg,
        seg_token_id=seg_token_id,
        image_token_id=image_token_id,
        query_head=nn.Linear(cfg.model.out_dim, vocab_size) if cfg.loss.query_weight > 0 else None,
    )
    return cast_model(model, cfg.model.dtype)


def cast_model(model: ReadModel, dtype: str | torch.dtype) -> ReadModel:
    """Cast to ``dtype`` keeping SAM's prompt encoder in fp32 (its positional encoding fails in bf16) and the
    rotary-embedding frequencies in fp32 (bf16 frequencies shift the RoPE phase by ~0.7 rad at position 600)."""
    torch_dtype = resolve_dtype(dtype)
    rotary = {
        name: buf.detach().clone()
        for name, buf in model.named_buffers()
        if name.endswith("inv_freq") and buf.is_floating_point()
    }
    model.to(torch_dtype)
    keep_prompt_encoder_fp32(model.sam)
    for name, buf in rotary.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._buffers[attr] = buf.float()
    return model


def build_from_base(cfg: ReadConfig, tokenizer: Any) -> ReadModel:
    """READ initialised from real weights: a local llava-hf-format LLaVA-1.5 directory (``cfg.model.llava_path``)
    and a SAM checkpoint file (``cfg.model.sam_checkpoint``); the head is fresh.

    The base vocabulary (the first ``cfg.model.text.vocab_size`` rows) is kept; rows for the extra tokens are
    initialised as ``cfg.model.new_token_init`` says. llava-hf's own ``<image>``/``<pad>`` rows are dropped.
    """
    if not cfg.model.llava_path or not Path(cfg.model.llava_path).is_dir():
        raise MissingFileError(f"model.llava_path must be a local LLaVA directory, got {cfg.model.llava_path!r}")
    base = LlavaForConditionalGeneration.from_pretrained(
        cfg.model.llava_path,
        dtype=torch.float32,
        local_files_only=True,
        attn_implementation=cfg.model.attn_implementation,
    )
    base_state = base.state_dict()
    model = build_read_model(
        cfg, len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
    )
    model.float()
    v0 = cfg.model.text.vocab_size
    own = model.llava.state_dict()
    missing = [k for k in own if k not in base_state]
    if missing:
        raise FileFormatError(f"{cfg.model.llava_path} lacks {len(missing)} LLaVA weights, e.g. {missing[:3]}")
    for key, value in base_state.items():
        if key not in own:
            continue
        if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
            rows = own[key]
            rows[:v0] = value[:v0]
            if cfg.model.new_token_init == "mean":
                rows[v0:] = value[:v0].mean(0)
            else:
                rows[v0:].normal_(0.0, 0.02)
            continue
        if own[key].shape != value.shape:
            raise FileFormatError(
                f"{cfg.model.llava_path}: {key} has shape {tuple(value.shape)}, the config gives "
                f"{tuple(own[key].shape)}; make model.text / model.vision match the checkpoint"
            )
        own[key].copy_(value)
    del base, base_state
    if cfg.model.sam_checkpoint:
        load_sam_checkpoint(model.sam, cfg.model.sam_checkpoint)
    else:
        logger.warning("model.sam_checkpoint is not set: SAM keeps random weights")
    return cast_model(model, cfg.model.dtype)


# ----------------------------------------------------------------------------------------------------------
# save / load of a whole READ model


def save_pretrained(model: ReadModel, directory: str | Path, tokenizer: Any | None = None) -> Path:
    """Write ``read_config.json`` + ``model.safetensors`` (+ tokenizer files). LoRA must be merged first."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if any(".lora_" in k or ".base_layer." in k for k in state):
        raise ValueError("the model still has LoRA adapters: merge them (read.model.trainable.merge_lora) first")
    meta = {
        "config": model.config.to_dict(),
        "vocab_size": model.llava.get_input_embeddings().weight.shape[0],
        "seg_token_id": model.seg_token_id,
        "image_token_id": model.image_token_id,
        "format": "read-v1",
    }
    tmp = d / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(d / WEIGHTS_NAME)
    (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
    return d


def from_pretrained(
    directory: str | Path, *, dtype: str | None = None, overrides: dict[str, Any] | None = None
) -> ReadModel:
    """Load a directory written by :func:`save_pretrained`, strictly. Most callers want
    :func:`read.model.load_model`, which also loads the tokenizer and published checkpoints.

    A ``read_config.json`` without ``sasp.geometry`` (written before that setting existed) loads with the "clip"
    geometry its model was trained with.

    Arguments:
        directory: the model directory.
        dtype: "float32" / "bfloat16" / "float16"; default: the saved config's.
        overrides: nested dict merged into the saved config before building (e.g. ``{"sasp": {"num_points": 60}}``);
            only settings that do not change parameter shapes make sense here.
    """
    d = Path(directory)
    if not (d / CONFIG_NAME).is_file():
        raise MissingFileError(f"{d} is not a READ model directory (no {CONFIG_NAME})")
    meta = _read_model_meta(d / CONFIG_NAME)
    # a read_config.json written before sasp.geometry existed: the model was trained with the "clip" geometry
    cfg_dict = fill_saved_defaults(meta["config"])
    if overrides:
        from read.config import _merge

        cfg_dict = _merge(cfg_dict, overrides)
    try:
        cfg = ReadConfig.from_dict(cfg_dict)
    except ConfigError as e:
        source = f"{d / CONFIG_NAME} with the overrides" if overrides else str(d / CONFIG_NAME)
        raise ConfigError(f"{source}: {e}") from e
    if dtype is not None:
        cfg.model.dtype = dtype  # type: ignore[assignment]
    state = load_state_dict_file(d / WEIGHTS_NAME)  # a broken file fails before the model is built
    model = build_read_model(
        cfg, meta["vocab_size"], seg_token_id=meta["seg_token_id"], image_token_id=meta["image_token_id"]
    )
    hint = f"it was not written together with {CONFIG_NAME}: export the model again"
    load_checked_state_dict(model, state, str(d / WEIGHTS_NAME), hint=hint)
    return cast_model(model, cfg.model.dtype)


def _read_model_meta(path: Path) -> dict[str, Any]:
    """``read_config.json``: the config and the vocabulary ids, checked to be there."""
    meta = read_json_object(path)
    keys = ("config", "vocab_size", "seg_token_id", "image_token_id")
    if any(k not in meta for k in keys):
        raise FileFormatError(f"{path}: expected an object with {', '.join(keys)} (as save_pretrained writes it)")
    if not all(isinstance(meta[k], int) and not isinstance(meta[k], bool) and meta[k] >= 0 for k in keys[1:]):
        raise FileFormatError(f"{path}: vocab_size, seg_token_id and image_token_id must be non-negative integers")
    return meta
