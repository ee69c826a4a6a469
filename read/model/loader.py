"""One way to load a model for use: :func:`load_model`, for ``eval.py``, ``chat.py``, training from a checkpoint
(``model.init`` "read" / "released") and the exporter.

Two kinds of directory load:

* a directory written by :func:`read.model.save_pretrained` or ``scripts/export_model.py`` (``read_config.json`` +
  ``model.safetensors`` + tokenizer files): the model is built from its saved config, SasP settings included;
* with ``released=True``, a READ / SESAME / LISA checkpoint directory as published (original layout, read by
  :func:`read.model.released.load_released`) plus a local CLIP tower: SasP is READ-7B's for READ checkpoints and
  off for SESAME and LISA.

``sasp_overrides`` change SasP settings on top of either (``{"num_points": 60, "t_pos": 0.6, "down_sample": 1}``
for READ-13B's evaluation); SasP is switched on or off only by an explicit ``"enabled"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from read.errors import UserError
from read.model.builder import CONFIG_NAME, from_pretrained
from read.model.dtypes import dtype_name
from read.model.read_model import ReadModel
from read.tokenizer import ReadTokenizer

logger = logging.getLogger(__name__)


class ModelLoadError(UserError, ValueError):
    """A model directory that cannot be loaded as asked (wrong kind of directory, bad settings, mismatched files)."""


def load_model(
    path: str | Path,
    *,
    released: bool = False,
    vision_tower: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    sasp_overrides: Mapping[str, Any] | None = None,
    loss_overrides: Mapping[str, Any] | None = None,
) -> tuple[ReadModel, ReadTokenizer]:
    """Load a READ model and its tokenizer, on the CPU, in eval mode.

    Arguments:
        path: a ``save_pretrained`` / exporter directory, or (``released=True``) a published READ / SESAME / LISA
            checkpoint directory.
        released: ``path`` is a published checkpoint in its original layout.
        vision_tower: with ``released``: a local CLIP tower directory (``openai/clip-vit-large-patch14-336``;
            None: config.json's ``mm_vision_tower`` if that path exists here). Not allowed otherwise: a saved
            model contains its CLIP weights.
        dtype: parameter dtype, "float32" / "bfloat16" / "float16" (or "fp32" / "bf16" / "fp16", or a torch
            dtype); None: the saved config's for a saved model, float32 for a published checkpoint. SAM's prompt
            encoder stays float32.
        sasp_overrides: ``sasp`` config keys to change (see :class:`read.config.SaspConfig`), e.g.
            ``{"num_points": 60}`` or ``{"enabled": False}``.
        loss_overrides: ``loss`` config keys to change (training from a checkpoint).

    Returns:
        (model, tokenizer); ``model.config`` is the full config it was built with.

    Raises:
        ModelLoadError: ``path`` is not a directory of the kind asked for, an override names an unknown key or a
            bad value, or ``vision_tower`` is given without ``released``. Missing or mismatched files raise as
            :func:`read.model.released.load_released` and :func:`read.model.from_pretrained` do (FileNotFoundError,
            ValueError naming the file).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ModelLoadError(f"model directory not found: {directory}")
    torch_dtype = _dtype(dtype)
    sasp = dict(sasp_overrides or {})
    if released:
        from read.json_io import read_json_object
        from read.model.released import CONFIG_FILE, checkpoint_family, load_released, released_sasp_config

        family = checkpoint_family(read_json_object(directory / CONFIG_FILE), str(directory / CONFIG_FILE))
        try:
            sasp_cfg = released_sasp_config(family, sasp)
        except ValueError as err:
            raise ModelLoadError(f"SasP settings for {directory}: {err}") from None
        model, tokenizer, cfg = load_released(
            directory, vision_tower, dtype=torch_dtype or torch.float32, sasp=sasp_cfg
        )
        if loss_overrides:
            cfg = _with_overrides(cfg.to_dict(), {"loss": dict(loss_overrides)}, directory)
            model.config.loss = cfg.loss
    else:
        if vision_tower is not None:
            raise ModelLoadError(
                f"vision_tower is only used with released=True: {directory} is a saved model and contains CLIP"
            )
        if not (directory / CONFIG_NAME).is_file():
            raise ModelLoadError(
                f"{directory} has no {CONFIG_NAME}; for an original READ/SESAME/LISA checkpoint add --released "
                f"(released=True)"
            )
        overrides: dict[str, Any] = {}
        if sasp:
            overrides["sasp"] = sasp
        if loss_overrides:
            overrides["loss"] = dict(loss_overrides)
        if overrides:  # names and types, before anything is read
            from read.config import ReadConfig

            _with_overrides(ReadConfig().to_dict(), overrides, directory)
        model = from_pretrained(
            directory, dtype=dtype_name(torch_dtype) if torch_dtype is not None else None, overrides=overrides or None
        )
        tokenizer = ReadTokenizer.from_pretrained(directory)
    _check_tokenizer_layout(model, tokenizer, directory)
    return model.eval(), tokenizer


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None:
        return None
    from read.model.dtypes import resolve_dtype

    try:
        return resolve_dtype(dtype)
    except ValueError as err:
        raise ModelLoadError(str(err)) from None


def _with_overrides(base: dict[str, Any], overrides: dict[str, Any], directory: Path) -> Any:
    from read.config import ReadConfig, _merge

    try:
        return ReadConfig.from_dict(_merge(base, overrides))
    except ValueError as err:
        raise ModelLoadError(f"settings for {directory}: {err}") from None


def _check_tokenizer_layout(model: ReadModel, tokenizer: ReadTokenizer, directory: Path) -> None:
    """The model's special ids must be the tokenizer's, and ``<image>`` its last id: the LM's classes are the ids
    below it (:func:`read.model.read_model.text_logits`)."""
    rows = model.llava.get_input_embeddings().weight.shape[0]
    if (model.seg_token_id, model.image_token_id) != (tokenizer.seg_token_id, tokenizer.image_token_id):
        raise ModelLoadError(
            f"{directory}: the model's [SEG] / <image> ids ({model.seg_token_id}, {model.image_token_id}) are not "
            f"the tokenizer's ({tokenizer.seg_token_id}, {tokenizer.image_token_id})"
        )
    if tokenizer.image_token_id != len(tokenizer) - 1 or rows < len(tokenizer):
        raise ModelLoadError(
            f"{directory}: the tokenizer has {len(tokenizer)} tokens with <image> = {tokenizer.image_token_id} and "
            f"the model {rows} embedding rows; <image> must be the last token and every token must have a row"
        )
