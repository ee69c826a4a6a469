"""Polygon rasterisation (ReasonSeg), COCO polygon/RLE decoding and mask -> polygon conversion, pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import coco_rect, rect_mask, rect_polygon, rle_of
from read.data.masks import coco_segmentation_to_mask, mask_to_polygons, reason_seg_mask
from read.data.sample import DataError


def test_rectangle_polygon_inclusive_corners():
    mask = reason_seg_mask([{"label": "target", "points": rect_polygon(10, 5, 29, 24)}], 40, 60)
    assert mask.dtype == np.uint8
    assert np.array_equal(mask, rect_mask(40, 60, 10, 5, 29, 24))


def test_triangle_by_hand():
    # Right triangle (0,0), (4,0), (0,4): cv2 fills the pixels with x + y <= 4.
    mask = reason_seg_mask([{"label": "a", "points": [[0, 0], [4, 0], [0, 4]]}], 6, 6)
    expected = np.array([[1 if x + y <= 4 else 0 for x in range(6)] for y in range(6)], dtype=np.uint8)
    assert np.array_equal(mask, expected)


def test_float_points_are_truncated():
    a = reason_seg_mask([{"label": "a", "points": [[2.9, 1.7], [6.99, 1.2], [6.5, 5.9], [2.2, 5.01]]}], 8, 8)
    assert np.array_equal(a, rect_mask(8, 8, 2, 1, 6, 5))


def test_ignore_inside_target_is_255():
    shapes = [
        {"label": "target", "points": rect_polygon(10, 5, 29, 24)},
        {"label": "Ignore region", "points": rect_polygon(15, 10, 20, 15)},
    ]
    mask = reason_seg_mask(shapes, 40, 60)
    expected = rect_mask(40, 60, 10, 5, 29, 24)
    expected[10:16, 15:21] = 255
    assert np.array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1, 255}


def test_larger_polygons_are_drawn_first():
    # The ignore polygon is larger and listed last: the target (smaller) still ends on top.
    shapes = [
        {"label": "target", "points": rect_polygon(4, 4, 7, 7)},
        {"label": "ignore", "points": rect_polygon(0, 0, 11, 11)},
    ]
    mask = reason_seg_mask(shapes, 12, 12)
    expected = np.full((12, 12), 255, dtype=np.uint8)
    expected[4:8, 4:8] = 1
    assert np.array_equal(mask, expected)


def test_flag_is_skipped():
    shapes = [{"label": "FLAG", "points": rect_polygon(0, 0, 5, 5)}, {"label": "t", "points": rect_polygon(6, 6, 7, 7)}]
    mask = reason_seg_mask(shapes, 10, 10)
    assert np.array_equal(mask, rect_mask(10, 10, 6, 6, 7, 7))


@pytest.mark.parametrize("points", [[], [[1, 2, 3]], "abc", [[1, float("nan")]]])
def test_bad_polygons_raise(points):
    with pytest.raises(DataError, match=r"x.json: shapes\[0\]"):
        reason_seg_mask([{"label": "t", "points": points}], 10, 10, source="x.json")
    with pytest.raises(DataError, match="label"):
        reason_seg_mask([{"points": [[0, 0]]}], 10, 10, source="x.json")


def test_coco_polygon_union_of_parts():
    seg = [coco_rect(10, 5, 30, 25), coco_rect(25, 20, 40, 30)]  # overlapping parts
    mask = coco_segmentation_to_mask(seg, 40, 60)
    expected = rect_mask(40, 60, 10, 5, 29, 24) | rect_mask(40, 60, 25, 20, 39, 29)
    assert np.array_equal(mask, expected)
    assert mask.max() == 1  # the reference's sum would give 2 on the overlap


def test_coco_rle_compressed_uncompressed_and_list():
    m = np.zeros((13, 17), dtype=np.uint8)
    m[2:9, 3:5] = 1
    m[11, 16] = 1
    assert np.array_equal(coco_segmentation_to_mask(rle_of(m), 13, 17), m)
    assert np.array_equal(coco_segmentation_to_mask(rle_of(m, compressed=False), 13, 17), m)
    other = np.zeros_like(m)
    other[0, 0] = 1
    both = coco_segmentation_to_mask([rle_of(m), rle_of(other)], 13, 17)
    assert np.array_equal(both, m | other)


def test_coco_degenerate_and_empty():
    assert coco_segmentation_to_mask([], 5, 6).shape == (5, 6)
    assert coco_segmentation_to_mask([], 5, 6).sum() == 0
    # A 2-point part is dropped instead of being read as a bounding box.
    mask = coco_segmentation_to_mask([[0, 0, 3, 3], coco_rect(1, 1, 3, 3)], 5, 6)
    assert np.array_equal(mask, rect_mask(5, 6, 1, 1, 2, 2))


def test_coco_errors():
    with pytest.raises(DataError, match="ann 5"):
        coco_segmentation_to_mask({"size": [3, 3], "counts": "!!!bad"}, 4, 4, source="ann 5")
    with pytest.raises(DataError, match="ann 6"):
        coco_segmentation_to_mask("nonsense", 4, 4, source="ann 6")


def test_mask_to_polygons_roundtrip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = np.zeros((40, 50), dtype=np.uint8)
        import cv2

        for _ in range(2):
            cx, cy, r = int(rng.integers(8, 42)), int(rng.integers(8, 32)), int(rng.integers(3, 8))
            cv2.circle(m, (cx, cy), r, 1, -1)
        polys = mask_to_polygons(m)
        back = reason_seg_mask([{"label": "t", "points": p} for p in polys], 40, 50)
        assert np.array_equal(back, m)


def test_mask_to_polygons_min_area():
    m = np.zeros((20, 20), dtype=np.uint8)
    m[2:12, 2:12] = 1
    m[15, 15] = 1
    assert len(mask_to_polygons(m)) == 2
    assert len(mask_to_polygons(m, min_area=5)) == 1
