"""Tiny READ models and hand-built batches for the model tests (no tokenizer needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from read.batch import ReadBatch
from read.config import ReadConfig, load_config
from read.model import ReadModel, build_read_model

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny_test.yaml"

BASE_VOCAB = 100
SEG = BASE_VOCAB
IM_START = BASE_VOCAB + 1
IM_END = BASE_VOCAB + 2
IMAGE = BASE_VOCAB + 3
VOCAB = BASE_VOCAB + 4


def tiny_config(*overrides: str) -> ReadConfig:
    return load_config(TINY_CONFIG, list(overrides))


def tiny_model(*overrides: str, seed: int = 0) -> ReadModel:
    torch.manual_seed(seed)
    return build_read_model(tiny_config(*overrides), VOCAB, seg_token_id=SEG, image_token_id=IMAGE)


def row(num_patches: int, answer: list[int]) -> list[int]:
    """BOS, a few prompt tokens, the image block, more prompt tokens, then ``answer`` and EOS."""
    return [1, 5, 6, IM_START] + [IMAGE] * num_patches + [IM_END, 7, 8, 9] + answer + [2]


def make_batch(
    answers: list[list[int]],
    image_index: list[int],
    sizes: list[tuple[int, int]],
    cfg: ReadConfig,
    seed: int = 0,
    with_targets: bool = True,
) -> ReadBatch:
    """Right-padded batch whose rows end with the given answers; masks are random blobs per [SEG]."""
    g = torch.Generator().manual_seed(seed)
    n = cfg.model.vision.num_patches
    rows = [row(n, a) for a in answers]
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
    labels = ids.clone()
    labels[att == 0] = -100
    labels[:, : 4 + n + 4] = -100
    s_clip, s_sam = cfg.model.vision.image_size, cfg.model.sam.image_size
    resized = []
    for h, w in sizes:
        scale = s_sam / max(h, w)
        resized.append((int(h * scale + 0.5), int(w * scale + 0.5)))
    gt = None
    if with_targets:
        gt = []
        for r, a in enumerate(answers):
            h, w = sizes[image_index[r]]
            k = sum(t == SEG for t in a)
            m = torch.zeros(k, h, w, dtype=torch.uint8)
            for j in range(k):
                y0 = int(torch.randint(0, h // 2, (1,), generator=g))
                x0 = int(torch.randint(0, w // 2, (1,), generator=g))
                m[j, y0 : y0 + h // 3, x0 : x0 + w // 3] = 1
            gt.append(m)
    return ReadBatch(
        pixel_values=torch.randn(len(sizes), 3, s_clip, s_clip, generator=g),
        sam_images=torch.randn(len(sizes), 3, s_sam, s_sam, generator=g),
        input_ids=ids,
        attention_mask=att,
        image_index=torch.tensor(image_index),
        original_sizes=list(sizes),
        resized_sizes=resized,
        labels=labels if with_targets else None,
        gt_masks=gt,
    )
