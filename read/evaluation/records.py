"""The record of one evaluated query, and the COCO run-length encoding of its predicted mask.

A :class:`QueryRecord` holds what the scores are computed from (counts, areas, existence); it stays in memory and
travels between processes. Everything else about the query (image path, prompt, mask RLE, points, generated text)
only goes to the per-query file, through :meth:`QueryRecord.to_json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from read.evaluation.metrics import IGNORE_VALUE, intersection_union


@dataclass(frozen=True)
class QueryPosition:
    """Where a row of an evaluation batch comes from.

    Attributes:
        index: the image's index in the dataset.
        query: the row's position among the image's rows.
        queries: rows of that image (an image is complete once that many records exist).
    """

    index: int
    query: int
    queries: int

    @property
    def key(self) -> str:
        """Unique id of the query within the split."""
        return f"{self.index}/{self.query}"


@dataclass
class QueryRecord:
    """The scored outcome of one query.

    Attributes:
        key: unique id of the query within the split (``"<index>/<query_index>"``).
        index: the image's index in the dataset; query_index: the row's position among the image's rows.
        queries_in_image: rows of that image.
        subset: "short" / "long" (ReasonSeg's phrase / sentence queries) or None.
        scored: whether the row counts in the scores (a teacher-forced row without ``[SEG]`` does not).
        intersection, union: foreground pixel counts of the prediction against the ground truth (0 when unscored).
        gt_area, pred_area: foreground pixels of the ground truth and of the prediction.
        gt_exists: ground-truth existence (None when unknown); pred_exists: predicted existence.
        pointing: where the ``[SEG]``'s similarity map points (:func:`read.evaluation.pointing.pointing_record`), or
            None (no ``[SEG]``, no ground truth, or a record written before the field existed).
        details: the descriptive fields written to the per-query file only (not compared, not gathered).
    """

    key: str
    index: int
    query_index: int
    queries_in_image: int
    subset: str | None
    scored: bool
    intersection: int
    union: int
    gt_area: int
    pred_area: int
    gt_exists: bool | None
    pred_exists: bool
    pointing: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def score(
        cls,
        position: QueryPosition,
        *,
        pred: np.ndarray | None,
        gt: np.ndarray | None,
        gt_exists: bool | None,
        pred_exists: bool,
        meta: dict[str, Any],
        extra: dict[str, Any] | None = None,
        pointing: dict[str, Any] | None = None,
    ) -> QueryRecord:
        """Score one query.

        Arguments:
            position: the row's image and place in it.
            pred: (H, W) bool prediction, or None when the row has nothing to score (teacher row without ``[SEG]``).
            gt: (H, W) uint8 ground truth (0 / 1 / 255), or None (not scored).
            gt_exists: ground-truth existence (None when unknown); pred_exists: predicted existence.
            meta: the row's metadata from the dataset and the collator.
            extra: more fields for the per-query file (mask RLE, points, generated text ...).
            pointing: the query's pointing figures (kept with the scores).
        """
        scored = pred is not None and gt is not None
        inter, union = intersection_union(pred, gt) if scored else (0, 0)
        is_sentence = meta.get("is_sentence")
        details: dict[str, Any] = {
            "ignored_area": int((gt == IGNORE_VALUE).sum()) if gt is not None else 0,
            "image": meta.get("image_path"),
            "dataset": meta.get("dataset"),
            "query": meta.get("query"),
            "prompt": meta.get("prompt"),
        }
        for name in ("image_id", "ref_id", "sent_id"):
            if name in meta:
                details[name] = meta[name]
        if extra:
            details.update(extra)
        return cls(
            key=position.key,
            index=int(position.index),
            query_index=int(position.query),
            queries_in_image=int(position.queries),
            subset=None if is_sentence is None else ("long" if is_sentence else "short"),
            scored=scored,
            intersection=inter,
            union=union,
            gt_area=int((gt == 1).sum()) if gt is not None else 0,
            pred_area=int(pred.sum()) if pred is not None else 0,
            gt_exists=None if gt_exists is None else bool(gt_exists),
            pred_exists=bool(pred_exists),
            pointing=pointing,
            details=details,
        )

    def to_json(self) -> dict[str, Any]:
        """The line of the per-query file: every field, then the details."""
        out = asdict(self)
        details = out.pop("details")
        return {**out, **details}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueryRecord:
        """Inverse of :meth:`to_json` (a missing field without a default raises KeyError; ``pointing`` may be
        missing)."""
        names = [f.name for f in fields(cls) if f.name != "details"]
        values = {n: data[n] for n in names if n in data or n != "pointing"}
        return cls(**values, details={k: v for k, v in data.items() if k not in names})

    def light(self) -> QueryRecord:
        """The record without its details: what stays in memory and travels between processes."""
        return QueryRecord(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"})


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of a binary (H, W) mask; ``counts`` as a str, so the result is JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: (H, W) uint8 in {0, 1}."""
    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})
