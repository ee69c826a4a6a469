"""Train a small LLaMA-style sentencepiece tokenizer for tiny test models and the synthetic default.

The tokenizer shipped in tests/assets/tiny_tokenizer was built with

    .venv/bin/python scripts/make_tokenizer.py --out tests/assets/tiny_tokenizer --vocab_size 1000

which trains on the built-in corpus (the question/answer templates with their placeholders filled, the system
prompts of the conversation templates and a few extra sentences) and writes ``tokenizer.model``,
``added_tokens.json`` and ``tokenizer_config.json``. Training is single-threaded and deterministic.

A tokenizer for a synthetic dataset (the quickstart's base brings its own, made by ``scripts/pretrain_base.py``):

    .venv/bin/python scripts/make_tokenizer.py --out data/synthetic_quickstart/tokenizer --vocab_size 1500 \
        --dataset data/synthetic_quickstart

``--dataset`` adds the ReasonSeg-format training texts of that dataset (queries, false-premise queries and
answers) and repeats the system prompts, so that, as in LLaMA's vocabulary, every word the model reads is one
or two pieces (with the 1000-piece test tokenizer, "orange" is four pieces and the system prompt ~70).
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

from read.constants import EXTRA_TOKENS
from read.data import templates
from read.data.conversation import CONV_TEMPLATES
from read.data.reason_seg import json_path_for, list_reason_seg_images, read_reason_seg_json
from read.tokenizer import SP_MODEL_FILE, ReadTokenizer, train_sentencepiece

_ADDED = re.compile("|".join(re.escape(t) for t in EXTRA_TOKENS))
_CLASS_NAMES = (
    "cat", "dog", "person", "car", "bicycle", "traffic light", "chair", "dining table", "umbrella", "horse",
    "the man on the left", "red apple", "window", "tree", "sky", "road", "bottle", "laptop", "giraffe", "boat",
)  # fmt: skip
_SENTENCES = (
    "What part of the kitchen would you use to keep food cold?",
    "Which object in the picture could a person sit on while reading?",
    "Where would the driver look to know when to stop the car?",
    "The thing that protects people from the rain in this scene.",
    "What can be used to cut the bread on the table?",
    "Something in the room that shows the current time.",
)
_EXTRA = (
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "What is shown in this image? The image shows a street with cars, people and buildings.",
    "There are 3 people and 2 dogs in the park; one of them is holding a red frisbee.",
    "Describe the scene in detail. A small boat floats on a calm lake under a cloudy sky.",
    "Yes, it is. No, it is not. Sure! Thanks, here you go: the answer is 42.",
)


def builtin_corpus() -> list[str]:
    """Training lines: filled templates, system prompts and a few generic sentences."""
    names = itertools.cycle(_CLASS_NAMES)
    sents = itertools.cycle(_SENTENCES)
    lists = (
        templates.SHORT_QUESTION, templates.LONG_QUESTION, templates.SHORT_ANSWER, templates.LONG_ANSWER,
        templates.NEG_ANSWER, templates.CORRECT_ANSWER, templates.EXPLANATORY_QUESTION,
        templates.LISA_SHORT_QUESTION_LIST, templates.LISA_LONG_QUESTION_LIST, templates.LISA_ANSWER_LIST,
    )  # fmt: skip
    texts = [
        t.format(class_name=next(names), gt_name=next(names), sent=next(sents))
        for t in itertools.chain.from_iterable(lists)
    ]
    for conv in CONV_TEMPLATES.values():
        texts.append(f"{conv.system} {conv.roles[0]}: <image>\nhello {conv.roles[1]}: hi")
    texts.extend(_SENTENCES)
    texts.extend(_EXTRA)
    # Cut at the added tokens and strip, as the tokenizer does, so that e.g. the "." after "[SEG]" is learned as the
    # single piece "▁." (as in LLaMA).
    return [chunk.strip() for text in texts for chunk in _ADDED.split(text) if chunk.strip()]


def dataset_corpus(dataset_dir: str | Path, system_repeats: int = 50) -> list[str]:
    """Training lines from a ReasonSeg-format dataset's ``train`` split (every query phrasing, false-premise queries
    and answers, read with ``read.data.reason_seg``'s annotation reader), plus each conversation template's system
    prompt ``system_repeats`` times (it begins every training row)."""
    root = Path(dataset_dir) / "reason_seg"
    folders = sorted(p.name for p in root.glob("*") if (p / "train").is_dir()) if root.is_dir() else []
    images = [path for folder in folders for path in list_reason_seg_images(str(dataset_dir), folder, ["train"])]
    if not images:
        raise FileNotFoundError(f"no ReasonSeg-format training JSONs under {root}/*/train/")
    texts: list[str] = []
    for path in images:
        ann = read_reason_seg_json(json_path_for(path))
        texts.extend(ann.text)
        for query, _, answer in ann.false_premise_qa or []:
            texts.extend((query, answer))
    for conv in CONV_TEMPLATES.values():
        texts.extend([conv.system] * system_repeats)
    return [t.strip() for t in texts if t.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--vocab_size", type=int, default=1000, help="sentencepiece pieces (>= 300)")
    parser.add_argument("--corpus", type=Path, default=None, help="UTF-8 text file; default: the built-in corpus")
    parser.add_argument(
        "--dataset", type=Path, default=None, help="also train on this ReasonSeg-format dataset's training texts"
    )
    args = parser.parse_args()
    if args.vocab_size < 300:
        parser.error(f"--vocab_size {args.vocab_size} is too small: 256 byte pieces and 3 specials come first")
    corpus = [args.corpus.read_text(encoding="utf-8")] if args.corpus else builtin_corpus()
    if args.dataset is not None:
        try:
            corpus += dataset_corpus(args.dataset)
        except FileNotFoundError as e:
            parser.error(str(e))
    train_sentencepiece(corpus, args.vocab_size, args.out / SP_MODEL_FILE)
    tokenizer = ReadTokenizer(args.out / SP_MODEL_FILE)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}: {tokenizer}")


if __name__ == "__main__":
    main()
