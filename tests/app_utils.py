"""Tiny models with a known kind of answer, for the web demo's tests."""

from __future__ import annotations

import torch

from model_utils import tiny_config
from read.model import ReadModel, build_read_model
from read.tokenizer import ReadTokenizer


def seg_model(tokenizer: ReadTokenizer, *overrides: str, seed: int = 0) -> ReadModel:
    """A tiny random READ whose every generated token is ``[SEG]``: every token embedding is ``50 u`` plus a little
    noise, so the residual stream (and the final norm) points along ``u`` whatever the context, and the LM head reads
    ``u`` as ``[SEG]`` and ``-u`` as EOS. ``max_new_tokens=n`` gives an answer of n ``[SEG]``."""
    torch.manual_seed(seed)
    model = build_read_model(
        tiny_config(*overrides),
        len(tokenizer),
        seg_token_id=tokenizer.seg_token_id,
        image_token_id=tokenizer.image_token_id,
    )
    emb = model.llava.get_input_embeddings().weight.data
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(emb.shape[1], generator=g)
    emb.copy_(50 * u + torch.randn(emb.shape, generator=g))
    head = model.llava.lm_head.weight.data
    head.zero_()
    head[tokenizer.seg_token_id], head[tokenizer.eos_token_id] = u, -u
    return model.eval()


def silent_model(tokenizer: ReadTokenizer, seed: int = 0) -> ReadModel:
    """A tiny random READ that never generates ``[SEG]`` (a zero LM head: every logit ties and greedy decoding
    picks id 0)."""
    torch.manual_seed(seed)
    model = build_read_model(
        tiny_config(), len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
    )
    model.llava.lm_head.weight.data.zero_()
    return model.eval()
