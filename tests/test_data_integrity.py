"""Bad input in the data files: degenerate ground truth, missing and truncated images, both RefCOCO refs-file
conventions. Training skips such samples (counted, each named), evaluation refuses the split (naming the files)
unless asked to leave the bad queries out."""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures import (
    DEGENERATE_SHAPES,
    _sent,
    refcoco_world,
    truncate_file,
    write_bad_reason_seg_items,
    write_jpeg,
    write_reason_seg_item,
    write_refcoco,
    write_refer,
)
from read.data.collate import ReadCollator
from read.data.eval_sets import InvalidSplitError, build_eval_dataset
from read.data.masks import reason_seg_problems
from read.data.mixture import MixtureDataset
from read.data.reason_seg import ReasonSegDataset, item_problems, load_reason_seg_item
from read.data.refer import ReferIndex, find_refs_file
from read.data.refer_seg import ReferSegDataset
from read.data.sample import DataError, InvalidAnnotation, template_set
from read.data.transforms import ImageLoadError, image_size, load_image
from read.errors import UserError

TEMPLATES = template_set("read")


# ----------------------------------------------------------------------------------------------------------
# degenerate ReasonSeg ground truth


@pytest.mark.parametrize("kind", sorted(DEGENERATE_SHAPES))
def test_degenerate_reason_seg_ground_truth_is_named(kind, tmp_path):
    shapes, reason = DEGENERATE_SHAPES[kind]
    problems = reason_seg_problems(shapes, 40, 60)
    assert len(problems) == 1 and reason in problems[0]
    image = write_reason_seg_item(tmp_path, "val", kind, size=(40, 60), shapes=shapes)
    json_path = str(image.with_suffix(".json"))
    assert item_problems(str(image)) == [f"{json_path}: {problems[0]}"]
    with pytest.raises(InvalidAnnotation, match="^" + re.escape(f"{json_path}: {problems[0]}")) as caught:
        load_reason_seg_item(str(image))
    assert isinstance(caught.value, UserError)


def test_usable_polygons_are_not_flagged(tmp_path):
    """Points a little outside the image are clipped (as in the reference); a stray degenerate polygon next to a
    usable target is drawn as before; a label 'flag' is skipped."""
    shapes = [
        {"label": "target", "points": [[-3.5, -2], [20, -1], [20, 10], [-2, 10]]},
        {"label": "target", "points": [[40, 30], [41, 31]]},
        {"label": "flag", "points": [[0, 0]]},
    ]
    assert reason_seg_problems(shapes, 40, 60) == []
    image = write_reason_seg_item(tmp_path, "val", "edge", size=(40, 60), shapes=shapes)
    _, _, mask = load_reason_seg_item(str(image))
    assert mask[0:11, 0:21].all() and mask[30:32, 40:42].sum() == 2 and int(mask.sum()) == 11 * 21 + 2


def test_malformed_shape_is_one_problem_not_a_crash(tmp_path):
    image = write_reason_seg_item(tmp_path, "val", "odd", shapes=[{"label": "target", "points": [["a", "b"]]}])
    (problem,) = item_problems(str(image))
    assert problem.startswith(f"{image.with_suffix('.json')}: shapes[0]: polygon points are not numeric pairs")


def _split_with_four_bad(root: Path) -> list[str]:
    """13 usable images and 4 unusable annotations (2-point polygon, outside, 1e10, no target) in ReasonSeg val."""
    for i in range(13):
        write_reason_seg_item(root, "val", f"ok{i:02d}", seed=i)
    bad = []
    for kind in ("two_points", "outside", "absurd", "no_shapes"):
        image = write_reason_seg_item(root, "val", f"z_{kind}", shapes=DEGENERATE_SHAPES[kind][0])
        bad.append(str(image.with_suffix(".json")))
    return bad


