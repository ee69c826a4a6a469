"""Referring segmentation training source: RefCLEF, RefCOCO(+/g), gRefCOCO, and SESAME's R-/FP-RefCOCO(+/g).

The mixture uses three instances of :class:`ReferSegDataset` (READ ``HybridDataset`` names): ``refer_seg``
(``data.refer_seg_data``), ``neg_refer_seg`` (``data.neg_refer_seg_data``, R-RefCOCO: denials) and
``correct_refer_seg`` (``data.correct_refer_seg_data``, FP-RefCOCO: corrections naming ``gt_sent``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from read.data.refer import FALSE_PREMISE_DATASETS, ReferIndex, sentence_exists
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
from read.data.transforms import load_image

__all__ = ["ReferSentence", "ReferSplit", "image_sentences", "check_image_size", "ReferSegDataset"]


@dataclass
class ReferSentence:
    """One referring expression of an image.

    Attributes:
        text: the sentence (``sent``).
        ann_id: the ref's annotation id, a list of ids (gRefCOCO) or ``[-1]`` (no target).
        exists: whether the object is in the image (False for FP-/R-RefCOCO false premises).
        gt_sent: FP-RefCOCO's corrected sentence ("" elsewhere).
        ref_id, sent_id: identifiers (``sent_id`` is the sentence's index within its ref, as in the reference).
    """

    text: str
    ann_id: int | list[int]
    exists: bool
    gt_sent: str
    ref_id: int
    sent_id: int

    @property
    def no_target(self) -> bool:
        """gRefCOCO's no-target expressions (``ann_id`` -1): an empty mask is their true ground truth."""
        ids = self.ann_id if isinstance(self.ann_id, list) else [self.ann_id]
        return all(a == -1 for a in ids)

    @property
    def expects_target(self) -> bool:
        """The sentence refers to an object in the image, so its mask must not be empty."""
        return self.exists and not self.no_target


class ReferSplit:
    """The images of one referring dataset split with their refs.

    Arguments:
        dataset_dir: the dataset root (the refs live under ``<dataset_dir>/refer_seg``).
        dataset: e.g. "refcoco", "fprefcoco+", "grefcoco".
        split: "train", "val", "test", "testA", "testB".
        protocol: refs-file convention, "auto", "read" or "lisa" (see ``read.data.refer.find_refs_file``).
    """

    def __init__(self, dataset_dir: str, dataset: str, split: str, protocol: str = "auto") -> None:
        self.dataset = dataset
        self.split = split
        self.index = ReferIndex.open(os.path.join(dataset_dir, "refer_seg"), dataset, protocol)
        refs = self.index.split_refs(split)
        self.image_refs: dict[int, list[dict]] = {}
        for ref in refs:
            self.image_refs.setdefault(ref["image_id"], []).append(ref)
        self.images = self.index.split_images(split)
        if not self.images:
            raise DataError(f"{self.index.refs_path}: no refs in split '{split}'")

    def __len__(self) -> int:
        return len(self.images)

    def sentences(self, image: dict) -> list[ReferSentence]:
        """All sentences of all refs of an image, in file order."""
        return image_sentences(self.image_refs.get(image["id"], []))

    def sentences_of(self, ref: dict) -> list[ReferSentence]:
        """The sentences of one ref."""
        return image_sentences([ref])

    def load(self, image: dict) -> np.ndarray:
        """Read an image record's file and check that its size matches ``instances.json``."""
        path = self.index.image_path(image)
        pixels = load_image(path)
        check_image_size(pixels, image, path)
        return pixels


def image_sentences(refs: list[dict]) -> list[ReferSentence]:
    """Flatten the sentences of ``refs`` (READ ``process_referring_expressions``)."""
    out = []
    for ref in refs:
        for k, sent in enumerate(ref["sentences"]):
            if not isinstance(sent, dict) or "sent" not in sent:
                raise DataError(f"ref {ref.get('ref_id')}: sentence {k} has no 'sent'")
            out.append(
                ReferSentence(
                    text=str(sent["sent"]),
                    ann_id=ref["ann_id"],
                    exists=sentence_exists(sent),
                    gt_sent=str(sent.get("gt_sent", "")),
                    ref_id=ref["ref_id"],
                    sent_id=k,
                )
            )
    return out


def check_image_size(pixels: np.ndarray, image: dict, path: str) -> None:
    """Raise DataError if the decoded image size differs from the annotation's (masks would not align)."""
    if (pixels.shape[0], pixels.shape[1]) != (int(image["height"]), int(image["width"])):
        raise DataError(
            f"{path}: image is {pixels.shape[0]}x{pixels.shape[1]} but the annotation says "
            f"{image['height']}x{image['width']}"
        )


class ReferSegDataset:
    """Referring segmentation training source.

    Per sample: a dataset of the list, then an image, are drawn uniformly; up to ``num_classes_per_sample`` of the
    image's sentences are drawn without replacement; each becomes a row with a short question. A sentence whose
    object exists gets a ``[SEG]`` answer and its mask; a false premise gets a correction naming ``gt_sent``
    (FP-RefCOCO) or a denial (others) and no mask. gRefCOCO no-target expressions get a ``[SEG]`` answer with an
    empty mask (LISA).

    Arguments:
        dataset_dir: the dataset root.
        datasets: referring datasets, e.g. ["refclef", "refcoco", "refcoco+", "refcocog"].
        templates: question/answer lists.
        num_classes_per_sample: maximum rows per image.
        split: the refs split to train on.
        protocol: refs-file convention ("auto": READ/SESAME's ``*_exclude_unified`` file if present, else the
            standard one; "read": ``*_exclude_unified``; "lisa": ``unc``/``umd``).
        name: the source name reported in samples (e.g. "refer_seg", "neg_refer_seg").

    A sentence whose object is in the image but whose annotation gives an empty mask raises
    :class:`read.data.sample.InvalidAnnotation` (the training mixture counts and skips the sample, naming the ref).
    """

    def __init__(
        self,
        dataset_dir: str,
        datasets: list[str],
        *,
        templates: TemplateSet,
        num_classes_per_sample: int = 3,
        split: str = "train",
        protocol: str = "auto",
        name: str = "refer_seg",
    ) -> None:
        if not datasets:
            raise ValueError(f"{name}: no referring datasets given")
        self.name = name
        self.templates = templates
        self.num_classes_per_sample = num_classes_per_sample
        self.splits = {ds: ReferSplit(dataset_dir, ds, split, protocol) for ds in datasets}
        self.dataset_names = list(datasets)

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def sample(self, rng: np.random.Generator) -> Sample:
        """Build one training sample (see the class docstring)."""
        ds = pick(rng, self.dataset_names)
        split = self.splits[ds]
        image = pick(rng, split.images)
        pixels = split.load(image)
        h, w = pixels.shape[:2]
        sentences = split.sentences(image)
        t = self.templates
        queries = []
        for i in subsample(rng, len(sentences), self.num_classes_per_sample):
            s = sentences[i]
            question = pick(rng, t.short_question).format(class_name=s.text.lower())
            text = s.text.strip()
            if s.exists:
                answer = pick(rng, t.short_answer).format(class_name=text.lower())
                masks = split.index.ann_mask(s.ann_id, image)[None]
                if s.expects_target and not masks.any():
                    raise InvalidAnnotation(
                        f"{split.index.refs_path}: ref {s.ref_id} (image {image['file_name']}): the mask of "
                        f"annotation {s.ann_id} is empty"
                    )
            elif ds in FALSE_PREMISE_DATASETS:
                answer = pick(rng, t.correct_answer).format(class_name=text.lower(), gt_name=s.gt_sent.strip().lower())
                masks = empty_masks(h, w)
            else:
                answer = pick(rng, t.neg_answer).format(class_name=text.lower())
                masks = empty_masks(h, w)
            meta = {"query": s.text, "exists": s.exists, "ref_id": s.ref_id, "sent_id": s.sent_id, "source": ds}
            queries.append(Query(single_turn(question, answer), masks, meta))
        return Sample(pixels, split.index.image_path(image), queries, ds)
