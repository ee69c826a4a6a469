"""Write tests/goldens/tokenizer_4_31.json: token ids from the reference tokenizer stack.

Needs transformers 4.31.0 (the reference pin), tokenizers 0.13.3 and sentencepiece, and no torch. It is not run by
the tests, which only read the JSON. Run it in a scratch environment outside the repository:

    python3 -m venv /tmp/tf431
    /tmp/tf431/bin/pip install transformers==4.31.0 tokenizers==0.13.3 sentencepiece
    /tmp/tf431/bin/python scripts/make_token_goldens.py

It loads tests/assets/tiny_tokenizer/tokenizer.model with the slow ``LlamaTokenizer`` (``legacy=True``) through
``from_pretrained`` (as the reference does, so the special tokens are registered as no-split tokens), adds the
tokens the way the reference does (``add_tokens("[SEG]")``, then ``add_tokens(["<im_start>", "<im_end>"],
special_tokens=True)``) and records:

* ``encode``: ``tokenizer(text).input_ids``, the tokens and both decodes, for texts that exercise the
  whitespace rules;
* ``image_prompts``: LLaVA's ``tokenizer_image_token`` (chunks split on ``<image>``, chunk ``<s>`` dropped, joined
  with -200);
* ``conversations``: prompts built as LLaVA's ``Conversation.get_prompt`` + ``replace_image_tokens`` do, their ids,
  and labels from the reference's round-splitting mask (``handle_conversation_specifics``);
* ``saved_layout``: ids from 4.31 loading the shipped tokenizer directory (whose ``added_tokens.json`` also has
  ``<image>``), for texts that contain ``<image>``.

The prompt and label code below is a plain transcription of the reference procedures, kept separate from ``read``
on purpose.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece
import tokenizers
import transformers
from transformers import LlamaTokenizer

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "tests" / "assets" / "tiny_tokenizer"
OUT = ROOT / "tests" / "goldens" / "tokenizer_4_31.json"

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100

SYSTEMS = {
    "llava_v1": "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "vicuna_v1": "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "llava_llama_2": "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.",
}

ENCODE_CASES = [
    ("answer_long_eval", "Sure, the segmentation result is [SEG]."),
    ("answer_seg_only", "[SEG]."),
    ("answer_with_eos", "Sure, it is [SEG].</s>"),
    ("answer_two_sentences", "It is [SEG]. Sure, [SEG]."),
    ("seg_adjacent", "[SEG][SEG]"),
    ("seg_spaced", "[SEG] [SEG]"),
    ("seg_padded", "  [SEG]  "),
    ("seg_newlines", "a\n[SEG]\nb"),
    ("seg_nbsp", "x\u00a0[SEG]\u00a0y"),
    ("seg_partial", "[SEG [[SEG]] SEG]"),
    ("im_tokens_newline", "<im_start><im_end>\nWhat is this?"),
    ("im_end_two_newlines", "<im_end>\n\n  Text after"),
    ("user_before_im_start", "USER: <im_start>"),
    ("nested_angle", "<<im_start>>"),
    ("eos_then_user", "a</s>USER: b"),
    ("eos_spaced", "a </s> b"),
    ("bos_inst", "<s>[INST] x [/INST] y </s><s>[INST]"),
    ("unk_literal", "<unk> x <unk>"),
    ("unicode", "Café naïve – 日本語 😀 [SEG] über"),
    ("double_spaces", "two  spaces   and\ttab\n\nnewlines "),
    ("digits", "ASSISTANT: 123 [SEG] 4.5"),
    ("sp_underline", "\u2581literal \u2581 piece\u2581"),
    ("empty", ""),
    ("whitespace_only", "   "),
    ("assistant_trailing_space", "Please output segmentation mask. ASSISTANT: "),
]

IMAGE_PROMPT_CASES = [
    ("im_wrapped", "Sys. USER: <im_start><image><im_end>\nWhat is it? ASSISTANT: [SEG].</s>"),
    ("image_first", "<image>\nDescribe."),
    ("image_bare_spaces", "x <image> y"),
    ("two_images", "a<image>b <image> c"),
    ("image_only", "<image>"),
    ("image_last", "Look at this <image>"),
]

READ_SHORT_Q = "<image>\nWhat is {class_name} in this image? Please output segmentation mask."
READ_LONG_Q = "<image>\n{sent} Please output segmentation mask."
READ_ANSWER = "Sure, the segmentation result is [SEG]."
LONG_SENT = (
    "What part of the kitchen would someone open to keep vegetables fresh and cold for several days? "
    "Think about the appliances that are usually found next to the sink."
)

CONVERSATIONS = [
    ("reasonseg_short_llava", "llava_v1", [READ_SHORT_Q.format(class_name="the dog"), READ_ANSWER]),
    ("reasonseg_long_llava", "llava_v1", [READ_LONG_Q.format(sent=LONG_SENT), READ_ANSWER]),
    ("reasonseg_short_llava_seg_only", "llava_v1", [READ_SHORT_Q.format(class_name="cat"), "[SEG]."]),
    ("reasonseg_short_vicuna", "vicuna_v1", [READ_SHORT_Q.format(class_name="the dog"), READ_ANSWER]),
    ("reasonseg_long_vicuna", "vicuna_v1", [READ_LONG_Q.format(sent=LONG_SENT), "[SEG]."]),
    ("generation_vicuna", "vicuna_v1", [READ_LONG_Q.format(sent=LONG_SENT), None]),
    ("generation_llava", "llava_v1", ["<image>\nCan you segment the red apple in this image?", None]),
    (
        "multi_seg_llava",
        "llava_v1",
        ["<image>\nSegment the cat, the dog and the chair.", "Sure, [SEG], [SEG] and [SEG]."],
    ),
    ("multi_seg_adjacent", "llava_v1", ["<image>\nSegment both.", "[SEG][SEG]."]),
    (
        "lisa_val_short",
        "llava_v1",
        ["<image>\n What is the left umbrella in this image? Please output segmentation mask.", "[SEG]."],
    ),
    (
        "sesame_short_with_class",
        "llava_v1",
        [
            "<image>\nIs there a traffic light visible in this image? If yes, I'd like to see the segmentation map. "
            "If not, please deny its presence and, as needed, note any similar items present.",
            "Yes, traffic light is detected: [SEG].",
        ],
    ),
    (
        "sesame_false_premise",
        "llava_v1",
        [
            "<image>\nCan you confirm if giraffe is present in this image?",
            "While the giraffe is not present, the image does include a horse.",
        ],
    ),
    ("answer_starts_with_digit", "llava_v1", ["<image>\nHow many?", "2 of them, see [SEG]."]),
    ("answer_starts_with_unicode", "llava_v1", ["<image>\nName it.", "\u00e9clair \u65e5\u672c [SEG]."]),
    (
        "vqa_multi_turn",
        "llava_v1",
        [
            "<image>\nWhat is the man holding?",
            "The man is holding a red umbrella.",
            "What is the weather like?\nAnswer briefly.",
            "It is raining.\nThe street is wet.",
            "How many people are there?",
            "3 people.",
        ],
    ),
    ("llama2_single", "llava_llama_2", [READ_SHORT_Q.format(class_name="the boat"), READ_ANSWER]),
    (
        "llama2_multi_turn",
        "llava_llama_2",
        ["<image>\nWhat is in the sky?", "A kite.", "Segment it.", "Sure, [SEG]."],
    ),
    ("llama2_generation", "llava_llama_2", ["<image>\nSegment the tree.", None]),
]

SAVED_LAYOUT_CASES = [
    ("image_token_text", "USER: <im_start><image><im_end>\nWhat is [SEG] here?</s>"),
    ("image_token_spaces", "look <image> here"),
]


def get_prompt(template: str, texts: list[str | None]) -> str:
    """LLaVA ``Conversation.get_prompt`` for SeparatorStyle.TWO and LLAMA_2, then ``replace_image_tokens``."""
    roles = ("USER", "ASSISTANT")
    system = SYSTEMS[template]
    if template in ("llava_v1", "vicuna_v1"):
        seps = [" ", "</s>"]
        ret = system + seps[0]
        for i, message in enumerate(texts):
            if message:
                ret += roles[i % 2] + ": " + message + seps[i % 2]
            else:
                ret += roles[i % 2] + ":"
    else:
        sep, sep2 = "<s>", "</s>"
        ret = ""
        for i, message in enumerate(texts):
            if message:
                if i == 0:
                    message = f"<<SYS>>\n{system}\n<</SYS>>\n\n" + message
                if i % 2 == 0:
                    ret += sep + f"[INST] {message} [/INST]"
                else:
                    ret += " " + message + " " + sep2
        ret = ret.lstrip(sep)
    return ret.replace("<image>", "<im_start><image><im_end>")


def tokenizer_image_token(prompt: str, tok: LlamaTokenizer) -> list[int]:
    """LLaVA ``mm_utils.tokenizer_image_token``."""
    chunks = [tok(chunk).input_ids for chunk in prompt.split("<image>")]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for k, chunk in enumerate(chunks):
        if k > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def reference_labels(prompt: str, tok: LlamaTokenizer, template: str) -> list[int]:
    """READ ``dataloaders/utils.py::handle_conversation_specifics`` for one unpadded conversation.

    The reference picks the round separator with ``conv_type == "llava_v1"``; for vicuna_v1 that would select
    "[/INST] " and fail its own assert, so the TWO-style separator is used for both TWO templates here.
    """
    sep = " ASSISTANT: " if template in ("llava_v1", "vicuna_v1") else "[/INST] "
    ids = tokenizer_image_token(prompt, tok)
    target = list(ids)
    cur = 1
    target[0] = IGNORE_INDEX
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        assert len(parts) == 2, (len(parts), rou)
        parts[0] += sep
        if "<image>" in prompt:
            round_len = len(tokenizer_image_token(rou, tok))
            instruction_len = len(tokenizer_image_token(parts[0], tok)) - 2
        else:
            round_len = len(tok(rou).input_ids)
            instruction_len = len(tok(parts[0]).input_ids) - 2
        for p in range(cur, min(cur + instruction_len, len(target))):
            target[p] = IGNORE_INDEX
        cur += round_len
    for p in range(cur, len(target)):
        target[p] = IGNORE_INDEX
    assert cur == len(ids), (cur, len(ids), prompt)
    return target


def load_reference_tokenizer(directory: Path) -> LlamaTokenizer:
    tok = LlamaTokenizer.from_pretrained(str(directory), legacy=True)
    tok.pad_token = tok.unk_token
    tok.add_tokens("[SEG]")
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    return tok


def main() -> None:
    assert transformers.__version__ == "4.31.0", transformers.__version__
    model_bytes = (ASSET / "tokenizer.model").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare"
        bare.mkdir()
        shutil.copy(ASSET / "tokenizer.model", bare / "tokenizer.model")
        tok = load_reference_tokenizer(bare)
        # The released checkpoints are loaded from a saved directory: check that this gives the same ids.
        saved = Path(tmp) / "saved"
        tok.save_pretrained(str(saved))
        reloaded = LlamaTokenizer.from_pretrained(str(saved), legacy=True)
        shipped = LlamaTokenizer.from_pretrained(str(ASSET), legacy=True)

    encode = []
    for name, text in ENCODE_CASES:
        assert "<image>" not in text
        ids = tok(text).input_ids
        assert reloaded(text).input_ids == ids, name
        encode.append(
            {
                "name": name,
                "text": text,
                "ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "decoded": tok.decode(ids),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    image_prompts = [
        {"name": name, "prompt": prompt, "ids": tokenizer_image_token(prompt, tok)}
        for name, prompt in IMAGE_PROMPT_CASES
    ]
    conversations = []
    for name, template, texts in CONVERSATIONS:
        prompt = get_prompt(template, texts)
        ids = tokenizer_image_token(prompt, tok)
        assert tokenizer_image_token(prompt, reloaded) == ids, name
        conversations.append(
            {
                "name": name,
                "template": template,
                "messages": [["USER" if i % 2 == 0 else "ASSISTANT", t] for i, t in enumerate(texts)],
                "prompt": prompt,
                "ids": ids,
                "tokens": [str(i) if i < 0 else tok.convert_ids_to_tokens(i) for i in ids],
                "labels": None if texts[-1] is None else reference_labels(prompt, tok, template),
            }
        )
    saved_layout = [{"name": name, "text": text, "ids": shipped(text).input_ids} for name, text in SAVED_LAYOUT_CASES]

    golden = {
        "provenance": {
            "generator": "scripts/make_token_goldens.py",
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentencepiece": sentencepiece.__version__,
            "python": platform.python_version(),
            "tokenizer_class": f"{type(tok).__module__}.{type(tok).__name__} (slow, legacy=True)",
            "tokenizer_model": "tests/assets/tiny_tokenizer/tokenizer.model",
            "tokenizer_model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        },
        "vocab_size": tok.vocab_size,
        "added_tokens": {t: tok.convert_tokens_to_ids(t) for t in ("[SEG]", "<im_start>", "<im_end>")},
        "encode": encode,
        "image_prompts": image_prompts,
        "conversations": conversations,
        "saved_layout": saved_layout,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(encode)} texts, {len(image_prompts)} image prompts, {len(conversations)} conversations)")
    print(sys.version)


if __name__ == "__main__":
    main()
