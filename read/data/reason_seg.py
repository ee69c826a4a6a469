"""ReasonSeg: images with a JSON of queries and polygons (LISA's reasoning-segmentation set, SESAME's FP-Aug variant).

On disk, under ``<dataset_dir>/reason_seg/<folder>/`` (``folder`` is "ReasonSeg")::

    {train,val,test}/<stem>.jpg + <stem>.json
    explanatory/train.json                    optional (LISA): [{image, query, outputs}, ...]

A JSON holds ``text`` (1-5 phrasings of the query), ``is_sentence`` (long sentence vs short phrase), ``shapes``
(``{label, points}`` polygons; "ignore" labels mark regions excluded from evaluation, "flag" ones are skipped) and,
in SESAME's FP-Aug files, ``false_premise_QA`` (``[query, is_sentence, answer]`` triples). Files that are not UTF-8
are read as cp1252, as the reference does. The synthetic generator (``read.data.synthetic``) writes this format.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from read.constants import IMAGE_TOKEN
from read.data.masks import reason_seg_mask, reason_seg_problems
from read.data.sample import (
    DataError,
    InvalidAnnotation,
    Query,
    Sample,
    TemplateSet,
    empty_masks,
    pick,
    single_turn,
    subsample,
)
from read.data.transforms import image_size, load_image
from read.errors import ConfigError, MissingFileError

logger = logging.getLogger(__name__)

__all__ = [
    "ReasonSegAnnotation",
    "read_reason_seg_json",
    "parse_reason_seg_data",
    "ReasonSegFiles",
    "find_reason_seg_files",
    "list_reason_seg_images",
    "item_problems",
    "load_reason_seg_item",
    "ReasonSegDataset",
]


@dataclass
class ReasonSegAnnotation:
    """The contents of one ReasonSeg JSON.

    Attributes:
        text: the query phrasings.
        is_sentence: True for long (sentence) queries, False for short phrases.
        shapes: the raw polygon list.
        false_premise_qa: ``[query, is_sentence, answer]`` triples, or None when the file has none.
    """

    text: list[str]
    is_sentence: bool
    shapes: list[dict]
    false_premise_qa: list[tuple[str, bool, str]] | None


def read_reason_seg_json(path: str) -> ReasonSegAnnotation:
    """Read and validate a ReasonSeg JSON (UTF-8, falling back to cp1252).

    Raises:
        DataError: missing file, invalid JSON, or a missing/mistyped key (the message names the file and key).
    """
    if not os.path.isfile(path):
        raise DataError(f"annotation file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            data = json.loads(raw.decode("cp1252"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("text", "is_sentence", "shapes"):
        if key not in data:
            raise DataError(f"{path}: missing key '{key}'")
    text = data["text"]
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not text or not all(isinstance(t, str) for t in text):
        raise DataError(f"{path}: 'text' must be a non-empty list of strings")
    if not isinstance(data["shapes"], list):
        raise DataError(f"{path}: 'shapes' must be a list")
    fp = data.get("false_premise_QA")
    fp_qa = None
    if fp is not None:
        if not isinstance(fp, list) or not all(isinstance(e, (list, tuple)) and len(e) == 3 for e in fp):
            raise DataError(f"{path}: 'false_premise_QA' must be a list of [query, is_sentence, answer] triples")
        fp_qa = [(str(q), bool(s), str(a)) for q, s, a in fp]
    return ReasonSegAnnotation(text, bool(data["is_sentence"]), data["shapes"], fp_qa)


def parse_reason_seg_data(spec: str) -> tuple[str, list[str]]:
    """``"ReasonSeg|train"`` -> ("ReasonSeg", ["train"]); several splits are joined with "_" ("train_val")."""
    if "|" not in spec:
        raise ConfigError(f"data.reason_seg_data must look like 'ReasonSeg|train', got {spec!r}")
    folder, splits = spec.split("|", 1)
    return folder, [s for s in splits.split("_") if s]


@dataclass
class ReasonSegFiles:
    """The image / annotation pairs of some ReasonSeg splits.

    Attributes:
        images: sorted ``*.jpg`` paths that have their ``.json`` beside them.
        missing_images: ``.json`` annotations without their ``.jpg``.
        missing_annotations: ``.jpg`` images without their ``.json``.
    """

    images: list[str]
    missing_images: list[str]
    missing_annotations: list[str]

    def unpaired(self) -> list[str]:
        """One message per file without its partner (empty when every file is paired)."""
        return [f"annotation without its image: {p}" for p in self.missing_images] + [
            f"image without its annotation: {p}" for p in self.missing_annotations
        ]


def find_reason_seg_files(dataset_dir: str, folder: str, splits: list[str]) -> ReasonSegFiles:
    """Pair the ``<stem>.jpg`` and ``<stem>.json`` files of the given splits.

    Raises:
        FileNotFoundError: a split folder is missing or holds neither images nor annotations (names the folder).
    """
    out = ReasonSegFiles([], [], [])
    for split in splits:
        split_dir = os.path.join(dataset_dir, "reason_seg", folder, split)
        images = sorted(glob.glob(os.path.join(split_dir, "*.jpg")))
        jsons = sorted(glob.glob(os.path.join(split_dir, "*.json")))
        if not images and not jsons:
            raise MissingFileError(f"reason_seg: no *.jpg images in {split_dir}")
        image_stems = {os.path.splitext(p)[0] for p in images}
        json_stems = {os.path.splitext(p)[0] for p in jsons}
        out.images += [p for p in images if os.path.splitext(p)[0] in json_stems]
        out.missing_annotations += [p for p in images if os.path.splitext(p)[0] not in json_stems]
        out.missing_images += [p for p in jsons if os.path.splitext(p)[0] not in image_stems]
    return out


def list_reason_seg_images(dataset_dir: str, folder: str, splits: list[str]) -> list[str]:
    """Sorted ``*.jpg`` paths of the given splits that have their annotation (see :func:`find_reason_seg_files`).

    Raises:
        MissingFileError: a split folder is missing or has no annotated image (message names the folder).
    """
    images = find_reason_seg_files(dataset_dir, folder, splits).images
    if not images:
        where = os.path.join(dataset_dir, "reason_seg", folder, "_".join(splits))
        raise MissingFileError(f"reason_seg: no *.jpg image with its .json annotation in {where}")
    return images


def json_path_for(image_path: str) -> str:
    """The annotation of an image: same folder and stem, ``.json``."""
    return os.path.splitext(image_path)[0] + ".json"


def annotation_problems(ann: ReasonSegAnnotation, height: int, width: int, json_path: str) -> list[str]:
    """:func:`read.data.masks.reason_seg_problems`, each message prefixed with the annotation file."""
    try:
        problems = reason_seg_problems(ann.shapes, height, width)
    except DataError as e:
        problems = [str(e)]
    return [f"{json_path}: {p}" for p in problems]


def item_problems(image_path: str) -> list[str]:
    """Why an image's annotation cannot serve as ground truth, without decoding the image (its size comes from the
    file header); an empty list when it can. An unreadable or malformed annotation is one problem.

    Raises:
        ImageLoadError: the image is missing or its header is not an image's.
    """
    json_path = json_path_for(image_path)
    height, width = image_size(image_path)
    try:
        ann = read_reason_seg_json(json_path)
    except DataError as e:
        return [str(e)]
    return annotation_problems(ann, height, width, json_path)


def load_reason_seg_item(image_path: str) -> tuple[np.ndarray, ReasonSegAnnotation, np.ndarray]:
    """Read an image, its annotation and its ground-truth mask.

    Returns:
        image (H, W, 3) uint8 RGB, the annotation, and the (H, W) uint8 mask in {0, 1, 255}.

    Raises:
        ImageLoadError: the image is missing, truncated or cannot be decoded.
        InvalidAnnotation: the annotation has no usable target (:func:`read.data.masks.reason_seg_problems`).
        DataError: the annotation is missing or malformed.
    """
    image = load_image(image_path)
    json_path = json_path_for(image_path)
    ann = read_reason_seg_json(json_path)
    problems = annotation_problems(ann, image.shape[0], image.shape[1], json_path)
    if problems:
        raise InvalidAnnotation("; ".join(problems))
    mask = reason_seg_mask(ann.shapes, image.shape[0], image.shape[1], source=json_path)
    return image, ann, mask


class ReasonSegDataset:
    """ReasonSeg training source: draws a random image and builds up to ``num_classes_per_sample`` query rows.

    True premise (every row asks for one phrasing of the query and gets a ``[SEG]`` answer with the object mask;
    ignore regions count as background), or, with probability ``false_premise_prob`` and only for images whose JSON
    has ``false_premise_QA`` [FIX: the reference requires it], a false-premise row per sampled FP triple (answer
    without ``[SEG]``, no mask). With ``explanatory >= 0`` (LISA), images listed in ``explanatory/train.json`` get a
    text-only answer with that probability, otherwise a coin flip between a plain ``[SEG]`` answer and ``[SEG]``
    followed by the explanation (used only when ``explanatory/train.json`` exists).

    Files without their partner (an annotation without its image or the reverse) are left out with one warning
    naming them (``unpaired``). A drawn image whose file is truncated or whose annotation has no usable target
    raises :class:`read.data.sample.DataError`, which the training mixture counts and skips with a warning naming
    the file.

    Arguments:
        dataset_dir: the dataset root.
        reason_seg_data: "<folder>|<split>[_<split>]", e.g. "ReasonSeg|train".
        templates: question/answer lists.
        num_classes_per_sample: maximum rows per image.
        false_premise_prob: probability of the false-premise mode (READ: 0.15).
        explanatory: LISA's explanatory probability; < 0 disables (READ).
    """

    def __init__(
        self,
        dataset_dir: str,
        reason_seg_data: str = "ReasonSeg|train",
        *,
        templates: TemplateSet,
        num_classes_per_sample: int = 3,
        false_premise_prob: float = 0.15,
        explanatory: float = -1.0,
    ) -> None:
        if num_classes_per_sample < 1:
            raise ValueError(f"num_classes_per_sample must be >= 1, got {num_classes_per_sample}")
        self.name = "reason_seg"
        self.folder, self.splits = parse_reason_seg_data(reason_seg_data)
        files = find_reason_seg_files(dataset_dir, self.folder, self.splits)
        self.unpaired = files.unpaired()
        if self.unpaired:
            shown = ", ".join(os.path.basename(p) for p in files.missing_images + files.missing_annotations)
            logger.warning("reason_seg: skipping %d file(s) without their image or annotation: %s",
                           len(self.unpaired), _shorten(shown))  # fmt: skip
        if not files.images:
            list_reason_seg_images(dataset_dir, self.folder, self.splits)  # raises, naming the folders
        self.images = files.images
        self.templates = templates
        self.num_classes_per_sample = num_classes_per_sample
        self.false_premise_prob = false_premise_prob
        self.explanatory = explanatory
        self.explanations: dict[str, dict[str, str]] = {}
        if explanatory >= 0:
            self.explanations = _read_explanations(os.path.join(dataset_dir, "reason_seg", self.folder))

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, rng: np.random.Generator) -> Sample:
        """Build one training sample from a random image (see the class docstring)."""
        image_path = self.images[int(rng.integers(len(self.images)))]
        image, ann, mask = load_reason_seg_item(image_path)
        h, w = image.shape[:2]
        t = self.templates
        n = self.num_classes_per_sample
        false_premise = bool(ann.false_premise_qa) and rng.random() < self.false_premise_prob

        queries: list[Query] = []
        if false_premise:
            for i in subsample(rng, len(ann.false_premise_qa), n):
                text, is_sentence, answer = ann.false_premise_qa[i]
                # The reference does not lowercase false-premise short queries.
                question = self._question(rng, text, is_sentence, lower=False)
                meta = {"query": text, "exists": False, "mode": "false_premise_correction"}
                queries.append(Query(single_turn(question, answer), empty_masks(h, w), meta))
            return Sample(image, image_path, queries, self.name)

        explanation = self.explanations.get(os.path.basename(image_path))
        choice = 0
        if explanation is not None:
            choice = 2 if rng.random() < self.explanatory else int(rng.integers(2))
        target = (mask == 1).astype(np.uint8)[None]  # ignore regions count as background in training
        for i in subsample(rng, len(ann.text), n):
            text = ann.text[i]
            question = self._question(rng, text, ann.is_sentence, lower=True)
            answer = pick(rng, t.long_answer)
            masks = target
            if choice == 1:  # [SEG] followed by the explanation
                question = f"{IMAGE_TOKEN}\n{text} {pick(rng, t.explanatory_question)}"
                answer = f"{answer} {explanation['outputs']}"
            elif choice == 2:  # text-only answer
                question = f"{IMAGE_TOKEN}\n{text}"
                answer = explanation["outputs"]
                masks = empty_masks(h, w)
            meta = {"query": text, "exists": True, "mode": "true_premise", "is_sentence": ann.is_sentence}
            queries.append(Query(single_turn(question, answer), masks, meta))
        return Sample(image, image_path, queries, self.name)

    def _question(self, rng: np.random.Generator, text: str, is_sentence: bool, lower: bool) -> str:
        if is_sentence:
            return pick(rng, self.templates.long_question).format(sent=text)
        return pick(rng, self.templates.short_question).format(class_name=text.lower() if lower else text)


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def _read_explanations(root: str) -> dict[str, dict[str, str]]:
    """``explanatory/train.json`` -> {image file name: {query, outputs}}; empty (with a warning) if absent."""
    path = os.path.join(root, "explanatory", "train.json")
    if not os.path.isfile(path):
        logger.warning("reason_seg: explanatory >= 0 but %s does not exist; training without explanations", path)
        return {}
    with open(path, "rb") as f:
        try:
            items: Any = json.loads(f.read())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e})") from e
    out = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not {"image", "query", "outputs"} <= set(item):
            raise DataError(f"{path}: item {i} must have 'image', 'query' and 'outputs'")
        out[item["image"]] = {"query": item["query"], "outputs": item["outputs"]}
    return out
