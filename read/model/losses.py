"""Losses of LISA/READ (docs/reference.md#losses): the language-model cross-entropy and the mask losses, and the
optional query-word loss (not in READ; see :func:`query_word_loss`); :func:`read_losses` combines them.

Both mask helpers return ``sum over masks / (num_masks + 1e-8)``; the model divides by the total number of masks
in the micro-batch, so the result is the mean over masks. Images without masks add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from read.config import LossConfig
from read.constants import IGNORE_INDEX

_DICE_SCALE = 1000.0
_DICE_EPS = 1e-6


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss with the reference's scale trick.

    Arguments:
        logits: (M, H, W) mask logits.
        targets: (M, H, W) binary targets (0/1, float).
        num_masks: normaliser (usually M).

    Returns:
        scalar: ``sum_m (1 - (2 I_m/s + eps) / (P_m/s + T_m/s + eps)) / (num_masks + 1e-8)`` with s = 1000 and
        eps = 1e-6, i.e. ``1 - (2I + 1e-3) / (P + T + 1e-3)`` per mask.
    """
    probs = logits.float().sigmoid().flatten(1) / _DICE_SCALE  # (M, HW)
    t = targets.float().flatten(1) / _DICE_SCALE
    numerator = 2 * (probs * targets.float().flatten(1)).sum(-1)
    denominator = probs.sum(-1) + t.sum(-1)
    loss = 1 - (numerator + _DICE_EPS) / (denominator + _DICE_EPS)  # (M,)
    return loss.sum() / (num_masks + 1e-8)


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean binary cross-entropy with logits, summed over masks and normalised.

    Arguments:
        logits: (M, H, W) mask logits.
        targets: (M, H, W) binary targets.
        num_masks: normaliser (usually M).

    Returns:
        scalar: ``sum_m mean_pixels BCE(logits_m, targets_m) / (num_masks + 1e-8)``.
    """
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return loss.flatten(1).mean(1).sum() / (num_masks + 1e-8)


def mask_losses(pred_masks: list[Tensor], gt_masks: list[Tensor]) -> tuple[Tensor, Tensor, int]:
    """BCE and Dice over all masks of a micro-batch, each the mean over masks.

    Arguments:
        pred_masks: per image (or per row), (k, H, W) logits.
        gt_masks: matching (k, H, W) targets; values other than 1 (0 and 255 = ignore) count as background,
            as in the reference's training.

    Returns:
        (bce, dice, num_masks); both losses are 0 (with a graph to the logits) when there are no masks.
    """
    bce_sum: Tensor | None = None
    dice_sum: Tensor | None = None
    total = 0
    for pred, gt in zip(pred_masks, gt_masks, strict=True):
        if pred.shape != gt.shape:
            raise ValueError(f"predicted masks {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ")
        k = pred.shape[0]
        if k == 0:
            continue
        target = (gt == 1).float()
        bce = sigmoid_ce_loss(pred, target, k) * k
        dice = dice_loss(pred, target, k) * k
        bce_sum = bce if bce_sum is None else bce_sum + bce
        dice_sum = dice if dice_sum is None else dice_sum + dice
        total += k
    if bce_sum is None or dice_sum is None:
        if not pred_masks:
            raise ValueError("mask_losses needs at least one (possibly empty) prediction tensor")
        zero = sum(p.sum() * 0.0 for p in pred_masks)
        return zero, zero, 0
    return bce_sum / (total + 1e-8), dice_sum / (total + 1e-8), total


def query_word_loss(seg_logits: Tensor, query_ids: Tensor) -> tuple[Tensor, int]:
    """Auxiliary loss, not part of READ or LISA: each ``[SEG]`` prompt, read by a linear head over the vocabulary
    (``ReadModel.query_head``), should put its mass on the words of the query that ``[SEG]`` answers.

    A pre-trained LLaVA's ``[SEG]`` state already carries its question; a language model trained from random
    weights has no reason to route the question there, and the mask loss alone, which reaches the LM only through
    SAM, teaches it too slowly (the synthetic quickstart stays at a query-blind score for thousands of steps without
    it). Weighted by ``loss.query_weight`` (0, the paper's loss, in every released-model config).

    Arguments:
        seg_logits: (K, V) vocabulary logits of the K ``[SEG]`` prompts.
        query_ids: (K, Q) token ids of each ``[SEG]``'s query, IGNORE_INDEX where there is none (padding, or a
            ``[SEG]`` without a known query).

    Returns:
        (loss, count): the mean over the ``[SEG]`` tokens with at least one query token of the mean negative
        log-likelihood of their query tokens, and how many ``[SEG]`` tokens that was. 0 (with a graph) when none.
    """
    if seg_logits.ndim != 2 or query_ids.ndim != 2 or seg_logits.shape[0] != query_ids.shape[0]:
        raise ValueError(
            f"query_word_loss: expected (K, V) logits and (K, Q) ids, got {tuple(seg_logits.shape)} and "
            f"{tuple(query_ids.shape)}"
        )
    valid = query_ids != IGNORE_INDEX  # (K, Q)
    counts = valid.sum(1)  # (K,)
    has_query = counts > 0
    if not bool(has_query.any()):
        return seg_logits.sum() * 0.0, 0
    log_probs = F.log_softmax(seg_logits.float(), dim=-1)  # (K, V)
    picked = log_probs.gather(1, query_ids.clamp(min=0))  # (K, Q)
    per_seg = -(picked * valid).sum(1) / counts.clamp(min=1)  # (K,)
    return per_seg[has_query].mean(), int(has_query.sum())


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Token-averaged next-token cross-entropy over the positions whose label is not IGNORE_INDEX.

    Arguments:
        logits: (R, L, V), columns that are no class already -inf (``read.model.read_model.text_only_logits``);
            labels: (R, L).
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not bool((shift_labels != IGNORE_INDEX).any()):
        return shift_logits.sum() * 0.0
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


@dataclass
class ReadLosses:
    """The terms of the training loss (None where their inputs were not given).

    Attributes:
        total: the weighted sum of the terms that were computed (None when none was).
        ce: language-model cross-entropy; bce, dice: mask losses (mean over masks); query: query-word loss.
        num_masks: masks that the mask losses averaged over.
    """

    total: Tensor | None
    ce: Tensor | None
    bce: Tensor | None
    dice: Tensor | None
    query: Tensor | None
    num_masks: int


def read_losses(
    cfg: LossConfig,
    text_logits: Tensor | None,
    labels: Tensor | None,
    pred_masks: list[Tensor],
    gt_masks: list[Tensor] | None,
    query_logits: Tensor | None = None,
    query_ids: Tensor | None = None,
) -> ReadLosses:
    """READ's loss, ``ce_weight * CE + bce_weight * BCE + dice_weight * Dice`` (+ ``query_weight * query``).

    Arguments:
        cfg: the loss weights.
        text_logits: (R, L, V) LM logits with the non-word columns at -inf (``read.model.read_model.text_only_logits``),
            or None without labels; labels: (R, L) or None (no CE term).
        pred_masks: per row, (k_r, H, W) mask logits; gt_masks: per row, (k_r, H, W) targets, or None (no mask
            terms). The counts must agree row by row.
        query_logits: (K, V) query-head logits of the K prompts (row-major), or None (no query term);
            query_ids: (R, Q) each row's query tokens.
    """
    ce = bce = dice = query = None
    num_masks = 0
    total: Tensor | None = None
    if labels is not None:
        ce = causal_lm_loss(text_logits, labels)
        total = cfg.ce_weight * ce
    if gt_masks is not None:
        for r, (p, g) in enumerate(zip(pred_masks, gt_masks)):
            if p.shape[0] != g.shape[0]:
                raise ValueError(
                    f"row {r}: {p.shape[0]} [SEG] token(s) in the input but {g.shape[0]} ground-truth mask(s)"
                )
        bce, dice, num_masks = mask_losses(pred_masks, gt_masks)
        mask_total = cfg.bce_weight * bce + cfg.dice_weight * dice
        total = mask_total if total is None else total + mask_total
    if query_logits is not None:
        per_row = torch.tensor([m.shape[0] for m in pred_masks], device=query_ids.device)  # [SEG]s per row
        ids = query_ids.repeat_interleave(per_row, dim=0)  # (K, Q), in the prompts' row-major order
        query, _ = query_word_loss(query_logits, ids)
        total = cfg.query_weight * query if total is None else total + cfg.query_weight * query
    return ReadLosses(total, ce, bce, dice, query, num_masks)
