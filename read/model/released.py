"""Loading the released READ, SESAME and LISA checkpoints in their original layout
(docs/reference.md#released-checkpoints).

A released checkpoint directory holds what transformers 4.31 ``save_pretrained`` wrote for the reference's
``READForCausalLM`` / ``SESAMEForCausalLM`` / ``LISAForCausalLM``: a LLaMA-style ``config.json`` with LLaVA and
segmentation fields, ``pytorch_model*.bin`` (or ``model*.safetensors``) shards with an index, and the slow-tokenizer
files. CLIP is not in it: it comes from a separate local tower directory (an HF ``CLIPModel`` such as
``openai/clip-vit-large-patch14-336``, or a ``CLIPVisionModel``).

:func:`load_released` builds the matching :class:`~read.model.read_model.ReadModel` and loads every tensor
strictly. Nothing in the directory is edited or executed: the JSON files are parsed, ``.bin`` files are read with
``torch.load(weights_only=True)``.

Key mapping (original -> ReadModel)::

    model.embed_tokens.*                        -> llava.model.language_model.embed_tokens.*   (+1 row)
    model.layers.N.*                            -> llava.model.language_model.layers.N.*
    model.norm.*                                -> llava.model.language_model.norm.*
    lm_head.*                                   -> llava.lm_head.*                              (+1 row)
    model.mm_projector.{0,2}.*                  -> llava.model.multi_modal_projector.linear_{1,2}.*
    model.mm_projector.{weight,bias}            -> llava.model.multi_modal_projector.linear.*  (LISA-7B-v1)
    model.visual_model.*                        -> sam.*
    model.text_hidden_fcs.0.{0,2}.*             -> seg_projector.{0,2}.*
    model.vision_tower.vision_tower.vision_model.* (if present), else the tower directory's
    [vision_model.]*                            -> llava.model.vision_tower.*
    dropped: rotary ``inv_freq`` buffers and CLIP ``embeddings.position_ids`` (buffers recomputed at build time)

Vocabulary: rows V..V+2 of the checkpoint are ``[SEG]``, ``<im_start>``, ``<im_end>`` (V = 32000 for LLaMA).
transformers' Llava needs one more token, ``<image>`` = V + 3, the per-patch placeholder. One row is appended to
``embed_tokens`` and ``lm_head``: the mean of the existing rows. The embedding row is never read (the image
features overwrite it), and the ``lm_head`` row is no class of the language model: the loss and generation leave its
column out (``read.model.read_model.text_only_logits``), so the LM loss is READ's over READ's vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from read.config import ModelConfig, ReadConfig, SamConfig, SaspConfig, TextConfig, VisionConfig
from read.constants import EXTRA_TOKENS
from read.errors import ConfigError, FileFormatError, MissingFileError
from read.json_io import read_json_object
from read.model.builder import build_read_model
from read.model.dtypes import dtype_name
from read.model.read_model import ReadModel
from read.model.sam import sam_config_for
from read.model.weights import load_sharded_state_dict
from read.tokenizer import ReadTokenizer

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ARCHITECTURES = {"READForCausalLM": "read", "SESAMEForCausalLM": "sesame", "LISAForCausalLM": "lisa"}
SAM_PREFIX = "model.visual_model."
CLIP_IN_CHECKPOINT_PREFIX = "model.vision_tower.vision_tower.vision_model."
CLIP_PREFIX = "vision_model."
# Decoder attention heads cannot be read from tensor shapes; every SAM release uses 8.
SAM_DECODER_HEADS = 8

# Original prefix -> ReadModel prefix, tried in order (the first match wins).
_PREFIX_MAP = (
    ("model.embed_tokens.", "llava.model.language_model.embed_tokens."),
    ("model.layers.", "llava.model.language_model.layers."),
    ("model.norm.", "llava.model.language_model.norm."),
    ("lm_head.", "llava.lm_head."),
    ("model.mm_projector.0.", "llava.model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "llava.model.multi_modal_projector.linear_2."),
    (SAM_PREFIX, "sam."),
    ("model.text_hidden_fcs.0.", "seg_projector."),
    (CLIP_IN_CHECKPOINT_PREFIX, "llava.model.vision_tower."),
)
_LINEAR_PROJECTOR = {
    "model.mm_projector.weight": "llava.model.multi_modal_projector.linear.weight",
    "model.mm_projector.bias": "llava.model.multi_modal_projector.linear.bias",
}
_DROPPED = (
    re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
    re.compile(r"^(model\.vision_tower\.vision_tower\.vision_model\.)?embeddings\.position_ids$"),
)
_VOCAB_KEYS = ("llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight")


# ----------------------------------------------------------------------------------------------------------
# reading the directories


def checkpoint_family(hf_config: Mapping[str, Any], source: str = CONFIG_FILE) -> str:
    """ "read", "sesame" or "lisa" from ``architectures`` in config.json."""
    archs = hf_config.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise FileFormatError(f"{source}: architectures={archs!r}; expected one of {[[a] for a in ARCHITECTURES]}")
    return ARCHITECTURES[archs[0]]


def load_checkpoint_weights(ckpt_dir: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory (sharded or not), checked against its index file if any."""
    d = Path(ckpt_dir)
    state = load_sharded_state_dict(d)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (d / index_name).is_file():
            weight_map = read_json_object(d / index_name).get("weight_map")
            if not isinstance(weight_map, dict):
                raise FileFormatError(f"{d / index_name}: no 'weight_map' object")
            absent = sorted(set(weight_map) - set(state))
            if absent:
                raise FileFormatError(
                    f"{d / index_name} lists {len(absent)} tensor(s) that its shards lack, e.g. "
                    f"{absent[0]!r} (in {weight_map[absent[0]]})"
                )
            break
    return state


