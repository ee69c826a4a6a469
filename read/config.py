"""Typed configuration tree for READ.

Every hyper-parameter lives here as a dataclass field with a default, and every experiment is a YAML
file under ``configs/`` that overrides some of them. ``load_config("configs/x.yaml", ["sasp.num_points=60"])``
returns a validated :class:`ReadConfig`; ``ReadConfig.to_dict()`` is what checkpoints store.

Every problem with a config (unreadable YAML, a ``base:`` chain that loops, an unknown key, a value of the wrong type
or out of range) raises :class:`read.errors.ConfigError`, naming the file and the key, before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from read.errors import ConfigError, MissingFileError


@dataclass
class TextConfig:
    """The LLaMA language model inside LLaVA."""

    vocab_size: int = 32000  # base vocabulary, before [SEG], <im_start>, <im_end>, <image> are appended
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0


@dataclass
class VisionConfig:
    """The CLIP vision tower (ViT-L/14-336 by default)."""

    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    feature_layer: int = -2  # hidden state of this CLIP layer feeds the projector (CLS dropped)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class SamConfig:
    """SAM. ``variant`` is one of segment_anything's registry names (vit_h, vit_l, vit_b) or "custom",
    which builds the pip classes with the sizes below (tiny models for tests and the synthetic default)."""

    variant: str = "vit_h"
    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    encoder_window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    # Sizes every SAM release shares; checkpoints of other shapes (read.model.released infers them) set them.
    encoder_mlp_ratio: float = 4.0
    mask_in_chans: int = 16  # channels of the prompt encoder's mask down-scaling
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class ModelConfig:
    """How the READ model is assembled."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    projector_type: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"  # "linear" = LISA-7B-v1
    out_dim: int = 256  # the [SEG] embedding's size in SAM's prompt space
    # Where the weights come from: "random" (tiny/test models), "llava" (llava_path + sam_checkpoint, fresh head:
    # training from scratch), "read" (a directory written by save_pretrained / the exporter: init_path), or
    # "released" (a READ/SESAME/LISA checkpoint directory in its original layout: init_path + vision_tower_path).
    init: Literal["random", "llava", "read", "released"] = "random"
    init_path: str | None = None
    # Directory with tokenizer.model (+ added_tokens.json); defaults to llava_path / init_path.
    tokenizer_path: str | None = None
    # Local paths for real weights (never downloaded): a llava-hf-format LLaVA-1.5 directory and a SAM .pth.
    llava_path: str | None = None
    sam_checkpoint: str | None = None
    vision_tower_path: str | None = None  # CLIP tower for released READ/LISA/SESAME checkpoints
    # How the new token rows are initialised when training starts from a base LLaVA: "normal" = N(0, 0.02)
    # (transformers 4.31, the reference), "mean" = mean of the existing rows.
    new_token_init: Literal["normal", "mean"] = "normal"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    train_sam_image_encoder: bool = False  # the reference freezes it; the synthetic default may train it
    # Further parameter groups to train in full (names of read.model.trainable.GROUPS: "vision_tower", "projector",
    # "lm_layers", "lm_norm", "sam_image_encoder", "sam_prompt_encoder"). The reference trains none of them; a
    # model trained from random weights (the synthetic quickstart) needs them.
    train_extra: list[str] = field(default_factory=list)


# How SasP undoes the CLIP centre crop (read.model.sasp.pad_geometry).
GEOMETRIES = ("reference", "clip")


