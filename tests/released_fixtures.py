"""Writers of tiny checkpoints in the exact layouts of the released READ / SESAME / LISA models and of OpenAI CLIP
towers, for the loader tests.

The original key names are spelled out here from the reference's module tree, independently of
``read.model.released``: LLaMA keys under ``model.``, the projector as ``model.mm_projector``, SAM under
``model.visual_model.`` (pip ``segment_anything`` names), the head as ``model.text_hidden_fcs.0``. The config.json
is what transformers 4.31 writes for the reference's ``LlavaConfig`` (a ``LlamaConfig`` subclass: LLaMA fields at
the top level, sorted keys), and the weights are ``torch.save`` shards with a ``pytorch_model.bin.index.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModel

from read.config import SamConfig
from read.model.sam import build_sam

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny_tokenizer"
ARCHITECTURE = {"read": "READForCausalLM", "sesame": "SESAMEForCausalLM", "lisa": "LISAForCausalLM"}


@dataclass
class Sizes:
    """Sizes of a released-layout checkpoint and its CLIP tower (defaults: tiny; :func:`sizes_7b`: the real 7B)."""

    base_vocab: int = 1000  # sentencepiece pieces of tests/assets/tiny_tokenizer
    hidden: int = 32
    intermediate: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    max_positions: int = 512
    clip_image: int = 32
    clip_patch: int = 8
    clip_hidden: int = 24
    clip_intermediate: int = 48
    clip_layers: int = 2
    clip_heads: int = 4
    out_dim: int = 32
    sam: SamConfig = field(
        default_factory=lambda: SamConfig(
            variant="custom",
            image_size=64,
            patch_size=16,
            encoder_embed_dim=32,
            encoder_depth=2,
            encoder_num_heads=2,
            encoder_global_attn_indexes=[1],
            encoder_window_size=2,
            prompt_embed_dim=32,
            decoder_depth=2,
            decoder_mlp_dim=64,
            decoder_num_heads=8,
        )  # fmt: skip
    )


def sizes_7b(family: str = "read") -> Sizes:
    """READ/SESAME on LLaVA-1.5-7B with CLIP ViT-L/14-336, or LISA-7B-v1 (LLaMA-1, CLIP ViT-L/14-224)."""
    return Sizes(
        base_vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32,
        max_positions=2048 if family == "lisa" else 4096, clip_image=224 if family == "lisa" else 336,
        clip_patch=14, clip_hidden=1024, clip_intermediate=4096, clip_layers=24, clip_heads=16, out_dim=256,
        sam=SamConfig(variant="vit_h"),
    )  # fmt: skip


def hf_config_dict(family: str, s: Sizes, vision_tower: str = "../dataset/clip-vit-large-patch14-336") -> dict:
    """config.json of a released checkpoint, as transformers 4.31 wrote it."""
    cfg = {
        "_name_or_path": "./runs/merged",
        "architectures": [ARCHITECTURE[family]],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": True,
        "hidden_act": "silu",
        "hidden_size": s.hidden,
        "image_aspect_ratio": "square",
        "image_grid_pinpoints": None,
        "initializer_range": 0.02,
        "intermediate_size": s.intermediate,
        "max_position_embeddings": s.max_positions,
        "mm_hidden_size": s.clip_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": True,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_tower,
        "model_type": "llava",
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers,
        "num_key_value_heads": s.kv_heads,
        "out_dim": s.out_dim,
        "pad_token_id": 0,
        "pretrain_mm_mlp_adapter": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "train_mask_decoder": True,
        "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False,
        "use_cache": False,
        "use_mm_proj": True,
        "vision_tower": vision_tower,
        "vocab_size": s.base_vocab + 3,
    }
    if family == "lisa":  # LLaVA-Lightning-7B-v1-1: single Linear projector, no projector-type field
        del cfg["mm_projector_type"]
        cfg["mm_vision_tower"] = cfg["vision_tower"] = "openai/clip-vit-large-patch14"
    return dict(sorted(cfg.items()))


def _maker(dtype: torch.dtype, device: str | None, seed: int):
    g = torch.Generator().manual_seed(seed)

    def make(*shape: int, norm: bool = False) -> Tensor:
        if device == "meta":
            return torch.empty(*shape, dtype=dtype, device="meta")
        x = torch.randn(*shape, generator=g) * 0.05
        return (x + 1.0 if norm else x).to(dtype)

    return make


def original_state_dict(
    family: str,
    s: Sizes,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    device: str | None = None,
    with_inv_freq: bool = True,
) -> dict[str, Tensor]:
    """Every tensor of a released checkpoint, in its original names (random values; ``device="meta"``: shapes only).

    Includes the rotary ``inv_freq`` buffers that some transformers 4.x saves wrote. No CLIP keys (the reference's
    merge script filters them out).
    """
    make = _maker(dtype, device, seed)
    h, v, hd = s.hidden, s.base_vocab + 3, s.hidden // s.heads
    sd: dict[str, Tensor] = {"model.embed_tokens.weight": make(v, h)}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = make(s.heads * hd, h)
        sd[p + "self_attn.k_proj.weight"] = make(s.kv_heads * hd, h)
        sd[p + "self_attn.v_proj.weight"] = make(s.kv_heads * hd, h)
        sd[p + "self_attn.o_proj.weight"] = make(h, s.heads * hd)
        sd[p + "mlp.gate_proj.weight"] = make(s.intermediate, h)
        sd[p + "mlp.up_proj.weight"] = make(s.intermediate, h)
        sd[p + "mlp.down_proj.weight"] = make(h, s.intermediate)
        sd[p + "input_layernorm.weight"] = make(h, norm=True)
        sd[p + "post_attention_layernorm.weight"] = make(h, norm=True)
        if with_inv_freq:
            sd[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    sd["model.norm.weight"] = make(h, norm=True)
    if family == "lisa":
        sd["model.mm_projector.weight"] = make(h, s.clip_hidden)
        sd["model.mm_projector.bias"] = make(h)
    else:
        sd["model.mm_projector.0.weight"] = make(h, s.clip_hidden)
        sd["model.mm_projector.0.bias"] = make(h)
        sd["model.mm_projector.2.weight"] = make(h, h)
        sd["model.mm_projector.2.bias"] = make(h)
    with torch.device("meta"):
        sam_shapes = {k: t.shape for k, t in build_sam(s.sam).state_dict().items()}
    for key, shape in sam_shapes.items():
        is_norm = key.endswith(("norm.weight", "norm1.weight", "norm2.weight"))
        sd["model.visual_model." + key] = make(*shape, norm=is_norm)
    sd["model.text_hidden_fcs.0.0.weight"] = make(h, h)
    sd["model.text_hidden_fcs.0.0.bias"] = make(h)
    sd["model.text_hidden_fcs.0.2.weight"] = make(s.out_dim, h)
    sd["model.text_hidden_fcs.0.2.bias"] = make(s.out_dim)
    sd["lm_head.weight"] = make(v, h)
    return sd


def write_tokenizer_files(directory: Path, base_vocab: int, source: Path = TINY_TOKENIZER) -> None:
    """tokenizer.model + the three added tokens, as the reference's 4.31 slow-tokenizer save writes them."""
    shutil.copy(source / "tokenizer.model", directory / "tokenizer.model")
    added = {"[SEG]": base_vocab, "<im_start>": base_vocab + 1, "<im_end>": base_vocab + 2}
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    def added_token(text: str) -> dict:
        return {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False}  # fmt: skip

    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": added_token("<s>"),
        "clean_up_tokenization_spaces": False, "eos_token": added_token("</s>"), "legacy": True,
        "model_max_length": 512, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "unk_token": added_token("<unk>"),
    }  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_weights(directory: Path, state: dict[str, Tensor], shards: int = 2, fmt: str = "bin") -> None:
    """``pytorch_model-0000i-of-0000n.bin`` shards + index (fmt "bin"), or ``model[-i-of-n].safetensors``."""
    keys = list(state)
    chunks = [keys[i * len(keys) // shards : (i + 1) * len(keys) // shards] for i in range(shards)]
    stem, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    weight_map = {}
    total = 0
    for i, chunk in enumerate(chunks, 1):
        name = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k].contiguous() for k in chunk}
        if fmt == "bin":
            torch.save(part, directory / name)
        else:
            from safetensors.torch import save_file

            save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
        total += sum(t.numel() * t.element_size() for t in part.values())
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_released_checkpoint(
    directory: Path,
    family: str,
    s: Sizes | None = None,
    *,
    shards: int = 2,
    fmt: str = "bin",
    seed: int = 0,
    vision_tower: str = "../dataset/clip-vit-large-patch14-336",
) -> dict[str, Tensor]:
    """A complete released-layout checkpoint directory; returns the tensors written (original names)."""
    s = s or Sizes()
    directory.mkdir(parents=True, exist_ok=True)
    state = original_state_dict(family, s, seed=seed)
    (directory / "config.json").write_text(json.dumps(hf_config_dict(family, s, vision_tower), indent=2) + "\n")
    write_weights(directory, state, shards=shards, fmt=fmt)
    write_tokenizer_files(directory, s.base_vocab)
    return state


