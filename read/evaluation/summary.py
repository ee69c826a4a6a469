"""Scores from per-query records, and their plain-text table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from read.evaluation.config import EvalResult
from read.evaluation.metrics import SegmentationMeter, existence_accuracy
from read.evaluation.pointing import summarize_pointing
from read.evaluation.records import QueryRecord


def summarize(records: Sequence[QueryRecord], mode: str) -> dict[str, Any]:
    """Scores from per-query records.

    Returns:
        {"overall": {...}, ["short": {...}, "long": {...}] (when the records carry ``is_sentence``),
        "see": existence accuracy (generation mode, else None), "pointing"
        (:func:`read.evaluation.pointing.summarize_pointing` of the scored rows), "num_images", "num_queries",
        "num_scored"}. Each
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
    out["pointing"] = summarize_pointing(r.pointing for r in scored)
    out["num_images"] = len({r.index for r in records})
    out["num_queries"] = len(records)
    out["num_scored"] = len(scored)
    return out


def format_table(results: dict[str, EvalResult], title: str = "") -> str:
    """A plain-text table of gIoU / cIoU (percent), counts and See per mode and subset, then the pointing lines."""
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
    for mode, res in results.items():
        lines += [f"{mode:<9} {line}" for line in format_pointing(res.scores.get("pointing"))]
    return "\n".join(lines)


def format_pointing(p: dict[str, Any] | None) -> list[str]:
    """Lines describing :func:`read.evaluation.pointing.summarize_pointing` figures (none without a map)."""
    if not p or not p["num_queries"]:
        return []

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    return [
        f"pointing: the similarity map's peak is inside the target for {pct(p['peak_in_target'])} of "
        f"{p['num_queries']} queries",
        f"pointing: positive points inside the target {pct(p['pos_in_target'])} ({p['pos_points_per_query']:.2f} a "
        f"query), negative points outside {pct(p['neg_outside'])} ({p['neg_points_per_query']:.2f} a query)",
    ]
