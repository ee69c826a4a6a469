"""The synthetic ReasonSeg generator: format, exact masks, query semantics, held-out combinations, determinism."""

from __future__ import annotations

import filecmp
import json
import re

import numpy as np
import pytest

from read.data.eval_sets import ReasonSegEvalDataset
from read.data.masks import reason_seg_mask
from read.data.reason_seg import ReasonSegDataset, load_reason_seg_item
from read.data.sample import template_set
from read.data.synthetic import SyntheticConfig, generate_item, make_synthetic, write_split

CFG = SyntheticConfig()


def items(split, n, cfg=CFG, seed=0):
    return [generate_item(cfg, split, i, seed) for i in range(n)]


def test_item_is_deterministic():
    a_img, a_ann = generate_item(CFG, "train", 5, 0)
    b_img, b_ann = generate_item(CFG, "train", 5, 0)
    assert np.array_equal(a_img, b_img) and a_ann == b_ann
    c_img, _ = generate_item(CFG, "train", 6, 0)
    d_img, _ = generate_item(CFG, "train", 5, 1)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)


def test_masks_are_exactly_the_target_pixels():
    for image, ann in items("train", 40) + items("test", 20):
        p = CFG.image_size
        assert image.shape == (p, p, 3) and image.dtype == np.uint8
        mask = reason_seg_mask(ann["shapes"], p, p)
        assert set(np.unique(mask)) == {0, 1}
        colour = image[mask == 1][0]
        same_colour = (image == colour).all(-1)
        assert np.array_equal(same_colour, mask == 1)  # every target pixel, and nothing else, has its colour
        assert mask.sum() >= CFG.min_visible_pixels


def test_occlusion_gives_exact_visible_masks():
    cfg = SyntheticConfig(num_objects=(4, 5), max_occlusion=0.4, object_size=(0.35, 0.5))
    occluded = 0
    for image, ann in items("train", 30, cfg):
        mask = reason_seg_mask(ann["shapes"], cfg.image_size, cfg.image_size)
        colour = image[mask == 1][0]
        assert np.array_equal((image == colour).all(-1), mask == 1)
        target = ann["synthetic"]["objects"][ann["synthetic"]["target"]]
        occluded += int(mask.sum()) < target["area"]
    assert occluded > 0


def _resolve_short(name, objects):
    """Indices of the objects a short name ("red star", "star", "red shape") designates."""
    words = name.split()
    if len(words) == 1:
        return [i for i, o in enumerate(objects) if o["shape"] == words[0]]
    color, noun = words
    return [i for i, o in enumerate(objects) if o["color"] == color and noun in (o["shape"], "shape", "object")]


def _check_long(text, objects, target):
    """Assert that a long query picks ``target``; returns the rule that was checked."""
    xs = [o["center"][0] for o in objects]
    ys = [o["center"][1] for o in objects]
    areas = [o["area"] for o in objects]
    extremes = {"furthest to the right": (xs, max), "rightmost": (xs, max), "furthest to the left": (xs, min),
                "leftmost": (xs, min), "closest to the top": (ys, min), "topmost": (ys, min),
                "closest to the bottom": (ys, max), "bottommost": (ys, max), "largest": (areas, max),
                "biggest": (areas, max), "most space": (areas, max), "smallest": (areas, min),
                "tiniest": (areas, min), "least space": (areas, min)}  # fmt: skip
    for phrase, (values, best) in extremes.items():
        if phrase in text:
            assert values[target] == best(values), text
            return "superlative"
    relations = {"to the left of": (xs, -1), "to the right of": (xs, 1), "above": (ys, -1), "below": (ys, 1)}
    for phrase, (values, sign) in relations.items():
        m = re.search(phrase + r" the (.+?)[?.]", text)
        if m:
            (anchor,) = _resolve_short(m.group(1), objects)
            assert sign * (values[target] - values[anchor]) > 0, text
            return "relation"
    m = re.search(r"same colour as the (.+?)[?.]", text)
    if m:
        (anchor,) = _resolve_short(m.group(1), objects)
        assert anchor != target and objects[anchor]["color"] == objects[target]["color"], text
        return "chained"
    m = re.fullmatch(r"There are \w+ (\w+)s in the image\. Which one is (\w+)\?", text) or re.fullmatch(
        r"Count the (\w+)s: there are \w+\. Segment the (\w+) one\.", text
    )
    if m:
        shape, color = m.group(1), m.group(2)
        assert (objects[target]["shape"], objects[target]["color"]) == (shape, color), text
        return "counting"
    m = re.search(r"two (\w+ shapes|\w+s)\b", text)
    assert m, text
    group = m.group(1)
    if group.endswith(" shapes"):
        members = [i for i, o in enumerate(objects) if o["color"] == group.split()[0]]
    else:
        members = [i for i, o in enumerate(objects) if o["shape"] + "s" == group]
    assert len(members) == 2 and target in members, text
    other = members[1 - members.index(target)]
    larger = any(w in text for w in ("larger", "bigger"))
    assert (areas[target] > areas[other]) == larger, text
    return "comparison"


def test_queries_identify_the_target():
    checked = set()
    for _, ann in items("train", 150):
        syn = ann["synthetic"]
        for text in ann["text"]:
            if syn["kind"] == "short":
                assert not ann["is_sentence"]
                assert _resolve_short(text, syn["objects"]) == [syn["target"]], text
                checked.add("short")
            else:
                assert ann["is_sentence"]
                checked.add(_check_long(text, syn["objects"], syn["target"]))
    assert checked == {"short", "superlative", "relation", "chained", "counting", "comparison"}


