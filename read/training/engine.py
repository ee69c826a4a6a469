"""Model and DeepSpeed engine set-up for training (the process group: :mod:`read.distributed`).

The DeepSpeed settings live in a JSON file (``train.deepspeed_config``, ``configs/deepspeed/zero2.json`` by
default). Its ``"auto"`` values are filled from :class:`read.config.TrainConfig`, so every hyper-parameter has one
source of truth; a literal value in the JSON that disagrees with the config is an error, not a silent override.

Reference settings (docs/reference.md#training-recipe): AdamW (betas 0.9/0.95, weight decay 0), ``WarmupDecayLR``
(linear warm-up from 0 over ``warmup_steps`` optimizer steps, then linear decay to 0 at ``epochs * steps_per_epoch``),
gradient clipping 1.0, ZeRO stage 2. DeepSpeed's scheduler uses ``max(2, warmup_steps)`` warm-up steps and gives lr 0
to the first two optimizer steps, exactly as in the reference.

The shipped JSON sets ``"torch_adam": true``: DeepSpeed then builds ``torch.optim.AdamW`` (same update rule) instead
of its ``FusedAdam`` op, which is JIT-compiled on first use (C++ on CPU, CUDA with nvcc on GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from read.config import ReadConfig, TrainConfig, validate
from read.distributed import DistInfo
from read.errors import ConfigError, FileFormatError, MissingFileError
from read.model import ReadModel, build_from_base, build_read_model, load_model
from read.model.builder import cast_model
from read.model.dtypes import DTYPES, PRECISIONS
from read.model.sam import keep_prompt_encoder_fp32
from read.training.loop import install_nonfinite_guard

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PRECISION_DTYPES = {precision: DTYPES[name] for precision, name in PRECISIONS.items()}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"fp32"`` elsewhere; other values are checked against the device."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISION_DTYPES:
        raise ConfigError(f"train.precision: {precision!r} is not one of auto, fp32, bf16, fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return precision


# ----------------------------------------------------------------------------------------------------------
# DeepSpeed config


def _auto_values(train: TrainConfig, world_size: int, precision: str) -> dict[tuple[str, ...], Any]:
    """The JSON paths that TrainConfig owns, with their values."""
    return {
        ("train_micro_batch_size_per_gpu",): train.batch_size,
        ("gradient_accumulation_steps",): train.grad_accumulation_steps,
        ("train_batch_size",): train.batch_size * train.grad_accumulation_steps * world_size,
        ("gradient_clipping",): train.grad_clip,
        ("optimizer", "params", "lr"): train.lr,
        ("optimizer", "params", "betas"): [float(b) for b in train.betas],
        ("optimizer", "params", "eps"): train.eps,
        ("optimizer", "params", "weight_decay"): train.weight_decay,
        ("scheduler", "params", "total_num_steps"): train.epochs * train.steps_per_epoch,
        ("scheduler", "params", "warmup_max_lr"): train.lr,
        ("scheduler", "params", "warmup_num_steps"): train.warmup_steps,
        ("bf16", "enabled"): precision == "bf16",
        ("fp16", "enabled"): precision == "fp16",
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def build_deepspeed_config(
    train: TrainConfig, world_size: int, precision: str, path: str | Path | None = None
) -> dict[str, Any]:
    """Read the DeepSpeed JSON and fill its ``"auto"`` values from ``train``.

    Arguments:
        train: the training section of the config.
        world_size: number of data-parallel processes (sets ``train_batch_size``).
        precision: resolved precision, "fp32" / "bf16" / "fp16".
        path: the JSON file; default ``train.deepspeed_config`` (a relative path that does not exist from the
            working directory is looked up from the repository root).

    Returns:
        the config dict for ``deepspeed.initialize``.

    Raises:
        MissingFileError: the JSON file does not exist.
        ConfigError: the file is not valid JSON, a literal value contradicts the config, or an ``"auto"`` is left
            that nothing fills.
    """
    path = Path(path or train.deepspeed_config)
    if not path.is_absolute() and not path.is_file() and (REPO_ROOT / path).is_file():
        path = REPO_ROOT / path  # configs/deepspeed/*.json from outside the repository root
    if not path.is_file():
        raise MissingFileError(f"train.deepspeed_config: {path} does not exist")
    try:
        ds = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} (train.deepspeed_config) is not valid JSON: {e}") from e
    if not isinstance(ds, dict):
        raise ConfigError(f"{path} (train.deepspeed_config): the top level must be a JSON object")
    for keys, value in _auto_values(train, world_size, precision).items():
        node = ds
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # section absent (e.g. a different scheduler): nothing to fill
        current = node.get(keys[-1], "auto")
        if current != "auto" and not _same(current, value):
            raise ConfigError(
                f"{path}: {'.'.join(keys)} = {current!r} contradicts the training config ({value!r}); "
                f'set it to "auto" and change the YAML / command-line value instead'
            )
        node[keys[-1]] = value
    left = _find_auto(ds)
    if left:
        raise ConfigError(f'{path}: no config value fills {", ".join(left)} ("auto"); give a value in the JSON')
    return ds


def _find_auto(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _find_auto(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


# ----------------------------------------------------------------------------------------------------------
# tokenizer, model, engine


def tokenizer_dir(cfg: ReadConfig) -> str | None:
    """Where the tokenizer files are: ``model.tokenizer_path``, else the directory the weights come from."""
    m = cfg.model
    if m.tokenizer_path:
        return m.tokenizer_path
    if m.init == "llava":
        return m.llava_path
    if m.init in ("read", "released"):
        return m.init_path
    return None


def load_tokenizer(cfg: ReadConfig) -> Any:
    """The :class:`read.tokenizer.ReadTokenizer` named by the config (see :func:`tokenizer_dir`)."""
    from read.tokenizer import ReadTokenizer

    path = tokenizer_dir(cfg)
    if path is None:
        raise ConfigError("model.tokenizer_path is not set (needed with model.init=random)")
    return ReadTokenizer.from_pretrained(path)


ARCHITECTURE_FIELDS = ("text", "vision", "sam", "projector_type", "out_dim")


def adopt_architecture(cfg: ReadConfig, source: ReadConfig) -> list[str]:
    """Copy the architecture fields of ``source.model`` (a loaded checkpoint's config) into ``cfg.model``.

    When weights come from a checkpoint (``model.init`` "read" / "released"), the checkpoint defines the sizes; the
    data pipeline and the saved training checkpoints must use those, not whatever the YAML says.

    Returns:
        the fields that changed (logged).
    """
    changed = [f for f in ARCHITECTURE_FIELDS if getattr(cfg.model, f) != getattr(source.model, f)]
    for f in changed:
        setattr(cfg.model, f, copy.deepcopy(getattr(source.model, f)))
    if changed:
        logger.info("model.%s taken from the checkpoint at %s", ", model.".join(changed), cfg.model.init_path)
        validate(cfg)
    return changed


def build_model(cfg: ReadConfig, tokenizer: Any) -> ReadModel:
    """The model before LoRA, initialised as ``model.init`` says.

    * ``random``: random weights, seeded with ``train.seed`` (so a rebuild gives the same frozen weights);
    * ``llava``: a local LLaVA-1.5 + SAM checkpoint, fresh ``[SEG]`` head (:func:`read.model.build_from_base`);
    * ``read``: a directory written by ``save_pretrained`` / the exporter;
    * ``released``: an original-layout READ / SESAME / LISA checkpoint;

    both through :func:`read.model.load_model`.

    For "read" and "released" the checkpoint's architecture replaces the YAML's (:func:`adopt_architecture`,
    ``cfg`` is updated) and the YAML's ``sasp`` and ``loss`` sections apply; the returned model's ``config`` is
    ``cfg``.
    """
    init = cfg.model.init
    if init == "random":
        torch.manual_seed(cfg.train.seed)
        return build_read_model(
            cfg, len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
        )
    if init == "llava":
        return build_from_base(cfg, tokenizer)
    if not cfg.model.init_path:
        raise ConfigError(f"model.init={init} needs model.init_path")
    model, _ = load_model(
        cfg.model.init_path,
        released=init == "released",
        vision_tower=cfg.model.vision_tower_path if init == "released" else None,
        dtype=cfg.model.dtype,
        sasp_overrides=dataclasses.asdict(cfg.sasp),
        loss_overrides=dataclasses.asdict(cfg.loss),
    )
    model.train()
    adopt_architecture(cfg, model.config)
    model.config = cfg
    vocab = model.llava.get_input_embeddings().weight.shape[0]
    if vocab != len(tokenizer) or model.seg_token_id != tokenizer.seg_token_id:
        raise FileFormatError(
            f"{cfg.model.init_path}: model vocabulary {vocab} / [SEG] id {model.seg_token_id} do not match the "
            f"tokenizer at {tokenizer_dir(cfg)} ({len(tokenizer)} / {tokenizer.seg_token_id})"
        )
    return model


def create_engine(model: ReadModel, cfg: ReadConfig, dist: DistInfo, precision: str) -> Any:
    """Wrap ``model`` (LoRA and trainability already applied) in a DeepSpeed engine.

    The model is cast to the training dtype first; SAM's prompt encoder goes back to fp32 afterwards (it is
    frozen, so ZeRO does not own it; pip SAM's positional encoding fails in bf16). A non-finite guard is installed
    (:func:`read.training.loop.install_nonfinite_guard`).

    Returns:
        the ``DeepSpeedEngine``; its optimizer covers exactly the parameters with ``requires_grad``.
    """
    import deepspeed

    ds_config = build_deepspeed_config(cfg.train, dist.world_size, precision)
    cast_model(model, PRECISION_DTYPES[precision])
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: check the lora / model sections of the config")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    keep_prompt_encoder_fp32(engine.module.sam)
    install_nonfinite_guard(engine.module)
    return engine
