"""Scores from per-query records, and their plain-text table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from read.evaluation.config import EvalResult
from read.evaluation.metrics import SegmentationMeter, existence_accuracy
from read.evaluation.records import QueryRecord


def summarize(records: Sequence[QueryRecord], mode: str) -> dict[str, Any]:
    """Scores from per-query records.

    Returns:
        {"overall": {...}, ["short": {...}, "long": {...}] (when the records carry ``is_sentence``),
        "see": existence accuracy (generation mode, else None), "num_images", "num_queries", "num_scored"}. Each
        group is ``SegmentationMeter.compute()`` (giou, ciou, num_masks, intersection, union, duplicates).
    """
    scored = [r for r in records if r.scored]
    groups: dict[str, list[dict[str, Any]]] = {"overall": scored}
    if any(r.subset is not None for r in scored):
        groups["short"] = [r for r in scored if r.subset == "short"]
        groups["long"] = [r for r in scored if r.subset == "long"]
    out: dict[str, Any] = {}
    for name, group in groups.items():
        meter = SegmentationMeter()
        for r in group:
            meter.add(r.intersection, r.union, key=r.key)
        out[name] = meter.compute()
    see = None
    if mode == "generate":
        known = [r for r in records if r.gt_exists is not None]
        see = existence_accuracy([r.pred_exists for r in known], [r.gt_exists for r in known])
    out["see"] = see
    out["num_images"] = len({r.index for r in records})
    out["num_queries"] = len(records)
    out["num_scored"] = len(scored)
    return out


def format_table(results: dict[str, EvalResult], title: str = "") -> str:
    """A plain-text table of gIoU / cIoU (percent), counts and See per mode and subset."""
    lines = [title] if title else []
    lines.append(f"{'mode':<9} {'subset':<8} {'gIoU':>7} {'cIoU':>7} {'queries':>8} {'See':>7}")
    for mode, res in results.items():
        for name in ("overall", "short", "long"):
            if name not in res.scores:
                continue
            s = res.scores[name]
            see = res.scores["see"] if name == "overall" and res.scores["see"] is not None else None
            see_txt = f"{100 * see:7.2f}" if see is not None else f"{'-':>7}"
            lines.append(
                f"{mode:<9} {name:<8} {100 * s['giou']:7.2f} {100 * s['ciou']:7.2f} {s['num_masks']:8d} {see_txt}"
            )
    return "\n".join(lines)
