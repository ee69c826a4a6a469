"""Mask helpers: ReasonSeg polygon rasterisation, COCO polygon/RLE decoding and mask-to-polygon conversion.

All masks are ``uint8`` arrays of shape (H, W): 1 = object, 0 = background and, for ReasonSeg evaluation masks,
255 = ignore.
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from read.data.sample import DataError

__all__ = [
    "IGNORE_VALUE",
    "polygon_array",
    "polygon_points",
    "polygon_problem",
    "reason_seg_problems",
    "rasterize_polygon",
    "reason_seg_mask",
    "coco_segmentation_to_mask",
    "mask_to_polygons",
]

IGNORE_VALUE = 255


def polygon_array(points: Any, source: str = "") -> np.ndarray:
    """Validate a polygon given as ``[[x, y], ...]`` and return it as (N, 2) float64 coordinates.

    Raises:
        DataError: empty polygon, wrong nesting or non-numeric / non-finite coordinates (message names ``source``).
    """
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: polygon points are not numeric pairs: {e}") from e
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise DataError(f"{source}: polygon must be a non-empty list of [x, y] pairs, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{source}: polygon has non-finite coordinates")
    return arr


def polygon_points(points: Any, source: str = "") -> np.ndarray:
    """Validate a polygon given as ``[[x, y], ...]`` and return it as (N, 2) int32 pixel coordinates.

    Coordinates are truncated towards zero, as the reference does with ``np.array(points, dtype=np.int32)``.

    Raises:
        DataError: empty polygon, wrong nesting or non-numeric coordinates (message names ``source``).
    """
    return polygon_array(points, source).astype(np.int32)


def polygon_problem(points: np.ndarray, height: int, width: int) -> str | None:
    """Why a polygon cannot outline an object in a ``height`` x ``width`` image, or None when it can.

    A usable polygon has at least 3 distinct points, encloses at least one square pixel (shoelace area), covers at
    least one pixel of the image when drawn as the loaders draw it, and has no point farther than the image's own
    width (height) beyond its left/right (top/bottom) border. Points a little outside the image are normal (the
    drawing clips them, as in the reference); points far outside are a broken annotation, and beyond the int32
    range they would wrap around when drawn.

    Arguments:
        points: (N, 2) float (x, y) coordinates (:func:`polygon_array`).
        height, width: the image size.
    """
    x, y = points[:, 0], points[:, 1]
    far = (x < -width) | (x > 2 * width) | (y < -height) | (y > 2 * height)
    if far.any():
        k = int(np.flatnonzero(far)[0])
        return f"point ({x[k]:g}, {y[k]:g}) lies far outside the {width}x{height} image"
    distinct = len(np.unique(points, axis=0))
    if distinct < 3:
        return f"{distinct} distinct point(s); a polygon needs at least 3"
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if area < 1.0:
        return f"encloses {area:g} square pixels (its points are (nearly) on one line)"
    scratch = np.zeros((height, width), dtype=np.uint8)
    rasterize_polygon(scratch, points.astype(np.int32), 1)
    if not scratch.any():
        return f"lies entirely outside the {width}x{height} image"
    return None


def rasterize_polygon(mask: np.ndarray, points: np.ndarray, value: int) -> None:
    """Draw a filled polygon with its 1-pixel outline into ``mask`` in place (``cv2.polylines`` + ``cv2.fillPoly``).

    Arguments:
        mask: (H, W) uint8, modified in place.
        points: (N, 2) int32 (x, y) vertices.
        value: the value written.
    """
    pts = [points.reshape(-1, 1, 2)]
    cv2.polylines(mask, pts, True, int(value), 1)
    cv2.fillPoly(mask, pts, int(value))


def reason_seg_mask(shapes: Sequence[dict], height: int, width: int, source: str = "") -> np.ndarray:
    """The ReasonSeg ground truth of one image.

    Polygons labelled "flag" (case-insensitive) are skipped. The others are drawn from the largest filled area to
    the smallest, so a small polygon inside a larger one overwrites it; a label containing "ignore" writes 255,
    any other label writes 1.

    Arguments:
        shapes: the ``shapes`` list of the JSON (dicts with ``label`` and ``points``).
        height, width: the image size.
        source: the JSON path, for error messages.

    Returns:
        (H, W) uint8 with values in {0, 1, 255}.

    Raises:
        DataError: a shape without ``label``/``points`` or with an invalid polygon.
    """
    polygons: list[tuple[np.ndarray, int]] = []
    areas: list[int] = []
    for i, shape in enumerate(shapes):
        if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
            raise DataError(f"{source}: shapes[{i}] must be a dict with 'label' and 'points'")
        label = str(shape["label"]).lower()
        if label == "flag":
            continue
        pts = polygon_points(shape["points"], f"{source}: shapes[{i}]")
        scratch = np.zeros((height, width), dtype=np.uint8)
        rasterize_polygon(scratch, pts, 1)
        areas.append(int(scratch.sum()))
        polygons.append((pts, IGNORE_VALUE if "ignore" in label else 1))
    # Largest first; ties keep the reference order (a stable ascending sort, reversed).
    order = np.argsort(np.asarray(areas, dtype=np.int64), kind="stable")[::-1]
    mask = np.zeros((height, width), dtype=np.uint8)
    for k in order:
        pts, value = polygons[int(k)]
        rasterize_polygon(mask, pts, value)
    return mask


def reason_seg_problems(shapes: Sequence[dict], height: int, width: int) -> list[str]:
    """Why a ReasonSeg annotation cannot serve as ground truth (an empty list when it can).

    In ReasonSeg every query has a target, so a usable annotation needs at least one usable target polygon (a label
    without "ignore"; "flag" shapes are skipped, see :func:`polygon_problem`) and a non-empty target mask. A stray
    degenerate polygon beside a usable target is drawn as the reference draws it; a point far outside the image
    makes the annotation unusable whatever its label.

    Arguments:
        shapes: the ``shapes`` list of the JSON.
        height, width: the image size.

    Returns:
        One message per problem, e.g. ``"shapes[0] ('target'): 2 distinct point(s); a polygon needs at least 3"``.

    Raises:
        DataError: a shape is malformed (no ``label`` / ``points``, non-numeric points).
    """
    problems: list[str] = []
    degenerate_targets: list[str] = []
    usable_targets = 0
    for i, shape in enumerate(shapes):
        if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
            raise DataError(f"shapes[{i}] must be a dict with 'label' and 'points'")
        label = str(shape["label"])
        if label.lower() == "flag":
            continue
        problem = polygon_problem(polygon_array(shape["points"], f"shapes[{i}]"), height, width)
        is_target = "ignore" not in label.lower()
        if problem is not None and "far outside" in problem:
            problems.append(f"shapes[{i}] ({label!r}): {problem}")
        elif problem is not None and is_target:
            degenerate_targets.append(f"shapes[{i}] ({label!r}): {problem}")
        elif problem is None and is_target:
            usable_targets += 1
    if problems:
        return problems
    if usable_targets == 0:
        if degenerate_targets:
            return degenerate_targets
        return ["no target: every shape is labelled 'ignore' or 'flag'" if shapes else "no target: 'shapes' is empty"]
    if not (reason_seg_mask(shapes, height, width) == 1).any():
        return ["the target is empty: 'ignore' regions cover all of it"]
    return []


def _rle_parts(segmentation: Any, height: int, width: int, source: str) -> list[dict]:
    """COCO segmentation (polygons, one RLE or a list of RLEs; counts compressed or not) -> list of compressed RLEs."""
    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if not isinstance(segmentation, list):
        raise DataError(f"{source}: segmentation must be a list or an RLE dict, got {type(segmentation).__name__}")
    if all(isinstance(p, list) for p in segmentation):  # polygons [[x0, y0, x1, y1, ...], ...]
        # Parts with fewer than 3 points have no area; dropping them also avoids pycocotools reading a
        # 4-number first part as a bounding box.
        polys = [p for p in segmentation if len(p) >= 6]
        return coco_mask.frPyObjects(polys, height, width) if polys else []
    parts = []
    for p in segmentation:
        if not isinstance(p, dict) or "counts" not in p or "size" not in p:
            raise DataError(f"{source}: segmentation mixes polygons and RLEs or has a malformed RLE")
        if list(p["size"]) != [height, width]:
            raise DataError(f"{source}: RLE size {p['size']} does not match the image size {[height, width]}")
        counts = p["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            parts.append(coco_mask.frPyObjects(p, height, width))
        else:
            parts.append({"size": list(p["size"]), "counts": counts.encode() if isinstance(counts, str) else counts})
    return parts


def coco_segmentation_to_mask(segmentation: Any, height: int, width: int, source: str = "") -> np.ndarray:
    """Decode a COCO ``segmentation`` field into a binary mask.

    The parts (polygons of one object, or RLEs) are OR-ed. The reference sums them and casts to uint8, which gives
    2 where two parts overlap; the union used here is 0/1 everywhere [FIX]. An empty segmentation gives an empty mask.

    Arguments:
        segmentation: polygons ``[[x0, y0, ...], ...]``, an RLE dict, or a list of RLE dicts.
        height, width: the image size.
        source: names the annotation in error messages.

    Returns:
        (H, W) uint8 in {0, 1}.
    """
    if isinstance(segmentation, list) and len(segmentation) == 0:
        return np.zeros((height, width), dtype=np.uint8)
    try:
        parts = _rle_parts(segmentation, height, width, source)
        if not parts:
            return np.zeros((height, width), dtype=np.uint8)
        decoded = coco_mask.decode(parts)  # (H, W, n)
    except DataError:
        raise
    except Exception as e:  # pycocotools raises TypeError/ValueError/RuntimeError on malformed input
        raise DataError(f"{source}: cannot decode segmentation ({type(e).__name__}: {e})") from e
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    return (decoded.max(axis=2) > 0).astype(np.uint8)


def mask_to_polygons(mask: np.ndarray, min_area: int = 1) -> list[list[list[int]]]:
    """Outer contours of a binary mask as ReasonSeg polygons ``[[[x, y], ...], ...]``.

    Uses ``cv2.findContours`` (external contours, no approximation loss: ``CHAIN_APPROX_SIMPLE`` only merges
    straight runs), so rasterising the polygons with :func:`rasterize_polygon` gives the mask back exactly when it
    has no holes.

    Arguments:
        mask: (H, W) array, non-zero = object.
        min_area: contours whose rasterised area is below this are dropped.

    Returns:
        One polygon per connected component.
    """
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    h, w = binary.shape
    for c in contours:
        pts = c.reshape(-1, 2)
        if min_area > 1:
            scratch = np.zeros((h, w), dtype=np.uint8)
            rasterize_polygon(scratch, pts.astype(np.int32), 1)
            if int(scratch.sum()) < min_area:
                continue
        polygons.append([[int(x), int(y)] for x, y in pts])
    return polygons
