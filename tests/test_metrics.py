"""read.evaluation.metrics on hand-computed 4x4 masks, against a literal histc version of the reference, and merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from read.evaluation.metrics import (
    SegmentationMeter,
    all_gather_meter,
    existence_accuracy,
    intersection_union,
    mask_iou,
    segmentation_scores,
)

# A: partial overlap with two ignore pixels (one under a predicted pixel): I = 3, U = 4
PRED_A = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
GT_A = [[1, 255, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 255]]
# B: empty target predicted empty: I = 0, U = 0 (IoU 1.0)
PRED_B = [[0] * 4] * 4
GT_B = [[0] * 4] * 4
# C: empty target with one false-positive pixel: I = 0, U = 1 (IoU 0.0)
PRED_C = [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
GT_C = [[0] * 4] * 4
# D: everything predicted, top half is the object: I = 8, U = 16
PRED_D = [[1] * 4] * 4
GT_D = [[1] * 4] * 2 + [[0] * 4] * 2

CASES = [(PRED_A, GT_A, 3, 4), (PRED_B, GT_B, 0, 0), (PRED_C, GT_C, 0, 1), (PRED_D, GT_D, 8, 16)]


def _np(pred, gt):
    return np.array(pred, dtype=np.uint8), np.array(gt, dtype=np.uint8)


def _torch(pred, gt):
    return torch.tensor(pred, dtype=torch.bool), torch.tensor(gt, dtype=torch.uint8)


def reference_intersection_union(pred: torch.Tensor, gt: torch.Tensor) -> tuple[int, int]:
    """The reference algorithm written out literally: copy 255 into the prediction, 2-bin histograms."""
    output = pred.reshape(-1).float().clone()
    target = gt.reshape(-1).float()
    output[target == 255] = 255
    inter = output[output == target]
    area_i = torch.histc(inter, bins=2, min=0, max=1)
    area_o = torch.histc(output, bins=2, min=0, max=1)
    area_t = torch.histc(target, bins=2, min=0, max=1)
    area_u = area_o + area_t - area_i
    return int(area_i[1]), int(area_u[1])


@pytest.mark.parametrize("pred,gt,i,u", CASES, ids=["overlap_ignore", "empty_empty", "false_positive", "half"])
def test_hand_computed_intersection_union(pred, gt, i, u):
    assert intersection_union(*_np(pred, gt)) == (i, u)
    assert intersection_union(*_torch(pred, gt)) == (i, u)
    p_np, g_np = _np(pred, gt)
    p_t, g_t = _torch(pred, gt)
    assert intersection_union(p_np, g_t) == (i, u)  # mixed inputs
    assert intersection_union(p_t.long(), g_np) == (i, u)
    assert reference_intersection_union(p_t, g_t) == (i, u)


def test_ignore_pixels_leave_both_counts():
    pred, gt = _torch(PRED_A, GT_A)
    # without the ignore labels, the predicted pixel at (0, 1) would join the union
    assert intersection_union(pred, torch.where(gt == 255, 0, gt)) == (3, 5)
    assert intersection_union(pred, gt) == (3, 4)


def test_bool_ground_truth_has_no_ignore_label():
    pred, gt = _torch(PRED_D, GT_D)
    assert intersection_union(pred, gt.bool()) == (8, 16)


def test_matches_literal_reference_on_random_masks():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        h, w = torch.randint(1, 40, (2,), generator=g).tolist()
        pred = torch.rand(h, w, generator=g) > 0.6
        gt = (torch.rand(h, w, generator=g) > 0.5).to(torch.uint8)
        gt[torch.rand(h, w, generator=g) > 0.8] = 255
        assert intersection_union(pred, gt) == reference_intersection_union(pred, gt)
        assert intersection_union(pred.numpy(), gt.numpy()) == reference_intersection_union(pred, gt)


def test_bad_inputs_are_clear_errors():
    pred, gt = _torch(PRED_A, GT_A)
    with pytest.raises(ValueError, match=r"pred \(4, 4\) vs gt \(4, 3\)"):
        intersection_union(pred, gt[:, :3])
    with pytest.raises(ValueError, match="threshold logits first"):
        intersection_union(pred.float(), gt)
    with pytest.raises(ValueError, match="pred must be binary.*2"):
        intersection_union(pred.long() * 2, gt)
    with pytest.raises(ValueError, match="gt values must be 0, 1 or 255; found 7"):
        intersection_union(pred, torch.full_like(gt, 7))
    with pytest.raises(ValueError, match="gt must be a bool/integer mask"):
        intersection_union(pred, gt.float())
    with pytest.raises(TypeError, match="numpy array"):
        intersection_union(pred, [[0] * 4] * 4)


def test_giou_and_ciou_hand_computed():
    preds, gts = zip(*[_torch(p, g) for p, g, _, _ in CASES])
    scores = segmentation_scores(list(preds), list(gts))
    # per-mask IoUs: 3/(4+1e-5), 1 (empty/empty), 0 (false positive), 8/(16+1e-5)
    expected_giou = (3 / (4 + 1e-5) + 1.0 + 0.0 + 8 / (16 + 1e-5)) / 4
    assert scores["giou"] == pytest.approx(expected_giou, abs=1e-12)
    assert scores["giou"] == pytest.approx(0.5625, abs=1e-5)
    assert scores["ciou"] == pytest.approx(11 / 21, abs=1e-9)  # (3+0+0+8) / (4+0+1+16)
    assert (scores["num_masks"], scores["intersection"], scores["union"]) == (4, 11, 21)
    assert abs(scores["giou"] - scores["ciou"]) > 0.03


def test_empty_conventions():
    assert mask_iou(0, 0) == 1.0
    assert mask_iou(0, 1) == 0.0
    only_empty = segmentation_scores([np.zeros((4, 4), bool)], [np.zeros((4, 4), np.uint8)])
    assert only_empty["giou"] == 1.0 and only_empty["ciou"] == 0.0  # sum U == 0 -> 0.0, as the reference
    nothing = SegmentationMeter().compute()
    assert (nothing["giou"], nothing["ciou"], nothing["num_masks"]) == (0.0, 0.0, 0)


def test_merge_equals_one_meter_and_drops_padding_duplicates():
    g = torch.Generator().manual_seed(1)
    samples = []
    for k in range(7):
        pred = torch.rand(6, 5, generator=g) > 0.5
        gt = (torch.rand(6, 5, generator=g) > 0.4).to(torch.uint8)
        samples.append((f"img{k}", pred, gt))
    whole = SegmentationMeter()
    for key, p, t in samples:
        whole.update(p, t, key=key)
    # DistributedSampler on 3 ranks: 7 samples padded to 9 by repeating the first two
    padded = samples + samples[:2]
    ranks = [SegmentationMeter() for _ in range(3)]
    for j, (key, p, t) in enumerate(padded):
        ranks[j % 3].update(p, t, key=key)
    merged = SegmentationMeter()
    for r in ranks:
        merged.merge(r)
    assert merged.compute() == {**whole.compute(), "duplicates": 2}
    assert len(merged) == 7
    # state_dict round trip (what all_gather_object transports) is exact
    rebuilt = SegmentationMeter.from_state_dict(merged.state_dict())
    assert rebuilt.compute() == merged.compute()
    assert rebuilt.records() == merged.records()


def test_unkeyed_masks_are_not_deduplicated():
    pred, gt = _torch(PRED_A, GT_A)
    a, b = SegmentationMeter(), SegmentationMeter()
    a.update(pred, gt)
    b.update(pred, gt)
    assert a.merge(b).compute()["num_masks"] == 2


def test_existence_accuracy():
    assert existence_accuracy([True, False, True, False], [True, True, False, False]) == 0.5
    assert existence_accuracy(np.array([1, 0, 1]), [True, False, True]) == 1.0
    assert existence_accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="3 predicted existence flags for 2"):
        existence_accuracy([True] * 3, [True] * 2)


def _gather_worker(rank: int, world: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    meter = SegmentationMeter()
    pred, gt = _torch(PRED_A, GT_A)
    meter.update(pred, gt, key="shared")  # the same sample on both ranks (sampler padding)
    meter.add(rank, 10, key=f"own{rank}")
    queue.put((rank, all_gather_meter(meter).compute()))
    dist.destroy_process_group()


def test_all_gather_meter_two_processes(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    expected = {"num_masks": 3, "intersection": 3 + 0 + 1, "union": 4 + 10 + 10, "duplicates": 1}
    for rank in (0, 1):
        assert {k: results[rank][k] for k in expected} == expected
    assert results[0] == results[1]
    assert all_gather_meter(SegmentationMeter()).compute()["num_masks"] == 0  # no process group: itself