def test_evaluation_refuses_a_split_with_unusable_ground_truth(tmp_path):
    bad = _split_with_four_bad(tmp_path)
    with pytest.raises(InvalidSplitError) as caught:
        build_eval_dataset(str(tmp_path), "ReasonSeg", "val")
    message = str(caught.value)
    assert message.startswith("ReasonSeg val: 4 of 17 queries have ground truth that cannot be scored: ")
    assert all(path in message for path in bad) and "--skip_invalid" in message
    ds = build_eval_dataset(str(tmp_path), "ReasonSeg", "val", skip_invalid=True)
    assert len(ds) == 13 and [i["file"] for i in ds.invalid] == sorted(bad)
    assert not any(p.endswith(tuple(os.path.basename(b)[:-5] + ".jpg" for b in bad)) for p in ds.images)
    assert ds.settings()["skip_invalid"] is True
    # the subsets only look at their own images
    with pytest.raises(InvalidSplitError, match="ReasonSeg val: 4 of 17"):
        build_eval_dataset(str(tmp_path), "ReasonSeg", "val_short")


def test_training_skips_unusable_samples_counted_and_named(tmp_path, caplog):
    for i in range(3):
        write_reason_seg_item(tmp_path, "train", f"ok{i}", seed=i)
    bad = write_bad_reason_seg_items(tmp_path, "train")
    with caplog.at_level(logging.WARNING):
        source = ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=TEMPLATES)
    # the annotation without its image is left out once, by name
    assert source.unpaired == [f"annotation without its image: {bad['missing_image']}"]
    assert "skipping 1 file(s) without their image or annotation: bad_no_image.json" in caplog.text
    assert len(source) == 5
    caplog.clear()
    mixture = MixtureDataset([source], [1.0], 40, seed=0)
    with caplog.at_level(logging.WARNING):
        samples = [mixture[i] for i in range(40)]
    assert all(s.image_path.endswith(("ok0.jpg", "ok1.jpg", "ok2.jpg")) for s in samples)
    skipped = sum(s.skipped for s in samples)
    assert skipped == mixture.skipped["reason_seg"] > 0
    assert caplog.text.count("skipping a bad reason_seg sample") == skipped
    assert str(bad["degenerate"]) in caplog.text and "2 distinct point(s)" in caplog.text
    assert f"{bad['truncated']}: truncated JPEG" in caplog.text
    strict = MixtureDataset([source], [1.0], 40, seed=0, strict=True)
    first_bad = next(i for i, s in enumerate(samples) if s.skipped)
    with pytest.raises(DataError):
        strict[first_bad]


def test_the_collator_adds_up_the_skipped_samples(tmp_path, tiny_tokenizer):
    for i in range(2):
        write_reason_seg_item(tmp_path, "train", f"ok{i}", seed=i)
    write_bad_reason_seg_items(tmp_path, "train")
    source = ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=TEMPLATES)
    mixture = MixtureDataset([source], [1.0], 12, seed=3)
    collator = ReadCollator(tiny_tokenizer, "llava_v1", clip_size=32, sam_size=64, num_image_tokens=16,
                            max_length=512)  # fmt: skip
    samples = [mixture[i] for i in range(12)]
    assert sum(s.skipped for s in samples) > 0
    assert [collator(samples[k : k + 4]).skipped_samples for k in (0, 4, 8)] == [
        sum(s.skipped for s in samples[k : k + 4]) for k in (0, 4, 8)
    ]


# ----------------------------------------------------------------------------------------------------------
# missing and truncated images


def test_truncated_jpeg_is_refused_not_decoded_as_grey(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, size=(64, 80, 3), dtype=np.uint8)
    path = write_jpeg(tmp_path / "cut.jpg", image)
    full = load_image(path)
    truncate_file(path)
    partial = cv2.imread(str(path))
    assert partial is not None and partial.shape == full.shape  # what OpenCV alone accepts
    with pytest.raises(ImageLoadError, match="^" + re.escape(f"{path}: truncated JPEG")):
        load_image(path)
    assert image_size(path) == (64, 80)  # the header is intact: only decoding finds the damage


