"""Samples -> :class:`read.batch.ReadBatch`: image preprocessing, conversation tokenisation, padding.

Every image of the batch contributes one or more query rows. A row whose encoded length exceeds
``data.model_max_length`` is dropped and counted (never truncated, so a ``[SEG]`` cannot be cut off); an image left
without rows is dropped too. The number of masks of a row must equal its number of ``[SEG]`` tokens (teacher-forced
rows); rows of question-only prompts (generation) carry their ground truth instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from read.batch import ReadBatch
from read.config import ReadConfig
from read.constants import IGNORE_INDEX
from read.data.conversation import ConversationTemplate, get_template
from read.data.sample import ASSISTANT, DataError, Query, Sample
from read.data.text import EncodedConversation, SampleTooLong, encode_conversation, pad_batch
from read.data.transforms import ImagePreprocessor
from read.tokenizer import ReadTokenizer

logger = logging.getLogger(__name__)

__all__ = ["EmptyBatchError", "ReadCollator", "is_generation_prompt"]


class EmptyBatchError(DataError):
    """Every row of a batch was dropped."""


def is_generation_prompt(query: Query) -> bool:
    """True when the conversation ends with an open assistant turn."""
    role, text = query.messages[-1]
    return role == ASSISTANT and not text


class ReadCollator:
    """Builds :class:`ReadBatch` objects from :class:`Sample` lists (use as a DataLoader ``collate_fn``).

    Arguments:
        tokenizer: the READ tokenizer.
        template: conversation template (name or object), e.g. "llava_v1".
        clip_size: S_clip, ``model.vision.image_size``.
        sam_size: S_sam, ``model.sam.image_size``.
        num_image_tokens: image placeholders per image, ``model.vision.num_patches``.
        max_length: longest allowed row (tokens, placeholders included); None: unlimited.
        padding_side: "right" (training, teacher forcing), "left" (batched generation) or None: left when every
            row is a generation prompt, else right.
        strict: raise on a dropped row instead of counting it.
        query_targets: also build ``ReadBatch.query_ids`` (the tokens of each row's ``meta["query"]`` for rows with a
            ``[SEG]``), for the optional query-word loss (``loss.query_weight > 0``).
    """

    def __init__(
        self,
        tokenizer: ReadTokenizer,
        template: ConversationTemplate | str,
        *,
        clip_size: int,
        sam_size: int,
        num_image_tokens: int,
        max_length: int | None,
        padding_side: Literal["right", "left"] | None = None,
        strict: bool = False,
        query_targets: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        self.images = ImagePreprocessor(clip_size, sam_size)
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.padding_side = padding_side
        self.strict = strict
        self.query_targets = query_targets
        self.stats: Counter[str] = Counter()  # dropped rows / images, per process
        # Encodings cached on a Query are reused only by a collator with the same settings.
        self._cache_key = (id(tokenizer), self.template.name, num_image_tokens, max_length)

    @classmethod
    def from_config(
        cls,
        cfg: ReadConfig,
        tokenizer: ReadTokenizer,
        *,
        template: str | None = None,
        padding_side: Literal["right", "left"] | None = None,
        inference: bool = False,
    ) -> "ReadCollator":
        """The collator of a model config (a :class:`ReadConfig`): sizes from ``cfg.model``.

        For training (default) the template, length limit and strictness come from ``cfg.data``, and query targets
        are built when ``loss.query_weight > 0``. With ``inference`` (evaluation, chat) no row is ever dropped
        (no length limit, and a row that cannot be encoded raises) and no query targets are built.
        """
        return cls(
            tokenizer,
            template or cfg.data.conv_type,
            clip_size=cfg.model.vision.image_size,
            sam_size=cfg.model.sam.image_size,
            num_image_tokens=cfg.model.vision.num_patches,
            max_length=None if inference else cfg.data.model_max_length,
            padding_side=padding_side,
            strict=True if inference else cfg.data.strict,
            query_targets=not inference and cfg.loss.query_weight > 0,
        )

    # ------------------------------------------------------------------------------------------------------

    def encode_query(self, query: Query, image_path: str = "") -> EncodedConversation:
        """Tokenise one row and check its masks against its ``[SEG]`` tokens (cached in ``query.encoded``).

        Raises:
            SampleTooLong: the row is longer than ``max_length``.
            DataError: the conversation is malformed or its masks do not match its ``[SEG]`` count.
        """
        if query.encoded is not None and query.encoded[0] == self._cache_key:
            return query.encoded[1]
        try:
            enc = encode_conversation(
                self.tokenizer, self.template, query.messages, self.num_image_tokens, self.max_length
            )
        except SampleTooLong:
            raise
        except ValueError as e:
            raise DataError(f"{image_path}: bad conversation ({e})") from e
        if query.masks.ndim != 3:
            raise DataError(f"{image_path}: masks must be (k, H, W), got shape {query.masks.shape}")
        num_seg = sum(t == self.tokenizer.seg_token_id for t in enc.input_ids)
        if not is_generation_prompt(query) and query.masks.shape[0] != num_seg:
            raise DataError(
                f"{image_path}: row has {num_seg} [SEG] token(s) but {query.masks.shape[0]} mask(s); "
                f"query meta {query.meta}"
            )
        query.encoded = (self._cache_key, enc)
        return enc

    def encode_sample(self, sample: Sample) -> Sample:
        """Tokenise every row of ``sample``; rows that are too long are dropped and counted (in place).

        Returns:
            The sample, possibly with fewer rows (none if all were too long).
        """
        kept = []
        for q in sample.queries:
            try:
                self.encode_query(q, sample.image_path)
            except SampleTooLong as e:
                self.stats["rows_too_long"] += 1
                if self.strict:
                    raise DataError(f"{sample.image_path}: {e}") from e
                logger.warning("dropping a row of %s (%s): %s", sample.image_path, sample.dataset, e)
                continue
            kept.append(q)
        sample.queries = kept
        return sample

    def __call__(self, samples: Sequence[Sample]) -> ReadBatch:
        """Collate samples into a batch.

        Returns:
            A validated :class:`ReadBatch` with B images (those with at least one row) and R rows. ``labels`` is None
            when every row is a generation prompt.

        Raises:
            EmptyBatchError: every row was dropped.
        """
        pixel_values, sam_images, original_sizes, resized_sizes = [], [], [], []
        ids, labels, masks, meta, image_index = [], [], [], [], []
        generation = []
        for sample in samples:
            self.encode_sample(sample)
            if not sample.queries:
                self.stats["images_dropped"] += 1
                continue
            b = len(pixel_values)
            views = self.images(sample.image)
            pixel_values.append(views.pixel_values)
            sam_images.append(views.sam_image)
            original_sizes.append(views.original_size)
            resized_sizes.append(views.resized_size)
            for q in sample.queries:
                if q.masks.shape[1:] != views.original_size:
                    raise DataError(
                        f"{sample.image_path}: masks are {q.masks.shape[1:]} but the image is {views.original_size}"
                    )
                enc = self.encode_query(q, sample.image_path)  # cached by encode_sample
                ids.append(enc.input_ids)
                labels.append(enc.labels)
                masks.append(torch.tensor(q.masks, dtype=torch.uint8))  # a copy: rows may share one array
                image_index.append(b)
                generation.append(is_generation_prompt(q))
                meta.append(
                    {**q.meta, "image_path": sample.image_path, "dataset": sample.dataset, "prompt": enc.prompt}
                )
        if not ids:
            raise EmptyBatchError(f"every row of the batch was dropped ({[s.image_path for s in samples]})")
        side = self.padding_side or ("left" if all(generation) else "right")
        input_ids, attention_mask, label_tensor = pad_batch(ids, labels, pad_id=self.tokenizer.pad_token_id, side=side)
        query_ids = self._query_ids(meta, masks, generation) if self.query_targets else None
        batch = ReadBatch(
            pixel_values=torch.stack(pixel_values),
            sam_images=torch.stack(sam_images),
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_index=torch.tensor(image_index, dtype=torch.long),
            original_sizes=original_sizes,
            resized_sizes=resized_sizes,
            labels=None if all(generation) else label_tensor,
            gt_masks=masks,
            meta=meta,
            query_ids=query_ids,
            skipped_samples=sum(s.skipped for s in samples),
        )
        batch.validate()
        return batch

    def _query_ids(self, meta: list[dict], masks: list[Tensor], generation: list[bool]) -> Tensor:
        """(R, Q) tokens of each row's query text (no ``<s>``), IGNORE_INDEX-padded; all IGNORE_INDEX for rows without
        ``[SEG]`` or without a string ``meta["query"]``."""
        rows: list[list[int]] = []
        for m, mask, gen in zip(meta, masks, generation):
            text = m.get("query")
            ok = not gen and mask.shape[0] > 0 and isinstance(text, str) and text.strip()
            rows.append(self.tokenizer.encode(text.strip(), add_bos=False) if ok else [])
        out = torch.full((len(rows), max(1, max(len(r) for r in rows))), IGNORE_INDEX, dtype=torch.long)
        for r, ids in enumerate(rows):
            out[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