def test_holdout_combinations():
    held = set(CFG.holdout)
    for split in ("train", "val"):
        for _, ann in items(split, 60):
            assert not any((o["color"], o["shape"]) in held for o in ann["synthetic"]["objects"])
            assert ann["synthetic"]["held_out_target"] is False
    test = [ann for _, ann in items("test", 80)]
    flagged = [a for a in test if a["synthetic"]["held_out_target"]]
    assert 20 < len(flagged) < 60  # holdout_target_prob = 0.5
    for a in flagged:
        t = a["synthetic"]["objects"][a["synthetic"]["target"]]
        assert (t["color"], t["shape"]) in held


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_long_fraction(fraction):
    cfg = SyntheticConfig(long_fraction=fraction)
    assert {ann["is_sentence"] for _, ann in items("val", 20, cfg)} == {bool(fraction)}


def test_num_objects_and_size_knobs():
    cfg = SyntheticConfig(num_objects=(5, 5), object_size=(0.15, 0.2), image_size=128)
    for image, ann in items("train", 10, cfg):
        assert image.shape == (128, 128, 3) and len(ann["synthetic"]["objects"]) == 5
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticConfig(num_objects=(3, 2))


def test_written_dataset_is_read_by_the_loaders(tmp_path):
    counts = make_synthetic(str(tmp_path), 12, 4, 4, seed=3)
    assert counts == {"train": 12, "val": 4, "test": 4}
    root = tmp_path / "reason_seg" / "ReasonSeg"
    assert len(list((root / "train").glob("*.jpg"))) == 12 and len(list((root / "train").glob("*.json"))) == 12
    assert json.loads((root / "synthetic_config.json").read_text())["seed"] == 3
    image, ann, mask = load_reason_seg_item(str(root / "train" / "train_000000.jpg"))
    expected_image, expected_ann = generate_item(CFG, "train", 0, 3)
    assert ann.text == expected_ann["text"]
    assert np.array_equal(mask, reason_seg_mask(expected_ann["shapes"], *image.shape[:2]))
    assert np.abs(image.astype(int) - expected_image.astype(int)).mean() < 3  # JPEG quality 95
    train = ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=template_set("read"))
    s = train.sample(np.random.default_rng(0))
    assert s.queries and all(q.masks.shape[0] == 1 for q in s.queries)
    assert len(ReasonSegEvalDataset(str(tmp_path), "test")) == 4


def test_process_count_does_not_change_output(tmp_path):
    a = write_split(str(tmp_path / "a"), "val", 12, CFG, seed=1, processes=1, chunk=4)
    b = write_split(str(tmp_path / "b"), "val", 12, CFG, seed=1, processes=2, chunk=4)
    assert [p.split("/")[-1] for p in a] == [p.split("/")[-1] for p in b]
    for pa, pb in zip(a, b):
        assert filecmp.cmp(pa, pb, shallow=False)
        assert filecmp.cmp(pa[:-4] + ".json", pb[:-4] + ".json", shallow=False)


def test_explanatory_file_names_each_training_target(tmp_path):
    make_synthetic(str(tmp_path), 10, 3, 0, seed=2)
    root = tmp_path / "reason_seg" / "ReasonSeg"
    items = json.loads((root / "explanatory" / "train.json").read_text())
    assert [i["image"] for i in items] == [f"train_{k:06d}.jpg" for k in range(10)]
    for k, item in enumerate(items):
        _, ann = generate_item(CFG, "train", k, 2)
        target = ann["synthetic"]["objects"][ann["synthetic"]["target"]]
        place, name = item["outputs"].rstrip(".").split(", ")
        assert name == f"{target['color']} {target['shape']}"
        x, y = target["center"]
        third = CFG.image_size / 3
        row = "top" if y < third else "bottom" if y >= 2 * third else None
        col = "left" if x < third else "right" if x >= 2 * third else None
        want = {(None, None): "centre"}.get((row, col), f"{row or 'middle'} {col or 'centre'}")
        assert place == want, (place, target["center"])
        assert item["query"] == ann["text"][0]
    # LISA's explanatory training reads it: with probability 1 the answer is the explanation alone (no mask).
    ds = ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=template_set("lisa"), explanatory=1.0)
    s = ds.sample(np.random.default_rng(0))
    name = s.image_path.split("/")[-1]
    want = next(i["outputs"] for i in items if i["image"] == name)
    assert s.queries[0].messages[-1][1] == want
    assert s.queries[0].masks.shape[0] == 0


def test_false_premise_queries_name_absent_objects_and_do_not_change_the_scene():
    for i in range(12):
        image, ann = generate_item(CFG, "train", i, 4)
        present = {(o["color"], o["shape"]) for o in ann["synthetic"]["objects"]}
        ((query, is_sentence, answer),) = ann["false_premise_QA"]
        colour, shape = query.split(" ")
        assert (colour, shape) not in present and (colour, shape) not in set(CFG.holdout)
        assert is_sentence is False and answer == f"There is no {colour} {shape} in this image."
        # the triples come from their own random stream: the scene and its query are those drawn without them
        plain_image, plain_ann = generate_item(SyntheticConfig(**{**CFG.__dict__, "false_premise_queries": 0}),
                                               "train", i, 4)  # fmt: skip
        assert np.array_equal(image, plain_image) and "false_premise_QA" not in plain_ann
        assert plain_ann["text"] == ann["text"] and plain_ann["shapes"] == ann["shapes"]
