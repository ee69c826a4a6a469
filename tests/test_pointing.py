"""read.evaluation.pointing: where the similarity map points, on hand-made maps and masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from read.config import SaspConfig
from read.evaluation.pointing import peak_pixel, pointing_record, query_pointing, summarize_pointing, would_be_points
from read.model.sasp import select_points


def one_hot_map(side: int, row: int, col: int, low: float = 0.0, high: float = 5.0) -> torch.Tensor:
    sim = torch.full((side * side,), low)
    sim[row * side + col] = high
    return sim


def test_peak_pixel_is_the_cell_centre_on_a_square_image():
    # 4 x 4 cells on a 64 px image: cell (1, 2) spans x 32..47, y 16..31; its centre pixel is (40, 24)
    assert peak_pixel(one_hot_map(4, 1, 2), (64, 64)) == (40, 24)
    assert peak_pixel(one_hot_map(4, 0, 0), (64, 64)) == (8, 8)
    assert peak_pixel(one_hot_map(4, 3, 3), (64, 64)) == (56, 56)


def test_peak_pixel_undoes_the_centre_crop():
    # a 40 x 80 image (H x W): CLIP crops the middle 40 x 40, i.e. columns 20..59. On the 4 x 4 grid each cell is
    # 10 px; the padded coarse map is 4 x 8 with 2 columns of padding on the left.
    assert peak_pixel(one_hot_map(4, 0, 0), (40, 80)) == (25, 5)
    assert peak_pixel(one_hot_map(4, 3, 3), (40, 80)) == (55, 35)


def test_peak_pixel_first_maximum_wins_and_bad_maps_are_errors():
    sim = torch.zeros(16)
    sim[5] = sim[10] = 1.0
    assert peak_pixel(sim, (64, 64)) == (24, 24)  # cell 5 = (1, 1) before cell 10 = (2, 2)
    with pytest.raises(ValueError, match="perfect square"):
        peak_pixel(torch.zeros(15), (64, 64))
    with pytest.raises(ValueError, match="NaN"):
        peak_pixel(torch.tensor([0.0, float("nan"), 0.0, 0.0]), (8, 8))


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (90, 50), (33, 41)])
def test_peak_pixel_is_where_sasp_puts_its_first_positive_point(size):
    g = torch.Generator().manual_seed(sum(size))
    for _ in range(5):
        sim = torch.randn(64, generator=g)
        cfg = SaspConfig(num_points=3, t_pos=0.9, t_neg=0.1, down_sample=1, dtoc=False)
        coords, labels = select_points(sim[None], [size], cfg, clip_size=32)
        assert int(labels[0, 0]) == 1
        assert peak_pixel(sim, size) == tuple(int(v) for v in coords[0, 0].tolist())


def test_pointing_record_counts_points_inside_and_outside():
    target = np.zeros((64, 64), dtype=np.uint8)
    target[16:32, 32:48] = 1  # exactly cell (1, 2) of a 4 x 4 grid
    target[0:4, 0:4] = 255  # ignored
    coords = torch.tensor([[40.0, 24.0], [33.2, 17.4], [10.0, 50.0], [39.6, 23.6], [2.0, 2.0], [60.0, 60.0]])
    labels = torch.tensor([1, 1, 1, 0, 0, -1])
    rec = pointing_record(one_hot_map(4, 1, 2), target, coords, labels)
    # positives: two inside, one outside; negatives: one inside (counted as not outside), one on an ignored pixel
    # (not counted); the neutral point is not counted
    assert rec == {"peak_in_target": True, "peak": [40, 24], "pos_points": 3, "pos_in_target": 2,
                   "neg_points": 1, "neg_outside": 0}  # fmt: skip
    miss = pointing_record(one_hot_map(4, 3, 0), target, coords[:0], labels[:0])
    assert miss["peak_in_target"] is False and miss["pos_points"] == miss["neg_points"] == 0
    ignored = pointing_record(one_hot_map(4, 0, 0), np.where(target == 1, 1, 255).astype(np.uint8), coords, labels)
    assert ignored["peak_in_target"] is None


def test_points_are_tested_at_the_nearest_pixel_clamped_to_the_image():
    target = np.zeros((10, 10), dtype=np.uint8)
    target[5, 5] = 1
    coords = torch.tensor([[4.6, 5.4], [5.0, 4.49], [-3.0, 5.0], [5.0, 12.0]])
    rec = pointing_record(torch.zeros(4), target, coords, torch.ones(4, dtype=torch.long))
    assert rec["pos_points"] == 4 and rec["pos_in_target"] == 1


def test_summarize_pointing_pools_queries():
    records = [
        {
            "peak_in_target": True,
            "peak": [0, 0],
            "pos_points": 2,
            "pos_in_target": 2,
            "neg_points": 4,
            "neg_outside": 4,
        },
        {
            "peak_in_target": False,
            "peak": [0, 0],
            "pos_points": 3,
            "pos_in_target": 0,
            "neg_points": 0,
            "neg_outside": 0,
        },
        {
            "peak_in_target": None,
            "peak": [0, 0],
            "pos_points": 0,
            "pos_in_target": 0,
            "neg_points": 1,
            "neg_outside": 0,
        },
        None,
    ]
    s = summarize_pointing(records)
    assert s == {"num_queries": 3, "peak_in_target": 0.5, "pos_in_target": 0.4, "neg_outside": 0.8,
                 "pos_points_per_query": 5 / 3, "neg_points_per_query": 5 / 3}  # fmt: skip
    empty = summarize_pointing([])
    assert empty["num_queries"] == 0 and empty["peak_in_target"] is None and empty["pos_in_target"] is None


def test_lisa_models_are_measured_with_the_points_sasp_would_place():
    sasp = SaspConfig(num_points=4, t_pos=0.8, t_neg=0.2, down_sample=1)
    sim = one_hot_map(4, 1, 2)
    target = np.zeros((64, 64), dtype=np.uint8)
    target[16:32, 32:48] = 1
    coords, labels = would_be_points(sim, (64, 64), sasp, clip_size=64)
    assert coords.shape == (4, 2) and labels.tolist() == [1, 0, 0, 0]
    empty = torch.zeros(0, 2)
    rec = query_pointing(sim, target, empty, torch.zeros(0, dtype=torch.long), sasp, 64)
    assert rec["pos_points"] == 1 and rec["pos_in_target"] == 1 and rec["neg_points"] == 3 and rec["neg_outside"] == 3
    # a model's own points are used as they are
    own = query_pointing(sim, target, torch.tensor([[1.0, 1.0]]), torch.tensor([1]), sasp, 64)
    assert own["pos_points"] == 1 and own["pos_in_target"] == 0
    assert query_pointing(torch.zeros(0), target, empty, torch.zeros(0, dtype=torch.long), sasp, 64) is None
