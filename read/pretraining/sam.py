"""Pre-training the tiny SAM as SAM is trained: segment one object from point and box prompts.

Every step draws ``batch_size`` scenes and segments every object of each from a prompt of one kind for the whole
step (``prompt_mix``): points (1..``max_positive`` inside the object, 0..``max_negative`` outside, half of those on
other objects, padded with SAM's "not a point" label -1), a box (the object's box, each side moved by up to 10 % of
its length), or a box with points. The loss is READ's mask loss (BCE and Dice) on the single-mask output that READ
decodes (:func:`read.model.sam.decode_masks_batched`); the image encoder, prompt encoder and mask decoder all train.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import Tensor

from read.data.transforms import sam_preprocess
from read.evaluation.metrics import intersection_union, mask_iou
from read.model.losses import mask_losses
from read.model.sam import decode_masks_batched
from read.pretraining.config import SamStage
from read.pretraining.scenes import STREAMS, Scene, SceneStream

logger = logging.getLogger(__name__)

__all__ = ["PROMPT_KINDS", "draw_prompt", "evaluate_sam", "train_sam"]

PROMPT_KINDS = ("points", "box", "box_points")


def _sample_pixels(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) float (x, y) of pixels drawn uniformly from ``mask`` (with replacement)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0 or n == 0:
        return np.zeros((n, 2), dtype=np.float32)
    pick = rng.integers(len(xs), size=n)
    return np.stack([xs[pick], ys[pick]], 1).astype(np.float32)


def draw_prompt(
    scene: Scene, target: int, kind: str, stage: SamStage, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A prompt for object ``target`` of ``scene``.

    Returns:
        coords (P, 2) float (x, y) pixels, labels (P,) in {1, 0, -1} with P = max_positive + max_negative (-1 pads;
        P = 0 for a box alone), and the box (4,) (x0, y0, x1, y1) or None.
    """
    mask = scene.objects[target].visible.astype(bool)
    p = stage.max_positive + stage.max_negative
    coords = np.zeros((p, 2), dtype=np.float32)
    labels = np.full(p, -1, dtype=np.int64)
    box = None
    if kind in ("box", "box_points"):
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        w, h = x1 - x0 + 1, y1 - y0 + 1
        jitter = rng.uniform(-0.1, 0.1, size=4) * np.array([w, h, w, h])
        size = mask.shape[0]
        box = np.clip(np.array([x0, y0, x1, y1], dtype=np.float32) + jitter, 0, size - 1).astype(np.float32)
    if kind == "box":
        return coords[:0], labels[:0], box
    n_pos = int(rng.integers(1, stage.max_positive + 1))
    n_neg = int(rng.integers(0, stage.max_negative + 1))
    if kind == "box_points":
        n_pos, n_neg = min(n_pos, 2), min(n_neg, 2)
    others = np.zeros_like(mask)
    for j, o in enumerate(scene.objects):
        if j != target:
            others |= o.visible.astype(bool)
    on_others = int(rng.binomial(n_neg, 0.5)) if others.any() else 0
    coords[:n_pos] = _sample_pixels(mask, n_pos, rng)
    coords[n_pos : n_pos + on_others] = _sample_pixels(others, on_others, rng)
    coords[n_pos + on_others : n_pos + n_neg] = _sample_pixels(~mask & ~others, n_neg - on_others, rng)
    labels[:n_pos] = 1
    labels[n_pos : n_pos + n_neg] = 0
    return coords, labels, box


