"""A LLaMA tokenizer with READ's extra tokens, bit-exact with the reference's transformers 4.31 slow tokenizer.

The reference tokenises with transformers 4.31's slow ``LlamaTokenizer`` (``use_fast=False``, ``legacy=True``).
transformers 5 only ships a tokenizers-backend LLaMA tokenizer with different whitespace handling around added
tokens, so this class re-implements the 4.31 behaviour directly on ``sentencepiece``. What was checked in the 4.31.0
source (``tokenization_utils.py::PreTrainedTokenizer.tokenize/_add_tokens/_decode``,
``tokenization_utils_base.py::_from_pretrained``, ``models/llama/tokenization_llama.py``):

1. The text is first cut at every "no-split" token: the tokens added with ``add_tokens`` (here ``[SEG]``,
   ``<im_start>``, ``<im_end>``, ``<image>``) and, because ``from_pretrained`` calls ``sanitize_special_tokens``,
   the special tokens ``<s>``, ``</s>``, ``<unk>``.
2. Neighbour stripping: the special tokens are ``AddedToken(lstrip=False, rstrip=False)`` objects, so their
   neighbours are left alone. Added tokens are plain strings, for which 4.31 takes the "strip left and right by
   default" branch: the text chunk on the left is ``rstrip()``-ed and the chunk on the right ``lstrip()``-ed
   (Python whitespace, so "\\n" and non-breaking spaces go too). This holds whether the token was added with
   ``special_tokens=True`` (``<im_start>``, ``<im_end>``) or not (``[SEG]``): neither becomes an
   ``additional_special_token``.
3. Chunks that end up empty are dropped; every other chunk is encoded on its own with ``sp.encode`` (``legacy=True``
   skips the "▁" rewriting), so each chunk gets sentencepiece's dummy-prefix "▁". Pieces map to ids with
   ``piece_to_id``, which equals sentencepiece's own integer output.
4. ``add_bos_token=True``, ``add_eos_token=False``: one ``<s>`` in front.
5. Decoding (``_decode`` / ``convert_tokens_to_string``): runs of vocabulary pieces are decoded by sentencepiece
   (``<s>``, ``</s>``, ``<unk>`` inside a run are written literally, preceded by a space unless at the start or
   after another special token); every added token is its own sub-text; the sub-texts are joined with single
   spaces (``spaces_between_special_tokens=True``); no clean-up of spaces.

Consequences that matter for READ: "... result is [SEG]." encodes as ``..., ▁is, [SEG], ▁., </s>`` (the token
before ``[SEG]`` is ``▁is``, never a lone "▁"), and a "\\n" right after ``<im_end>`` disappears.

The cut in step 1 takes the leftmost match and, among matches at the same position, the longest. That equals 4.31's
trie for token sets in which no token's suffix is another token's prefix, which holds for the LLaMA specials plus
READ's tokens (each starts with "<" or "[" and has no other "<" or "[").
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

from read.constants import EXTRA_TOKENS, IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, SEG_TOKEN
from read.errors import FileFormatError, MissingFileError

logger = logging.getLogger(__name__)

SP_MODEL_FILE = "tokenizer.model"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class ReadTokenizer:
    """Slow-LLaMA (transformers 4.31, ``legacy=True``) tokenizer plus READ's added tokens.

    Vocabulary layout: the ``V`` sentencepiece pieces, then the added tokens. A released READ/LISA/SESAME checkpoint
    brings ``{"[SEG]": V, "<im_start>": V + 1, "<im_end>": V + 2}``; tokens of ``read.constants.EXTRA_TOKENS`` that
    are missing are appended in that order, so a LLaMA vocabulary (V = 32000) ends with ``<image>`` = 32003, the
    per-patch placeholder of transformers' Llava.

    Arguments:
        sp_model_path: a sentencepiece ``tokenizer.model`` with ``<unk>``, ``<s>`` and ``</s>`` pieces.
        added_tokens: token -> id for tokens already added (e.g. from ``added_tokens.json``); ids must be
            ``V, V + 1, ...`` without gaps.
    """

    def __init__(self, sp_model_path: str | Path, added_tokens: Mapping[str, int] | None = None) -> None:
        path = Path(sp_model_path)
        if not path.is_file():
            raise MissingFileError(f"sentencepiece model not found: {path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as err:
            raise FileFormatError(f"{path} is not a sentencepiece model: {err}") from err
        self.sp_model_path = path
        base = self._sp.GetPieceSize()
        specials = {"unk": self._sp.unk_id(), "bos": self._sp.bos_id(), "eos": self._sp.eos_id()}
        for name, idx in specials.items():
            if idx < 0:
                raise FileFormatError(f"{path} has no {name} piece; a LLaMA-style model needs <unk>, <s> and </s>")
        self._unk_id, self._bos_id, self._eos_id = specials["unk"], specials["bos"], specials["eos"]
        # The special tokens are cut out of the text but never strip their neighbours (step 2 above).
        self._special_pieces = {self._sp.IdToPiece(i): i for i in specials.values()}

        self._added = _check_added_tokens(dict(added_tokens or {}), self._sp, base)
        for token in EXTRA_TOKENS:
            if token not in self._added:
                self._added[token] = base + len(self._added)
        self._added_by_id = {i: t for t, i in self._added.items()}

        no_split = sorted(set(self._added) | set(self._special_pieces), key=len, reverse=True)
        self._split_pattern = re.compile("(" + "|".join(re.escape(t) for t in no_split) + ")")
        # Ids dropped by ``decode(skip_special_tokens=True)``; [SEG] stays visible in answers.
        self._skipped_ids = frozenset(
            {self._bos_id, self._eos_id, self._unk_id}
            | {self._added[t] for t in (IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN)}
        )
        self._seg_token_id = self._checked_seg_token_id()

    # ------------------------------------------------------------------------------------------------------
    # loading and saving

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ReadTokenizer:
        """Load ``tokenizer.model`` and, if present, ``added_tokens.json`` from ``directory`` (no code is run)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise MissingFileError(f"tokenizer directory not found: {directory}")
        added_file = directory / ADDED_TOKENS_FILE
        added: dict[str, int] | None = None
        if added_file.is_file():
            try:
                added = json.loads(added_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise FileFormatError(f"{added_file}: invalid JSON ({err})") from err
            if not isinstance(added, dict):
                raise FileFormatError(f"{added_file}: expected an object token -> id, got {type(added).__name__}")
        try:
            return cls(directory / SP_MODEL_FILE, added)
        except _AddedTokenError as err:
            raise FileFormatError(f"{added_file}: {err.detail}") from None

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``tokenizer.model``, ``added_tokens.json`` and ``tokenizer_config.json`` into ``directory``.

        The files follow the layout of a transformers 4.31 slow-tokenizer save, so the reference code can load them.

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SP_MODEL_FILE).write_bytes(self._sp.serialized_model_proto())
        added = dict(sorted(self._added.items(), key=lambda kv: kv[1]))
        (directory / ADDED_TOKENS_FILE).write_text(json.dumps(added, indent=2, ensure_ascii=False) + "\n")
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "legacy": True,
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": self._sp.IdToPiece(self._bos_id),
            "eos_token": self._sp.IdToPiece(self._eos_id),
            "unk_token": self._sp.IdToPiece(self._unk_id),
            "pad_token": self._sp.IdToPiece(self._unk_id),
            "clean_up_tokenization_spaces": False,
        }
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    # ------------------------------------------------------------------------------------------------------
    # vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of sentencepiece pieces ``V`` (without the added tokens), as in transformers."""
        return self._sp.GetPieceSize()

    def __len__(self) -> int:
        return self.vocab_size + len(self._added)

    @property
    def added_tokens(self) -> dict[str, int]:
        """Added token -> id, in id order."""
        return dict(sorted(self._added.items(), key=lambda kv: kv[1]))

    @property
    def seg_token_id(self) -> int:
        return self._seg_token_id

    @property
    def im_start_token_id(self) -> int:
        return self._added[IM_START_TOKEN]

    @property
    def im_end_token_id(self) -> int:
        return self._added[IM_END_TOKEN]

    @property
    def image_token_id(self) -> int:
        return self._added[IMAGE_TOKEN]

    @property
    def bos_token_id(self) -> int:
        return self._bos_id

    @property
    def eos_token_id(self) -> int:
        return self._eos_id

    @property
    def unk_token_id(self) -> int:
        return self._unk_id

    @property
    def pad_token_id(self) -> int:
        """The reference pads with ``<unk>`` (id 0 for LLaMA); attention masks must come from lengths."""
        return self._unk_id

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token string(s) to id(s); added tokens first, then the sentencepiece vocabulary (unknown -> ``<unk>``)."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Id(s) to token string(s): sentencepiece pieces ("▁is", "<0x0A>") or added-token strings."""
        if isinstance(ids, int):
            return self._id_to_token(ids)
        return [self._id_to_token(int(i)) for i in ids]

    def _token_to_id(self, token: str) -> int:
        if token in self._added:
            return self._added[token]
        return self._sp.PieceToId(token)

    def _id_to_token(self, idx: int) -> str:
        if idx in self._added_by_id:
            return self._added_by_id[idx]
        if not 0 <= idx < self.vocab_size:
            raise ValueError(f"token id {idx} is outside the vocabulary [0, {len(self)})")
        return self._sp.IdToPiece(idx)

    def _checked_seg_token_id(self) -> int:
        # ``tokenizer("[SEG]").input_ids[0]`` returns "▁" with some tokenizer versions (LISA issue #55); take the id
        # by lookup and check that it maps back to "[SEG]" and that "[SEG]" encodes to that single id.
        seg_id = self._token_to_id(SEG_TOKEN)
        decoded = self.decode([seg_id], skip_special_tokens=False)
        encoded = self.encode(SEG_TOKEN, add_bos=False)
        if decoded != SEG_TOKEN or encoded != [seg_id]:
            raise RuntimeError(
                f"{SEG_TOKEN} token id {seg_id} is inconsistent: decodes to {decoded!r}, {SEG_TOKEN!r} encodes to "
                f"{encoded}"
            )
        return seg_id

    # ------------------------------------------------------------------------------------------------------
    # encoding and decoding

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, as 4.31's ``tokenizer(text).input_ids``.

        Arguments:
            text: any string; ``<image>`` in it becomes one ``image_token_id`` (the reference instead splits prompts
                on ``<image>``, see ``read.data.text.tokenize_with_image``).
            add_bos: prepend ``<s>``.
        """
        return self.encode_with_offsets(text, add_bos)[0]

    def encode_with_offsets(self, text: str, add_bos: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and, per id, the ``(start, end)`` character span of ``text`` it stands for.

        Whitespace removed by the strip rule belongs to no token. ``<s>`` gets ``(0, 0)``. Byte-fallback pieces of one
        character share its span: all but the last are empty spans at the character's start.

        Returns:
            ids: (N,) ids.
            offsets: N ``(start, end)`` pairs, ``0 <= start <= end <= len(text)``.
        """
        ids: list[int] = [self._bos_id] if add_bos else []
        offsets: list[tuple[int, int]] = [(0, 0)] if add_bos else []
        for start, end, token in self._split(text):
            if token is not None:
                ids.append(self._token_to_id(token))
                offsets.append((start, end))
                continue
            encoded = self._sp.EncodeAsOffsetMapping(text[start:end])
            ids.extend(encoded["ids"])
            offsets.extend((start + s, start + e) for s, e in encoded["offsets"])
        return ids, offsets

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` without ``<s>``, e.g. ``["▁Sure", ",", ..., "[SEG]", "▁."]``."""
        return self.convert_ids_to_tokens(self.encode(text, add_bos=False))

    def _split(self, text: str) -> list[tuple[int, int, str | None]]:
        """Cut ``text`` at no-split tokens and apply the strip rule.

        Returns:
            ``(start, end, token)`` triples in order: ``token`` is the no-split token string, or None for a text
            chunk ``text[start:end]`` (non-empty, already stripped).
        """
        parts = self._split_pattern.split(text)  # even indices: text chunks (maybe ""), odd: tokens
        spans = []
        pos = 0
        for part in parts:
            spans.append([pos, pos + len(part)])
            pos += len(part)
        for k in range(1, len(parts), 2):
            if parts[k] in self._special_pieces:
                continue
            left, right = spans[k - 1], spans[k + 1]
            left[1] = left[0] + len(text[left[0] : left[1]].rstrip())
            right[0] = right[1] - len(text[right[0] : right[1]].lstrip())
        out: list[tuple[int, int, str | None]] = []
        for k, (start, end) in enumerate(spans):
            if k % 2:
                out.append((start, end, parts[k]))
            elif end > start:
                out.append((start, end, None))
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``, following 4.31's slow ``decode`` (added tokens are joined with single spaces).

        Arguments:
            ids: token ids (ints or 0-d tensors).
            skip_special_tokens: drop ``<s>``, ``</s>``, ``<unk>`` (= pad), ``<im_start>``, ``<im_end>`` and
                ``<image>``; ``[SEG]`` is kept. (4.31 would keep ``<im_start>``/``<im_end>``, which are not among its
                ``all_special_ids``; they never occur in generated answers.)
        """
        sub_texts: list[str] = []
        run: list[str] = []
        for raw in ids:
            idx = int(raw)
            if skip_special_tokens and idx in self._skipped_ids:
                continue
            token = self._id_to_token(idx)
            if idx in self._added_by_id:
                if run:
                    sub_texts.append(self._pieces_to_text(run))
                    run = []
                sub_texts.append(token)
            else:
                run.append(token)
        if run:
            sub_texts.append(self._pieces_to_text(run))
        return " ".join(sub_texts)

    def _pieces_to_text(self, pieces: list[str]) -> str:
        """4.31 ``LlamaTokenizer.convert_tokens_to_string``: special pieces are written literally."""
        out = ""
        pending: list[str] = []
        prev_special = False
        for i, piece in enumerate(pieces):
            if piece in self._special_pieces:
                if not prev_special and i != 0:
                    out += " "
                out += self._sp.DecodePieces(pending) + piece
                pending = []
                prev_special = True
            else:
                pending.append(piece)
                prev_special = False
        return out + self._sp.DecodePieces(pending)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.sp_model_path)!r}, vocab_size={self.vocab_size}, "
            f"added_tokens={self.added_tokens})"
        )


class _AddedTokenError(ValueError):
    """A bad ``added_tokens`` entry; ``from_pretrained`` re-raises it naming the file."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"added_tokens: {detail}")
        self.detail = detail


def _check_added_tokens(added: dict, sp: spm.SentencePieceProcessor, base: int) -> dict[str, int]:
    """Validate token -> id pairs: strings not in the sentencepiece vocabulary, ids ``base, base + 1, ...``."""
    for token, idx in added.items():
        if not isinstance(token, str) or not token:
            raise _AddedTokenError(f"added token {token!r} must be a non-empty string")
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise _AddedTokenError(f"added token {token!r} has non-integer id {idx!r}")
        if sp.PieceToId(token) != sp.unk_id() or token == sp.IdToPiece(sp.unk_id()):
            raise _AddedTokenError(f"added token {token!r} is already a sentencepiece piece")
    ordered = sorted(added.items(), key=lambda kv: kv[1])
    for offset, (token, idx) in enumerate(ordered):
        if idx != base + offset:
            raise _AddedTokenError(
                f"added token {token!r} has id {idx}, expected {base + offset} (added ids must follow the {base} "
                f"sentencepiece pieces without gaps)"
            )
    return dict(ordered)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_path: str | Path) -> Path:
    """Train a small LLaMA-style sentencepiece model, deterministically (one thread).

    LLaMA's settings: BPE, byte fallback, digits split, dummy prefix, identity normalisation, no whitespace
    collapsing, ``<unk>``/``<s>``/``</s>`` = 0/1/2, no pad piece. Character coverage is 1.0 (LLaMA: 0.99995) so a
    small corpus keeps all its characters. Each text is split into lines; empty lines are skipped.

    Arguments:
        texts: training text.
        vocab_size: total number of pieces, including 3 specials and 256 byte pieces.
        out_path: where to write the ``.model`` file.

    Returns:
        ``out_path``.
    """
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError("train_sentencepiece: no non-empty training text")
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.getvalue())
    return out_path