def resolve_vision_tower(
    vision_tower_path: str | Path | None, hf_config: Mapping[str, Any], ckpt_dir: str | Path
) -> Path:
    """The local CLIP tower directory: ``vision_tower_path`` if given, else config.json's ``mm_vision_tower``
    (or ``vision_tower``) when that path exists locally, as given or relative to the checkpoint directory."""
    if vision_tower_path is not None:
        path = Path(vision_tower_path)
        if not (path / CONFIG_FILE).is_file():
            raise MissingFileError(f"vision tower directory {path} has no {CONFIG_FILE} (expected a local CLIP model)")
        return path
    tried = []
    for field_name in ("mm_vision_tower", "vision_tower"):
        stored = hf_config.get(field_name)
        if not isinstance(stored, str) or not stored:
            continue
        for candidate in (Path(stored), Path(ckpt_dir) / stored):
            if (candidate / CONFIG_FILE).is_file():
                logger.info("using the CLIP tower named in config.json (%s): %s", field_name, candidate)
                return candidate
            tried.append(str(candidate))
    raise MissingFileError(
        f"no local CLIP vision tower: pass vision_tower_path (e.g. a local copy of "
        f"openai/clip-vit-large-patch14-336); config.json's paths do not exist here: {tried or 'none given'}"
    )


def clip_vision_config(tower_dir: str | Path, feature_layer: int) -> VisionConfig:
    """VisionConfig from a CLIP tower's config.json (a ``CLIPModel`` with ``vision_config``, or a
    ``CLIPVisionModel``); missing fields take transformers' ``CLIPVisionConfig`` defaults."""
    from transformers import CLIPVisionConfig

    path = Path(tower_dir) / CONFIG_FILE
    data = read_json_object(path)
    fields = data.get("vision_config", data) if data.get("model_type") == "clip" else data
    if not isinstance(fields, dict):
        raise FileFormatError(f"{path}: vision_config must be an object")
    hf = CLIPVisionConfig(**{k: v for k, v in fields.items() if k not in ("model_type", "architectures")})
    if hf.hidden_act != "quick_gelu":
        raise FileFormatError(
            f"{path}: hidden_act={hf.hidden_act!r}; only OpenAI CLIP towers (quick_gelu) are supported"
        )
    return VisionConfig(
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        feature_layer=feature_layer,
    )


