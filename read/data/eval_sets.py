"""Evaluation datasets: ReasonSeg val/test, RefCOCO(+/g) val/testA/testB/test, FP-/R-RefCOCO(+/g).

Each item is one image as a :class:`read.data.sample.Sample`. Two prompt modes:

* teacher forcing (``generation=False``): the prompt contains the answer, one ``[SEG]`` per row whose object exists,
  and ``Query.masks`` holds one mask per ``[SEG]``;
* generation (``generation=True``): question-only prompts (the assistant turn is left open) and every row carries
  its ground truth as a (1, H, W) mask (all zero for a false premise) with ``meta["exists"]``.

ReasonSeg masks keep the 255 ignore regions (the metric skips them). Prompts:

* ReasonSeg, ``prompts="read"``: READ's fixed templates (``READ_EVAL_*``) on ``text[0]``; ``prompts="lisa"``: LISA's
  ``ValDataset`` templates (``LISA_VAL_*``).
* RefCOCO, ``prompts="read"``: a random SESAME short question and short answer per sentence, as READ does, but
  drawn from a generator seeded with ``(seed, image index)`` so results do not depend on the number of loader
  workers [FIX]; ``prompts="lisa"``: LISA's fixed "What is {sent} in this image?" prompt with the answer "[SEG].".
"""

from __future__ import annotations

import os

import numpy as np

from read.data import templates as T
from read.data.reason_seg import (
    json_path_for,
    list_reason_seg_images,
    load_reason_seg_item,
    read_reason_seg_json,
)
from read.data.refer import FALSE_PREMISE_DATASETS
from read.data.refer_seg import ReferSplit
from read.data.sample import Query, Sample, empty_masks, pick, single_turn

__all__ = ["ReasonSegEvalDataset", "ReferEvalDataset", "build_eval_dataset"]


class ReasonSegEvalDataset:
    """ReasonSeg val or test: one row per image (the first phrasing), ground truth with ignore = 255.

    Arguments:
        dataset_dir: the dataset root.
        split: "val" or "test" (any folder under ``reason_seg/<folder>/``).
        subset: "all", "short" (``is_sentence`` false) or "long".
        prompts: "read" or "lisa" (see the module docstring).
        generation: question-only prompts.
        folder: the ReasonSeg folder name.
    """

    def __init__(
        self,
        dataset_dir: str,
        split: str = "val",
        *,
        subset: str = "all",
        prompts: str = "read",
        generation: bool = False,
        folder: str = "ReasonSeg",
    ) -> None:
        if subset not in ("all", "short", "long"):
            raise ValueError(f"subset must be 'all', 'short' or 'long', got {subset!r}")
        if prompts not in ("read", "lisa"):
            raise ValueError(f"prompts must be 'read' or 'lisa', got {prompts!r}")
        self.name = f"reason_seg_{split}" + ("" if subset == "all" else f"_{subset}")
        self.prompts = prompts
        self.generation = generation
        images = list_reason_seg_images(dataset_dir, folder, [split])
        if subset != "all":
            want_long = subset == "long"
            images = [p for p in images if read_reason_seg_json(json_path_for(p)).is_sentence == want_long]
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image_path = self.images[index]
        image, ann, mask = load_reason_seg_item(image_path)
        if self.prompts == "read":
            text = ann.text[0]
            if ann.is_sentence:
                question = T.READ_EVAL_LONG_QUESTION.format(sent=text)
            else:
                question = T.READ_EVAL_SHORT_QUESTION.format(class_name=text.lower())
            answer = T.READ_EVAL_ANSWER
        else:
            text = ann.text[0].strip()
            template = T.LISA_VAL_LONG_QUESTION if ann.is_sentence else T.LISA_VAL_SHORT_QUESTION
            question = template.format(sent=text, class_name=text)
            answer = T.LISA_VAL_ANSWER
        meta = {
            "query": ann.text[0],
            "is_sentence": ann.is_sentence,
            "exists": True,
            "image_id": os.path.splitext(os.path.basename(image_path))[0],
        }
        query = Query(single_turn(question, None if self.generation else answer), mask[None], meta)
        return Sample(image, image_path, [query], self.name)


