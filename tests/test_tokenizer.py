"""ReadTokenizer: bit-exact with transformers 4.31's slow LlamaTokenizer (goldens), layout, files, decoding."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm

from read.constants import EXTRA_TOKENS, IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, SEG_TOKEN
from read.tokenizer import ReadTokenizer, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "goldens" / "tokenizer_4_31.json").read_text(encoding="utf-8"))
ENCODE_CASES = {c["name"]: c for c in GOLDEN["encode"]}


def test_goldens_were_made_from_the_shipped_model(tiny_tokenizer_dir: Path) -> None:
    prov = GOLDEN["provenance"]
    assert prov["transformers"] == "4.31.0"
    digest = hashlib.sha256((tiny_tokenizer_dir / "tokenizer.model").read_bytes()).hexdigest()
    assert prov["tokenizer_model_sha256"] == digest


@pytest.mark.parametrize("name", sorted(ENCODE_CASES))
def test_encode_matches_4_31(tiny_tokenizer: ReadTokenizer, name: str) -> None:
    case = ENCODE_CASES[name]
    assert tiny_tokenizer.encode(case["text"]) == case["ids"]
    assert ["<s>"] + tiny_tokenizer.tokenize(case["text"]) == case["tokens"]


@pytest.mark.parametrize("name", sorted(ENCODE_CASES))
def test_decode_matches_4_31(tiny_tokenizer: ReadTokenizer, name: str) -> None:
    case = ENCODE_CASES[name]
    assert tiny_tokenizer.decode(case["ids"], skip_special_tokens=False) == case["decoded"]
    im_ids = {tiny_tokenizer.im_start_token_id, tiny_tokenizer.im_end_token_id}
    skipped = tiny_tokenizer.decode(case["ids"], skip_special_tokens=True)
    if im_ids.isdisjoint(case["ids"]):
        assert skipped == case["decoded_skip_special"]
    else:  # deliberate difference: <im_start>/<im_end> are dropped too
        kept = [i for i in case["ids"] if i not in im_ids]
        assert skipped == tiny_tokenizer.decode(kept, skip_special_tokens=True)
        assert IM_START_TOKEN not in skipped and IM_END_TOKEN not in skipped


def test_token_before_seg_and_stripped_newline(tiny_tokenizer: ReadTokenizer) -> None:
    tokens = tiny_tokenizer.tokenize("Sure, the segmentation result is [SEG].")
    assert tokens[-3:] == ["▁is", SEG_TOKEN, "▁."]
    assert tokens == ENCODE_CASES["answer_long_eval"]["tokens"][1:]
    # "\n" after <im_end> disappears; the question starts with a dummy-prefix piece.
    assert tiny_tokenizer.tokenize("<im_end>\nWhat") == [IM_END_TOKEN, "▁What"]
    # special tokens do not strip: the space before </s> stays a "▁" piece
    assert tiny_tokenizer.tokenize("a </s>") == ["▁a", "▁", "</s>"]


def test_saved_layout_with_image_token_matches_4_31(tiny_tokenizer: ReadTokenizer) -> None:
    for case in GOLDEN["saved_layout"]:
        assert tiny_tokenizer.encode(case["text"]) == case["ids"], case["name"]
    assert tiny_tokenizer.image_token_id in GOLDEN["saved_layout"][0]["ids"]


def test_vocabulary_layout(tiny_tokenizer: ReadTokenizer) -> None:
    v = GOLDEN["vocab_size"]
    assert tiny_tokenizer.vocab_size == v == 1000
    assert len(tiny_tokenizer) == v + 4
    assert GOLDEN["added_tokens"] == {SEG_TOKEN: v, IM_START_TOKEN: v + 1, IM_END_TOKEN: v + 2}
    assert (tiny_tokenizer.seg_token_id, tiny_tokenizer.im_start_token_id) == (v, v + 1)
    assert (tiny_tokenizer.im_end_token_id, tiny_tokenizer.image_token_id) == (v + 2, v + 3)
    assert (tiny_tokenizer.unk_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id) == (0, 1, 2)
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.unk_token_id == 0
    assert tiny_tokenizer.added_tokens == {t: v + i for i, t in enumerate(EXTRA_TOKENS)}


def test_seg_token_id_is_a_lookup_not_the_first_encoded_id(tiny_tokenizer: ReadTokenizer) -> None:
    # LISA issue #55: tokenizer("[SEG]").input_ids[0] can be "▁"; here "[SEG]" is one id that decodes back.
    seg = tiny_tokenizer.seg_token_id
    assert tiny_tokenizer.convert_tokens_to_ids(SEG_TOKEN) == seg
    assert tiny_tokenizer.encode(SEG_TOKEN, add_bos=False) == [seg]
    assert tiny_tokenizer.encode(" " + SEG_TOKEN, add_bos=False) == [seg]
    assert tiny_tokenizer.decode([seg], skip_special_tokens=True) == SEG_TOKEN


def test_token_id_round_trip(tiny_tokenizer: ReadTokenizer) -> None:
    ids = list(range(len(tiny_tokenizer)))
    tokens = tiny_tokenizer.convert_ids_to_tokens(ids)
    assert len(set(tokens)) == len(ids)
    assert tiny_tokenizer.convert_tokens_to_ids(tokens) == ids
    assert tiny_tokenizer.convert_tokens_to_ids("no-such-piece") == tiny_tokenizer.unk_token_id
    with pytest.raises(ValueError, match="-200"):
        tiny_tokenizer.decode([1, -200, 5])
    with pytest.raises(ValueError, match="1004"):
        tiny_tokenizer.convert_ids_to_tokens(1004)


def test_decode_keeps_seg_and_drops_the_rest(tiny_tokenizer: ReadTokenizer) -> None:
    t = tiny_tokenizer
    ids = t.encode("<im_start><image><im_end>\nSure, it is [SEG].</s>")
    assert t.decode(ids) == "Sure, it is [SEG] ."
    # 4.31 writes "</s>" after a space inside a run and joins sub-texts with spaces: two spaces before "."
    assert t.decode(ids, skip_special_tokens=False) == "<s> <im_start> <image> <im_end> Sure, it is [SEG]  .</s>"
    assert t.decode([t.pad_token_id, t.image_token_id]) == ""


def test_offsets_cover_the_text(tiny_tokenizer: ReadTokenizer) -> None:
    text = "USER: <im_start><image><im_end>\nCafé  日本 [SEG]. ok</s>"
    ids, offsets = tiny_tokenizer.encode_with_offsets(text)
    assert ids == tiny_tokenizer.encode(text)
    assert offsets[0] == (0, 0)
    for token_id, (start, end) in zip(ids[1:], offsets[1:]):
        token = tiny_tokenizer.convert_ids_to_tokens(token_id)
        if token_id >= tiny_tokenizer.vocab_size or token == "</s>":
            assert text[start:end] == token
        elif not token.startswith("<0x"):  # a chunk's first "▁" is the dummy prefix and covers no character
            assert text[start:end] in (token.replace("▁", " "), token.replace("▁", " ")[1:])
    # Every non-whitespace character belongs to a token; the stripped "\n" and spaces do not.
    covered = set()
    for start, end in offsets:
        covered.update(range(start, end))
    assert {i for i, ch in enumerate(text) if not ch.isspace()} <= covered
    assert text.index("\n") not in covered


# ----------------------------------------------------------------------------------------------------------
# Parity with a literal transcription of 4.31's PreTrainedTokenizer.tokenize on random strings


def _literal_4_31_encode(sp: spm.SentencePieceProcessor, added: dict[str, int], text: str) -> list[int]:
    """4.31 ``tokenize`` + ``convert_tokens_to_ids`` + BOS, written out step by step (slow)."""
    specials = {"<s>": 1, "</s>": 2, "<unk>": 0}
    no_split = {**specials, **added}
    # trie split: scan left to right, longest token first at each position; no empty strings
    tokens, buf, i = [], "", 0
    while i < len(text):
        match = next((t for t in sorted(no_split, key=len, reverse=True) if text.startswith(t, i)), None)
        if match is None:
            buf += text[i]
            i += 1
            continue
        if buf:
            tokens.append(buf)
            buf = ""
        tokens.append(match)
        i += len(match)
    if buf:
        tokens.append(buf)
    for i, token in enumerate(tokens):
        if token in added:  # plain added tokens: "strip left and right by default"
            if i + 1 < len(tokens) and tokens[i + 1]:
                tokens[i + 1] = tokens[i + 1].lstrip()
            if i > 0 and tokens[i - 1]:
                tokens[i - 1] = tokens[i - 1].rstrip()
    ids = [1]
    for token in tokens:
        if not token:
            continue
        if token in no_split:
            ids.append(no_split[token])
        else:
            ids.extend(sp.piece_to_id(p) for p in sp.encode(token, out_type=str))
    return ids


def test_random_strings_match_literal_4_31(tiny_tokenizer: ReadTokenizer, tiny_tokenizer_dir: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_dir / "tokenizer.model"))
    fragments = [
        SEG_TOKEN, IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN, "</s>", "<s>", "<unk>", " ", "  ", "\n", "\t",
        "\u00a0", "\u2581", "word", "segmentation", " is", "é", "日本", "😀", ".", ",", "12", "[", "<", "SEG]",
        "im_",
    ]  # fmt: skip
    rng = random.Random(0)
    for _ in range(400):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 12)))
        assert tiny_tokenizer.encode(text) == _literal_4_31_encode(sp, tiny_tokenizer.added_tokens, text), text


# ----------------------------------------------------------------------------------------------------------
# Files


def test_from_pretrained_released_layout(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_tokenizer_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"[SEG]": 1000, "<im_start>": 1001, "<im_end>": 1002}))
    tok = ReadTokenizer.from_pretrained(tmp_path)
    assert tok.added_tokens == {SEG_TOKEN: 1000, IM_START_TOKEN: 1001, IM_END_TOKEN: 1002, IMAGE_TOKEN: 1003}
    # a bare sentencepiece directory gets the same layout
    (tmp_path / "added_tokens.json").unlink()
    assert ReadTokenizer.from_pretrained(tmp_path).added_tokens == tok.added_tokens


def test_from_pretrained_other_added_tokens_keep_their_ids(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_tokenizer_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<pad>": 1000, "[SEG]": 1001}))
    tok = ReadTokenizer.from_pretrained(tmp_path)
    assert tok.added_tokens == {"<pad>": 1000, SEG_TOKEN: 1001, IM_START_TOKEN: 1002, IM_END_TOKEN: 1003,
                                IMAGE_TOKEN: 1004}  # fmt: skip
    assert tok.seg_token_id == 1001 and len(tok) == 1005
    assert tok.encode("a <pad> b", add_bos=False) == tok.encode("a", add_bos=False) + [1000] + tok.encode(
        "b", add_bos=False
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"[SEG]": 1001}', r"'\[SEG\]' has id 1001, expected 1000"),
        ('{"[SEG]": 1000, "<im_start>": 1002}', "'<im_start>' has id 1002, expected 1001"),
        ('{"<s>": 1000}', "'<s>' is already a sentencepiece piece"),
        ('{"[SEG]": "1000"}', "non-integer id"),
        ('["[SEG]"]', "expected an object"),
        ("{not json", "invalid JSON"),
    ],
)
def test_from_pretrained_rejects_bad_added_tokens(
    tiny_tokenizer_dir: Path, tmp_path: Path, content: str, message: str
) -> None:
    shutil.copy(tiny_tokenizer_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        ReadTokenizer.from_pretrained(tmp_path)
    assert "added_tokens.json" in str(info.value)


def test_missing_or_broken_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        ReadTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        ReadTokenizer.from_pretrained(tmp_path)


def test_save_pretrained_round_trip(tiny_tokenizer: ReadTokenizer, tmp_path: Path) -> None:
    out = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == ["added_tokens.json", "tokenizer.model", "tokenizer_config.json"]
    assert json.loads((out / "added_tokens.json").read_text()) == tiny_tokenizer.added_tokens
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["tokenizer_class"], config["legacy"], config["pad_token"]) == ("LlamaTokenizer", True, "<unk>")
    again = ReadTokenizer.from_pretrained(out)
    text = "USER: <im_start><image><im_end>\nWhat is it? ASSISTANT: It is [SEG].</s>"
    assert again.encode(text) == tiny_tokenizer.encode(text)
    assert again.added_tokens == tiny_tokenizer.added_tokens


# ----------------------------------------------------------------------------------------------------------
# Training


def test_train_sentencepiece_is_deterministic_and_llama_like(tmp_path: Path) -> None:
    texts = ["The cat sits on the mat. 42 dogs run.", "Segment the red apple, please.\nThank you!"] * 20
    a = train_sentencepiece(texts, 300, tmp_path / "a.model")
    b = train_sentencepiece(texts, 300, tmp_path / "b.model")
    assert a.read_bytes() == b.read_bytes()
    tok = ReadTokenizer(a)
    assert tok.vocab_size == 300 and len(tok) == 304
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    assert tok.tokenize("42 ü") == ["▁", "4", "2", "▁", "<0xC3>", "<0xBC>"]  # digits split, byte fallback
    assert tok.tokenize("the  the") == ["▁the", "▁", "▁the"]  # no whitespace collapsing
    with pytest.raises(ValueError, match="no non-empty"):
        train_sentencepiece(["", "  \n "], 300, tmp_path / "c.model")


def test_shipped_tokenizer_is_reproducible(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_tokenizer", ROOT / "scripts" / "make_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = train_sentencepiece(module.builtin_corpus(), 1000, tmp_path / "tokenizer.model")
    assert model.read_bytes() == (tiny_tokenizer_dir / "tokenizer.model").read_bytes()


def test_dataset_tokenizer_reads_every_synthetic_word_whole(tmp_path: Path) -> None:
    """scripts/make_tokenizer.py --dataset (the quickstart's tokenizer): colour, shape and system-prompt words are
    single pieces, the training is deterministic, and a folder without training JSONs is a clear error."""
    from read.data.synthetic import COLORS, SHAPES, make_synthetic

    spec = importlib.util.spec_from_file_location("make_tokenizer", ROOT / "scripts" / "make_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    make_synthetic(tmp_path / "data", 60, 0, 0, seed=0)
    corpus = module.builtin_corpus() + module.dataset_corpus(tmp_path / "data")
    a = train_sentencepiece(corpus, 1500, tmp_path / "a" / "tokenizer.model")
    b = train_sentencepiece(corpus, 1500, tmp_path / "b" / "tokenizer.model")
    assert a.read_bytes() == b.read_bytes()
    tok = ReadTokenizer(a)
    for word in [*COLORS, *SHAPES, "segment", "image", "assistant", "questions", "helpful"]:
        assert tok.tokenize(f"the {word}") == ["▁the", f"▁{word}"], word
    with pytest.raises(FileNotFoundError, match="no ReasonSeg-format training JSONs"):
        module.dataset_corpus(tmp_path / "empty")
