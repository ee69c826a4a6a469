"""Semantic / part segmentation sources: label remapping, class lists, masks, false-premise modes."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from fixtures import write_ade20k, write_cocostuff, write_label_png, write_mapillary, write_paco, write_pascal_part
from read.data import templates as T
from read.data.sample import DataError, template_set
from read.data.sem_seg import (
    SemSegDataset,
    ade20k_classes,
    build_sem_seg_source,
    cocostuff_classes,
    load_label_map,
    remap_ade20k,
    remap_cocostuff,
)

READ_T = template_set("read")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    out = {
        "ade20k": write_ade20k(d),
        "cocostuff": write_cocostuff(d),
        "mapillary": write_mapillary(d),
        "paco_lvis": write_paco(d),
        "pascal_part": write_pascal_part(d),
    }
    return d, out


def test_class_lists_load_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ade = ade20k_classes()
    stuff = cocostuff_classes()
    assert len(ade) == 150 and ade[0] == "wall" and ade[2] == "sky" and ade[-1] == "flag"
    assert len(stuff) == 182 and stuff[0] == "person" and stuff[95] == "building-other" and stuff[-1] == "wood"
    assert sum("-" in c for c in stuff) == 28  # building-other ... window-other


def test_remap_ade20k():
    raw = np.array([[0, 1, 2], [150, 255, 3]], dtype=np.uint8)
    assert remap_ade20k(raw).tolist() == [[255, 0, 1], [149, 255, 2]]


def test_remap_cocostuff():
    classes = cocostuff_classes()
    raw = np.array([[0, 95, 255], [181, 168, 12]], dtype=np.uint8)  # person, building-other, -, wood, tree, street sign
    assert remap_cocostuff(raw, classes).tolist() == [[0, 255, 255], [181, 168, 12]]


def test_ade20k_true_premise_masks(root):
    d, out = root
    ds = SemSegDataset(str(d), ["ade20k"], templates=READ_T, denial_prob=0.0, correction_prob=0.0)
    names = set()
    for i in range(12):
        s = ds.sample(np.random.default_rng(i))
        assert s.dataset == "ade20k" and s.image_path.endswith("ADE_train_00000000.jpg")  # image 2 has no label
        for q in s.queries:
            name = q.meta["query"]
            names.add(name)
            raw_id = {"wall": 1, "sky": 3}[name]
            assert np.array_equal(q.masks[0], (out["ade20k"]["label"] == raw_id).astype(np.uint8))
            (_, question), (_, answer) = q.messages
            assert question in {t.format(class_name=name) for t in T.SHORT_QUESTION}
            assert answer in {t.format(class_name=name) for t in T.SHORT_ANSWER}
    assert names == {"wall", "sky"}


def test_cocostuff_skips_dashed_classes(root):
    d, out = root
    ds = SemSegDataset(str(d), ["cocostuff"], templates=READ_T, denial_prob=0.0, correction_prob=0.0)
    for i in range(5):
        (q,) = ds.sample(np.random.default_rng(i)).queries
        assert q.meta["query"] == "person"
        assert np.array_equal(q.masks[0], (out["cocostuff"]["label"] == 0).astype(np.uint8))
    src = build_sem_seg_source(str(d), "cocostuff")
    for i in range(20):  # dashed classes are never asked about as false premises either [FIX]
        drawn = src.draw(np.random.default_rng(i), 3)
        assert not any("-" in n for n in drawn.negatives)
    assert src.images[0].endswith(os.path.join("coco", "train2017", "000000000009.jpg"))


def test_mapillary_palette_and_names(root):
    d, out = root
    src = build_sem_seg_source(str(d), "mapillary")
    assert src.classes == ["bird", "curb", "traffic light"]
    drawn = src.draw(np.random.default_rng(0), 3)
    assert sorted(drawn.positives) == ["bird", "traffic light"] and drawn.negatives == ["curb"]
    masks = dict(zip(drawn.positives, drawn.masks))
    assert np.array_equal(masks["traffic light"], (out["mapillary"]["label"] == 2).astype(np.uint8))


def test_part_names(root):
    d, out = root
    paco = build_sem_seg_source(str(d), "paco_lvis")
    assert paco.class_map == {1: ("mug", "handle"), 2: "knife"}
    phrases = collections.Counter(paco.class_name(np.random.default_rng(i), 1) for i in range(200))
    assert set(phrases) == {"mug handle", "the handle of the mug"}
    assert 60 < phrases["mug handle"] < 140
    drawn = paco.draw(np.random.default_rng(0), 3)
    assert np.array_equal(drawn.masks[0], out["paco_lvis"]["mask"])
    assert drawn.negatives == ["knife"]
    assert drawn.image_path.endswith(os.path.join("coco", "train2017", "000000000005.jpg"))
    pascal = build_sem_seg_source(str(d), "pascal_part")
    assert pascal.class_map == {3: ("dog", "head"), 4: ("cat", "tail")}
    drawn = pascal.draw(np.random.default_rng(0), 3)
    assert np.array_equal(drawn.masks[0], out["pascal_part"]["mask"])
    assert drawn.image_path.endswith("VOCdevkit/VOC2010/JPEGImages/2008_000001.jpg")


def test_false_premise_modes(root):
    d, _ = root
    ds = SemSegDataset(str(d), ["pascal_part"], templates=READ_T, denial_prob=0.3, correction_prob=0.3)
    modes = collections.Counter()
    for i in range(300):
        (q,) = ds.sample(np.random.default_rng(i)).queries
        modes[q.meta["mode"]] += 1
        (_, question), (_, answer) = q.messages
        if q.meta["mode"] == "true_premise":
            assert q.masks.shape == (1, 24, 32)
            continue
        assert q.masks.shape == (0, 24, 32) and q.meta["exists"] is False
        neg = q.meta["query"]
        assert neg in ("cat tail", "the tail of the cat")
        assert question in {t.format(class_name=neg) for t in T.SHORT_QUESTION}
        if q.meta["mode"] == "false_premise_denial":
            assert answer in {t.format(class_name=neg) for t in T.NEG_ANSWER}
        else:
            gts = ("dog head", "the head of the dog")
            assert answer in {t.format(class_name=neg, gt_name=g) for t in T.CORRECT_ANSWER for g in gts}
    for mode, p in (("true_premise", 0.4), ("false_premise_denial", 0.3), ("false_premise_correction", 0.3)):
        assert abs(modes[mode] / 300 - p) < 0.1, modes


def test_label_map_errors(tmp_path):
    with pytest.raises(DataError, match="label map not found: .*x.png"):
        load_label_map(str(tmp_path / "x.png"))
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png: label maps must be single-channel"):
        load_label_map(str(tmp_path / "rgb.png"))


def test_no_valid_label_anywhere(tmp_path):
    write_ade20k(tmp_path)
    write_label_png(tmp_path / "ade20k/annotations/training/ADE_train_00000000.png", np.zeros((24, 32), np.uint8))
    ds = SemSegDataset(str(tmp_path), ["ade20k"], templates=READ_T, max_redraws=5)
    with pytest.raises(DataError, match="ade20k: 5 consecutive images without a valid label"):
        ds.sample(np.random.default_rng(0))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="partimagenet"):
        build_sem_seg_source("/nonexistent", "partimagenet")
