"""Conversation templates, Q/A templates, prompt tokenisation with image placeholders, label masking, padding."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
import torch

from read.constants import IGNORE_INDEX, SEG_TOKEN
from read.data import templates as T
from read.data.conversation import CONV_TEMPLATES, get_template
from read.data.text import SampleTooLong, encode_conversation, pad_batch, tokenize_with_image
from read.tokenizer import ReadTokenizer

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "goldens" / "tokenizer_4_31.json").read_text(encoding="utf-8"))
CONVERSATIONS = {c["name"]: c for c in GOLDEN["conversations"]}
SENTINEL = -200  # the reference's IMAGE_TOKEN_INDEX


def _messages(case: dict) -> list[tuple[str, str | None]]:
    return [(role, text) for role, text in case["messages"]]


def _to_sentinel(ids: list[int], image_id: int) -> list[int]:
    return [SENTINEL if i == image_id else i for i in ids]


# ----------------------------------------------------------------------------------------------------------
# Goldens (transformers 4.31 + LLaVA procedures)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_conversation_matches_reference(tiny_tokenizer: ReadTokenizer, name: str) -> None:
    case = CONVERSATIONS[name]
    template = get_template(case["template"])
    assert template.get_prompt(_messages(case)) == case["prompt"]
    enc = encode_conversation(tiny_tokenizer, template, _messages(case), num_image_tokens=1)
    assert enc.prompt == case["prompt"]
    assert _to_sentinel(enc.input_ids, tiny_tokenizer.image_token_id) == case["ids"]
    if case["labels"] is None:  # generation prompt
        assert set(enc.labels) == {IGNORE_INDEX}
    else:
        labels = [IGNORE_INDEX if i == tiny_tokenizer.image_token_id else lab for i, lab in
                  zip(enc.input_ids, enc.labels)]  # fmt: skip
        assert labels == case["labels"]
        assert enc.labels[-1] == tiny_tokenizer.eos_token_id


@pytest.mark.parametrize("case", GOLDEN["image_prompts"], ids=lambda c: c["name"])
def test_tokenize_with_image_matches_reference(tiny_tokenizer: ReadTokenizer, case: dict) -> None:
    ids = tokenize_with_image(tiny_tokenizer, case["prompt"], num_image_tokens=1)
    assert _to_sentinel(ids, tiny_tokenizer.image_token_id) == case["ids"]


def test_expanded_layout_and_token_before_seg(tiny_tokenizer: ReadTokenizer) -> None:
    case = CONVERSATIONS["reasonseg_short_llava"]
    n = 576
    enc = encode_conversation(tiny_tokenizer, "llava_v1", _messages(case), num_image_tokens=n)
    p = case["ids"].index(SENTINEL)
    expected = case["ids"][:p] + [tiny_tokenizer.image_token_id] * n + case["ids"][p + 1 :]
    assert enc.input_ids == expected
    assert len(enc.input_ids) == len(case["ids"]) + n - 1
    assert enc.input_ids[p - 1] == tiny_tokenizer.im_start_token_id
    assert enc.input_ids[p + n] == tiny_tokenizer.im_end_token_id
    image_positions = [k for k, i in enumerate(enc.input_ids) if i == tiny_tokenizer.image_token_id]
    assert image_positions == list(range(p, p + n))
    assert all(enc.labels[k] == IGNORE_INDEX for k in image_positions)
    q = enc.input_ids.index(tiny_tokenizer.seg_token_id)
    assert tiny_tokenizer.convert_ids_to_tokens(enc.input_ids[q - 1]) == "▁is"
    assert case["tokens"][case["ids"].index(tiny_tokenizer.seg_token_id) - 1] == "▁is"


def test_supervised_tokens_are_the_answer_and_eos(tiny_tokenizer: ReadTokenizer) -> None:
    answer = T.READ_EVAL_ANSWER
    question = T.READ_EVAL_LONG_QUESTION.format(sent="Which object keeps the food cold?")
    enc = encode_conversation(tiny_tokenizer, "llava_v1", [("USER", question), ("ASSISTANT", answer)], 4)
    supervised = [lab for lab in enc.labels if lab != IGNORE_INDEX]
    assert supervised == tiny_tokenizer.encode(answer, add_bos=False) + [tiny_tokenizer.eos_token_id]
    first = enc.labels.index(supervised[0])
    assert all(lab == IGNORE_INDEX for lab in enc.labels[:first])
    assert enc.labels[first:] == enc.input_ids[first:]
    assert supervised.count(tiny_tokenizer.seg_token_id) == 1


# ----------------------------------------------------------------------------------------------------------
# Labels vs a literal re-implementation of the reference's round splitting, on random conversations


def _literal_image_tokens(tok: ReadTokenizer, prompt: str) -> list[int]:
    """LLaVA ``tokenizer_image_token``: chunks on "<image>", each with <s> that is dropped after the first."""
    chunks = [tok.encode(chunk) for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for k, chunk in enumerate(chunks):
        if k > 0:
            ids.append(SENTINEL)
        ids.extend(chunk[1:])
    return ids


def _literal_reference_labels(tok: ReadTokenizer, prompt: str, template: str) -> list[int]:
    """READ ``handle_conversation_specifics`` for one unpadded row (TWO-style separator for vicuna_v1 too)."""
    sep = "[/INST] " if template == "llava_llama_2" else " ASSISTANT: "
    ids = _literal_image_tokens(tok, prompt)
    target = list(ids)
    target[0] = IGNORE_INDEX
    cur = 1
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        assert len(parts) == 2, rou
        parts[0] += sep
        round_len = len(_literal_image_tokens(tok, rou))
        instruction_len = len(_literal_image_tokens(tok, parts[0])) - 2
        target[cur : cur + instruction_len] = [IGNORE_INDEX] * len(target[cur : cur + instruction_len])
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    assert cur == len(ids)
    return target


def _random_conversation(rng: random.Random) -> list[tuple[str, str]]:
    names = ["the cat", "red apple", "man on the left", "日本 tea", "2 dogs"]
    question = rng.choice(T.SHORT_QUESTION + T.LONG_QUESTION + T.LISA_SHORT_QUESTION_LIST + (T.LISA_VAL_LONG_QUESTION,))
    question = question.format(class_name=rng.choice(names), sent="Which thing keeps  food cold?")
    answers = T.LONG_ANSWER + T.SHORT_ANSWER + T.NEG_ANSWER + T.CORRECT_ANSWER
    extras = ["2 of them [SEG].", "é [SEG]", " [SEG], [SEG].", "Yes.\nSee [SEG] ", "(x) [SEG][SEG]", "42"]
    messages = []
    for turn in range(rng.randint(1, 3)):
        user = question if turn == 0 else rng.choice(["And this?", "Count them.\nPlease.", "Now [SEG] it", "Où?"])
        answer = rng.choice(answers + tuple(extras))
        answer = answer.format(class_name=rng.choice(names), gt_name=rng.choice(names))
        messages += [("USER", user), ("ASSISTANT", answer)]
    return messages


def test_labels_match_literal_reference_on_random_conversations(tiny_tokenizer: ReadTokenizer) -> None:
    rng = random.Random(0)
    supervised_total = 0
    for _ in range(300):
        name = rng.choice(sorted(CONV_TEMPLATES))
        messages = _random_conversation(rng)
        enc = encode_conversation(tiny_tokenizer, name, messages, num_image_tokens=1)
        expected = _literal_reference_labels(tiny_tokenizer, enc.prompt, name)
        ids = _to_sentinel(enc.input_ids, tiny_tokenizer.image_token_id)
        labels = [IGNORE_INDEX if i == SENTINEL else lab for i, lab in zip(ids, enc.labels)]
        assert ids == _literal_image_tokens(tiny_tokenizer, enc.prompt)
        assert labels == expected, (name, messages)
        supervised_total += sum(lab != IGNORE_INDEX for lab in labels)
    assert supervised_total > 3000


# ----------------------------------------------------------------------------------------------------------
# Length limit and padding


def test_sample_too_long(tiny_tokenizer: ReadTokenizer) -> None:
    messages = [("USER", "<image>\nSegment it."), ("ASSISTANT", "[SEG].")]
    length = len(encode_conversation(tiny_tokenizer, "llava_v1", messages, 16).input_ids)
    assert len(encode_conversation(tiny_tokenizer, "llava_v1", messages, 16, max_length=length).input_ids) == length
    with pytest.raises(SampleTooLong) as info:
        encode_conversation(tiny_tokenizer, "llava_v1", messages, 16, max_length=length - 1)
    assert (info.value.length, info.value.max_length) == (length, length - 1)
    with pytest.raises(ValueError, match="num_image_tokens"):
        tokenize_with_image(tiny_tokenizer, "<image>", 0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch(side: str) -> None:
    rows = [[1, 0, 5, 6], [1, 7]]  # id 0 (= <unk> = pad) inside a row must stay attended
    labels = [[-100, -100, 5, 6], [-100, 7]]
    ids, mask, labs = pad_batch(rows, labels, pad_id=0, side=side)
    if side == "right":
        assert ids.tolist() == [[1, 0, 5, 6], [1, 7, 0, 0]]
        assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
        assert labs.tolist() == [[-100, -100, 5, 6], [-100, 7, -100, -100]]
    else:
        assert ids.tolist() == [[1, 0, 5, 6], [0, 0, 1, 7]]
        assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
        assert labs.tolist() == [[-100, -100, 5, 6], [-100, -100, -100, 7]]
    assert ids.dtype == mask.dtype == labs.dtype == torch.long
    ids2, mask2, none = pad_batch([torch.tensor(r) for r in rows], pad_id=9, side=side)
    assert none is None and torch.equal(mask2, mask)
    assert (ids2 == 9).sum() == 2


def test_pad_batch_errors() -> None:
    with pytest.raises(ValueError, match="no rows"):
        pad_batch([], pad_id=0)
    with pytest.raises(ValueError, match="row 1 has 2 ids but labels of shape \\(3,\\)"):
        pad_batch([[1], [1, 2]], [[1], [1, 2, 3]], pad_id=0)
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], pad_id=0, side="middle")
    with pytest.raises(ValueError, match="row 0"):
        pad_batch([[]], pad_id=0)


# ----------------------------------------------------------------------------------------------------------
# Conversation templates


def test_two_style_prompt_and_spans() -> None:
    tpl = get_template("llava_v1")
    rendered = tpl.render([("USER", "<image>\nQ1"), ("ASSISTANT", "A1"), ("user", "Q2"), ("assistant", "A2")])
    system = tpl.system
    assert rendered.text == f"{system} USER: <im_start><image><im_end>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"
    assert [rendered.text[s:e] for s, e in rendered.supervised_spans] == [" A1</s>", " A2</s>"]
    assert tpl.get_prompt([("USER", "Q"), ("ASSISTANT", None)]) == f"{system} USER: Q ASSISTANT:"
    assert tpl.render([("USER", "Q"), ("ASSISTANT", "")]).supervised_spans == ()
    assert get_template("vicuna_v1").system.startswith("A chat between a curious user ")
    assert system.startswith("A chat between a curious human ")


def test_llama_2_prompt_and_spans() -> None:
    tpl = get_template("llava_llama_2")
    rendered = tpl.render([("USER", "<image>\nQ1"), ("ASSISTANT", "A1"), ("USER", "Q2"), ("ASSISTANT", "A2")])
    head = f"[INST] <<SYS>>\n{tpl.system}\n<</SYS>>\n\n<im_start><image><im_end>\nQ1 [/INST]"
    assert rendered.text == head + " A1 </s><s>[INST] Q2 [/INST] A2 </s>"
    assert [rendered.text[s:e] for s, e in rendered.supervised_spans] == [" A1 </s>", " A2 </s>"]
    assert tpl.get_prompt([("USER", "Q"), ("ASSISTANT", None)]).endswith("\n\nQ [/INST]")


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "at least one"),
        ([("ASSISTANT", "hi")], "message 0 has role 'ASSISTANT'"),
        ([("USER", "q"), ("USER", "q")], "message 1 has role 'USER'"),
        ([("USER", "q"), ("ASSISTANT", None), ("USER", "q")], "message 1 .* is empty"),
        ([("USER", None)], "message 0 .* is empty"),
        ([("USER", "q</s>")], "reserved string '</s>'"),
        ([("USER", "<im_start><image><im_end>\nq")], "reserved string '<im_start>'"),
        ([("USER", "q"), ("ASSISTANT", "see <image>")], "answer 1 contains '<image>'"),
        ([("USER", 3)], "must be a string"),
        (["USER: q"], "must be a \\(role, text\\) pair"),
    ],
)
def test_conversation_validation(messages: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_template("llava_v1").render(messages)


def test_template_registry() -> None:
    assert sorted(CONV_TEMPLATES) == ["llava_llama_2", "llava_v1", "vicuna_v1"]
    with pytest.raises(ValueError, match="unknown conversation template 'llava_v2'.*llava_v1"):
        get_template("llava_v2")
    with pytest.raises(TypeError):
        CONV_TEMPLATES["x"] = get_template("llava_v1")  # type: ignore[index]


# ----------------------------------------------------------------------------------------------------------
# Q/A templates


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def test_template_counts_and_placeholders() -> None:
    counts = {
        "SHORT_QUESTION": 100, "LONG_QUESTION": 49, "LONG_ANSWER": 35, "SHORT_ANSWER": 81, "NEG_ANSWER": 100,
        "CORRECT_ANSWER": 99, "EXPLANATORY_QUESTION": 3, "LISA_SHORT_QUESTION_LIST": 4, "LISA_LONG_QUESTION_LIST": 2,
        "LISA_ANSWER_LIST": 5, "LISA_EXPLANATORY_QUESTION_LIST": 3,
    }  # fmt: skip
    assert {name: len(getattr(T, name)) for name in counts} == counts
    assert {name: len(set(getattr(T, name))) for name in ("LONG_QUESTION", "SHORT_ANSWER", "NEG_ANSWER")} == {
        "LONG_QUESTION": 48, "SHORT_ANSWER": 80, "NEG_ANSWER": 77
    }  # fmt: skip
    for name in ("SHORT_QUESTION", "LISA_SHORT_QUESTION_LIST"):
        assert all(q.startswith("<image>\n") and _fields(q) == {"class_name"} for q in getattr(T, name)), name
    for name in ("LONG_QUESTION", "LISA_LONG_QUESTION_LIST"):
        assert all(q.startswith("<image>\n") and _fields(q) == {"sent"} for q in getattr(T, name)), name
    for name in ("LONG_ANSWER", "SHORT_ANSWER", "LISA_ANSWER_LIST"):
        assert all(a.count(SEG_TOKEN) == 1 and _fields(a) <= {"class_name"} for a in getattr(T, name)), name
    assert sum(_fields(a) == {"class_name"} for a in T.SHORT_ANSWER) == 50
    assert not any(_fields(a) for a in T.LONG_ANSWER)
    assert sum(_fields(a) == {"class_name"} for a in T.NEG_ANSWER) == 76
    assert all(_fields(a) <= {"class_name"} and SEG_TOKEN not in a for a in T.NEG_ANSWER)
    assert all(_fields(a) == {"class_name", "gt_name"} and SEG_TOKEN not in a for a in T.CORRECT_ANSWER)
    assert set(T.LISA_ANSWER_LIST) <= set(T.LONG_ANSWER)
    assert T.EXPLANATORY_QUESTION == T.LISA_EXPLANATORY_QUESTION_LIST


def test_evaluation_templates_are_exact() -> None:
    assert T.READ_EVAL_SHORT_QUESTION.format(class_name="the cat") == (
        "<image>\nWhat is the cat in this image? Please output segmentation mask."
    )
    long_question = T.READ_EVAL_LONG_QUESTION.format(sent="Where is it?")
    assert long_question == "<image>\nWhere is it? Please output segmentation mask."
    assert T.READ_EVAL_ANSWER == "Sure, the segmentation result is [SEG]."
    assert T.READ_EVAL_SHORT_QUESTION in T.LISA_SHORT_QUESTION_LIST
    assert T.READ_EVAL_LONG_QUESTION in T.LISA_LONG_QUESTION_LIST
    assert T.LISA_VAL_LONG_QUESTION.format(sent="x") == "<image>\n x Please output segmentation mask."
    assert T.LISA_VAL_ANSWER == "[SEG]."
