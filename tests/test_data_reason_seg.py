"""ReasonSeg loader (training and evaluation) on a tiny on-disk ReasonSeg."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from fixtures import rect_mask, rect_polygon, write_explanatory, write_reason_seg, write_reason_seg_item
from read.data import templates as T
from read.data.eval_sets import ReasonSegEvalDataset, build_eval_dataset
from read.data.reason_seg import ReasonSegDataset, read_reason_seg_json
from read.data.sample import ASSISTANT, USER, DataError, template_set

READ_T = template_set("read")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_reason_seg(d)
    return d


def target_with_ignore_hole() -> np.ndarray:
    m = rect_mask(40, 60, 10, 5, 29, 24)
    m[10:16, 15:21] = 0
    return m


def test_json_cp1252_fallback(root):
    ann = read_reason_seg_json(str(root / "reason_seg/ReasonSeg/train/c.json"))
    assert ann.text == ["the caf\u00e9 sign"]
    assert ann.false_premise_qa is None and ann.is_sentence is False


def test_json_errors_name_file_and_key(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"text": ["a"], "shapes": []}')
    with pytest.raises(DataError, match=r"x.json: missing key 'is_sentence'"):
        read_reason_seg_json(str(p))
    p.write_text("{not json")
    with pytest.raises(DataError, match="x.json: invalid JSON"):
        read_reason_seg_json(str(p))


def draw(ds, n, start=0):
    return [ds.sample(np.random.default_rng(start + i)) for i in range(n)]


def test_training_rows_templates_and_masks(root):
    ds = ReasonSegDataset(str(root), "ReasonSeg|train", templates=READ_T, num_classes_per_sample=3,
                          false_premise_prob=0.0)  # fmt: skip
    texts = {"a.jpg": ["the red box", "The Crimson Box"], "b.jpg": ["Which object would you sit on?"],
             "c.jpg": ["the caf\u00e9 sign"]}  # fmt: skip
    seen = collections.Counter()
    for s in draw(ds, 30):
        name = s.image_path.split("/")[-1]
        seen[name] += 1
        assert s.dataset == "reason_seg" and s.image.shape == (40, 60, 3)
        assert len(s.queries) == len(texts[name])  # every phrasing once (fewer than num_classes_per_sample)
        asked = set()
        for q in s.queries:
            (r0, question), (r1, answer) = q.messages
            assert (r0, r1) == (USER, ASSISTANT)
            assert answer in T.LONG_ANSWER
            text = q.meta["query"]
            asked.add(text)
            if name == "b.jpg":
                assert question in {t.format(sent=text) for t in T.LONG_QUESTION}
                assert np.array_equal(q.masks[0], rect_mask(40, 60, 2, 2, 12, 30))
            else:
                assert question in {t.format(class_name=text.lower()) for t in T.SHORT_QUESTION}
            if name == "a.jpg":  # the ignore region counts as background in training
                assert np.array_equal(q.masks[0], target_with_ignore_hole())
            assert q.masks.shape == (1, 40, 60) and q.num_seg_tokens() == 1
        assert asked == set(texts[name])
    assert set(seen) == set(texts)


def test_num_classes_per_sample_limits_rows(root):
    ds = ReasonSegDataset(str(root), "ReasonSeg|train", templates=READ_T, num_classes_per_sample=1,
                          false_premise_prob=0.0)  # fmt: skip
    picked = collections.Counter()
    for s in draw(ds, 60):
        assert len(s.queries) == 1
        if s.image_path.endswith("a.jpg"):
            picked[s.queries[0].meta["query"]] += 1
    assert set(picked) == {"the red box", "The Crimson Box"}


def test_false_premise_mode_only_with_fp_qa(root):
    ds = ReasonSegDataset(str(root), "ReasonSeg|train", templates=READ_T, num_classes_per_sample=3,
                          false_premise_prob=0.5)  # fmt: skip
    fp_by_image = collections.Counter()
    draws_by_image = collections.Counter()
    for s in draw(ds, 200):
        name = s.image_path.split("/")[-1]
        draws_by_image[name] += 1
        if any(q.meta["mode"] == "false_premise_correction" for q in s.queries):
            fp_by_image[name] += 1
            assert len(s.queries) == 2
            for q in s.queries:
                (_, question), (_, answer) = q.messages
                assert q.masks.shape == (0, 40, 60) and q.meta["exists"] is False
                if q.meta["query"] == "the blue car":  # short FP query: not lowercased
                    assert question in {t.format(class_name="the blue car") for t in T.SHORT_QUESTION}
                    assert answer == "There is no blue car here, but there is a red box."
                else:
                    assert question in {t.format(sent="What can fly in this picture?") for t in T.LONG_QUESTION}
                    assert answer == "Nothing here can fly."
    # Only a.jpg has false_premise_QA [FIX: the reference raises on the others].
    assert set(fp_by_image) == {"a.jpg"}
    share = fp_by_image["a.jpg"] / draws_by_image["a.jpg"]
    assert 0.3 < share < 0.7


def test_explanatory_modes(tmp_path):
    write_reason_seg_item(tmp_path, "train", "e", text=["the lamp"], seed=9)
    write_explanatory(tmp_path, [{"image": "e.jpg", "query": "the lamp", "outputs": "It gives light."}])
    ds = ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=READ_T, explanatory=0.3)
    kinds = collections.Counter()
    for s in draw(ds, 300):
        (q,) = s.queries
        (_, question), (_, answer) = q.messages
        if answer == "It gives light.":
            kinds["text"] += 1
            assert question == "<image>\nthe lamp" and q.masks.shape[0] == 0
        elif answer.endswith(" It gives light."):
            kinds["seg+explanation"] += 1
            assert answer[: -len(" It gives light.")] in T.LONG_ANSWER
            assert question in {f"<image>\nthe lamp {e}" for e in T.EXPLANATORY_QUESTION}
            assert q.masks.shape[0] == 1
        else:
            kinds["seg"] += 1
            assert answer in T.LONG_ANSWER
    assert abs(kinds["text"] / 300 - 0.3) < 0.09
    assert kinds["seg"] > 60 and kinds["seg+explanation"] > 60


def test_explanatory_missing_file_is_not_fatal(root):
    ds = ReasonSegDataset(str(root), "ReasonSeg|train", templates=READ_T, explanatory=0.5)
    assert ds.explanations == {}


def test_missing_split_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="ReasonSeg/train"):
        ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=READ_T)


def test_bad_polygon_is_a_data_error(tmp_path):
    write_reason_seg_item(tmp_path, "train", "z", shapes=[{"label": "t", "points": []}])
    ds = ReasonSegDataset(str(tmp_path), "ReasonSeg|train", templates=READ_T)
    with pytest.raises(DataError, match="z.json"):
        ds.sample(np.random.default_rng(0))


def test_eval_val_fixed_templates_keep_ignore(root):
    ds = ReasonSegEvalDataset(str(root), "val")
    assert len(ds) == 2
    s = ds[0]  # v1: short "the lamp", with an ignore region
    (q,) = s.queries
    assert q.messages == [(USER, "<image>\nWhat is the lamp in this image? Please output segmentation mask."),
                          (ASSISTANT, "Sure, the segmentation result is [SEG].")]  # fmt: skip
    expected = rect_mask(40, 60, 10, 5, 29, 24)
    expected[10:16, 15:21] = 255
    assert np.array_equal(q.masks[0], expected)
    (q2,) = ds[1].queries
    assert q2.messages[0][1] == "<image>\nWhat keeps the rain off? Please output segmentation mask."


def test_eval_lisa_prompts_and_generation(root):
    ds = ReasonSegEvalDataset(str(root), "val", prompts="lisa", generation=True)
    (q,) = ds[1].queries
    assert q.messages == [(USER, "<image>\n What keeps the rain off? Please output segmentation mask."),
                          (ASSISTANT, None)]  # fmt: skip
    assert q.masks.shape == (1, 40, 60)


def test_eval_subsets(root):
    assert len(build_eval_dataset(str(root), "ReasonSeg", "test")) == 3
    short = build_eval_dataset(str(root), "ReasonSeg", "test_short")
    long = build_eval_dataset(str(root), "ReasonSeg", "test_long")
    assert len(short) == 2 and len(long) == 1
    assert all(not s.queries[0].meta["is_sentence"] for s in (short[0], short[1]))
    assert long[0].queries[0].meta["is_sentence"]
    # Short queries are lowercased in the READ template.
    assert "What is the dog in this image?" in short[0].queries[0].messages[0][1]


def test_multiple_target_polygons(tmp_path):
    shapes = [{"label": "a", "points": rect_polygon(0, 0, 3, 3)}, {"label": "b", "points": rect_polygon(6, 6, 9, 9)}]
    write_reason_seg_item(tmp_path, "val", "m", size=(12, 12), shapes=shapes)
    (q,) = ReasonSegEvalDataset(str(tmp_path), "val")[0].queries
    assert np.array_equal(q.masks[0], rect_mask(12, 12, 0, 0, 3, 3) | rect_mask(12, 12, 6, 6, 9, 9))


def test_lisa_template_set(root):
    ds = ReasonSegDataset(str(root), "ReasonSeg|train", templates=template_set("lisa"), false_premise_prob=0.0)
    for s in draw(ds, 10):
        for q in s.queries:
            (_, question), (_, answer) = q.messages
            text = q.meta["query"]
            lists = T.LISA_LONG_QUESTION_LIST if q.meta["is_sentence"] else T.LISA_SHORT_QUESTION_LIST
            assert question in {t.format(sent=text, class_name=text.lower()) for t in lists}
            assert answer in T.LISA_ANSWER_LIST
    with pytest.raises(ValueError, match="unknown template set"):
        template_set("sesame")
