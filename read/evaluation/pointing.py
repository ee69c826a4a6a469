"""Pointing metrics: does the ``[SEG]``-to-image similarity map point at the object a query means?

READ's premise is that the hidden state behind ``[SEG]`` is most similar to the image tokens of its target, so that
SasP's points land on it. Per query (:func:`pointing_record`):

* ``peak_in_target``: the image-token cell with the largest similarity, placed where SasP places the centre of a
  cell on the full-resolution grid (``down_sample`` 1: the CLIP crop undone, cell centres truncated to whole pixels),
  lies inside the target mask;
* ``pos_points`` / ``pos_in_target``: positive SasP points (label 1), and how many of them lie inside the target;
* ``neg_points`` / ``neg_outside``: negative points (label 0), and how many lie outside it.

A point (x, y) in pixels is tested at the pixel ``(round(y), round(x))``, clamped to the image. Pixels marked 255
(ignore) count as neither inside nor outside: a point there is not counted at all. :func:`summarize_pointing`
pools the records of a split: the fraction of queries whose peak is inside, and the pooled fractions of positive
points inside and of negative points outside.

A LISA model (SasP off) has the same similarity map (its ``[SEG]`` state against its image-token states); its
points are the ones SasP would place from that map with the model's ``sasp`` settings
(:func:`would_be_points`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from read.config import SaspConfig
from read.model.sasp import NEGATIVE, POSITIVE, pad_geometry, select_points

__all__ = ["peak_pixel", "pointing_record", "query_pointing", "summarize_pointing", "would_be_points"]

_IGNORE = 255


def peak_pixel(sim: Tensor, image_size: tuple[int, int], geometry: str = "reference") -> tuple[int, int]:
    """The pixel (x, y) at the centre of the most similar image-token cell.

    Arguments:
        sim: (N,) similarities over the ``side x side`` image tokens (raster order), N a perfect square.
        image_size: (H, W) of the original image.
        geometry: how the crop is undone, as ``sasp.geometry`` (read.model.sasp.pad_geometry).

    Returns:
        (x, y) in original-image pixels: the cell's centre after undoing CLIP's resize-and-centre-crop, truncated
        as SasP truncates its integer points (the first maximum in raster order wins a tie); a cell that the
        reference geometry places outside the image is clamped to the image's edge.
    """
    if sim.dim() != 1:
        raise ValueError(f"peak_pixel: expected sim of shape (N,), got {tuple(sim.shape)}")
    n = sim.shape[0]
    side = math.isqrt(n)
    if n < 1 or side * side != n:
        raise ValueError(f"peak_pixel: the number of image tokens must be a positive perfect square, got {n}")
    if not bool(torch.isfinite(sim).all()):
        raise ValueError("peak_pixel: the similarity map contains NaN or inf")
    height, width = (int(v) for v in image_size)
    index = int(torch.argmax(sim.float()))  # first maximum
    row, col = divmod(index, side)
    new_h, new_w, top, left = pad_geometry(height, width, side, geometry)
    # float32 arithmetic, as SasP's cell centres (read.model.sasp._cell_pixels)
    scale = np.float32([height / new_h, width / new_w])
    y = min(max(float((np.float32(row + top) + np.float32(0.5)) * scale[0]), 0.0), height - 1)
    x = min(max(float((np.float32(col + left) + np.float32(0.5)) * scale[1]), 0.0), width - 1)
    return int(x), int(y)


def would_be_points(
    sim: Tensor, image_size: tuple[int, int], sasp: SaspConfig, clip_size: int
) -> tuple[Tensor, Tensor]:
    """The points SasP would place from a similarity map with the given settings (for a model whose ``[SEG]`` does
    not use them, e.g. LISA).

    Arguments:
        sim: (N,) similarities.
        image_size: (H, W).
        sasp: the settings (``enabled`` is ignored).
        clip_size: the CLIP input side (``model.vision.image_size``).

    Returns:
        coords (K, 2) float (x, y) and labels (K,) long.
    """
    coords, labels = select_points(sim[None].float(), [tuple(image_size)], sasp, clip_size)
    return coords[0], labels[0]


def _pixel_values(target: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Target values at the pixels nearest to (x, y) points, clamped to the image; (P,) uint8."""
    if coords.size == 0:
        return np.zeros(0, dtype=np.uint8)
    h, w = target.shape
    xs = np.clip(np.floor(coords[:, 0] + 0.5).astype(np.int64), 0, w - 1)
    ys = np.clip(np.floor(coords[:, 1] + 0.5).astype(np.int64), 0, h - 1)
    return target[ys, xs]