def clip_vision_weights(tower_dir: str | Path) -> dict[str, Tensor]:
    """The vision-tower tensors of a CLIP directory, named as in transformers 5's ``CLIPVisionModel``.

    A ``CLIPModel`` (or a transformers-4 ``CLIPVisionModel``) stores them under ``vision_model.``: those keys are
    taken with the prefix stripped, and the text tower and projections are left out. Without that prefix (a
    transformers-5 ``CLIPVisionModel``) every key is taken as is. ``embeddings.position_ids`` is dropped.
    """
    state = load_sharded_state_dict(tower_dir)
    if any(k.startswith(CLIP_PREFIX) for k in state):
        state = {k[len(CLIP_PREFIX) :]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    return {k: v for k, v in state.items() if k != "embeddings.position_ids"}


# ----------------------------------------------------------------------------------------------------------
# config translation


def infer_sam_config(sam_state: Mapping[str, Tensor]) -> SamConfig:
    """SAM sizes read from the tensors of a SAM state dict (pip ``segment_anything`` names, no prefix).

    Every size that a tensor shape reveals is read: the image encoder's grid, patch, width, depth, MLP width and
    heads (from the relative-position tables, ``(2 * size - 1, head_dim)``, which also tell the global-attention
    blocks, size = the embedding grid, from the windowed ones, size = the window), the prompt width and the mask
    down-scaling channels, the decoder's depth and MLP width, the number of mask outputs and the IoU head's depth and
    width. The decoder's attention heads are the one size no shape shows: SAM's 8 is used, and logged. Returns the
    ``vit_h``/``vit_l``/``vit_b`` registry config when the sizes are one of those, else a "custom" config.

    Raises:
        ValueError: a tensor needed for a size is missing (the size is named), or the shapes contradict each other.
    """

    def get(key: str, size: str) -> Tensor:
        if key not in sam_state:
            raise FileFormatError(f"SAM weights lack {key!r}: cannot infer the {size}")
        return sam_state[key]

    _, grid, grid_w, embed_dim = get("image_encoder.pos_embed", "image-encoder grid and width").shape
    patch_size = get("image_encoder.patch_embed.proj.weight", "patch size").shape[-1]
    depth = len({k.split(".")[2] for k in sam_state if k.startswith("image_encoder.blocks.")})
    head_dim = get("image_encoder.blocks.0.attn.rel_pos_h", "encoder attention heads").shape[1]
    sizes = [
        (get(f"image_encoder.blocks.{i}.attn.rel_pos_h", "encoder attention windows").shape[0] + 1) // 2
        for i in range(depth)
    ]
    global_idx = [i for i, s in enumerate(sizes) if s == grid]
    windows = {s for s in sizes if s != grid}
    if grid != grid_w or embed_dim % head_dim or len(windows) > 1:
        raise FileFormatError(f"SAM image encoder shapes are inconsistent: grid {grid}x{grid_w}, rel-pos sizes {sizes}")
    mlp_width = get("image_encoder.blocks.0.mlp.lin1.weight", "encoder MLP width").shape[0]
    mlp_ratio = mlp_width / embed_dim
    if int(embed_dim * mlp_ratio) != mlp_width:
        raise FileFormatError(f"SAM image encoder MLP width {mlp_width} is not a ratio of its width {embed_dim}")
    prompt_dim = get("image_encoder.neck.0.weight", "prompt embedding width").shape[0]
    mask_in_chans = get("prompt_encoder.mask_downscaling.3.weight", "mask down-scaling channels").shape[0]
    decoder_depth = len({k.split(".")[3] for k in sam_state if k.startswith("mask_decoder.transformer.layers.")})
    iou_layers = {k.split(".")[3] for k in sam_state if k.startswith("mask_decoder.iou_prediction_head.layers.")}
    if not iou_layers:
        raise FileFormatError("SAM weights lack 'mask_decoder.iou_prediction_head.layers.*': cannot infer the IoU head")
    iou_hidden = (
        get("mask_decoder.iou_prediction_head.layers.0.weight", "IoU head width").shape[0]
        if len(iou_layers) > 1
        else 256  # a one-layer head has no hidden width; SAM's value keeps the config valid
    )
    num_mask_tokens = get("mask_decoder.mask_tokens.weight", "number of mask outputs").shape[0]
    cfg = SamConfig(
        variant="custom",
        image_size=grid * patch_size,
        patch_size=patch_size,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=global_idx,
        encoder_window_size=windows.pop() if windows else grid,
        prompt_embed_dim=prompt_dim,
        decoder_depth=decoder_depth,
        decoder_mlp_dim=get("mask_decoder.transformer.layers.0.mlp.lin1.weight", "decoder MLP width").shape[0],
        decoder_num_heads=SAM_DECODER_HEADS,
        encoder_mlp_ratio=mlp_ratio,
        mask_in_chans=mask_in_chans,
        num_multimask_outputs=num_mask_tokens - 1,
        iou_head_depth=len(iou_layers),
        iou_head_hidden_dim=iou_hidden,
    )
    logger.info(
        "SAM mask-decoder attention heads cannot be read from the weights (no tensor shape shows them): using %d, "
        "the value of every SAM release",
        SAM_DECODER_HEADS,
    )
    for variant in ("vit_h", "vit_l", "vit_b"):
        if dataclass_equal_except_variant(cfg, sam_config_for(variant)):
            return sam_config_for(variant)
    return cfg


def dataclass_equal_except_variant(a: SamConfig, b: SamConfig) -> bool:
    """Whether two SAM configs describe the same network."""
    return {**vars(a), "variant": None} == {**vars(b), "variant": None}


def check_text_sizes(hf_config: Mapping[str, Any], state: Mapping[str, Tensor], source: str = CONFIG_FILE) -> None:
    """Compare config.json's language-model sizes with what the checkpoint's tensors (original names) show:
    the width and vocabulary (``model.embed_tokens``), the MLP width, the key/value width and the ``[SEG]`` head's
    output width (layers that config.json does not declare, or lacks, are reported key by key by the strict load).
    The attention heads, the RMSNorm epsilon, the RoPE base and the context length are not visible in any shape and
    are taken from config.json as they are.

    Raises:
        ValueError: naming the field, its config.json value and the tensor that contradicts it.
    """

    def shape(key: str) -> tuple[int, ...] | None:
        return tuple(state[key].shape) if key in state else None

    found: list[tuple[str, int, str]] = []  # (config field, value the tensors show, tensor)
    embed = shape("model.embed_tokens.weight")
    if embed is not None:
        found += [
            ("vocab_size", embed[0], "model.embed_tokens.weight"),
            ("hidden_size", embed[1], "model.embed_tokens.weight"),
        ]
    gate = shape("model.layers.0.mlp.gate_proj.weight")
    if gate is not None:
        found.append(("intermediate_size", gate[0], "model.layers.0.mlp.gate_proj.weight"))
    head = shape("model.text_hidden_fcs.0.2.weight")
    if head is not None and "out_dim" in hf_config:
        found.append(("out_dim", head[0], "model.text_hidden_fcs.0.2.weight"))
    for field_name, value, tensor in found:
        if field_name in hf_config and hf_config[field_name] != value:
            raise FileFormatError(
                f"{source}: {field_name}={hf_config[field_name]} but the checkpoint's {tensor} shows {value}"
            )
    k_proj = shape("model.layers.0.self_attn.k_proj.weight")
    heads, hidden = hf_config.get("num_attention_heads"), hf_config.get("hidden_size")
    if k_proj is not None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0:
        kv_heads = hf_config.get("num_key_value_heads") or heads
        if kv_heads * (hidden // heads) != k_proj[0]:
            raise FileFormatError(
                f"{source}: num_key_value_heads={kv_heads} (head size {hidden // heads}) but "
                f"model.layers.0.self_attn.k_proj.weight has {k_proj[0]} rows"
            )


def projector_type_of(keys: Collection[str], hf_config: Mapping[str, Any], source: str = CONFIG_FILE) -> str:
    """ "linear" (LISA-7B-v1's single Linear, ``model.mm_projector.weight``) or "mlp2x_gelu"
    (``model.mm_projector.{0,2}.*``), from the checkpoint's keys; config.json's ``mm_projector_type`` must agree."""
    if "model.mm_projector.weight" in keys:
        found = "linear"
    elif "model.mm_projector.0.weight" in keys:
        found = "mlp2x_gelu"
    else:
        raise FileFormatError(
            "checkpoint has no vision projector (model.mm_projector.weight / model.mm_projector.0.weight)"
        )
    declared = hf_config.get("mm_projector_type")
    if declared is not None and declared != found:
        raise FileFormatError(f"{source}: mm_projector_type={declared!r}, but the weights hold a {found!r} projector")
    return found


def released_sasp_config(family: str, overrides: Mapping[str, Any] | None = None) -> SaspConfig:
    """SasP settings for a released checkpoint: READ-7B's (30 points, 0.8 / 0.2, down-sample 2, READ's crop
    geometry) for READ checkpoints, disabled (the LISA path) for SESAME and LISA; ``overrides`` (e.g.
    ``{"num_points": 60}``) apply on top, and only an explicit ``enabled`` switches SasP on or off."""
    base = dataclasses.asdict(SaspConfig(enabled=family == "read"))
    unknown = sorted(set(overrides or {}) - set(base))
    if unknown:
        raise ConfigError(f"unknown SasP setting(s) {unknown}; known: {sorted(base)}")
    return ReadConfig.from_dict({"sasp": {**base, **(overrides or {})}}).sasp


def released_read_config(
    hf_config: Mapping[str, Any],
    vision: VisionConfig,
    sam: SamConfig,
    projector_type: str,
    *,
    sasp: SaspConfig | None = None,
    dtype: torch.dtype = torch.float32,
    source: str = CONFIG_FILE,
) -> ReadConfig:
    """The ReadConfig of a released checkpoint.

    Arguments:
        hf_config: the parsed config.json (LLaMA fields at the top level, LLaVA and segmentation fields).
        vision: the CLIP tower's sizes (:func:`clip_vision_config`).
        sam: the SAM sizes (:func:`infer_sam_config`).
        projector_type: :func:`projector_type_of`.
        sasp: SasP settings; default: READ's 7B settings for READ checkpoints, disabled for SESAME and LISA.
        dtype: the parameter dtype.
        source: the file name used in errors.
    """
    family = checkpoint_family(hf_config, source)

    def need(key: str) -> Any:
        if key not in hf_config:
            raise FileFormatError(f"{source}: missing field {key!r}")
        return hf_config[key]

    checks = {
        "hidden_act": ("silu", hf_config.get("hidden_act", "silu")),
        "rope_scaling": (None, hf_config.get("rope_scaling")),
        "mm_vision_select_feature": ("patch", hf_config.get("mm_vision_select_feature", "patch")),
        "mm_use_im_start_end": (True, hf_config.get("mm_use_im_start_end", True)),
        "tie_word_embeddings": (False, hf_config.get("tie_word_embeddings", False)),
    }
    for key, (wanted, value) in checks.items():
        if value != wanted:
            raise FileFormatError(f"{source}: {key}={value!r} is not supported (expected {wanted!r})")
    dtype_config_name = dtype_name(dtype)
    mm_hidden = hf_config.get("mm_hidden_size", vision.hidden_size)
    if mm_hidden != vision.hidden_size:
        raise FileFormatError(
            f"{source}: mm_hidden_size={mm_hidden} but the CLIP tower has hidden_size {vision.hidden_size}"
        )
    out_dim = hf_config.get("out_dim", 256)
    if out_dim != sam.prompt_embed_dim:
        raise FileFormatError(f"{source}: out_dim={out_dim} but SAM's prompt embedding is {sam.prompt_embed_dim}-d")
    vocab = need("vocab_size")
    num_new = len(EXTRA_TOKENS) - 1  # [SEG], <im_start>, <im_end> are in the checkpoint
    heads = need("num_attention_heads")
    text = TextConfig(
        vocab_size=vocab - num_new,
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=hf_config.get("num_key_value_heads") or heads,
        max_position_embeddings=need("max_position_embeddings"),
        rms_norm_eps=need("rms_norm_eps"),
        rope_theta=float(hf_config.get("rope_theta", 10000.0)),
    )
    if sasp is None:
        sasp = released_sasp_config(family)
    model = ModelConfig(
        text=text,
        vision=vision,
        sam=sam,
        projector_type=projector_type,  # type: ignore[arg-type]
        out_dim=out_dim,
        init="released",
        dtype=dtype_config_name,  # type: ignore[arg-type]
    )
    return ReadConfig(model=model, sasp=sasp)


# ----------------------------------------------------------------------------------------------------------
# key mapping


def map_released_state_dict(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Rename the tensors of a released checkpoint to ReadModel names (table in the module docstring).

    Arguments:
        state: original key -> tensor.

    Returns:
        (mapped: ReadModel key -> tensor, sources: ReadModel key -> original key, unmapped: original keys no rule
        covers, sorted). Dropped buffers appear in neither.
    """
    mapped: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if any(p.match(key) for p in _DROPPED):
            continue
        target = _LINEAR_PROJECTOR.get(key)
        if target is None:
            for old, new in _PREFIX_MAP:
                if key.startswith(old):
                    target = new + key[len(old) :]
                    break
        if target is None:
            unmapped.append(key)
            continue
        if target in mapped:
            raise FileFormatError(f"checkpoint keys {sources[target]!r} and {key!r} both map to {target!r}")
        mapped[target] = value
        sources[target] = key
    return mapped, sources, sorted(unmapped)


def append_placeholder_row(weight: Tensor) -> Tensor:
    """(V, C) -> (V + 1, C): the ``<image>`` row is the mean of the existing rows (computed in float32)."""
    mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean], 0)


def _group(key: str) -> str:
    """Key group for reports: the first four components, layer/block indices shown as N."""
    return ".".join("N" if part.isdigit() else part for part in key.split(".")[:4])


def key_report(title: str, keys: list[str], sources: Mapping[str, str] | None = None, show: int = 3) -> str:
    """Keys grouped by prefix, with counts and the first few names ("(from <original key>)" where known)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(keys):
        groups[_group(key)].append(key)
    lines = [f"{len(keys)} {title}:"]
    for group, members in groups.items():
        names = [f"{k} (from {sources[k]})" if sources and k in sources else k for k in members[:show]]
        more = f", ... (+{len(members) - show})" if len(members) > show else ""
        lines.append(f"  {group}: {len(members)} -- {', '.join(names)}{more}")
    return "\n".join(lines)


def check_state_dict(
    expected: Mapping[str, torch.Size], state: Mapping[str, Tensor], sources: Mapping[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """Compare mapped tensors with the model's parameters and persistent buffers.

    Returns:
        (missing, unexpected, shape-mismatch descriptions), each sorted.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (from {sources.get(k, '?')}): checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    return missing, unexpected, mismatched


def _mismatch_message(
    where: str, missing: list[str], unexpected: list[str], mismatched: list[str], sources: Mapping[str, str]
) -> str:
    parts = [f"{where} does not match the model it describes:"]
    if missing:
        parts.append(key_report("missing key(s) (model tensors the checkpoint lacks)", missing))
    if unexpected:
        parts.append(key_report("unexpected key(s) (checkpoint tensors the model lacks)", unexpected, sources))
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es):\n  " + "\n  ".join(mismatched[:10]))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------
# the loader


@contextlib.contextmanager
def _construction(dtype: torch.dtype, skip_init: bool) -> Iterator[None]:
    """Build parameters directly in ``dtype``, without random initialisation when every tensor will be loaded."""
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights() if skip_init else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(previous)


def check_tokenizer(tokenizer: ReadTokenizer, rows: int, where: str) -> None:
    """The tokenizer must put ``[SEG]``, ``<im_start>``, ``<im_end>`` at the checkpoint's last three embedding
    rows and ``<image>`` right after them."""
    base = rows - (len(EXTRA_TOKENS) - 1)
    got = tokenizer.convert_tokens_to_ids(list(EXTRA_TOKENS))
    wanted = list(range(base, base + len(EXTRA_TOKENS)))
    if tokenizer.vocab_size != base or got != wanted or len(tokenizer) != base + len(EXTRA_TOKENS):
        raise FileFormatError(
            f"{where}: the tokenizer ({tokenizer.vocab_size} pieces, {dict(zip(EXTRA_TOKENS, got))}) does not match "
            f"the checkpoint's {rows} embedding rows; expected {dict(zip(EXTRA_TOKENS, wanted))}"
        )


def load_released(
    ckpt_dir: str | Path,
    vision_tower_path: str | Path | None,
    *,
    dtype: torch.dtype = torch.float32,
    strict: bool = True,
    sasp: SaspConfig | None = None,
) -> tuple[ReadModel, ReadTokenizer, ReadConfig]:
    """Load a released READ / SESAME / LISA checkpoint directory as it was published.

    Arguments:
        ckpt_dir: the checkpoint directory (config.json, weights, tokenizer files).
        vision_tower_path: a local CLIP tower directory (``CLIPModel`` or ``CLIPVisionModel``); None falls back
            to config.json's ``mm_vision_tower`` if that path exists here.
        dtype: parameter dtype (SAM's prompt encoder stays float32).
        strict: raise on missing, unexpected or mis-shaped tensors (default). With False they are logged, and
            the model tensors not in the checkpoint keep their random initialisation.
        sasp: SasP settings (the checkpoint has none); default: READ 7B's (30 points, 0.8 / 0.2, down-sample 2,
            READ's own crop geometry) for READ checkpoints, disabled (the LISA path) for SESAME and LISA
            (:func:`released_sasp_config`).

    Returns:
        (model in eval mode, tokenizer, config). ``config.model.init`` is "released", with ``init_path``,
        ``tokenizer_path`` and ``vision_tower_path`` set.

    Raises:
        MissingFileError: a directory, config.json, weight file or the CLIP tower is missing.
        FileFormatError: an unsupported or inconsistent config.json, a tokenizer that does not match the embedding
            rows, or (strict) missing / unexpected / mis-shaped tensors, listed by key group.
    """
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise MissingFileError(f"checkpoint directory not found: {ckpt}")
    config_path = ckpt / CONFIG_FILE
    hf_config = read_json_object(config_path)
    checkpoint_family(hf_config, str(config_path))
    original = load_checkpoint_weights(ckpt)
    check_text_sizes(hf_config, original, str(config_path))
    projector = projector_type_of(original.keys(), hf_config, str(config_path))
    state, sources, unmapped = map_released_state_dict(original)
    del original

    tower = resolve_vision_tower(vision_tower_path, hf_config, ckpt)
    vision = clip_vision_config(tower, feature_layer=hf_config.get("mm_vision_select_layer", -2))
    if not any(k.startswith("llava.model.vision_tower.") for k in state):
        for key, value in clip_vision_weights(tower).items():
            state["llava.model.vision_tower." + key] = value
            sources["llava.model.vision_tower." + key] = f"{key} in {tower}"
    else:
        logger.info("the checkpoint carries its own CLIP weights; %s gives only the tower's config", tower)

    sam_state = {k[len("sam.") :]: v for k, v in state.items() if k.startswith("sam.")}
    cfg = released_read_config(
        hf_config, vision, infer_sam_config(sam_state), projector, sasp=sasp, dtype=dtype, source=str(config_path)
    )
    cfg.model.init_path = str(ckpt)
    cfg.model.tokenizer_path = str(ckpt)
    cfg.model.vision_tower_path = str(tower)

    if _VOCAB_KEYS[0] not in state:
        raise FileFormatError(f"{ckpt}: the checkpoint has no model.embed_tokens.weight")
    rows = state[_VOCAB_KEYS[0]].shape[0]
    if rows != hf_config["vocab_size"]:
        raise FileFormatError(
            f"{config_path}: vocab_size={hf_config['vocab_size']} but model.embed_tokens has {rows} rows"
        )
    tokenizer = ReadTokenizer.from_pretrained(ckpt)
    check_tokenizer(tokenizer, rows, str(ckpt))
    for key in _VOCAB_KEYS:
        if key in state:
            state[key] = append_placeholder_row(state[key])

    with _construction(dtype, skip_init=strict):
        model = build_read_model(
            cfg, len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
        )
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected, mismatched = check_state_dict(expected, state, sources)
    unexpected = sorted(unexpected + unmapped)
    if missing or unexpected or mismatched:
        message = _mismatch_message(str(ckpt), missing, unexpected, mismatched, sources)
        if strict:
            raise FileFormatError(message)
        logger.warning(message)
    loadable = {k: v for k, v in state.items() if k in expected and tuple(v.shape) == tuple(expected[k])}
    model.load_state_dict(loadable, strict=False)
    model.eval()
    logger.info(
        "loaded %s (%s, %d layers, hidden %d, projector %s, SAM %s) with CLIP from %s",
        ckpt, hf_config["architectures"][0], cfg.model.text.num_hidden_layers, cfg.model.text.hidden_size,
        projector, cfg.model.sam.variant, tower,
    )  # fmt: skip
    return model, tokenizer, cfg
