"""Collating samples into ReadBatch with the tiny tokenizer: shapes, masks per [SEG], label masking, dropping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures import write_fprefcoco, write_llava, write_reason_seg, write_refcoco
from read.config import load_config
from read.constants import IGNORE_INDEX
from read.data.collate import EmptyBatchError, ReadCollator
from read.data.eval_sets import ReasonSegEvalDataset, ReferEvalDataset
from read.data.reason_seg import ReasonSegDataset
from read.data.refer_seg import ReferSegDataset
from read.data.sample import DataError, Query, Sample, single_turn, template_set
from read.data.vqa import VQADataset

READ_T = template_set("read")
TINY = "configs/tiny_test.yaml"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_reason_seg(d)
    write_refcoco(d)
    write_fprefcoco(d)
    write_llava(d)
    return d


def make_collator(tok, *overrides, **kw):
    cfg = load_config(TINY, list(overrides))
    return cfg, ReadCollator.from_config(cfg, tok, **kw)


def training_samples(root):
    reason = ReasonSegDataset(str(root), "ReasonSeg|train", templates=READ_T, false_premise_prob=0.0)
    refer = ReferSegDataset(str(root), ["refcoco"], templates=READ_T, num_classes_per_sample=3)
    vqa = VQADataset(str(root))
    rng = np.random.default_rng
    return [reason.sample(rng(0)), refer.sample(rng(1)), vqa.sample(rng(2))]


def test_batch_layout(root, tiny_tokenizer):
    cfg, collate = make_collator(tiny_tokenizer)
    samples = training_samples(root)
    rows_per_image = [len(s.queries) for s in samples]
    batch = collate(samples)
    n_img = cfg.model.vision.num_patches
    s_clip, s_sam = cfg.model.vision.image_size, cfg.model.sam.image_size
    assert batch.pixel_values.shape == (3, 3, s_clip, s_clip)
    assert batch.sam_images.shape == (3, 3, s_sam, s_sam)
    assert batch.num_rows == sum(rows_per_image)
    assert batch.image_index.tolist() == [b for b, n in enumerate(rows_per_image) for _ in range(n)]
    assert batch.original_sizes == [s.size for s in samples]
    assert batch.resized_sizes[0] == (43, 64)  # 40x60 -> longest side 64
    tok = tiny_tokenizer
    for r in range(batch.num_rows):
        ids = batch.input_ids[r][batch.attention_mask[r].bool()]
        assert int((ids == tok.image_token_id).sum()) == n_img
        assert int(ids[0]) == tok.bos_token_id and int(ids[-1]) == tok.eos_token_id
        k = int((ids == tok.seg_token_id).sum())
        m = batch.gt_masks[r]
        assert m.dtype == torch.uint8 and m.shape == (k, *batch.original_sizes[int(batch.image_index[r])])
    # Right padding: real tokens first.
    lengths = batch.attention_mask.sum(1)
    for r in range(batch.num_rows):
        assert batch.attention_mask[r, : lengths[r]].all() and not batch.attention_mask[r, lengths[r] :].any()
        assert (batch.labels[r, lengths[r] :] == IGNORE_INDEX).all()
    assert batch.meta[0]["image_path"] == samples[0].image_path and "ASSISTANT:" in batch.meta[0]["prompt"]


def test_only_answers_carry_loss(root, tiny_tokenizer):
    tok = tiny_tokenizer
    _, collate = make_collator(tok)
    samples = training_samples(root)
    answers = [[text for role, text in q.messages if role == "assistant"] for s in samples for q in s.queries]
    batch = collate(samples)
    for r in range(batch.num_rows):
        labels = batch.labels[r]
        ids = batch.input_ids[r]
        sup = labels != IGNORE_INDEX
        assert torch.equal(labels[sup], ids[sup])
        assert not sup[ids == tok.image_token_id].any()
        assert not sup[0]
        # Supervised runs, one per answer, each ending with </s> and preceded by "ASSISTANT:".
        idx = sup.nonzero().flatten().tolist()
        runs = np.split(np.array(idx), np.where(np.diff(idx) != 1)[0] + 1)
        assert len(runs) == len(answers[r])
        for run, answer in zip(runs, answers[r]):
            assert int(ids[run[-1]]) == tok.eos_token_id
            prefix = tok.decode(ids[: run[0]].tolist(), skip_special_tokens=False)
            assert prefix.rstrip().endswith("ASSISTANT:")
            text = tok.decode(ids[run].tolist(), skip_special_tokens=False)
            assert text.replace(" ", "") == (answer + "</s>").replace(" ", "")


def test_too_long_rows_are_dropped_and_counted(root, tiny_tokenizer):
    _, collate = make_collator(tiny_tokenizer)
    per_image = [[len(collate.encode_query(q).input_ids) for q in s.queries] for s in training_samples(root)]
    lengths = sorted(n for image in per_image for n in image)
    limit = lengths[len(lengths) // 2]  # between the shortest and the longest row
    _, collate = make_collator(tiny_tokenizer, f"data.model_max_length={limit}")
    batch = collate(training_samples(root))
    kept = sum(n <= limit for n in lengths)
    assert batch.num_rows == kept
    assert collate.stats["rows_too_long"] == len(lengths) - kept > 0
    assert batch.input_ids.shape[1] <= limit
    assert batch.num_images == sum(any(n <= limit for n in image) for image in per_image)
    _, tiny = make_collator(tiny_tokenizer, "data.model_max_length=10")
    with pytest.raises(EmptyBatchError):
        tiny(training_samples(root))
    assert tiny.stats["images_dropped"] == 3
    _, strict = make_collator(tiny_tokenizer, "data.model_max_length=10", "data.strict=true")
    with pytest.raises(DataError, match="max_length=10"):
        strict(training_samples(root))


def test_sizes_come_from_config(root, tiny_tokenizer):
    cfg, collate = make_collator(
        tiny_tokenizer, "model.vision.image_size=48", "model.sam.image_size=96", "sasp.down_sample=1"
    )
    batch = collate(training_samples(root)[:1])
    assert batch.pixel_values.shape[-1] == 48 and batch.sam_images.shape[-1] == 96
    ids = batch.input_ids[0]
    assert int((ids == tiny_tokenizer.image_token_id).sum()) == cfg.model.vision.num_patches == 36


def test_eval_teacher_forced_keeps_ignore(root, tiny_tokenizer):
    _, collate = make_collator(tiny_tokenizer)
    batch = collate([ReasonSegEvalDataset(str(root), "val")[0]])
    assert batch.labels is not None and batch.gt_masks[0].shape == (1, 40, 60)
    assert set(torch.unique(batch.gt_masks[0]).tolist()) == {0, 1, 255}


def test_generation_batch_left_padded(root, tiny_tokenizer):
    _, collate = make_collator(tiny_tokenizer)
    sample = ReferEvalDataset(str(root), "fprefcoco", "val", generation=True)[0]
    batch = collate([sample])
    assert batch.labels is None
    assert [m.shape[0] for m in batch.gt_masks] == [1, 1]
    assert [m["exists"] for m in batch.meta] == [True, False]
    lengths = batch.attention_mask.sum(1)
    width = batch.input_ids.shape[1]
    for r in range(batch.num_rows):
        assert batch.attention_mask[r, width - lengths[r] :].all()
        assert batch.meta[r]["prompt"].endswith("ASSISTANT:")


def test_mask_seg_mismatch_is_an_error(tiny_tokenizer):
    _, collate = make_collator(tiny_tokenizer)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    query = Query(single_turn("<image>\nfind it", "Sure, [SEG]."), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"x.jpg: row has 1 \[SEG\] token\(s\) but 2 mask\(s\)"):
        collate([Sample(image, "x.jpg", [query], "test")])
    wrong_size = Query(single_turn("<image>\nfind it", "Sure, [SEG]."), np.zeros((1, 8, 9), np.uint8))
    with pytest.raises(DataError, match="masks are"):
        collate([Sample(image, "y.jpg", [wrong_size], "test")])


def test_batch_runs_through_the_tiny_model(root, tiny_tokenizer):
    from read.model import build_read_model

    cfg, collate = make_collator(tiny_tokenizer)
    torch.manual_seed(0)
    model = build_read_model(cfg, len(tiny_tokenizer), seg_token_id=tiny_tokenizer.seg_token_id,
                             image_token_id=tiny_tokenizer.image_token_id)  # fmt: skip
    batch = collate(training_samples(root))
    out = model(batch)
    assert torch.isfinite(out.loss)
    assert [m.shape[0] for m in out.pred_masks] == [m.shape[0] for m in batch.gt_masks]