def _prompt_batch(
    sam: Sam, scenes: list[Scene], kind: str, stage: SamStage, rngs: list[np.random.Generator]
) -> tuple[list[Tensor], list[Tensor]]:
    """Masks predicted for every object of ``scenes`` and their ground truth (lists of (1, H, W))."""
    size = sam.image_encoder.img_size
    images, resized = [], []
    for s in scenes:
        x, r = sam_preprocess(s.image, size)
        images.append(x)
        resized.append(r)
    embeddings = sam.image_encoder(torch.stack(images))  # (B, C, h, w)
    index, coords, labels, boxes, gts, originals, sizes = [], [], [], [], [], [], []
    for b, (scene, rng) in enumerate(zip(scenes, rngs)):
        h, w = scene.image.shape[:2]
        scale = np.array([resized[b][1] / w, resized[b][0] / h], dtype=np.float32)
        for t, obj in enumerate(scene.objects):
            c, lab, box = draw_prompt(scene, t, kind, stage, rng)
            index.append(b)
            coords.append(torch.from_numpy(c * scale))
            labels.append(torch.from_numpy(lab))
            if box is not None:
                boxes.append(torch.from_numpy(box * np.tile(scale, 2)))
            gts.append(torch.from_numpy(obj.visible.astype(np.uint8))[None])
            originals.append((h, w))
            sizes.append(resized[b])
    point_coords = torch.stack(coords) if kind != "box" else None
    point_labels = torch.stack(labels) if kind != "box" else None
    masks = decode_masks_batched(sam, embeddings[torch.tensor(index)], None, point_coords, point_labels, sizes,
                                 originals, boxes=torch.stack(boxes) if boxes else None)  # fmt: skip
    return [m[None] for m in masks], gts


def train_sam(sam: Sam, stage: SamStage, stream: SceneStream, seed: int, log_every: int = 100) -> list[dict[str, Any]]:
    """Train every part of ``sam`` in place; scenes of step ``s`` are ``s * batch_size ...`` of ``stream``, prompts
    drawn with ``numpy.random.default_rng([seed, stream, scene index])`` and the kind with ``[seed, stream, -1 - s]``.

    Returns:
        the logged rows: {"step", "loss", "iou", "lr", "seconds"}.
    """
    params = list(sam.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.95), weight_decay=stage.weight_decay)
    warm = max(1, stage.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (stage.steps - s) / max(1, stage.steps - warm))
    )
    kinds = sorted(stage.prompt_mix)
    weights = np.asarray([stage.prompt_mix[k] for k in kinds], dtype=np.float64)
    stream_id = STREAMS["sam"]
    sam.train()
    history: list[dict[str, Any]] = []
    running = [0.0, 0, 0]
    start = time.time()
    for step in range(stage.steps):
        kind = kinds[
            int(np.random.default_rng([seed, stream_id, 10**9 + step]).choice(len(kinds), p=weights / weights.sum()))
        ]
        ids = [step * stage.batch_size + i for i in range(stage.batch_size)]
        scenes = [stream[i] for i in ids]
        rngs = [np.random.default_rng([seed, stream_id, i]) for i in ids]
        preds, gts = _prompt_batch(sam, scenes, kind, stage, rngs)
        bce, dice, _ = mask_losses(preds, gts)
        loss = stage.bce_weight * bce + stage.dice_weight * dice
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for p, g in zip(preds, gts):
                i, u = intersection_union((p[0] > 0).numpy(), g[0].numpy())
                running[1] += i
                running[2] += u
        running[0] += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == stage.steps:
            n = (step % log_every) + 1
            row = {"step": step + 1, "loss": running[0] / n, "iou": mask_iou(running[1], running[2]),
                   "lr": scheduler.get_last_lr()[0], "seconds": time.time() - start}  # fmt: skip
            history.append(row)
            logger.info("sam step %d/%d loss %.4f cIoU %.3f (%.0f s)", step + 1, stage.steps, row["loss"], row["iou"],
                        row["seconds"])  # fmt: skip
            running = [0.0, 0, 0]
    return history


@torch.no_grad()
def evaluate_sam(sam: Sam, stage: SamStage, stream: SceneStream, num_scenes: int, seed: int) -> dict[str, Any]:
    """Mean IoU per object on held-out scenes for each prompt kind, and for one positive point alone."""
    sam.eval()
    single = SamStage(**{**stage.__dict__, "max_positive": 1, "max_negative": 0})
    out: dict[str, Any] = {}
    for name, kind, st in [("one_point", "points", single)] + [(k, k, stage) for k in PROMPT_KINDS]:
        ious = []
        for start in range(0, num_scenes, 16):
            ids = list(range(start, min(num_scenes, start + 16)))
            scenes = [stream[i] for i in ids]
            rngs = [np.random.default_rng([seed, STREAMS["eval"], i]) for i in ids]
            preds, gts = _prompt_batch(sam, scenes, kind, st, rngs)
            for p, g in zip(preds, gts):
                ious.append(mask_iou(*intersection_union((p[0] > 0).numpy(), g[0].numpy())))
        out[name] = {"miou": float(np.mean(ious)), "objects": len(ious)}
    sam.train()
    return out
