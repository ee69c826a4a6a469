"""ReadModel.generate: greedy decoding with a KV cache against the reference's uncached decoding, per-row stopping
with finished rows leaving the batch, the mask pass, and generation-mode evaluation records with and without the
cache (the scripted answers of scripts/bench_eval.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from model_utils import SEG, make_batch, tiny_config, tiny_model
from read.data.collate import ReadCollator
from read.data.eval_sets import build_eval_dataset
from read.evaluation import EvalConfig, evaluate
from test_eval_support import tiny_eval_model, write_reason_seg_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_eval  # noqa: E402

EOS = 2
SASP = pytest.mark.parametrize("sasp", ["true", "false"], ids=["read", "lisa"])
SIZES = [(40, 50), (25, 30), (33, 21), (20, 44)]


def seg_or_eos_model(sasp: str):
    """A tiny model whose every greedy step says ``[SEG]`` or EOS (the sign of v . h): each answer is a run of
    ``[SEG]`` tokens ending with EOS, of a length that depends on the prompt."""
    model = tiny_model(f"sasp.enabled={sasp}", seed=0).eval()
    head = model.llava.lm_head.weight.data
    v = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(2))
    head.zero_()
    head[SEG], head[EOS] = v, -v
    return model


def left_padded_prompts(sasp: str, prompts: list[list[int]], image_index: list[int]):
    """Question-only rows (the trailing EOS of ``make_batch`` removed), padding moved to the front."""
    cfg = tiny_config(f"sasp.enabled={sasp}")
    batch = make_batch(prompts, image_index, SIZES[: max(image_index) + 1], cfg, with_targets=False)
    ids, att = batch.input_ids.clone(), batch.attention_mask.clone()
    for r in range(ids.shape[0]):
        n = int(att[r].sum())
        ids[r] = torch.cat([ids[r, n:], ids[r, :n]])
        att[r] = torch.cat([att[r, n:], att[r, :n]])
    batch.input_ids, batch.attention_mask = ids[:, :-1], att[:, :-1]
    return batch


def one_row(batch, r: int):
    """Row ``r`` alone, without its padding (what a batch of one would hold)."""
    from dataclasses import replace

    keep = batch.attention_mask[r].bool()
    image = int(batch.image_index[r])
    return replace(
        batch,
        pixel_values=batch.pixel_values[image : image + 1],
        sam_images=batch.sam_images[image : image + 1],
        input_ids=batch.input_ids[r : r + 1, keep],
        attention_mask=batch.attention_mask[r : r + 1, keep],
        image_index=torch.zeros(1, dtype=torch.long),
        original_sizes=[batch.original_sizes[image]],
        resized_sizes=[batch.resized_sizes[image]],
        meta=[],
    )


PROMPTS = [[], [30, 31], [40], [41, 42, 43], [44, 45], [46]]
IMAGES = [0, 1, 2, 3, 0, 2]


def answer_lengths(tokens: torch.Tensor) -> list[int]:
    return [row.index(EOS) + 1 if EOS in row else len(row) for row in tokens.tolist()]


@SASP
def test_cached_batch_equals_the_uncached_reference_at_batch_one(sasp):
    model = seg_or_eos_model(sasp)
    batch = left_padded_prompts(sasp, PROMPTS, IMAGES)
    with torch.no_grad():
        tokens, out = model.generate(batch, max_new_tokens=8)
        slow_tokens, slow_out = model.generate(batch, max_new_tokens=8, use_cache=False)
    lengths = answer_lengths(tokens)
    assert len(set(lengths)) >= 3 and min(lengths) == 1  # rows stop at different steps, one at once (no [SEG])
    assert torch.equal(tokens, slow_tokens)
    assert tokens.shape[1] == max(lengths)
    for r, n in enumerate(lengths):
        assert (tokens[r, n:] == 0).all()  # padding after EOS
        assert out.pred_masks[r].shape[0] == (tokens[r] == SEG).sum() == slow_out.pred_masks[r].shape[0]
    for r in range(len(PROMPTS)):  # the reference's way: one row at a time, no cache, masks from its last step
        with torch.no_grad():
            t1, o1 = model.generate(one_row(batch, r), max_new_tokens=8, use_cache=False)
            t2, o2 = model.generate(one_row(batch, r), max_new_tokens=8)
        assert t1[0].tolist() == tokens[r, : t1.shape[1]].tolist() == t2[0].tolist()
        # at batch 1 the teacher-forced mask pass reproduces the uncached last step's states bit for bit
        assert torch.equal(o2.pred_masks[0], o1.pred_masks[0]) and torch.equal(o2.point_coords[0], o1.point_coords[0])
        # batched (padding, several images in the encoders): the same masks and points up to float rounding
        assert torch.equal(out.pred_masks[r] > 0, o1.pred_masks[0] > 0), r
        torch.testing.assert_close(out.pred_masks[r], o1.pred_masks[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(out.point_coords[r], o1.point_coords[0], rtol=0, atol=1e-3)
        assert torch.equal(out.point_labels[r], o1.point_labels[0])
        assert out.pred_masks[r].shape[1:] == SIZES[IMAGES[r]]


def test_finished_rows_leave_the_batch_and_sam_encodes_only_images_with_a_seg():
    model = seg_or_eos_model("true")
    batch = left_padded_prompts("true", PROMPTS, IMAGES)
    calls: list[tuple[str, int]] = []

    def record(module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        calls.append(("embeds", x.shape[0]) if x is not None else ("step", kwargs["input_ids"].shape[0]))

    sam_batches: list[int] = []
    hooks = [
        model.llava.model.language_model.register_forward_pre_hook(record, with_kwargs=True),
        model.sam.image_encoder.register_forward_pre_hook(lambda m, a: sam_batches.append(a[0].shape[0])),
    ]
    with torch.no_grad():
        tokens, out = model.generate(batch, max_new_tokens=8)
    for h in hooks:
        h.remove()
    lengths = answer_lengths(tokens)
    steps = [("step", sum(n > s for n in lengths)) for s in range(1, max(lengths))]  # rows still decoding
    seg_rows = [r for r in range(len(PROMPTS)) if (tokens[r] == SEG).any()]
    assert calls == [("embeds", len(PROMPTS)), *steps, ("embeds", len(seg_rows))]
    assert sam_batches == [len({IMAGES[r] for r in seg_rows})] and len(seg_rows) < len(PROMPTS)
    assert [m.shape[0] for m in out.pred_masks] == [int((tokens[r] == SEG).sum()) for r in range(len(PROMPTS))]


def test_without_eos_every_row_decodes_max_new_tokens():
    model = seg_or_eos_model("false")
    batch = left_padded_prompts("false", PROMPTS, IMAGES)
    with torch.no_grad():
        tokens, _ = model.generate(batch, max_new_tokens=5, eos_token_id=None)
        slow, _ = model.generate(batch, max_new_tokens=5, eos_token_id=None, use_cache=False)
    assert tokens.shape == (len(PROMPTS), 5) and torch.equal(tokens, slow)
    assert (tokens == EOS).any()  # EOS was generated but did not stop any row


def test_generation_records_are_identical_with_and_without_the_cache(tiny_tokenizer, tmp_path):
    """Evaluation level, as bench_eval --mode generate checks: the reference's way (batch 1, no cache) and the KV
    cache at batch 4 write the same records, with answers of two lengths, with and without [SEG]."""
    write_reason_seg_split(tmp_path / "data", "val", 9)
    dataset = build_eval_dataset(str(tmp_path / "data"), "ReasonSeg", "val", generation=True)
    model = tiny_eval_model(tiny_tokenizer)
    m = model.config.model
    collator = ReadCollator(
        tiny_tokenizer, "llava_v1", clip_size=m.vision.image_size, sam_size=m.sam.image_size,
        num_image_tokens=m.vision.num_patches, max_length=None, padding_side="left",
    )  # fmt: skip
    scripts = bench_eval.script_answers(
        model, collator([dataset[i] for i in range(len(dataset))]),
        token_pool=bench_eval.answer_pool(dataset, collator, tiny_tokenizer),
        eos_token_id=tiny_tokenizer.eos_token_id, seg_answer=5, other_answer=9,
    )  # fmt: skip
    assert [len(s) for s in scripts] == [5, 9] and scripts[0][-2:] == [tiny_tokenizer.seg_token_id, EOS]
    outputs = []
    for name, batch_size, kv_cache in (("slow", 1, False), ("fast", 4, True)):
        cfg = EvalConfig(mode="generate", batch_size=batch_size, max_new_tokens=16, kv_cache=kv_cache,
                         output_dir=str(tmp_path / name))  # fmt: skip
        evaluate(model, tiny_tokenizer, dataset, cfg)
        outputs.append([json.loads(x) for x in (tmp_path / name / "predictions.jsonl").read_text().splitlines()])
    slow, fast = outputs
    assert fast == slow
    with_seg = [r for r in slow if r["num_seg"] == 1]
    assert 0 < len(with_seg) < len(slow) and all(r["mask_rle"] is not None for r in slow)
    assert {r["text"].count("[SEG]") for r in slow} == {0, 1}


def test_the_benchmark_refuses_different_records():
    ref = [{"key": "0/0", "text": "a", "mask_rle": None}, {"key": "1/0", "text": "b", "mask_rle": None}]
    assert bench_eval.check_same_records(ref, None, "x") is ref
    assert bench_eval.check_same_records([dict(r) for r in ref], ref, "x") is ref
    changed = [ref[0], {"key": "1/0", "text": "c", "mask_rle": None}]
    with pytest.raises(SystemExit, match=r"x wrote other records .* at query 1/0 \(fields text\)"):
        bench_eval.check_same_records(changed, ref, "x")
    with pytest.raises(SystemExit, match="wrote 1 records"):
        bench_eval.check_same_records(ref[:1], ref, "x")


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
def test_generation_never_says_the_image_placeholder(use_cache):
    from model_utils import IMAGE

    model = seg_or_eos_model("false")
    head = model.llava.lm_head.weight.data
    head[IMAGE] = 100.0 * head[SEG]  # the placeholder would win wherever [SEG] wins
    batch = left_padded_prompts("false", PROMPTS, IMAGES)
    with torch.no_grad():
        tokens, out = model.generate(batch, max_new_tokens=4, use_cache=use_cache)
    assert not bool((tokens == IMAGE).any()) and bool((tokens == SEG).any())
