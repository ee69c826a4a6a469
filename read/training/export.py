"""Turn a training checkpoint into a ``save_pretrained`` model directory (LoRA merged, safetensors, tokenizer).

The reference does this in two steps (``zero_to_fp32.py``, then ``merge_lora_weights_and_save_hf_model.py``, which
needs the LoRA settings repeated by hand). Here the checkpoint carries its config, so one call rebuilds the
training-time model (``model.init`` + the same LoRA), loads the fp32 weights consolidated from the ZeRO partitions,
folds LoRA into the base weights and writes the result. ``read.model.from_pretrained`` (eval.py, chat.py) loads it.

The checkpoint's files are read without running code: they are scanned before anything is built, and DeepSpeed's
``zero_to_fp32`` runs with every ``torch.load`` made weights-only (``read.training.safe_checkpoint``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from read.config import ReadConfig, fill_saved_defaults
from read.errors import ConfigError, MissingFileError
from read.model import ReadModel, build_read_model, save_pretrained
from read.model.builder import cast_model
from read.model.trainable import merge_lora, prepare_for_training
from read.model.weights import load_checked_state_dict
from read.training.checkpoint import DS_TAG, META_FILE, CheckpointMeta, resolve_checkpoint
from read.training.safe_checkpoint import scan_checkpoint, weights_only_loads

logger = logging.getLogger(__name__)


def consolidated_state_dict(checkpoint: str | Path, exclude_frozen: bool) -> dict[str, torch.Tensor]:
    """The fp32 weights of a checkpoint, gathered from its ZeRO partitions (DeepSpeed's ``zero_to_fp32``).

    Arguments:
        checkpoint: a checkpoint directory (``<run>/checkpoints/step_*``).
        exclude_frozen: the checkpoint was saved without the frozen weights.

    Returns:
        name -> fp32 tensor on the CPU, names as in the training model (LoRA layers not merged).
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    noise = io.StringIO()
    with contextlib.redirect_stdout(noise), weights_only_loads():  # the DeepSpeed helper prints its progress
        state = get_fp32_state_dict_from_zero_checkpoint(
            str(checkpoint), tag=DS_TAG, exclude_frozen_parameters=exclude_frozen
        )
    logger.debug("%s", noise.getvalue())
    return state


def rebuild_training_model(checkpoint: str | Path) -> tuple[ReadModel, ReadConfig, Any]:
    """The model of a checkpoint as it was trained (LoRA not merged), with its weights loaded.

    Checkpoints of runs with ``model.init`` other than "random" hold only the trained weights; the others are
    read again from the files ``model.init`` names (which must still exist).

    Returns:
        (model in fp32 on the CPU, in eval mode; its config; its tokenizer).

    Raises:
        UnsafeFileError: a file of the checkpoint would run code if loaded (nothing is built or run).
        FileFormatError: the checkpoint's weights do not fit the rebuilt model (names listed), or a file is damaged.
    """
    from read.training.engine import build_model, load_tokenizer

    ckpt = Path(checkpoint)
    scan_checkpoint(ckpt)
    meta = CheckpointMeta.read(ckpt)
    try:
        cfg = ReadConfig.from_dict(fill_saved_defaults(meta.config))
    except ConfigError as e:
        raise ConfigError(f"{ckpt / META_FILE}: {e}") from e
    cfg.model.tokenizer_path = meta.tokenizer_path
    tokenizer = load_tokenizer(cfg)
    if meta.exclude_frozen:
        model = build_model(cfg, tokenizer)  # frozen weights come from model.init, as in training
    else:
        model = build_read_model(
            cfg, meta.vocab_size, seg_token_id=meta.seg_token_id, image_token_id=meta.image_token_id
        )
    prepare_for_training(model, cfg)
    model.float()
    state = consolidated_state_dict(ckpt, meta.exclude_frozen)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    load_checked_state_dict(
        model, state, f"{ckpt} (weights)", required=trainable if meta.exclude_frozen else None,
        hint=f"{META_FILE} and the DeepSpeed files come from different runs",
    )  # fmt: skip
    model.eval()
    return model, cfg, tokenizer


def export_checkpoint(
    run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "best", dtype: str | None = None
) -> Path:
    """Export one checkpoint of a run as a merged ``save_pretrained`` directory.

    Arguments:
        run_dir: the run directory (``train.output_dir``).
        out_dir: where the model goes (``model.safetensors``, ``read_config.json``, tokenizer files).
        checkpoint: "best", "latest", or a path to a checkpoint directory.
        dtype: "float32" / "bfloat16" / "float16"; default ``model.dtype`` of the run's config.

    Returns:
        ``out_dir``.
    """
    ckpt = resolve_checkpoint(checkpoint, run_dir)
    if ckpt is None:
        raise MissingFileError(f"{run_dir}: no checkpoint to export (is it a run directory, train.output_dir?)")
    model, cfg, tokenizer = rebuild_training_model(ckpt)
    merged = merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(False)
    cast_model(model, dtype or cfg.model.dtype)
    save_pretrained(model, out_dir, tokenizer)
    logger.info("exported %s (%d LoRA layers merged) to %s", ckpt, merged, out_dir)
    return Path(out_dir)