@dataclass
class SaspConfig:
    """Similarity as Points. ``enabled=False`` gives the LISA baseline ([SEG] embedding only)."""

    enabled: bool = True
    num_points: int = 30
    t_pos: float = 0.8
    t_neg: float = 0.2
    down_sample: int = 2
    dtoc_radius: int = 10  # soft-argmax window half-size in pixels (weights vanish beyond ~9.4 px)
    # Refine the integer points by DtoC's soft-argmax (READ); false keeps the discrete cell-centre points, which
    # carry no gradient to the similarity map (the paper's "discrete points" ablation).
    dtoc: bool = True
    # How the CLIP centre crop is undone when the maps are laid over the image (read.model.sasp.pad_geometry):
    # "reference" = READ's arithmetic, which the released checkpoints were trained with; "clip" = the CLIP
    # processor's exact crop (moves the coarse cells on images whose crop excess is odd). A saved model whose
    # read_config.json predates this key was trained with "clip" and loads with it.
    geometry: Literal["reference", "clip"] = "reference"

    def __post_init__(self) -> None:
        """What SasP itself needs. A config file is held to more (:func:`validate`): thresholds in [0, 1] and
        ``dtoc_radius >= 1``; the library also takes thresholds outside [0, 1] (no positive or no negative point)
        and ``dtoc_radius = 0`` (no refinement)."""
        if not (math.isfinite(self.t_pos) and math.isfinite(self.t_neg) and self.t_neg < self.t_pos):
            raise ConfigError(f"sasp: need finite t_neg < t_pos, got t_neg={self.t_neg}, t_pos={self.t_pos}")
        for name, least in (("num_points", 1), ("down_sample", 1), ("dtoc_radius", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"sasp.{name} must be an integer >= {least}, got {value!r}")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"sasp.geometry must be 'reference' or 'clip', got {self.geometry!r}")


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    # Not in READ/LISA (0 = the paper's loss): each projected [SEG] prompt predicts its query's words through a linear
    # head (ReadModel.query_head; read.model.losses.query_word_loss). For models trained from random weights
    # (quickstart).
    query_weight: float = 0.0


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # Substrings of module names that never receive LoRA (vision tower, projector, SAM, head).
    exclude_modules: list[str] = field(
        default_factory=lambda: ["vision_tower", "multi_modal_projector", "sam", "seg_projector"]
    )
    # Train the whole embed_tokens / lm_head (reference) or only the new token rows ("new_rows").
    train_embeddings: Literal["full", "new_rows", "none"] = "full"