def test_complete_jpeg_with_trailing_bytes_and_png_load(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, size=(20, 30, 3), dtype=np.uint8)
    path = write_jpeg(tmp_path / "tail.jpg", image)
    reference = load_image(path)
    path.write_bytes(path.read_bytes() + b"\x00" * 16)  # padding after the end-of-image marker
    assert np.array_equal(load_image(path), reference)
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), image)
    assert np.array_equal(load_image(png), image[:, :, ::-1])
    truncate_file(png)
    with pytest.raises(ImageLoadError, match="truncated PNG"):
        load_image(png)


def test_image_size_follows_the_exif_orientation(tmp_path):
    from PIL import Image

    im = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif.tobytes())
    assert image_size(path) == load_image(path).shape[:2] == (40, 20)


def test_evaluation_names_missing_images(tmp_path):
    for i in range(5):
        write_reason_seg_item(tmp_path, "test", f"t{i}", seed=i)
    gone = [tmp_path / "reason_seg/ReasonSeg/test" / f"t{i}.jpg" for i in (1, 3)]
    for p in gone:
        p.unlink()
    with pytest.raises(DataError) as caught:
        build_eval_dataset(str(tmp_path), "ReasonSeg", "test", skip_invalid=True)
    message = str(caught.value)
    assert message.startswith("ReasonSeg test: 2 file(s) without their partner, so the split cannot be scored")
    assert all(f"annotation without its image: {p.with_suffix('.json')}" in message for p in gone)
    # an image without its annotation too
    (tmp_path / "reason_seg/ReasonSeg/test/t1.json").unlink()
    (tmp_path / "reason_seg/ReasonSeg/test/t3.json").unlink()
    (tmp_path / "reason_seg/ReasonSeg/test/t0.json").unlink()
    with pytest.raises(DataError, match=r"1 file\(s\) without their partner, .*: image without its annotation: .*t0"):
        build_eval_dataset(str(tmp_path), "ReasonSeg", "test")


def test_refcoco_evaluation_names_missing_images(tmp_path):
    write_refcoco(tmp_path)
    path = tmp_path / "refer_seg/images/mscoco/images/train2014/COCO_train2014_000000000002.jpg"
    path.unlink()
    with pytest.raises(DataError, match=r"refcoco val: 1 of 1 image\(s\) are missing, .*: " + re.escape(str(path))):
        build_eval_dataset(str(tmp_path), "refcoco", "val")


# ----------------------------------------------------------------------------------------------------------
# RefCOCO: degenerate targets, refs-file conventions, refused pickles


def _refcoco_with_a_bad_val_ref(root: Path) -> None:
    """refcoco val: image 2 with ref 102 (ann 21, usable) and ref 104 (ann 22 made a 2-point polygon), one
    false-premise-free image 3 in testA."""
    w = refcoco_world()
    anns = [dict(a) for a in w["anns"]]
    next(a for a in anns if a["id"] == 22)["segmentation"] = [[30, 20, 40, 24]]
    refs = [
        {"ref_id": 102, "ann_id": 21, "image_id": 2, "category_id": 1, "split": "val",
         "sentences": [_sent(1003, "top left corner")]},
        {"ref_id": 104, "ann_id": 22, "image_id": 2, "category_id": 1, "split": "val",
         "sentences": [_sent(1006, "the thin line"), _sent(1007, "bottom right")]},
        {"ref_id": 100, "ann_id": 11, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [_sent(1000, "left box")]},
        {"ref_id": 105, "ann_id": 22, "image_id": 2, "category_id": 1, "split": "train",
         "sentences": [_sent(1008, "the thin line")]},
    ]  # fmt: skip
    write_refer(root, "refcoco", "unc_exclude_unified", w["images"], anns, refs)