def pointing_record(
    sim: Tensor,
    target: np.ndarray,
    coords: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    geometry: str = "reference",
) -> dict[str, Any]:
    """The pointing figures of one query.

    Arguments:
        sim: (N,) similarity map of the query's ``[SEG]``.
        target: (H, W) ground truth, 1 = object, 0 = background, 255 = ignore.
        coords: (K, 2) point prompts (x, y) in pixels; labels: (K,) in {1, 0, -1}.
        geometry: ``sasp.geometry`` of the model, for the peak's pixel.

    Returns:
        {"peak_in_target": bool (None when the peak falls on an ignored pixel), "peak": [x, y], "pos_points",
        "pos_in_target", "neg_points", "neg_outside": int}.
    """
    target = np.asarray(target)
    if target.ndim != 2:
        raise ValueError(f"pointing_record: expected a (H, W) target, got shape {target.shape}")
    coords_np = np.asarray(coords.detach().float().cpu() if isinstance(coords, Tensor) else coords, dtype=np.float64)
    labels_np = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels).astype(np.int64)
    coords_np = coords_np.reshape(-1, 2)
    if labels_np.shape != (coords_np.shape[0],):
        raise ValueError(f"pointing_record: {coords_np.shape[0]} points but labels of shape {labels_np.shape}")
    x, y = peak_pixel(sim.detach().cpu(), target.shape, geometry)
    peak_value = int(target[y, x])
    pos = _pixel_values(target, coords_np[labels_np == POSITIVE])
    neg = _pixel_values(target, coords_np[labels_np == NEGATIVE])
    pos, neg = pos[pos != _IGNORE], neg[neg != _IGNORE]
    return {
        "peak_in_target": None if peak_value == _IGNORE else peak_value == 1,
        "peak": [x, y],
        "pos_points": int(pos.size),
        "pos_in_target": int((pos == 1).sum()),
        "neg_points": int(neg.size),
        "neg_outside": int((neg != 1).sum()),
    }


def summarize_pointing(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool pointing records (:func:`pointing_record`; records without one are skipped).

    Returns:
        {"num_queries": queries with a map, "peak_in_target": fraction of them (ignored peaks left out),
        "pos_in_target": positive points inside / positive points, "neg_outside": negative points outside /
        negative points, "pos_points_per_query", "neg_points_per_query"}; a fraction with nothing to count is None.
    """
    rows: Sequence[dict[str, Any]] = [r for r in records if r is not None]
    peaks = [r["peak_in_target"] for r in rows if r["peak_in_target"] is not None]
    pos = sum(r["pos_points"] for r in rows)
    neg = sum(r["neg_points"] for r in rows)
    n = len(rows)
    return {
        "num_queries": n,
        "peak_in_target": sum(peaks) / len(peaks) if peaks else None,
        "pos_in_target": sum(r["pos_in_target"] for r in rows) / pos if pos else None,
        "neg_outside": sum(r["neg_outside"] for r in rows) / neg if neg else None,
        "pos_points_per_query": pos / n if n else None,
        "neg_points_per_query": neg / n if n else None,
    }


def query_pointing(
    sim: Tensor, target: np.ndarray, coords: Tensor, labels: Tensor, sasp: SaspConfig, clip_size: int
) -> dict[str, Any] | None:
    """:func:`pointing_record` of one ``[SEG]`` as the evaluation loop sees it: its map (None-like when empty), the
    ground truth, and its SasP points, or, when it has none (LISA), the points SasP would place from the map.

    Arguments:
        sim: (N,) map, or an empty tensor (no map: returns None).
        target: (H, W) ground truth.
        coords: (P, 2); labels: (P,) the model's points (P = 0 without SasP).
        sasp: the model's ``sasp`` settings; clip_size: ``model.vision.image_size``.
    """
    if sim.numel() == 0:
        return None
    if coords.shape[0] == 0:
        coords, labels = would_be_points(sim, target.shape, sasp, clip_size)
    return pointing_record(sim, target, coords, labels, sasp.geometry)
