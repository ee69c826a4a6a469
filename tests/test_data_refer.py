"""REFER / G_REFER readers, the referring training source and the RefCOCO / FP-RefCOCO evaluation sets."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest

from fixtures import (
    write_fprefcoco,
    write_grefcoco,
    write_refclef,
    write_refcoco,
    write_refer,
    write_rrefcoco,
)
from read.data import templates as T
from read.data.eval_sets import ReferEvalDataset
from read.data.refer import ReferIndex, split_by_for
from read.data.refer_seg import ReferSegDataset
from read.data.safe_pickle import UnsafePickleError
from read.data.sample import DataError, template_set

READ_T = template_set("read")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    worlds = {
        "refcoco": write_refcoco(d),
        "refcocog": write_refcoco(d, "refcocog", "umd_exclude_unified"),
        "fprefcoco": write_fprefcoco(d),
        "R-refcoco": write_rrefcoco(d),
        "grefcoco": write_grefcoco(d),
        "refclef": write_refclef(d),
    }
    return d, worlds


def test_split_by_rules():
    assert split_by_for("refclef") == "unc"
    assert split_by_for("refcoco") == split_by_for("refcoco+") == "unc_exclude_unified"
    assert split_by_for("R-refcoco") == split_by_for("R-refcoco+") == "unc_exclude_unified"
    assert split_by_for("refcocog") == split_by_for("R-refcocog") == "umd_exclude_unified"
    assert {split_by_for(d) for d in ("fprefcoco", "fprefcoco+", "fprefcocog")} == {"berkeley_exclude_unified"}
    assert split_by_for("grefcoco") == "unc"
    assert split_by_for("refcocog", "lisa") == "umd" and split_by_for("refcoco+", "lisa") == "unc"
    with pytest.raises(ValueError, match="unknown referring dataset"):
        split_by_for("refcoco++")


def test_index_splits_and_masks(root):
    d, w = root
    index = ReferIndex(str(d / "refer_seg"), "refcoco", "unc_exclude_unified")
    assert [r["ref_id"] for r in index.split_refs("train")] == [100, 101]
    assert [r["ref_id"] for r in index.split_refs("testA")] == [103]
    assert [r["ref_id"] for r in index.split_refs("test")] == [103]
    assert index.split_refs("testB") == []
    assert [im["id"] for im in index.split_images("val")] == [2]
    images = index.images
    assert np.array_equal(index.ann_mask(11, images[1]), w["refcoco"]["masks"][11])  # polygon
    assert np.array_equal(index.ann_mask(12, images[1]), w["refcoco"]["masks"][12])  # compressed RLE
    assert np.array_equal(index.ann_mask(21, images[2]), w["refcoco"]["masks"][21])  # uncompressed RLE
    assert np.array_equal(index.ann_mask([11, 12], images[1]), w["refcoco"]["masks"][11] | w["refcoco"]["masks"][12])
    assert index.ann_mask([-1], images[1]).sum() == 0
    with pytest.raises(DataError, match="annotation 999"):
        index.ann_mask(999, images[1])


def test_missing_refs_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"refs\(unc_exclude_unified\).p"):
        ReferIndex(str(tmp_path / "refer_seg"), "refcoco", "unc_exclude_unified")


def test_malicious_refs_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    write_refcoco(tmp_path)
    path = tmp_path / "refer_seg/refcoco/refs(unc_exclude_unified).p"
    path.write_bytes(pickle.dumps([Evil()], protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        ReferIndex(str(tmp_path / "refer_seg"), "refcoco", "unc_exclude_unified")


def samples(ds, n):
    return [ds.sample(np.random.default_rng(i)) for i in range(n)]


def test_refcoco_training_rows(root):
    d, w = root
    ds = ReferSegDataset(str(d), ["refcoco"], templates=READ_T, num_classes_per_sample=2)
    sentences = {"Left Box": 11, "the box on the left": 11, "small thing bottom right": 12}
    seen = collections.Counter()
    for s in samples(ds, 40):
        assert s.dataset == "refcoco" and s.image.shape == (40, 60, 3)
        assert s.image_path.endswith("images/mscoco/images/train2014/COCO_train2014_000000000001.jpg")
        assert len(s.queries) == 2
        for q in s.queries:
            text = q.meta["query"]
            seen[text] += 1
            (_, question), (_, answer) = q.messages
            assert question in {t.format(class_name=text.lower()) for t in T.SHORT_QUESTION}
            assert answer in {t.format(class_name=text.strip().lower()) for t in T.SHORT_ANSWER}
            assert np.array_equal(q.masks[0], w["refcoco"]["masks"][sentences[text]])
    assert set(seen) == set(sentences)


def test_fprefcoco_corrections_and_rrefcoco_denials(root):
    d, _ = root
    fp = ReferSegDataset(str(d), ["fprefcoco"], templates=READ_T, name="correct_refer_seg")
    for s in samples(fp, 10):
        by_text = {q.meta["query"]: q for q in s.queries}
        q = by_text["the Green Dog"]
        assert q.meta["exists"] is False and q.masks.shape == (0, 40, 60)
        answers = {t.format(class_name="the green dog", gt_name="the box") for t in T.CORRECT_ANSWER}
        assert q.messages[1][1] in answers
        assert by_text["the box"].masks.shape == (1, 40, 60)
    neg = ReferSegDataset(str(d), ["R-refcoco"], templates=READ_T, name="neg_refer_seg")
    for s in samples(neg, 10):
        q = {q.meta["query"]: q for q in s.queries}["a purple zebra"]
        assert q.messages[1][1] in {t.format(class_name="a purple zebra") for t in T.NEG_ANSWER}
        assert q.masks.shape[0] == 0


def test_grefcoco_multi_and_no_target(root):
    d, w = root
    ds = ReferSegDataset(str(d), ["grefcoco"], templates=READ_T)
    s = ds.sample(np.random.default_rng(0))
    by_text = {q.meta["query"]: q for q in s.queries}
    assert np.array_equal(by_text["both things"].masks[0], w["grefcoco"]["masks"][11] | w["grefcoco"]["masks"][12])
    # No target: a [SEG] answer with an empty mask (LISA).
    assert by_text["the elephant"].masks.shape == (1, 40, 60) and by_text["the elephant"].masks.sum() == 0


def test_refclef_images(root):
    d, w = root
    s = ReferSegDataset(str(d), ["refclef"], templates=READ_T).sample(np.random.default_rng(0))
    assert s.image_path.endswith("images/saiapr_tc-12/7.jpg")
    assert np.array_equal(s.queries[0].masks[0], w["refclef"]["mask"])


def test_image_size_mismatch_is_reported(tmp_path):
    world = write_refcoco(tmp_path)
    images = [dict(im) for im in world["images"]]
    images[0]["height"] = 41
    write_refer(tmp_path, "refcoco", "unc_exclude_unified", images, world["anns"], world["refs"])
    ds = ReferSegDataset(str(tmp_path), ["refcoco"], templates=READ_T)
    with pytest.raises(DataError, match="COCO_train2014_000000000001.jpg: image is 40x60 but the annotation"):
        ds.sample(np.random.default_rng(0))


def test_refcoco_eval_all_sentences_seeded(root):
    d, w = root
    ds = ReferEvalDataset(str(d), "refcoco", "val")
    assert len(ds) == 1
    s = ds[0]
    assert [q.meta["query"] for q in s.queries] == ["top left corner", "corner block"]
    assert [q.meta["sent_id"] for q in s.queries] == [0, 1]
    for q in s.queries:
        assert np.array_equal(q.masks[0], w["refcoco"]["masks"][21])
        assert q.messages[0][1] in {t.format(class_name=q.meta["query"]) for t in T.SHORT_QUESTION}
    # Same prompts from a fresh instance (no dependence on global RNG state or workers); another seed differs.
    again = ReferEvalDataset(str(d), "refcoco", "val")[0]
    assert [q.messages for q in again.queries] == [q.messages for q in s.queries]
    prompts = {tuple(q.messages[0][1] for q in ReferEvalDataset(str(d), "refcoco", "val", seed=k)[0].queries)
               for k in range(6)}  # fmt: skip
    assert len(prompts) > 1


def test_refcoco_eval_lisa_prompt(root):
    d, _ = root
    (q,) = ReferEvalDataset(str(d), "refcocog", "testA", prompts="lisa")[0].queries
    assert q.messages[0][1] == "<image>\n What is tiny square in this image? Please output segmentation mask."
    assert q.messages[1][1] == "[SEG]."


def test_fprefcoco_eval_generation_masks(root):
    d, w = root
    ds = ReferEvalDataset(str(d), "fprefcoco", "val", generation=True)
    s = ds[0]
    exists = [q.meta["exists"] for q in s.queries]
    assert exists == [True, False]
    for q in s.queries:
        assert q.messages[1] == ("assistant", None)
        assert q.masks.shape == (1, 32, 48)
    assert np.array_equal(s.queries[0].masks[0], w["fprefcoco"]["masks"][21])
    assert s.queries[1].masks.sum() == 0
    # Teacher forcing: the false premise gets a correction and no mask.
    tf = ReferEvalDataset(str(d), "fprefcoco", "val")[0]
    assert tf.queries[1].masks.shape == (0, 32, 48)
    answers = {t.format(class_name="a flying cat", gt_name="corner block") for t in T.CORRECT_ANSWER}
    assert tf.queries[1].messages[1][1] in answers
