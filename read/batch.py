"""The batch the READ model consumes: B images, R >= B query rows (each row belongs to one image)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class ReadBatch:
    """A collated batch.

    Attributes:
        pixel_values: (B, 3, S_clip, S_clip) CLIP-normalised, centre-cropped images.
        sam_images: (B, 3, S_sam, S_sam) SAM-normalised images, longest side resized to S_sam, zero-padded
            right/bottom.
        input_ids: (R, L) token ids; image patches are ``image_token_id`` placeholders.
        attention_mask: (R, L) 1 for real tokens, 0 for padding.
        image_index: (R,) index into the B images for each row.
        original_sizes: B pairs (H, W) of the original images.
        resized_sizes: B pairs (h, w) of the images after SAM's longest-side resize (before padding).
        labels: (R, L) LM targets with IGNORE_INDEX where no loss is taken; None at inference.
        gt_masks: R tensors (k_r, H, W) uint8 with 1 = object, 0 = background, 255 = ignore (evaluation only;
            training treats it as background); k_r equals the number of ``[SEG]`` tokens in row r for
            teacher-forced rows. Rows of question-only prompts (generation) carry their query's ground truth instead
            (k_r = 1, all zero for a false premise). None at inference.
        meta: R dicts with per-row metadata (image path, question, dataset name, ...), never used by the model.
        query_ids: (R, Q) token ids of each row's query text (IGNORE_INDEX padding; a row without a query is all
            IGNORE_INDEX), for the optional query-word loss (``loss.query_weight``); None otherwise.
        skipped_samples: bad training samples drawn and skipped while this batch's samples were drawn (never used
            by the model; the training loop reports it).
    """

    pixel_values: Tensor
    sam_images: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    image_index: Tensor
    original_sizes: list[tuple[int, int]]
    resized_sizes: list[tuple[int, int]]
    labels: Tensor | None = None
    gt_masks: list[Tensor] | None = None
    meta: list[dict[str, Any]] = field(default_factory=list)
    query_ids: Tensor | None = None
    skipped_samples: int = 0

    @property
    def num_images(self) -> int:
        return self.pixel_values.shape[0]

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ReadBatch":
        """Move tensors to ``device``; floating image tensors are cast to ``dtype`` when given."""

        def img(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

        return replace(
            self,
            pixel_values=img(self.pixel_values),
            sam_images=img(self.sam_images),
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            image_index=self.image_index.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            gt_masks=None if self.gt_masks is None else [m.to(device) for m in self.gt_masks],
            query_ids=None if self.query_ids is None else self.query_ids.to(device),
        )

    def validate(self) -> None:
        """Check the cross-field invariants; raises ValueError with the mismatching sizes."""
        b, r = self.num_images, self.num_rows
        if self.sam_images.shape[0] != b:
            raise ValueError(f"sam_images has {self.sam_images.shape[0]} images, pixel_values has {b}")
        if len(self.original_sizes) != b or len(self.resized_sizes) != b:
            raise ValueError(
                f"expected {b} original/resized sizes, got {len(self.original_sizes)}/{len(self.resized_sizes)}"
            )
        if self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(self.attention_mask.shape)} != input_ids {tuple(self.input_ids.shape)}"
            )
        if self.image_index.shape != (r,):
            raise ValueError(f"image_index must have shape ({r},), got {tuple(self.image_index.shape)}")
        if r and (int(self.image_index.min()) < 0 or int(self.image_index.max()) >= b):
            raise ValueError(f"image_index values must lie in [0, {b}), got {self.image_index.tolist()}")
        if self.labels is not None and self.labels.shape != self.input_ids.shape:
            raise ValueError(f"labels {tuple(self.labels.shape)} != input_ids {tuple(self.input_ids.shape)}")
        if self.gt_masks is not None and len(self.gt_masks) != r:
            raise ValueError(f"gt_masks has {len(self.gt_masks)} entries for {r} rows")
        if self.query_ids is not None and (self.query_ids.ndim != 2 or self.query_ids.shape[0] != r):
            raise ValueError(f"query_ids must have shape ({r}, Q), got {tuple(self.query_ids.shape)}")
