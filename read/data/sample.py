"""What every dataset returns before tokenisation: an image, its query rows (conversation + masks) and metadata.

Datasets only read files and build conversations; turning a :class:`Sample` into model inputs (image
preprocessing, tokenisation, padding) is the collator's job (``read/data/collate.py``), so the same datasets serve
training, evaluation and the data checker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from read.constants import SEG_TOKEN
from read.errors import UserError

USER = "user"
ASSISTANT = "assistant"

# A conversation turn: (role, text), role USER or ASSISTANT; text None on a final assistant turn asks for
# generation (the format of ``read.data.conversation``).
Message = tuple[str, "str | None"]


class DataError(UserError):
    """A sample cannot be built: unreadable image, missing or malformed annotation. The message names the file."""


class InvalidAnnotation(DataError):
    """An annotation is readable but its ground truth cannot be used (e.g. a degenerate polygon, no target).

    Training skips such a sample (counted, with a warning naming the file); evaluation refuses to score a split
    that holds one unless asked to leave those queries out.
    """


@dataclass
class Query:
    """One query row: a conversation about the image and the ground truth of its ``[SEG]`` tokens.

    Attributes:
        messages: alternating user / assistant turns; the first user turn contains ``<image>``.
        masks: (k, H, W) uint8 with 1 = object, 0 = background, 255 = ignore (evaluation only), one mask per
            ``[SEG]`` in the assistant turns, in order. Rows of a question-only prompt (generation) may carry the
            query's ground truth instead (k = 1) with ``meta["exists"]``.
        meta: free-form metadata (query text, exists flag, ref/sentence ids, template mode ...).
    """

    messages: list[Message]
    masks: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    encoded: Any = None  # (settings key, ``read.data.text.EncodedConversation``) cached by the collator

    def num_seg_tokens(self) -> int:
        """Number of ``[SEG]`` occurrences in the assistant turns."""
        return sum((text or "").count(SEG_TOKEN) for role, text in self.messages if role == ASSISTANT)


@dataclass
class Sample:
    """An image with its query rows.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        image_path: the file the image was read from (for messages and metadata).
        queries: one or more rows; each becomes one row of the batch.
        dataset: name of the source dataset (e.g. "reason_seg", "refcoco", "ade20k").
        skipped: bad samples the training mixture drew and skipped before this one, for the same index (reported
            per step and per epoch).
    """

    image: np.ndarray
    image_path: str
    queries: list[Query]
    dataset: str
    skipped: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return int(self.image.shape[0]), int(self.image.shape[1])


def empty_masks(height: int, width: int) -> np.ndarray:
    """(0, H, W) uint8: the masks of a row without ``[SEG]``."""
    return np.zeros((0, height, width), dtype=np.uint8)


def single_turn(question: str, answer: str | None) -> list[Message]:
    """``[user: question, assistant: answer]``; ``answer=None`` leaves the assistant turn open."""
    return [(USER, question), (ASSISTANT, answer)]


@dataclass(frozen=True)
class TemplateSet:
    """The question/answer template lists a training dataset draws from (``read.data.templates``).

    Attributes:
        short_question: questions with ``{class_name}`` (categories, referring expressions, short ReasonSeg queries).
        long_question: questions with ``{sent}`` (long ReasonSeg queries).
        long_answer: answers to ReasonSeg questions, one ``[SEG]`` each.
        short_answer: answers to short questions, one ``[SEG]`` each, optionally naming ``{class_name}``.
        neg_answer: false-premise denials naming ``{class_name}``.
        correct_answer: false-premise corrections naming ``{class_name}`` and ``{gt_name}``.
        explanatory_question: suffixes asking for an explanation (LISA explanatory mode).
    """

    short_question: tuple[str, ...]
    long_question: tuple[str, ...]
    long_answer: tuple[str, ...]
    short_answer: tuple[str, ...]
    neg_answer: tuple[str, ...]
    correct_answer: tuple[str, ...]
    explanatory_question: tuple[str, ...]


def template_set(name: str) -> TemplateSet:
    """The training templates: "read" (READ/SESAME lists) or "lisa" (LISA's lists; false-premise answers from READ)."""
    from read.data import templates as t

    if name == "read":
        return TemplateSet(
            t.SHORT_QUESTION, t.LONG_QUESTION, t.LONG_ANSWER, t.SHORT_ANSWER, t.NEG_ANSWER, t.CORRECT_ANSWER,
            t.EXPLANATORY_QUESTION,
        )  # fmt: skip
    if name == "lisa":
        return TemplateSet(
            t.LISA_SHORT_QUESTION_LIST, t.LISA_LONG_QUESTION_LIST, t.LISA_ANSWER_LIST, t.LISA_ANSWER_LIST,
            t.NEG_ANSWER, t.CORRECT_ANSWER, t.LISA_EXPLANATORY_QUESTION_LIST,
        )  # fmt: skip
    raise ValueError(f"unknown template set {name!r}; expected 'read' or 'lisa'")


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One uniformly drawn element of a non-empty sequence."""
    if len(items) == 0:
        raise ValueError("pick: empty sequence")
    return items[int(rng.integers(len(items)))]


def subsample(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """Up to ``k`` distinct indices of ``range(n)``: all of them in order if ``n <= k``, else a random draw."""
    if n <= k:
        return list(range(n))
    return [int(i) for i in rng.permutation(n)[:k]]