class ReferEvalDataset:
    """One referring split; every sentence of every ref of an image is a row of that image.

    Arguments:
        dataset_dir: the dataset root.
        dataset: e.g. "refcoco", "refcocog", "fprefcoco", "R-refcoco+".
        split: "val", "testA", "testB", "test".
        prompts: "read" (seeded random SESAME templates) or "lisa" (fixed).
        generation: question-only prompts (FP-RefCOCO evaluation).
        seed: seed of the template draws (``prompts="read"``).
        protocol: refs-file convention ("read" or "lisa").
    """

    def __init__(
        self,
        dataset_dir: str,
        dataset: str,
        split: str = "val",
        *,
        prompts: str = "read",
        generation: bool = False,
        seed: int = 42,
        protocol: str = "read",
    ) -> None:
        if prompts not in ("read", "lisa"):
            raise ValueError(f"prompts must be 'read' or 'lisa', got {prompts!r}")
        self.name = f"{dataset}_{split}"
        self.dataset = dataset
        self.prompts = prompts
        self.generation = generation
        self.seed = seed
        self.split = ReferSplit(dataset_dir, dataset, split, protocol)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Sample:
        image = self.split.images[index]
        pixels = self.split.load(image)
        h, w = pixels.shape[:2]
        rng = np.random.default_rng([self.seed, index])
        queries = []
        for s in self.split.sentences(image):
            question, answer = self._prompt(rng, s.text, s.gt_sent, s.exists)
            gt = self.split.index.ann_mask(s.ann_id, image) if s.exists else np.zeros((h, w), dtype=np.uint8)
            if self.generation:
                messages, masks = single_turn(question, None), gt[None]
            else:
                messages = single_turn(question, answer)
                masks = gt[None] if s.exists else empty_masks(h, w)
            meta = {"query": s.text, "exists": s.exists, "ref_id": s.ref_id, "sent_id": s.sent_id}
            queries.append(Query(messages, masks, meta))
        return Sample(pixels, self.split.index.image_path(image), queries, self.name)

    def _prompt(self, rng: np.random.Generator, text: str, gt_sent: str, exists: bool) -> tuple[str, str]:
        if self.prompts == "lisa":
            clean = text.strip().lower()
            return T.LISA_VAL_SHORT_QUESTION.format(class_name=clean), T.LISA_VAL_ANSWER
        question = pick(rng, T.SHORT_QUESTION).format(class_name=text.lower())
        name = text.strip().lower()
        if exists:
            answer = pick(rng, T.SHORT_ANSWER).format(class_name=name)
        elif self.dataset in FALSE_PREMISE_DATASETS:
            answer = pick(rng, T.CORRECT_ANSWER).format(class_name=name, gt_name=gt_sent.strip().lower())
        else:
            answer = pick(rng, T.NEG_ANSWER).format(class_name=name)
        return question, answer


def build_eval_dataset(
    dataset_dir: str,
    val_dataset: str,
    split: str,
    *,
    prompts: str = "read",
    generation: bool = False,
    seed: int = 42,
    protocol: str = "read",
) -> ReasonSegEvalDataset | ReferEvalDataset:
    """Evaluation dataset by name: "ReasonSeg" (split "val"/"test", or "test_short"/"test_long"), or a referring
    dataset ("refcoco", "refcoco+", "refcocog", "fprefcoco", ...)."""
    if val_dataset == "ReasonSeg":
        base, _, subset = split.partition("_")
        return ReasonSegEvalDataset(
            dataset_dir, base, subset=subset or "all", prompts=prompts, generation=generation, folder=val_dataset
        )
    return ReferEvalDataset(
        dataset_dir, val_dataset, split, prompts=prompts, generation=generation, seed=seed, protocol=protocol
    )