@dataclass
class DataConfig:
    dataset_dir: str = "data"
    datasets: list[str] = field(default_factory=lambda: ["reason_seg"])
    sample_rates: list[float] = field(default_factory=lambda: [1.0])
    reason_seg_data: str = "ReasonSeg|train"
    refer_seg_data: list[str] = field(default_factory=lambda: ["refclef", "refcoco", "refcoco+", "refcocog"])
    neg_refer_seg_data: list[str] = field(default_factory=lambda: ["R-refcocog", "R-refcoco", "R-refcoco+"])
    correct_refer_seg_data: list[str] = field(default_factory=lambda: ["fprefcoco", "fprefcoco+", "fprefcocog"])
    sem_seg_data: list[str] = field(
        default_factory=lambda: ["ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary"]
    )
    vqa_data: str = "llava_instruct_150k"
    num_classes_per_sample: int = 3
    explanatory: float = -1.0  # LISA explanatory-answer probability; < 0 disables
    conv_type: Literal["llava_v1", "vicuna_v1", "llava_llama_2"] = "llava_v1"
    model_max_length: int = 2048
    val_dataset: str = "ReasonSeg"
    val_split: str = "val"
    num_workers: int = 2
    strict: bool = False  # a bad sample raises instead of being skipped and counted
    # Training question/answer lists: "read" (READ/SESAME qa_template) or "lisa" (LISA's short lists).
    templates: Literal["read", "lisa"] = "read"
    # Refs files: "auto" (SESAME's *_exclude_unified file when present, else the standard one; the choice is logged),
    # "read" (only SESAME *_exclude_unified) or "lisa" (only the standard unc/umd).
    refer_protocol: Literal["auto", "read", "lisa"] = "auto"
    reason_seg_fp_prob: float = 0.15  # ReasonSeg false-premise correction (only images with false_premise_QA)
    sem_seg_denial_prob: float = 0.07  # sem_seg false-premise denial
    sem_seg_correction_prob: float = 0.08  # sem_seg false-premise correction
    max_sample_attempts: int = 20  # consecutive bad samples tolerated per index before giving up
    eval_prompts: Literal["read", "lisa"] = "read"  # evaluation prompt templates (read.data.eval_sets)
    # Validation split with unusable ground truth (e.g. a degenerate polygon): refuse to train (false, the files
    # are named) or validate on the usable queries only (true, the left-out files are logged).
    val_skip_invalid: bool = False


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging (docs/reference.md#training-recipe). DeepSpeed settings that are not
    hyper-parameters live in ``deepspeed_config``; its "auto" values are filled from here (read/training/engine.py)."""

    output_dir: str = "runs/read"  # run directory: checkpoints/, tensorboard/, metrics.jsonl, config.json
    seed: int = 42
    epochs: int = 10
    steps_per_epoch: int = 500  # optimizer steps per epoch; an epoch is steps, not a pass over the data
    batch_size: int = 2  # per process and micro-batch, in images
    grad_accumulation_steps: int = 10
    lr: float = 3e-4  # AdamW peak lr (WarmupDecayLR warmup_max_lr)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 100  # linear warm-up from 0, then linear decay to 0 at epochs * steps_per_epoch
    grad_clip: float = 1.0
    # "auto" = bf16 when CUDA is available, else fp32 (CPU runs); fp32 enables neither DeepSpeed bf16 nor fp16.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    deepspeed_config: str = "configs/deepspeed/zero2.json"
    val_batch_size: int = 1
    eval_every_epoch: bool = True  # validate after each epoch and keep the best checkpoint by cIoU
    save_every: int = 0  # also write a resumable checkpoint every N optimizer steps (0: at epoch ends only)
    log_every: int = 1  # optimizer steps between progress-bar / TensorBoard updates
    max_nonfinite_steps: int = 10  # stop after this many consecutive skipped (non-finite) steps
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "read"


@dataclass
class ReadConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sasp: SaspConfig = field(default_factory=SaspConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReadConfig":
        return _from_dict(cls, data, "")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def fill_saved_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict read back from a saved model or checkpoint, completed for keys added after it was written
    with the value that reproduces how that model was trained (not today's default): ``sasp.geometry`` "clip",
    the only crop geometry before the key existed. Returns a new dict."""
    out = dict(data)
    sasp = out.get("sasp")
    if isinstance(sasp, dict) and "geometry" not in sasp:
        out["sasp"] = {**sasp, "geometry": "clip"}
    return out


def validate(cfg: ReadConfig) -> None:
    """Cross-field and range checks; raises :class:`ConfigError` naming the offending key."""
    _validate_model(cfg.model)
    for name in ("ce_weight", "bce_weight", "dice_weight", "query_weight"):
        if getattr(cfg.loss, name) < 0:
            raise ConfigError(f"loss.{name} must be >= 0, got {getattr(cfg.loss, name)}")
    s = cfg.sasp  # SaspConfig.__post_init__ checked what SasP needs; a config file also keeps these ranges
    if not 0.0 <= s.t_neg < s.t_pos <= 1.0:
        raise ConfigError(f"sasp: need 0 <= t_neg < t_pos <= 1, got t_neg={s.t_neg}, t_pos={s.t_pos}")
    if s.dtoc_radius < 1:
        raise ConfigError(f"sasp.dtoc_radius must be >= 1, got {s.dtoc_radius}")
    side = cfg.model.vision.image_size // cfg.model.vision.patch_size
    if s.enabled and side % s.down_sample != 0:
        raise ConfigError(f"sasp.down_sample={s.down_sample} must divide the image-token grid side {side}")
    if cfg.lora.r < 1 or cfg.lora.alpha <= 0 or not 0.0 <= cfg.lora.dropout < 1.0:
        raise ConfigError(
            f"lora: need r >= 1, alpha > 0 and 0 <= dropout < 1, got r={cfg.lora.r}, alpha={cfg.lora.alpha}, "
            f"dropout={cfg.lora.dropout}"
        )
    _validate_data(cfg.data)
    t = cfg.train
    for key in ("epochs", "steps_per_epoch", "batch_size", "grad_accumulation_steps", "val_batch_size", "log_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if t.lr <= 0 or t.warmup_steps < 0 or t.grad_clip < 0 or t.save_every < 0 or t.max_nonfinite_steps < 1:
        raise ConfigError(
            "train: need lr > 0, warmup_steps >= 0, grad_clip >= 0, save_every >= 0, max_nonfinite_steps >= 1"
        )
    if t.eps <= 0 or t.weight_decay < 0:
        raise ConfigError(f"train: need eps > 0 and weight_decay >= 0, got eps={t.eps}, weight_decay={t.weight_decay}")
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
    if not t.output_dir:
        raise ConfigError("train.output_dir must not be empty")


def _validate_model(m: ModelConfig) -> None:
    for section, keys in (
        ("text", ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings")),
        ("vision", ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")),
        ("sam", ("image_size", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
                 "encoder_window_size", "prompt_embed_dim", "decoder_depth", "decoder_mlp_dim", "decoder_num_heads")),
    ):  # fmt: skip
        node = getattr(m, section)
        for key in keys:
            if getattr(node, key) < 1:
                raise ConfigError(f"model.{section}.{key} must be >= 1, got {getattr(node, key)}")
    for section, hidden, heads in (
        ("text", "hidden_size", "num_attention_heads"),
        ("vision", "hidden_size", "num_attention_heads"),
        ("sam", "encoder_embed_dim", "encoder_num_heads"),
    ):
        node = getattr(m, section)
        if getattr(node, hidden) % getattr(node, heads) != 0:
            raise ConfigError(
                f"model.{section}.{hidden}={getattr(node, hidden)} must be a multiple of "
                f"model.{section}.{heads}={getattr(node, heads)}"
            )
    if m.text.num_attention_heads % m.text.num_key_value_heads != 0:
        raise ConfigError("model.text.num_attention_heads must be a multiple of model.text.num_key_value_heads")
    if m.vision.image_size < m.vision.patch_size:
        raise ConfigError("model.vision.image_size must be >= model.vision.patch_size")
    if m.sam.image_size % m.sam.patch_size != 0:
        raise ConfigError("model.sam.image_size must be a multiple of model.sam.patch_size")
    if m.out_dim < 1:
        raise ConfigError(f"model.out_dim must be >= 1, got {m.out_dim}")
    extra_allowed = ("vision_tower", "projector", "lm_layers", "lm_norm", "sam_image_encoder", "sam_prompt_encoder")
    unknown = [g for g in m.train_extra if g not in extra_allowed]
    if unknown:
        raise ConfigError(f"model.train_extra: unknown group(s) {unknown}; choose from {list(extra_allowed)}")


def _validate_data(d: DataConfig) -> None:
    if len(d.sample_rates) != len(d.datasets):
        raise ConfigError(f"data.sample_rates has {len(d.sample_rates)} entries for {len(d.datasets)} data.datasets")
    if d.datasets and (any(r < 0 for r in d.sample_rates) or sum(d.sample_rates) <= 0):
        raise ConfigError(f"data.sample_rates must be >= 0 with a positive sum, got {d.sample_rates}")
    for key in ("model_max_length", "num_classes_per_sample", "max_sample_attempts"):
        if getattr(d, key) < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {getattr(d, key)}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0 (0 loads data in the training process), got {d.num_workers}")
    for key in ("reason_seg_fp_prob", "sem_seg_denial_prob", "sem_seg_correction_prob"):
        if not 0.0 <= getattr(d, key) <= 1.0:
            raise ConfigError(f"data.{key} must be in [0, 1], got {getattr(d, key)}")
    if d.sem_seg_denial_prob + d.sem_seg_correction_prob > 1.0:
        raise ConfigError("data.sem_seg_denial_prob + data.sem_seg_correction_prob must be <= 1")
    if "|" not in d.reason_seg_data:
        raise ConfigError(f"data.reason_seg_data must look like 'ReasonSeg|train', got {d.reason_seg_data!r}")


# ----------------------------------------------------------------------------------------------------------
# dict / YAML conversion


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "<root>"
        raise ConfigError(f"config section '{where}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        where = prefix.rstrip(".") or "<root>"
        hints_text = [
            f"'{prefix}{k}' (did you mean '{prefix}{close[0]}'?)" if close else f"'{prefix}{k}'"
            for k in unknown
            for close in [difflib.get_close_matches(str(k), sorted(names), n=1)]
        ]
        raise ConfigError(
            f"unknown config key(s) in '{where}': {', '.join(hints_text)}; known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and mildly coerce) a YAML value against a field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["sasp.num_points=60", "train.lr=1e-4"]`` -> nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. sasp.num_points=60)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({_yaml_problem(e)}); quote it") from e
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ReadConfig:
    """Read a YAML (or JSON) config file, apply ``key=value`` overrides, validate.

    A YAML file may name a parent with ``base: other.yaml`` (relative to itself); keys merge recursively.

    Raises:
        MissingFileError: the file (or a ``base:`` file) does not exist.
        ConfigError: anything else that is wrong with the file, the overrides or the values; the message names
            the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_tree(Path(path), ())
    source = f"{path}" if path is not None else "the command line"
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source = f"{path} with the command-line overrides" if path is not None else "the command-line overrides"
    try:
        return ReadConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e


def _read_tree(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The YAML mapping of ``path`` merged over its ``base:`` chain (``chain``: the files that led here)."""
    if not path.is_file():
        where = f" (the base of {chain[-1]})" if chain else ""
        raise MissingFileError(f"config file not found: {path}{where}")
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: the 'base:' chain loops ({loop}); remove one of the 'base:' lines")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e})") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
    parent = data.pop("base", None)
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{path}: 'base' must be a file name, got {parent!r}")
        data = _merge(_read_tree(path.parent / parent, (*chain, resolved)), data)
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what a YAML parse error is, without PyYAML's ``<unicode string>`` source name."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return str(error)
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(p for p in (error.context, error.problem) if p)
    if "\t" in what or "'\\t'" in what:
        what += " (YAML does not allow tabs for indentation: use spaces)"
    return where + what
