"""Helpers of the evaluation tests (no tests here): a tiny ReasonSeg split, a tiny model that emits ``[SEG]`` for
some prompts, and the reference metric written out literally (``intersectionAndUnionGPU`` + ``validate``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fixtures import rect_polygon, write_reason_seg_item
from read.config import load_config
from read.data.collate import ReadCollator
from read.model import ReadModel, build_read_model
from read.tokenizer import ReadTokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny_test.yaml"
WORDS = ["lamp", "dog", "red box", "cat on the mat", "tree", "window", "car", "cup", "chair", "book", "bird"]


def write_reason_seg_split(dataset_dir: Path, split: str = "val", n: int = 11, seed: int = 0) -> None:
    """``n`` ReasonSeg images of different sizes; every third has an ignore region; odd ones are long queries."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(28, 72)), int(rng.integers(28, 72))
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        shapes = [{"label": "target", "points": rect_polygon(x0, y0, x0 + w // 3, y0 + h // 3)}]
        if i % 3 == 0:
            shapes.append({"label": "ignore", "points": rect_polygon(x0, y0, x0 + 4, y0 + 4)})
        long = i % 2 == 1
        text = f"What in this picture is like a {WORDS[i % len(WORDS)]}?" if long else f"the {WORDS[i % len(WORDS)]}"
        write_reason_seg_item(
            dataset_dir, split, f"img{i:02d}", size=(h, w), text=[text], is_sentence=long, shapes=shapes, seed=100 + i
        )


def tiny_eval_model(tokenizer: ReadTokenizer, *overrides: str, seed: int = 0) -> ReadModel:
    """The tests' tiny random READ, sized for ``tokenizer``."""
    torch.manual_seed(seed)
    cfg = load_config(TINY_CONFIG, list(overrides))
    model = build_read_model(
        cfg, len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
    )
    return model.eval()


@torch.no_grad()
def emit_seg_for_some(model: ReadModel, tokenizer: ReadTokenizer, dataset, conv_type: str = "llava_v1") -> list[bool]:
    """Edit ``lm_head`` so that greedy decoding starts with ``[SEG]`` for about half of the dataset's prompts.

    A random model picks the same first token ``t`` for every prompt. The ``[SEG]`` row becomes ``t``'s row plus a
    direction along which the prompts' last hidden states split at their widest gap near the median, so ``[SEG]``
    wins for the prompts on one side, by a clear margin.

    Returns:
        per image, whether its first generated token is now ``[SEG]``.
    """
    cfg = model.config.model
    collator = ReadCollator(
        tokenizer, conv_type, clip_size=cfg.vision.image_size, sam_size=cfg.sam.image_size,
        num_image_tokens=cfg.vision.num_patches, max_length=None, padding_side="left",
    )  # fmt: skip
    batch = collator([dataset[i] for i in range(len(dataset))])
    feats = model.encode_images(batch.pixel_values)[batch.image_index]
    h = model.language_forward(batch.input_ids, batch.attention_mask, feats)[:, -1]  # (R, C) last prompt state
    weight = model.llava.lm_head.weight
    first = model.llava.lm_head(h).argmax(-1)
    t = int(first.mode().values)
    u = h[0] - h[1]
    s = h @ u
    order = s.sort().values
    n = len(order)
    lo, hi = n // 3, max(n // 3 + 1, (2 * n) // 3)
    gaps = order[lo + 1 : hi + 1] - order[lo:hi]
    k = lo + int(gaps.argmax())
    cut = (order[k] + order[k + 1]) / 2
    mean = h.mean(0)
    direction = u - (cut / (mean @ mean)) * mean  # h_i . direction ~ s_i - cut
    direction = direction / direction.norm()
    margin = (h @ direction).abs().min()
    weight[tokenizer.seg_token_id] = weight[t] + (2.0 / margin) * direction
    return (model.llava.lm_head(h).argmax(-1) == tokenizer.seg_token_id).tolist()


def reference_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """The reference's ``intersectionAndUnionGPU(pred, gt, K=2, ignore_index=255)`` foreground (I, U), literally:
    copy the ignore label into the prediction, histogram the agreeing pixels, union = area_pred + area_gt - I."""
    output = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.int64)).reshape(-1).clone()
    target = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.int64)).reshape(-1)
    output[target == 255] = 255
    intersection = output[output == target]
    area_i = torch.histc(intersection.float(), bins=2, min=0, max=1)
    area_o = torch.histc(output.float(), bins=2, min=0, max=1)
    area_t = torch.histc(target.float(), bins=2, min=0, max=1)
    area_u = area_o + area_t - area_i
    return int(area_i[1]), int(area_u[1])


def reference_scores(counts: list[tuple[int, int]]) -> tuple[float, float]:
    """``validate``'s gIoU (mean of I / (U + 1e-5), +1 where U == 0) and cIoU (sum I / (sum U + 1e-10))."""
    i = np.array([c[0] for c in counts], dtype=np.float64)
    u = np.array([c[1] for c in counts], dtype=np.float64)
    acc = i / (u + 1e-5)
    acc[u == 0] += 1.0
    return float(acc.mean()), float(i.sum() / (u.sum() + 1e-10))