def clip_config(s: Sizes) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=s.clip_image, patch_size=s.clip_patch, hidden_size=s.clip_hidden,
        intermediate_size=s.clip_intermediate, num_hidden_layers=s.clip_layers, num_attention_heads=s.clip_heads,
        projection_dim=s.clip_hidden, hidden_act="quick_gelu",
    )  # fmt: skip


def write_clip_tower(
    directory: Path, s: Sizes | None = None, *, layout: str = "clip_model", seed: int = 0
) -> dict[str, Tensor]:
    """A local CLIP tower directory; returns its vision tensors under transformers-5 ``CLIPVisionModel`` names.

    layout "clip_model": the OpenAI hub layout (``openai/clip-vit-large-patch14-336``): a ``CLIPModel`` config with
    a nested ``vision_config`` and ``pytorch_model.bin`` whose vision keys carry the ``vision_model.`` prefix, with
    the ``position_ids`` buffer, a text tower and the projections.
    layout "vision_model": ``CLIPVisionModel.save_pretrained`` of transformers 5, which writes the keys *without*
    the ``vision_model.`` prefix (model.safetensors).
    """
    s = s or Sizes()
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIPVisionModel(clip_config(s))
    vision = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if layout == "vision_model":
        model.save_pretrained(directory)
        return vision
    state = {"vision_model." + k: v for k, v in vision.items()}
    n = (s.clip_image // s.clip_patch) ** 2 + 1
    state["vision_model.embeddings.position_ids"] = torch.arange(n)[None]
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(50, 16)
    state["text_model.final_layer_norm.weight"] = torch.ones(16)
    state["visual_projection.weight"] = torch.randn(8, s.clip_hidden)
    state["text_projection.weight"] = torch.randn(8, 16)
    state["logit_scale"] = torch.tensor(4.6052)
    torch.save(state, directory / "pytorch_model.bin")
    vision_cfg = {k: v for k, v in clip_config(s).to_dict().items() if k not in ("transformers_version", "dtype")}
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 8, "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                        "vocab_size": 50, "projection_dim": 8},
        "vision_config": vision_cfg, "transformers_version": "4.21.0.dev0",
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return vision


def expected_target(key: str) -> str | None:
    """The key mapping, restated for the tests: where an original key must land in ReadModel (None: dropped)."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    renames = [
        ("model.embed_tokens.", "llava.model.language_model.embed_tokens."),
        ("model.layers.", "llava.model.language_model.layers."),
        ("model.norm.", "llava.model.language_model.norm."),
        ("lm_head.", "llava.lm_head."),
        ("model.mm_projector.0.", "llava.model.multi_modal_projector.linear_1."),
        ("model.mm_projector.2.", "llava.model.multi_modal_projector.linear_2."),
        ("model.mm_projector.", "llava.model.multi_modal_projector.linear."),
        ("model.visual_model.", "sam."),
        ("model.text_hidden_fcs.0.", "seg_projector."),
    ]
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


__all__ = [
    "Sizes", "sizes_7b", "hf_config_dict", "original_state_dict", "write_released_checkpoint", "write_clip_tower",
    "write_weights", "write_tokenizer_files", "clip_config", "expected_target",
]  # fmt: skip