def test_refcoco_ref_without_a_usable_target(tmp_path):
    _refcoco_with_a_bad_val_ref(tmp_path)
    with pytest.raises(InvalidSplitError) as caught:
        build_eval_dataset(str(tmp_path), "refcoco", "val")
    assert "refcoco val: 1 of 2 queries have ground truth that cannot be scored" in str(caught.value)
    assert "ref 104 (image COCO_train2014_000000000002.jpg): annotation 22: no usable polygon: 2 distinct" in str(
        caught.value
    )
    ds = build_eval_dataset(str(tmp_path), "refcoco", "val", skip_invalid=True)
    assert len(ds) == 1 and [q.meta["ref_id"] for q in ds[0].queries] == [102]
    assert len(ds.invalid) == 1 and ds.invalid[0]["file"].endswith("refs(unc_exclude_unified).p")
    # training: drawing ref 105 (same broken annotation) is a named, counted skip
    source = ReferSegDataset(str(tmp_path), ["refcoco"], templates=TEMPLATES, num_classes_per_sample=3)
    mixture = MixtureDataset([source], [1.0], 30, seed=0)
    samples = [mixture[i] for i in range(30)]
    assert sum(s.skipped for s in samples) == mixture.skipped["refer_seg"] > 0
    assert all(q.masks.any() for s in samples for q in s.queries)
    with pytest.raises(InvalidAnnotation, match="ref 105 .* the mask of annotation 22 is empty"):
        for seed in range(50):  # an image-2 draw
            source.sample(np.random.default_rng(seed))


def test_grefcoco_no_target_expressions_stay_scoreable(tmp_path):
    """An empty mask is the true ground truth of a no-target expression (ann_id [-1]): not flagged."""
    from fixtures import write_grefcoco

    write_grefcoco(tmp_path)
    index = ReferIndex.open(str(tmp_path / "refer_seg"), "grefcoco")
    image = index.images[1]
    assert index.target_problem([-1], image) is None and index.target_problem([11, 12], image) is None


@pytest.mark.parametrize(
    "present, protocol, expected",
    [
        (["unc"], "auto", ("unc", "standard")),
        (["unc_exclude_unified"], "auto", ("unc_exclude_unified", "read")),
        (["unc", "unc_exclude_unified"], "auto", ("unc_exclude_unified", "read")),
        (["unc", "unc_exclude_unified"], "lisa", ("unc", "standard")),
    ],
)
def test_refs_convention_is_detected(tmp_path, present, protocol, expected):
    for split_by in present:
        write_refcoco(tmp_path, "refcoco", split_by)
    found = find_refs_file(str(tmp_path / "refer_seg"), "refcoco", protocol)
    assert (found.split_by, found.convention) == expected
    assert found.path == str(tmp_path / "refer_seg/refcoco" / f"refs({expected[0]}).p")
    # evaluation and training use the same file
    ds = build_eval_dataset(str(tmp_path), "refcoco", "val", protocol=protocol)
    assert ds.split.index.refs_path == found.path
    source = ReferSegDataset(str(tmp_path), ["refcoco"], templates=TEMPLATES, protocol=protocol)
    assert source.splits["refcoco"].index.refs_path == found.path


def test_refs_file_missing_names_both_conventions(tmp_path):
    write_refcoco(tmp_path, "refcocog", "umd")
    os.remove(tmp_path / "refer_seg/refcocog/refs(umd).p")
    with pytest.raises(FileNotFoundError, match=r"refs\(umd_exclude_unified\)\.p and .*refs\(umd\)\.p"):
        find_refs_file(str(tmp_path / "refer_seg"), "refcocog")


def test_refused_pickle_is_a_user_error_naming_the_file(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    write_refcoco(tmp_path, "refcoco", "unc")
    path = tmp_path / "refer_seg/refcoco/refs(unc).p"
    path.write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(UserError, match=re.escape(f"{path}: refusing to load global 'posix.system'")):
        build_eval_dataset(str(tmp_path), "refcoco", "val")
    path.write_bytes(pickle.dumps([{"ref_id": 1}], protocol=2)[:-4])
    with pytest.raises(DataError, match=re.escape(f"{path}: not a valid pickle")):
        build_eval_dataset(str(tmp_path), "refcoco", "val")


def test_refcoco_ref_masks_are_exact(tmp_path):
    """The checks do not alter the ground truth: the usable ref keeps its exact mask."""
    _refcoco_with_a_bad_val_ref(tmp_path)
    ds = build_eval_dataset(str(tmp_path), "refcoco", "val", skip_invalid=True)
    (query,) = ds[0].queries
    assert np.array_equal(query.masks[0], refcoco_world()["masks"][21])
