"""The optional query-word loss (loss.query_weight; not part of READ): the function, the collator's targets, the
model's total, and the config check."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from read.config import validate
from read.constants import IGNORE_INDEX
from read.data.collate import ReadCollator
from read.data.sample import Query, Sample, empty_masks, single_turn
from read.model.losses import query_word_loss
from read.model.read_model import seg_prompt_mask
from read.model.trainable import group_of
from read.tokenizer import ReadTokenizer
from read.tools.memory import count_parameters, measured_parameter_counts
from tests.model_utils import ROOT, SEG, VOCAB, make_batch, tiny_config, tiny_model

TOKENIZER = ROOT / "tests" / "assets" / "tiny_tokenizer"


def test_query_word_loss_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[3, 1], [0, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]])
    loss, count = query_word_loss(logits, ids)
    lse0 = math.log(sum(math.exp(v) for v in (0.0, 1.0, 2.0, 3.0)))
    row0 = ((lse0 - 3.0) + (lse0 - 1.0)) / 2
    row1 = math.log(4.0)  # uniform over 4
    assert count == 2  # the third [SEG] has no query and is left out
    assert float(loss) == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_query_word_loss_without_targets_is_zero_with_a_graph():
    logits = torch.randn(2, 5, requires_grad=True)
    loss, count = query_word_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert count == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 5))


def test_query_word_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="query_word_loss"):
        query_word_loss(torch.zeros(2, 5), torch.zeros(3, 1, dtype=torch.long))


def _sample(size: tuple[int, int] = (24, 32)) -> Sample:
    h, w = size
    image = np.full((h, w, 3), 120, dtype=np.uint8)
    mask = np.zeros((1, h, w), dtype=np.uint8)
    mask[0, 2:10, 3:12] = 1
    seg = Query(single_turn("<image>\nWhat is the red apple in this image?", "Sure, [SEG]."), mask,
                {"query": "red apple"})  # fmt: skip
    denial = Query(single_turn("<image>\nWhat is the dog in this image?", "There is no dog in this image."),
                   empty_masks(h, w), {"query": "dog"})  # fmt: skip
    no_query = Query(single_turn("<image>\nSegment it.", "[SEG]."), mask.copy(), {})
    return Sample(image, "x.jpg", [seg, denial, no_query], "test")


def _collator(query_targets: bool) -> ReadCollator:
    tok = ReadTokenizer.from_pretrained(TOKENIZER)
    return ReadCollator(tok, "llava_v1", clip_size=32, sam_size=64, num_image_tokens=4, max_length=None,
                        query_targets=query_targets)  # fmt: skip


def test_collator_builds_query_targets_only_for_seg_rows_with_a_query():
    collator = _collator(True)
    batch = collator([_sample()])
    expected = collator.tokenizer.encode("red apple", add_bos=False)
    assert batch.query_ids.shape == (3, len(expected))
    assert batch.query_ids[0].tolist() == expected
    assert (batch.query_ids[1:] == IGNORE_INDEX).all()  # a denial has no [SEG]; the last row has no query text
    assert _collator(False)([_sample()]).query_ids is None


def test_from_config_asks_for_query_targets_when_the_weight_is_set():
    tok = ReadTokenizer.from_pretrained(TOKENIZER)
    assert ReadCollator.from_config(tiny_config("loss.query_weight=0.5"), tok).query_targets
    assert not ReadCollator.from_config(tiny_config(), tok).query_targets


def _with_queries(batch, cfg_vocab: int):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg_vocab, (batch.num_rows, 3), generator=g)
    ids[0, 2] = IGNORE_INDEX
    return replace(batch, query_ids=ids)


def test_model_adds_the_weighted_query_loss_on_the_seg_prompts():
    cfg = tiny_config()
    batch = make_batch([[11, SEG, 12], [13, SEG, 14, SEG]], [0, 1], [(40, 52), (36, 30)], cfg)
    batch = _with_queries(batch, 100)
    paper_model = tiny_model()
    paper = paper_model(batch)
    assert paper.query_loss is None and paper_model.query_head is None  # weight 0: the paper's model and loss

    model = tiny_model("loss.query_weight=0.7")
    assert tuple(model.query_head.weight.shape) == (VOCAB, cfg.model.out_dim)
    out = model(batch)
    # literal recomputation: each [SEG] prompt position -> seg_projector -> query_head, with its row's query ids
    with torch.no_grad():
        hidden = model.language_forward(batch.input_ids, batch.attention_mask,
                                        model.encode_images(batch.pixel_values)[batch.image_index])  # fmt: skip
        terms = []
        for r, q in seg_prompt_mask(batch.input_ids, SEG).nonzero().tolist():
            targets = [t for t in batch.query_ids[r].tolist() if t != IGNORE_INDEX]
            log_probs = F.log_softmax(model.query_head(model.seg_projector(hidden[r, q])), dim=-1)
            terms.append(-sum(float(log_probs[t]) for t in targets) / len(targets))
    assert len(terms) == 3
    assert out.query_loss.item() == pytest.approx(sum(terms) / 3, rel=1e-5)
    # the rest of the loss is the paper's: same weights apart from the extra head (same seed, built first)
    assert (out.loss - 0.7 * out.query_loss).item() == pytest.approx(paper.loss.item(), rel=1e-5)
    out.loss.backward()
    assert model.query_head.weight.grad is not None
    lm_grads = [p.grad for n, p in model.named_parameters() if "language_model" in n and p.grad is not None]
    assert lm_grads and any(float(g.abs().sum()) > 0 for g in lm_grads)
    # the next-token logits are not touched by the query loss
    assert torch.equal(out.logits, paper.logits)


def test_model_skips_the_query_loss_without_targets():
    cfg = tiny_config()
    batch = make_batch([[11, SEG, 12]], [0], [(40, 52)], cfg)
    out = tiny_model("loss.query_weight=0.7")(batch)  # batch.query_ids is None
    assert out.query_loss is None
    assert out.loss.item() == pytest.approx(tiny_model()(batch).loss.item(), rel=1e-6)
    model = tiny_model()
    model.config.loss.query_weight = 0.5  # a config changed after building: no head to read the prompts
    with pytest.raises(ValueError, match="query_head"):
        model(_with_queries(batch, 100))


def test_negative_loss_weights_are_rejected():
    cfg = tiny_config()
    cfg.loss.query_weight = -0.1
    with pytest.raises(ValueError, match="loss.query_weight"):
        validate(cfg)


def test_the_query_head_is_counted_with_the_seg_head():
    cfg = tiny_config("loss.query_weight=0.7")
    model = tiny_model("loss.query_weight=0.7")
    assert group_of("query_head.weight") == "seg_projector"
    assert measured_parameter_counts(model) == count_parameters(cfg, VOCAB, with_adapters=False)
    extra = count_parameters(cfg, VOCAB)["seg_projector"] - count_parameters(tiny_config(), VOCAB)["seg_projector"]
    assert extra == (cfg.model.out_dim + 1) * VOCAB
