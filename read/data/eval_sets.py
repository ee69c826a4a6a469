"""Evaluation datasets: ReasonSeg val/test, RefCOCO(+/g) val/testA/testB/test, FP-/R-RefCOCO(+/g).

Each item is one image as a :class:`read.data.sample.Sample`. Two prompt modes:

* teacher forcing (``generation=False``): the prompt contains the answer, one ``[SEG]`` per row whose object exists,
  and ``Query.masks`` holds one mask per ``[SEG]``;
* generation (``generation=True``): question-only prompts (the assistant turn is left open) and every row carries
  its ground truth as a (1, H, W) mask (all zero for a false premise) with ``meta["exists"]``.

ReasonSeg masks keep the 255 ignore regions (the metric skips them).

Every query of these splits has a target, except the false premises of FP-/R-RefCOCO and gRefCOCO's no-target
expressions. A dataset is checked when it is built, before any model runs: a missing image (or a ReasonSeg image
without its annotation) is an error naming the files, and so is ground truth that cannot be scored (a ReasonSeg
annotation without a usable target polygon, :func:`read.data.masks.reason_seg_problems`; a RefCOCO ref whose
annotation has an empty mask). An empty target predicted empty would otherwise score IoU 1. With
``skip_invalid=True`` those queries are left out instead and listed in ``invalid``, so the score is that of the
valid queries.

Prompts:

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
    annotation_problems,
    find_reason_seg_files,
    json_path_for,
    list_reason_seg_images,
    load_reason_seg_item,
    read_reason_seg_json,
)
from read.data.refer import FALSE_PREMISE_DATASETS
from read.data.refer_seg import ReferSplit
from read.data.sample import DataError, Query, Sample, empty_masks, pick, single_turn
from read.data.transforms import image_size

__all__ = ["InvalidSplitError", "ReasonSegEvalDataset", "ReferEvalDataset", "build_eval_dataset"]

LISTED = 5  # files named in an error message (all are counted)


class InvalidSplitError(DataError):
    """An evaluation split holds ground truth that cannot be scored; the message names the files."""


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:LISTED])
    return shown + (f"; and {len(items) - LISTED} more" if len(items) > LISTED else "")


def _refuse_invalid(name: str, invalid: list[dict[str, str]], total: int) -> None:
    raise InvalidSplitError(
        f"{name}: {len(invalid)} of {total} queries have ground truth that cannot be scored: "
        f"{_listing([i['problem'] for i in invalid])}. Fix or remove these annotations, or leave them out with "
        "skip_invalid (eval.py --skip_invalid; training validation: data.val_skip_invalid=true), which scores the "
        "valid queries only and lists the others"
    )


class ReasonSegEvalDataset:
    """ReasonSeg val or test: one row per image (the first phrasing), ground truth with ignore = 255.

    Arguments:
        dataset_dir: the dataset root.
        split: "val" or "test" (any folder under ``reason_seg/<folder>/``).
        subset: "all", "short" (``is_sentence`` false) or "long".
        prompts: "read" or "lisa" (see the module docstring).
        generation: question-only prompts.
        folder: the ReasonSeg folder name.
        skip_invalid: leave out annotations without usable ground truth (listed in ``invalid``) instead of raising.

    Raises:
        DataError: an image without its annotation or the reverse (names them).
        InvalidSplitError: an annotation cannot serve as ground truth and ``skip_invalid`` is off (names them).
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
        skip_invalid: bool = False,
    ) -> None:
        if subset not in ("all", "short", "long"):
            raise ValueError(f"subset must be 'all', 'short' or 'long', got {subset!r}")
        if prompts not in ("read", "lisa"):
            raise ValueError(f"prompts must be 'read' or 'lisa', got {prompts!r}")
        self.name = f"reason_seg_{split}" + ("" if subset == "all" else f"_{subset}")
        self.root = dataset_dir
        self.prompts = prompts
        self.generation = generation
        self.skip_invalid = skip_invalid
        files = find_reason_seg_files(dataset_dir, folder, [split])
        unpaired = files.unpaired()
        if unpaired:
            raise DataError(
                f"ReasonSeg {split}: {len(unpaired)} file(s) without their partner, so the split cannot be scored "
                f"as a whole: {_listing(unpaired)}. Restore the missing files or remove the unpaired ones"
            )
        if not files.images:
            list_reason_seg_images(dataset_dir, folder, [split])  # raises, naming the folder
        self.images: list[str] = []
        self.invalid: list[dict[str, str]] = []
        considered = 0
        for path in files.images:
            json_path = json_path_for(path)
            try:
                ann = read_reason_seg_json(json_path)
            except DataError as e:
                self.invalid.append({"file": json_path, "problem": str(e)})
                considered += 1
                continue
            if subset != "all" and ann.is_sentence != (subset == "long"):
                continue
            considered += 1
            problems = annotation_problems(ann, *image_size(path), json_path)
            if problems:
                self.invalid.append({"file": json_path, "problem": "; ".join(problems)})
            else:
                self.images.append(path)
        if self.invalid and not skip_invalid:
            _refuse_invalid(f"ReasonSeg {split}", self.invalid, considered)

    def __len__(self) -> int:
        return len(self.images)

    def source_files(self) -> list[str]:
        """The files the items are read from (images and annotations)."""
        return [f for p in self.images for f in (p, json_path_for(p))]

    def settings(self) -> dict[str, object]:
        """What, besides the files, determines the items."""
        return {"prompts": self.prompts, "generation": self.generation, "skip_invalid": self.skip_invalid}

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
        protocol: refs-file convention ("auto", "read" or "lisa"; ``read.data.refer.find_refs_file``).
        skip_invalid: leave out refs whose object is in the image but whose mask is empty (listed in ``invalid``)
            instead of raising. An image left without refs is left out too.

    Raises:
        DataError: an image file of the split is missing (names them).
        InvalidSplitError: a ref has no usable target and ``skip_invalid`` is off (names them).
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
        protocol: str = "auto",
        skip_invalid: bool = False,
    ) -> None:
        if prompts not in ("read", "lisa"):
            raise ValueError(f"prompts must be 'read' or 'lisa', got {prompts!r}")
        self.name = f"{dataset}_{split}"
        self.root = dataset_dir
        self.dataset = dataset
        self.prompts = prompts
        self.generation = generation
        self.seed = seed
        self.skip_invalid = skip_invalid
        self.split = ReferSplit(dataset_dir, dataset, split, protocol)
        index = self.split.index
        missing = [index.image_path(im) for im in self.split.images if not os.path.isfile(index.image_path(im))]
        if missing:
            raise DataError(
                f"{dataset} {split}: {len(missing)} of {len(self.split.images)} image(s) are missing, so the split "
                f"cannot be scored as a whole: {_listing(missing)}. Restore them (they are COCO train2014 images "
                f"for every dataset but refclef)"
            )
        self.invalid: list[dict[str, str]] = []
        self.excluded_refs: set[int] = set()
        considered = 0
        for image in self.split.images:
            for ref in self.split.image_refs.get(image["id"], []):
                sentences = self.split.sentences_of(ref)
                if not any(s.expects_target for s in sentences):
                    continue
                considered += 1
                problem = index.target_problem(ref["ann_id"], image)
                if problem is not None:
                    self.excluded_refs.add(ref["ref_id"])
                    self.invalid.append({
                        "file": index.refs_path,
                        "problem": f"{index.refs_path}: ref {ref['ref_id']} (image {image['file_name']}): {problem}",
                    })  # fmt: skip
        if self.invalid and not skip_invalid:
            _refuse_invalid(f"{dataset} {split}", self.invalid, considered)
        # positions in the whole split: they seed the template draws, which therefore do not move when refs are left out
        self.positions = [i for i, im in enumerate(self.split.images) if self._sentences(im)]

    def __len__(self) -> int:
        return len(self.positions)

    def _sentences(self, image: dict) -> list:
        return [s for s in self.split.sentences(image) if s.ref_id not in self.excluded_refs]

    def source_files(self) -> list[str]:
        """The files the items are read from (refs, instances and the images)."""
        index = self.split.index
        images = [index.image_path(self.split.images[i]) for i in self.positions]
        return [index.refs_path, index.instances_path, *images]

    def settings(self) -> dict[str, object]:
        """What, besides the files, determines the items."""
        return {
            "prompts": self.prompts, "generation": self.generation, "seed": self.seed,
            "refs_file": self.split.index.refs_file.describe(), "skip_invalid": self.skip_invalid,
        }  # fmt: skip

    def __getitem__(self, index: int) -> Sample:
        position = self.positions[index]
        image = self.split.images[position]
        pixels = self.split.load(image)
        h, w = pixels.shape[:2]
        rng = np.random.default_rng([self.seed, position])
        queries = []
        for s in self._sentences(image):
            question, answer = self._prompt(rng, s.text, s.gt_sent, s.exists)
            gt = self.split.index.ann_mask(s.ann_id, image) if s.exists else np.zeros((h, w), dtype=np.uint8)
            if self.generation:
                messages, masks = single_turn(question, None), gt[None]
            else:
                messages = single_turn(question, answer)
                masks = gt[None] if s.exists else empty_masks(h, w)
            meta = {"query": s.text, "exists": s.exists, "ref_id": s.ref_id, "sent_id": s.sent_id,
                    "no_target": s.no_target}  # fmt: skip
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
    protocol: str = "auto",
    skip_invalid: bool = False,
) -> ReasonSegEvalDataset | ReferEvalDataset:
    """Evaluation dataset by name: "ReasonSeg" (split "val"/"test", or "test_short"/"test_long"), or a referring
    dataset ("refcoco", "refcoco+", "refcocog", "fprefcoco", ...). See the classes for ``skip_invalid``."""
    if val_dataset == "ReasonSeg":
        base, _, subset = split.partition("_")
        return ReasonSegEvalDataset(
            dataset_dir, base, subset=subset or "all", prompts=prompts, generation=generation, folder=val_dataset,
            skip_invalid=skip_invalid,
        )  # fmt: skip
    return ReferEvalDataset(
        dataset_dir, val_dataset, split, prompts=prompts, generation=generation, seed=seed, protocol=protocol,
        skip_invalid=skip_invalid,
    )  # fmt: skip
