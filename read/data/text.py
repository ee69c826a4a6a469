"""Prompt tokenisation with image placeholders, LM label masking, and padding.

Sequence layout (transformers' Llava: the placeholders are in ``input_ids``, nothing is expanded later)::

    <s> system USER: <im_start> <image> x num_image_tokens <im_end> question ASSISTANT: answer </s>

The reference (LLaVA ``tokenizer_image_token``) splits the prompt on the literal ``<image>``, tokenises each chunk on
its own (each gets a ``<s>`` that is dropped except for the first chunk) and joins the chunks with the sentinel
-200, which the model later expands into the image features. ``tokenize_with_image`` does the same and writes
``num_image_tokens`` copies of ``tokenizer.image_token_id`` where the sentinel was, so every other token keeps its
reference id and order.

Labels: only the assistant answers and their closing ``</s>`` are learned; ``<s>``, the system prompt, the questions,
the image placeholders and padding are IGNORE_INDEX. The reference gets this by splitting the prompt into rounds on
``</s>`` and each round on ``" ASSISTANT: "`` (``"[/INST] "`` for llava_llama_2) and counting tokens of the pieces
tokenised separately. Here a token is supervised iff its character span overlaps an assistant span of
``ConversationTemplate.render`` (the text after the role marker, including the space before the answer), which
gives the same labels without assuming that separate tokenisations add up. The tests check both on goldens made
with transformers 4.31.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from read.constants import IGNORE_INDEX, IMAGE_TOKEN
from read.data.conversation import ConversationTemplate, Message, get_template
from read.tokenizer import ReadTokenizer

__all__ = ["EncodedConversation", "SampleTooLong", "encode_conversation", "pad_batch", "tokenize_with_image"]


class SampleTooLong(ValueError):
    """An encoded conversation is longer than the allowed maximum (the sample is skipped, never truncated)."""

    def __init__(self, length: int, max_length: int) -> None:
        super().__init__(f"encoded sequence has {length} tokens, more than max_length={max_length}")
        self.length = length
        self.max_length = max_length


@dataclass(frozen=True)
class EncodedConversation:
    """One tokenised conversation.

    Attributes:
        input_ids: (L,) token ids with ``num_image_tokens`` image placeholders per ``<image>``.
        labels: (L,) ``input_ids`` where the LM loss applies, IGNORE_INDEX elsewhere.
        prompt: the prompt string that was tokenised.
    """

    input_ids: list[int]
    labels: list[int]
    prompt: str


def _encode_prompt(
    tokenizer: ReadTokenizer, prompt: str, num_image_tokens: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """``tokenize_with_image`` plus the character span of ``prompt`` behind every id (see
    ``ReadTokenizer.encode_with_offsets``); placeholders get the span of their ``<image>``."""
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    start = 0
    for k, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
        if k > 0:
            ids.extend([tokenizer.image_token_id] * num_image_tokens)
            offsets.extend([(start - len(IMAGE_TOKEN), start)] * num_image_tokens)
        # Only the first chunk keeps its <s> (the reference tokenises every chunk with <s> and drops it). The first
        # chunk (system prompt + role) repeats in every row: it is tokenised once per tokenizer.
        if k == 0:
            chunk_ids, chunk_offsets = _encode_first_chunk(tokenizer, chunk)
        else:
            chunk_ids, chunk_offsets = tokenizer.encode_with_offsets(chunk, add_bos=False)
        ids.extend(chunk_ids)
        offsets.extend((start + s, start + e) for s, e in chunk_offsets)
        start += len(chunk) + len(IMAGE_TOKEN)
    return ids, offsets


@functools.lru_cache(maxsize=64)
def _encode_first_chunk(tokenizer: ReadTokenizer, chunk: str) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """``tokenizer.encode_with_offsets(chunk, add_bos=True)``, memoised (immutable results)."""
    ids, offsets = tokenizer.encode_with_offsets(chunk, add_bos=True)
    return tuple(ids), tuple((int(s), int(e)) for s, e in offsets)


def tokenize_with_image(tokenizer: ReadTokenizer, prompt: str, num_image_tokens: int) -> list[int]:
    """Tokenise ``prompt`` as the reference's ``tokenizer_image_token``, with placeholders instead of -200.

    Arguments:
        tokenizer: the READ tokenizer.
        prompt: prompt text; every literal ``<image>`` becomes ``num_image_tokens`` ``image_token_id``s.
        num_image_tokens: image features per image (576 for CLIP ViT-L/14-336).

    Returns:
        (L,) token ids starting with ``<s>``.
    """
    return _encode_prompt(tokenizer, prompt, num_image_tokens)[0]


def encode_conversation(
    tokenizer: ReadTokenizer,
    template: ConversationTemplate | str,
    messages: Sequence[Message],
    num_image_tokens: int,
    max_length: int | None = None,
) -> EncodedConversation:
    """Render, tokenise and label one conversation.

    Arguments:
        tokenizer: the READ tokenizer.
        template: a conversation template or its registry name.
        messages: alternating (user, assistant) turns, see ``ConversationTemplate.render``. A final assistant turn of
            None gives a generation prompt whose labels are all IGNORE_INDEX.
        num_image_tokens: image placeholders per ``<image>``.
        max_length: raise ``SampleTooLong`` if the sequence (placeholders included) is longer.

    Returns:
        ``input_ids`` and ``labels`` of equal length L, and the prompt.
    """
    if isinstance(template, str):
        template = get_template(template)
    rendered = template.render(messages)
    ids, offsets = _encode_prompt(tokenizer, rendered.text, num_image_tokens)
    if max_length is not None and len(ids) > max_length:
        raise SampleTooLong(len(ids), max_length)

    span_starts = [s for s, _ in rendered.supervised_spans]
    labels = [IGNORE_INDEX] * len(ids)
    # <s> and the image placeholders are never supervised; the placeholders precede the first supervised span
    ends = [e for _, e in offsets]
    first = bisect.bisect_left(ends, span_starts[0]) if span_starts else len(ids)
    for k in range(max(1, first - 1), len(ids)):
        token_id, (start, end) = ids[k], offsets[k]
        if token_id == tokenizer.image_token_id:
            continue
        end = max(end, start + 1)  # an empty span (byte-fallback lead byte) stands for the character at ``start``
        # The last supervised span starting before ``end`` is the only one that can overlap [start, end).
        j = bisect.bisect_left(span_starts, end) - 1
        if j >= 0 and rendered.supervised_spans[j][1] > start:
            labels[k] = token_id
    return EncodedConversation(input_ids=ids, labels=labels, prompt=rendered.text)


def pad_batch(
    input_ids: Sequence[Sequence[int] | Tensor],
    labels: Sequence[Sequence[int] | Tensor] | None = None,
    *,
    pad_id: int,
    side: Literal["right", "left"] = "right",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Pad rows of different lengths into tensors.

    The attention mask comes from the row lengths, not from ``ids != pad_id``: the pad id is ``<unk>`` (0), which can
    also occur inside a sequence.

    Arguments:
        input_ids: R rows of token ids, lengths L_r >= 1.
        labels: R rows with the same lengths, or None.
        pad_id: id written into padding positions (``tokenizer.pad_token_id``).
        side: "right" for training, "left" for batched generation.

    Returns:
        input_ids: (R, max L_r) long.
        attention_mask: (R, max L_r) long, 1 on real tokens.
        labels: (R, max L_r) long with IGNORE_INDEX on padding, or None.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not input_ids:
        raise ValueError("pad_batch: no rows")
    rows = [torch.as_tensor(r, dtype=torch.long) for r in input_ids]
    for r, row in enumerate(rows):
        if row.ndim != 1 or row.numel() == 0:
            raise ValueError(f"pad_batch: row {r} must be a non-empty 1-D sequence, got shape {tuple(row.shape)}")
    label_rows = None
    if labels is not None:
        if len(labels) != len(rows):
            raise ValueError(f"pad_batch: {len(labels)} label rows for {len(rows)} id rows")
        label_rows = [torch.as_tensor(r, dtype=torch.long) for r in labels]
        for r, (row, lab) in enumerate(zip(rows, label_rows)):
            if lab.shape != row.shape:
                raise ValueError(f"pad_batch: row {r} has {row.numel()} ids but labels of shape {tuple(lab.shape)}")

    length = max(row.numel() for row in rows)
    out_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    out_labels = None if label_rows is None else torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        cols = slice(0, row.numel()) if side == "right" else slice(length - row.numel(), length)
        out_ids[r, cols] = row
        mask[r, cols] = 1
        if out_labels is not None:
            out_labels[r, cols] = label_rows[r]
    return out_ids, mask, out_labels
