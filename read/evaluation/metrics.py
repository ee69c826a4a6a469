"""Segmentation metrics shared by training validation and evaluation (docs/reference.md#metrics).

Conventions, as in LISA/READ/SESAME (``intersectionAndUnionGPU`` + ``validate``):

* A prediction is a binary mask (``logits > 0``, thresholded by the caller). Ground-truth pixels equal to
  ``IGNORE_VALUE`` (255) are excluded from both the prediction and the target.
* Per mask, the foreground intersection ``I`` and union ``U`` are counted.
* **gIoU** is the mean over masks (not over images) of ``I / (U + 1e-5)``, where a mask with ``U == 0`` (empty
  target predicted empty) scores 1.0.
* **cIoU** is ``sum I / (sum U + 1e-10)`` over all masks. When ``sum U == 0`` (no mask, or every target empty and
  predicted empty) this is 0.0, which is what the reference formula gives.
* **See** (FP-RefCOCO) is the accuracy of the predicted object existence against the ground truth; **Segment**
  is the cIoU over all queries, false premises included (a false positive only adds to the union).

Counts are exact Python integers, so sums do not drift with the split size (the reference sums in float32).
Without any mask every score is 0.0.

[FIX] Distributed evaluation: ``DistributedSampler`` pads the split with up to ``world_size - 1`` repeated
samples. :class:`SegmentationMeter` stores one record per mask key, so the repeated masks are dropped when the
per-process meters are merged (:meth:`SegmentationMeter.merge`, :func:`all_gather_meter`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

IGNORE_VALUE = 255
GIOU_EPS = 1e-5  # per-mask I / (U + 1e-5), as the reference
CIOU_EPS = 1e-10  # sum I / (sum U + 1e-10), as the reference

MaskLike = Tensor | np.ndarray


def _as_tensor(mask: MaskLike, name: str, device: torch.device | None) -> Tensor:
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        hint = "; threshold logits first (pred > 0)" if name == "pred" else ""
        raise ValueError(f"{name} must be a bool/integer mask, got dtype {mask.dtype}{hint}")
    return mask if device is None else mask.to(device)


def intersection_union(pred: MaskLike, gt: MaskLike, ignore_value: int = IGNORE_VALUE) -> tuple[int, int]:
    """Foreground intersection and union of one binary prediction against one target.

    Works on torch tensors (on any device) and numpy arrays, also mixed.

    Arguments:
        pred: (H, W) (or any shape) bool / integer mask with values in {0, 1}.
        gt: same shape, bool / integer: 1 = object, 0 = background, ``ignore_value`` = not scored.
        ignore_value: the "ignore" label in ``gt``.

    Returns:
        (I, U) as Python ints: pixels with pred = 1 and gt = 1, and pixels with pred = 1 or gt = 1, both
        counted over the non-ignored pixels only (the reference copies the ignore label into the prediction).
    """
    for name, mask in (("pred", pred), ("gt", gt)):
        if not isinstance(mask, (Tensor, np.ndarray)):
            raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(mask).__name__}")
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"pred and gt shapes differ: pred {tuple(pred.shape)} vs gt {tuple(gt.shape)}")
    device = pred.device if isinstance(pred, Tensor) else gt.device if isinstance(gt, Tensor) else None
    p = _as_tensor(pred, "pred", device)
    g = _as_tensor(gt, "gt", device)
    if p.dtype != torch.bool:
        bad = (p != 0) & (p != 1)
        if bool(bad.any()):
            raise ValueError(f"pred must be binary (0/1); found value {p[bad][0].item()}")
        p = p == 1
    if g.dtype == torch.bool:
        fg = g
    else:
        bad = (g != 0) & (g != 1) & (g != ignore_value)
        if bool(bad.any()):
            raise ValueError(f"gt values must be 0, 1 or {ignore_value}; found {g[bad][0].item()}")
        fg = g == 1
        p = p & (g != ignore_value)
    return int((p & fg).sum().item()), int((p | fg).sum().item())


def mask_iou(intersection: int, union: int) -> float:
    """Per-mask IoU of the gIoU average: ``I / (U + 1e-5)``, and 1.0 for an empty union."""
    if union == 0:
        return 1.0
    return intersection / (union + GIOU_EPS)


def cumulative_iou(intersection: int, union: int) -> float:
    """cIoU from summed counts: ``sum I / (sum U + 1e-10)`` (0.0 when ``sum U == 0``)."""
    return intersection / (union + CIOU_EPS)


class SegmentationMeter:
    """Accumulates per-mask (I, U) records; exact, mergeable across processes, de-duplicated by key.

    Give each mask a key that identifies it across processes (e.g. ``(image_id, query_index)``): a key seen
    again (the padding repeats of a ``DistributedSampler``) is dropped and counted in ``duplicates``; the first
    record wins. Masks updated with ``key=None`` are never de-duplicated.

    Example::

        meter = SegmentationMeter()
        for key, logits, gt in samples:
            meter.update(logits > 0, gt, key=key)
        scores = all_gather_meter(meter).compute()  # {"giou": ..., "ciou": ..., ...}
    """

    def __init__(self) -> None:
        self._keyed: dict[Hashable, tuple[int, int]] = {}
        self._unkeyed: list[tuple[int, int]] = []
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._keyed) + len(self._unkeyed)

    def add(self, intersection: int, union: int, key: Hashable | None = None) -> None:
        """Record already-counted (I, U) of one mask."""
        if intersection < 0 or union < intersection:
            raise ValueError(f"need 0 <= intersection <= union, got I={intersection}, U={union} (key {key!r})")
        record = (int(intersection), int(union))
        if key is None:
            self._unkeyed.append(record)
        elif key in self._keyed:
            self.duplicates += 1
        else:
            self._keyed[key] = record

    def update(self, pred: MaskLike, gt: MaskLike, key: Hashable | None = None) -> tuple[int, int]:
        """Score one mask (see :func:`intersection_union`) and record it.

        Returns:
            its (I, U).
        """
        i, u = intersection_union(pred, gt)
        self.add(i, u, key)
        return i, u

    def merge(self, other: "SegmentationMeter") -> "SegmentationMeter":
        """Add the records of ``other`` into this meter (keys already present are dropped). Returns self."""
        self.duplicates += other.duplicates
        for key, (i, u) in other._keyed.items():
            self.add(i, u, key)
        for i, u in other._unkeyed:
            self.add(i, u)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain, picklable state (for ``all_gather_object``); keys are kept as given."""
        return {
            "keys": list(self._keyed),
            "records": [list(r) for r in self._keyed.values()],
            "unkeyed": [list(r) for r in self._unkeyed],
            "duplicates": self.duplicates,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SegmentationMeter":
        """Rebuild a meter written by :meth:`state_dict`."""
        if len(state["keys"]) != len(state["records"]):
            raise ValueError(f"meter state: {len(state['keys'])} keys for {len(state['records'])} records")
        meter = cls()
        for key, (i, u) in zip(state["keys"], state["records"]):
            meter.add(i, u, key)
        for i, u in state["unkeyed"]:
            meter.add(i, u)
        meter.duplicates += int(state["duplicates"])
        return meter

    def records(self) -> list[tuple[int, int]]:
        """All kept (I, U) records: keyed ones in insertion order, then the unkeyed ones."""
        return list(self._keyed.values()) + list(self._unkeyed)

    def compute(self) -> dict[str, float | int]:
        """Scores over the kept masks.

        Returns:
            {"giou", "ciou" (floats), "num_masks", "intersection", "union" (summed counts), "duplicates"}.
        """
        records = self.records()
        total_i = sum(i for i, _ in records)
        total_u = sum(u for _, u in records)
        # fsum is exactly rounded, so the result does not depend on the order in which records were merged
        giou = math.fsum(mask_iou(i, u) for i, u in records) / len(records) if records else 0.0
        return {
            "giou": giou,
            "ciou": cumulative_iou(total_i, total_u),
            "num_masks": len(records),
            "intersection": total_i,
            "union": total_u,
            "duplicates": self.duplicates,
        }


def segmentation_scores(
    preds: Sequence[MaskLike], gts: Sequence[MaskLike], keys: Sequence[Hashable] | None = None
) -> dict[str, float | int]:
    """gIoU / cIoU over lists of binary masks (one entry per query); see :meth:`SegmentationMeter.compute`.

    Arguments:
        preds: M binary masks.
        gts: M targets (0 / 1 / 255), each the shape of its prediction.
        keys: optional M keys; repeated keys are scored once.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth masks")
    if keys is not None and len(keys) != len(preds):
        raise ValueError(f"{len(keys)} keys for {len(preds)} masks")
    meter = SegmentationMeter()
    for j, (p, g) in enumerate(zip(preds, gts)):
        meter.update(p, g, None if keys is None else keys[j])
    return meter.compute()


def existence_accuracy(pred_exists: Iterable[bool], gt_exists: Iterable[bool]) -> float:
    """FP-RefCOCO "See": the fraction of queries whose predicted existence equals the ground truth.

    Arguments:
        pred_exists: per query, whether the model answered with a ``[SEG]`` and a non-empty mask.
        gt_exists: per query, whether the referred object is in the image (False for false premises).

    Returns:
        accuracy in [0, 1]; 0.0 for no queries.
    """
    pred, gt = [bool(x) for x in pred_exists], [bool(x) for x in gt_exists]
    if len(pred) != len(gt):
        raise ValueError(f"{len(pred)} predicted existence flags for {len(gt)} ground-truth flags")
    if not pred:
        return 0.0
    return sum(p == g for p, g in zip(pred, gt)) / len(pred)


def all_gather_meter(meter: SegmentationMeter, group: Any = None) -> SegmentationMeter:
    """Merge the meters of all processes (de-duplicated by key); every rank gets the same merged meter.

    Without an initialised ``torch.distributed`` process group this returns ``meter`` itself. Ranks are merged
    in rank order, so a key repeated across ranks keeps the record of the lowest rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return meter
    states: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, meter.state_dict(), group=group)
    merged = SegmentationMeter()
    for state in states:
        merged.merge(SegmentationMeter.from_state_dict(state))
    return merged
