"""scripts/make_report.py: the quickstart's report (metrics summary, loss curves, prediction grid)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


report = _load_script("make_report")


POINTING = {"num_queries": 2, "peak_in_target": 0.5, "pos_in_target": 0.75, "neg_outside": 1.0,
            "pos_points_per_query": 2.0, "neg_points_per_query": 3.0}  # fmt: skip


def _fake_run(root: Path, name: str, giou: float, steps: int = 30) -> tuple[str, str, str]:
    """A training dir with metrics.jsonl and an eval dir with results.json, predictions.jsonl and an image."""
    from pycocotools import mask as mask_utils

    train_dir, eval_dir = root / name, root / name / "eval"
    train_dir.mkdir(parents=True)
    with (train_dir / "metrics.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            row = {"kind": "step", "step": s, "epoch": 0, "loss": 3.0 / s, "ce_loss": 1.0 / s, "bce_loss": 0.5,
                   "dice_loss": 0.25, "lr": 1e-3, "samples_per_s": 5.0, "applied": True}  # fmt: skip
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"kind": "epoch", "epoch": 1, "step": steps, "loss": 0.1}) + "\n")
        f.write('{"kind": "step", "step": 99')  # a torn last line
    scores = {"giou": giou, "ciou": giou - 0.1, "num_masks": 2}
    results = {"settings": {}, "results": {"teacher": {"overall": scores, "short": {**scores, "num_masks": 1},
               "long": {**scores, "num_masks": 1}, "num_images": 2, "see": None, "pointing": POINTING}}}  # fmt: skip
    (eval_dir / "teacher").mkdir(parents=True)
    (eval_dir / "results.json").write_text(json.dumps(results))
    # one image in ReasonSeg layout, its prediction as RLE
    image_dir = root / "data" / "reason_seg" / "ReasonSeg" / "val"
    image_dir.mkdir(parents=True, exist_ok=True)
    image = np.full((40, 48, 3), 200, dtype=np.uint8)
    image[10:20, 10:30] = (255, 0, 0)
    image_path = image_dir / "val_000000.jpg"
    cv2.imwrite(str(image_path), image[:, :, ::-1])
    poly = [[10, 10], [29, 10], [29, 19], [10, 19]]
    (image_dir / "val_000000.json").write_text(
        json.dumps({"text": ["red rectangle"], "is_sentence": False, "shapes": [{"label": "target", "points": poly}]})
    )
    pred = np.zeros((40, 48), dtype=np.uint8)
    pred[10:20, 10:20] = 1
    rle = mask_utils.encode(np.asfortranarray(pred))
    rle["counts"] = rle["counts"].decode()
    record = {"key": "0/0", "index": 0, "query_index": 0, "scored": True, "intersection": 100, "union": 200,
              "image": str(image_path), "query": "red rectangle", "mask_rle": rle,
              "points": [[12.0, 12.0], [40.0, 30.0]], "point_labels": [1, 0]}  # fmt: skip
    (eval_dir / "teacher" / "predictions.jsonl").write_text(json.dumps(record) + "\n")
    return name, str(train_dir), str(eval_dir)


def test_read_scalars_from_metrics_jsonl(tmp_path):
    _, train_dir, _ = _fake_run(tmp_path, "read", 0.6, steps=5)
    scalars = report.read_scalars(train_dir)
    assert scalars["train/loss"] == [(s, 3.0 / s) for s in range(1, 6)]
    assert set(scalars) == {"train/loss", "train/ce_loss", "train/bce_loss", "train/dice_loss", "train/lr",
                            "train/samples_per_s"}  # fmt: skip
    assert report.loss_tags(scalars) == ["train/loss", "train/bce_loss", "train/ce_loss", "train/dice_loss"]
    scalars["train/query_loss"] = [(s, 0.0) for s in range(1, 6)]  # switched off: not drawn
    assert "train/query_loss" not in report.loss_tags(scalars)
    scalars["train/query_loss"][2] = (3, 0.5)
    assert "train/query_loss" in report.loss_tags(scalars)


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(report.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(report.smooth(np.array([2.0, 4.0]), 1), [2.0, 4.0])


def test_make_report_end_to_end(tmp_path, capsys):
    runs = [_fake_run(tmp_path, "read", 0.61), _fake_run(tmp_path, "lisa", 0.42)]
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"setup": 1.0, "train_read": 2.5}))
    argv = ["--out", str(tmp_path / "report"), "--timing", str(timing), "--grid", "3"]
    for r in runs:
        argv += ["--run", *r]
    path = report.main(argv)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(path)
    assert (
        "read: map peak inside the target 50.0 %, positive points inside 75.0 %, negative points outside "
        "100.0 % (2 queries)" in printed
    )
    metrics = json.loads(path.read_text())
    assert metrics["runs"]["read"]["pointing"] == POINTING
    assert metrics["runs"]["read"]["overall"] == {"giou": 0.61, "ciou": 0.51, "num_masks": 2}
    assert metrics["runs"]["lisa"]["short"]["giou"] == 0.42 and metrics["runs"]["lisa"]["long"]["num_masks"] == 1
    assert metrics["runs"]["read"]["train_steps"] == 30
    assert metrics["runs"]["read"]["final_train_losses"]["train/bce_loss"] == 0.5
    assert metrics["timing_s"] == {"setup": 1.0, "train_read": 2.5}
    assert metrics["files"] == {
        "metrics": "metrics.json",
        "loss_curve": "loss_curve.png",
        "predictions": "predictions.png",
    }
    curve = cv2.imread(str(tmp_path / "report" / "loss_curve.png"))
    assert curve is not None and curve.shape[0] > 100
    grid = cv2.imread(str(tmp_path / "report" / "predictions.png"))
    # a header strip (22 px), then one row per image: caption strip (22 px) + image (40 px); image | gt, then each
    # run's prediction | points side by side: 6 x 48 px
    assert grid.shape == (22 + 22 + 40, 6 * 48, 3)
    # the first run's prediction panel (red overlay on the left half of the rectangle) is read's, then lisa's
    assert np.array_equal(grid[22 + 22 :, 2 * 48 : 3 * 48], grid[22 + 22 :, 4 * 48 : 5 * 48])


def test_make_report_missing_results_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no eval.py results"):
        report.main(["--out", str(tmp_path / "r"), "--run", "read", str(tmp_path), str(tmp_path / "nope")])


def test_report_adds_validation_curve_and_query_blind_scores(tmp_path, capsys):
    from read.data.synthetic import SyntheticConfig, make_synthetic

    name, train_dir, eval_dir = _fake_run(tmp_path, "read", 0.61, steps=12)
    with (Path(train_dir) / "metrics.jsonl").open("a") as f:  # after the torn line, as a resumed run appends
        f.write("\n" + json.dumps({"kind": "epoch", "epoch": 1, "step": 6, "val_giou": 0.2, "val_ciou": 0.25}))
        f.write("\n" + json.dumps({"kind": "epoch", "epoch": 2, "step": 12, "val_giou": 0.4, "val_ciou": 0.45}) + "\n")
    scalars = report.read_scalars(train_dir)
    assert scalars["val/giou"] == [(6, 0.2), (12, 0.4)] and scalars["val/ciou"] == [(6, 0.25), (12, 0.45)]
    assert "val/giou" not in report.loss_tags(scalars)

    data = tmp_path / "data"
    make_synthetic(str(data), 0, 4, 0, seed=1, cfg=SyntheticConfig(image_size=64, num_objects=(2, 2)))
    path = report.main(["--out", str(tmp_path / "report"), "--dataset_dir", str(data), "--run", name, train_dir,
                        eval_dir])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads(path.read_text())
    assert metrics["chance"]["num_images"] == 4
    assert metrics["chance"]["overall"]["random_object"]["giou"] == pytest.approx(0.5, abs=1e-5)
    assert out[-1] == str(path) and "a random object gIoU 0.500" in out[-3]
    area = metrics["chance"]["target_area_fraction"]
    assert 0 < area < 0.5 and out[-2].endswith(f"inside the target {100 * area:.1f} % of the time (mean target area)")
    with pytest.raises(SystemExit, match="synthetic_config.json"):
        report.main(["--out", str(tmp_path / "r2"), "--dataset_dir", str(tmp_path / "none"), "--run", name,
                     train_dir, eval_dir])  # fmt: skip


def test_chance_scores_of_a_written_split(tmp_path):
    from read.data.synthetic import SyntheticConfig, generate_scene, make_synthetic

    # One object per scene: picking "a random object" is picking the target.
    one = SyntheticConfig(image_size=64, num_objects=(1, 1), long_fraction=0.0)
    make_synthetic(str(tmp_path / "one"), 0, 6, 0, seed=3, cfg=one)
    scores = report.chance_scores(str(tmp_path / "one"), "val")
    assert scores["num_images"] == 6
    for name in ("random_object", "all_objects"):
        assert scores["overall"][name]["giou"] == pytest.approx(1.0, abs=1e-6)
        assert scores["overall"][name]["num_masks"] == 6
    assert scores["long"]["random_object"]["num_masks"] == 0

    # Two non-overlapping objects: the expected IoU of a random pick is 1/2 for every scene; the union of both
    # scores |target| / (|a| + |b|), recomputed here from the redrawn objects.
    two = SyntheticConfig(image_size=96, num_objects=(2, 2), long_fraction=0.5)
    make_synthetic(str(tmp_path / "two"), 0, 8, 0, seed=5, cfg=two)
    scores = report.chance_scores(str(tmp_path / "two"), "val")
    assert scores["overall"]["random_object"]["giou"] == pytest.approx(0.5, abs=1e-5)
    want, areas = [], []
    for i in range(8):
        _, ann, objects = generate_scene(two, "val", i, 5)
        target = objects[ann["synthetic"]["target"]].visible.sum()
        want.append(target / sum(int(o.visible.sum()) for o in objects))
        areas.append(target / 96**2)
    assert scores["overall"]["all_objects"]["giou"] == pytest.approx(float(np.mean(want)), abs=1e-5)
    assert scores["target_area_fraction"] == pytest.approx(float(np.mean(areas)), rel=1e-9)
    assert scores["short"]["random_object"]["num_masks"] + scores["long"]["random_object"]["num_masks"] == 8
    with pytest.raises(FileNotFoundError, match="synthetic_config.json"):
        report.chance_scores(str(tmp_path / "missing"), "val")
