"""Semantic / part segmentation training source: ADE20K, COCO-Stuff, Mapillary Vistas, PACO-LVIS, PASCAL-Part.

On disk, under ``dataset_dir``::

    ade20k/images/training/<id>.jpg, ade20k/annotations/training/<id>.png      labels 0 = other, 1..150 = classes
    cocostuff/train2017/<id>.png (+ coco/train2017/<id>.jpg)                    labels 0..181, 255 = unlabeled
    mapillary/config_v2.0.json, mapillary/training/{images/<id>.jpg, v2.0/labels/<id>.png}
    vlpart/paco/annotations/paco_lvis_v1_train.json (+ coco/<file_name>)          COCO format, "obj:part" names
    vlpart/pascal_part/train.json (+ vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>)

Label remapping (READ ``sem_seg_dataset.py``): ADE20K 0 -> 255, then label - 1, then 254 -> 255 (150 classes
0..149); COCO-Stuff classes whose name contains "-" (the merged stuff classes) -> 255; Mapillary labels are used
as they are with the lowercased ``readable`` names. Class lists for ADE20K and COCO-Stuff ship with the package
(``read/data/classes/``).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from read.data.masks import IGNORE_VALUE, coco_segmentation_to_mask
from read.data.sample import (
    DataError,
    Query,
    Sample,
    TemplateSet,
    empty_masks,
    pick,
    single_turn,
    subsample,
)
from read.data.transforms import load_image
from read.errors import ConfigError, MissingFileError

__all__ = [
    "SEM_SEG_DATASETS",
    "CLASSES_DIR",
    "ade20k_classes",
    "cocostuff_classes",
    "remap_ade20k",
    "remap_cocostuff",
    "load_label_map",
    "LabelMapSource",
    "PartSource",
    "SemSegDataset",
    "build_sem_seg_source",
]

SEM_SEG_DATASETS = ("ade20k", "cocostuff", "mapillary", "paco_lvis", "pascal_part")
CLASSES_DIR = Path(__file__).resolve().parent / "classes"

MODES = ("true_premise", "false_premise_denial", "false_premise_correction")


def ade20k_classes() -> list[str]:
    """The 150 ADE20K class names (index = remapped label)."""
    with open(CLASSES_DIR / "ade20k_classes.json", encoding="utf-8") as f:
        return list(json.load(f))


def cocostuff_classes() -> list[str]:
    """The 182 COCO-Stuff class names (index = label value); the file's first line ("0: unlabeled") is skipped."""
    with open(CLASSES_DIR / "cocostuff_classes.txt", encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    return [line.strip().split(": ")[-1] for line in lines if line.strip()]


def remap_ade20k(label: np.ndarray) -> np.ndarray:
    """ADE20K raw labels (0 = other, k = class k-1) -> class ids 0..149 with 255 = ignore."""
    out = label.astype(np.int32) - 1
    out[(label == 0) | (out == 254)] = IGNORE_VALUE
    return out.astype(np.uint8)


def remap_cocostuff(label: np.ndarray, classes: list[str]) -> np.ndarray:
    """COCO-Stuff labels with every class whose name contains "-" set to 255."""
    table = np.arange(256, dtype=np.uint8)
    for i, name in enumerate(classes):
        if "-" in name:
            table[i] = IGNORE_VALUE
    return table[label]


def load_label_map(path: str) -> np.ndarray:
    """Read a single-channel label PNG (grey or palette) as (H, W) uint8 class indices.

    Raises:
        DataError: missing, unreadable, or not single-channel (the message names the file).
    """
    if not os.path.isfile(path):
        raise DataError(f"label map not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: label maps must be single-channel (L or P), got mode {im.mode}")
            label = np.array(im)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read label map {path}: {type(e).__name__}: {e}") from e
    if label.max(initial=0) > 255:
        raise DataError(f"{path}: label values above 255")
    return label.astype(np.uint8)


@dataclass
class _Drawn:
    """Positive and negative classes drawn from one image."""

    image: np.ndarray
    image_path: str
    positives: list[str]
    negatives: list[str]
    masks: list[np.ndarray]


class LabelMapSource:
    """A dataset of (image, label PNG) pairs (ADE20K, COCO-Stuff, Mapillary).

    Arguments:
        name: "ade20k", "cocostuff" or "mapillary".
        images, labels: matching file lists.
        classes: class names indexed by (remapped) label value.
    """

    def __init__(self, name: str, images: list[str], labels: list[str], classes: list[str]) -> None:
        if not labels:
            raise MissingFileError(f"{name}: no label maps found")
        self.name = name
        self.images = images
        self.labels = labels
        self.classes = classes
        # Classes set to ignore by the remapping are never asked about, not even as false premises.
        self.ignored_ids = {i for i, c in enumerate(classes) if name == "cocostuff" and "-" in c}

    def __len__(self) -> int:
        return len(self.labels)

    def read_label(self, i: int) -> np.ndarray:
        """The remapped label map of item ``i``."""
        label = load_label_map(self.labels[i])
        if self.name == "ade20k":
            return remap_ade20k(label)
        if self.name == "cocostuff":
            return remap_cocostuff(label, self.classes)
        return label

    def draw(self, rng: np.random.Generator, k: int) -> _Drawn | None:
        """Up to ``k`` present classes with masks and ``k`` absent ones of a random image (None: no valid label)."""
        i = int(rng.integers(len(self.labels)))
        label = self.read_label(i)
        image = load_image(self.images[i])
        if label.shape != image.shape[:2]:
            raise DataError(f"{self.labels[i]}: label map is {label.shape} but the image is {image.shape[:2]}")
        present = [int(c) for c in np.unique(label) if c != IGNORE_VALUE and c < len(self.classes)]
        if not present:
            return None
        absent = sorted(set(range(len(self.classes))) - set(present) - self.ignored_ids)
        pos = [present[j] for j in subsample(rng, len(present), k)]
        neg = [absent[j] for j in subsample(rng, len(absent), k)]
        return _Drawn(
            image=image,
            image_path=self.images[i],
            positives=[self.classes[c] for c in pos],
            negatives=[self.classes[c] for c in neg],
            masks=[(label == c).astype(np.uint8) for c in pos],
        )


def _part_name(raw: str, strip_suffix: bool) -> str | tuple[str, str]:
    """ "obj:part" -> (obj, part); a plain name stays a string; "_(...)" suffixes are removed if asked (PACO)."""
    parts = raw.strip().split(":")
    if strip_suffix:
        parts = [p.split("_(")[0] for p in parts]
    if len(parts) == 1:
        return parts[0]
    if len(parts) != 2:
        raise DataError(f"category name {raw!r} has more than one ':'")
    return parts[0], parts[1]


class PartSource:
    """A COCO-format part dataset (PACO-LVIS, PASCAL-Part).

    Arguments:
        name: "paco_lvis" or "pascal_part".
        annotation_path: the COCO JSON.
        image_root: folder the ``file_name`` of the images are relative to.
    """

    def __init__(self, name: str, annotation_path: str, image_root: str) -> None:
        if not os.path.isfile(annotation_path):
            raise MissingFileError(f"{name}: annotation file not found: {annotation_path}")
        with open(annotation_path, "rb") as f:
            try:
                data: dict[str, Any] = json.loads(f.read())
            except json.JSONDecodeError as e:
                raise DataError(f"{annotation_path}: invalid JSON ({e})") from e
        for key, fields in (("images", {"id", "file_name", "height", "width"}), ("categories", {"id", "name"})):
            if key not in data:
                raise DataError(f"{annotation_path}: missing '{key}'")
            for i, entry in enumerate(data[key]):
                if not fields <= set(entry):
                    raise DataError(f"{annotation_path}: {key}[{i}] needs {sorted(fields)}")
        if "annotations" not in data:
            raise DataError(f"{annotation_path}: missing 'annotations'")
        self.name = name
        self.annotation_path = annotation_path
        self.image_root = image_root
        # PACO names are "obj:part" or "obj" with "_(...)" suffixes; PASCAL-Part names are always "obj:part".
        self.class_map = {c["id"]: _part_name(c["name"], strip_suffix=name == "paco_lvis") for c in data["categories"]}
        if name == "pascal_part" and any(isinstance(v, str) for v in self.class_map.values()):
            raise DataError(f"{annotation_path}: PASCAL-Part category names must be 'object:part'")
        self.images = sorted(data["images"], key=lambda im: im["id"])
        self.image_anns: dict[int, list[dict]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not {"image_id", "category_id", "segmentation"} <= set(ann):
                raise DataError(f"{annotation_path}: annotations[{i}] needs image_id, category_id and segmentation")
            self.image_anns.setdefault(ann["image_id"], []).append(ann)
        self.category_ids = sorted(self.class_map)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, image: dict) -> str:
        return os.path.join(self.image_root, image["file_name"])

    def class_name(self, rng: np.random.Generator, category_id: int) -> str:
        """A phrase for a category: "obj part" or "the part of the obj" (equal odds) for parts."""
        name = self.class_map[category_id]
        if isinstance(name, tuple):
            obj, part = name
            return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"
        return name

    def draw(self, rng: np.random.Generator, k: int) -> _Drawn | None:
        """Up to ``k`` annotations with masks and ``k`` absent categories of a random image (None: no annotation)."""
        image = pick(rng, self.images)
        anns = self.image_anns.get(image["id"], [])
        if not anns:
            return None
        path = self.image_path(image)
        pixels = load_image(path)
        h, w = int(image["height"]), int(image["width"])
        if pixels.shape[:2] != (h, w):
            raise DataError(f"{path}: image is {pixels.shape[:2]} but {self.annotation_path} says {(h, w)}")
        present = {a["category_id"] for a in anns}
        absent = [c for c in self.category_ids if c not in present]
        pos = [anns[j] for j in subsample(rng, len(anns), k)]
        neg = [absent[j] for j in subsample(rng, len(absent), k)]
        masks = [
            coco_segmentation_to_mask(a["segmentation"], h, w, f"{self.annotation_path}: annotation {a.get('id')}")
            for a in pos
        ]
        return _Drawn(
            image=pixels,
            image_path=path,
            positives=[self.class_name(rng, a["category_id"]) for a in pos],
            negatives=[self.class_name(rng, c) for c in neg],
            masks=masks,
        )


def build_sem_seg_source(dataset_dir: str, name: str) -> LabelMapSource | PartSource:
    """Index one semantic-segmentation dataset under ``dataset_dir`` (see the module docstring for the layout)."""
    d = dataset_dir
    if name == "ade20k":
        image_dir = os.path.join(d, "ade20k", "images", "training")
        images = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
        labels = [os.path.join(d, "ade20k", "annotations", "training", Path(p).stem + ".png") for p in images]
        if not images:
            raise MissingFileError(f"ade20k: no *.jpg images in {image_dir}")
        return LabelMapSource(name, images, labels, ade20k_classes())
    if name == "cocostuff":
        label_dir = os.path.join(d, "cocostuff", "train2017")
        labels = sorted(glob.glob(os.path.join(label_dir, "*.png")))
        images = [os.path.join(d, "coco", "train2017", Path(p).stem + ".jpg") for p in labels]
        if not labels:
            raise MissingFileError(f"cocostuff: no *.png label maps in {label_dir}")
        return LabelMapSource(name, images, labels, cocostuff_classes())
    if name == "mapillary":
        root = os.path.join(d, "mapillary")
        config = os.path.join(root, "config_v2.0.json")
        if not os.path.isfile(config):
            raise MissingFileError(f"mapillary: class config not found: {config}")
        with open(config, "rb") as f:
            try:
                classes = [str(c["readable"]).lower() for c in json.loads(f.read())["labels"]]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{config}: expected {{'labels': [{{'readable': ...}}, ...]}} ({e})") from e
        label_dir = os.path.join(root, "training", "v2.0", "labels")
        labels = sorted(glob.glob(os.path.join(label_dir, "*.png")))
        images = [os.path.join(root, "training", "images", Path(p).stem + ".jpg") for p in labels]
        if not labels:
            raise MissingFileError(f"mapillary: no *.png label maps in {label_dir}")
        return LabelMapSource(name, images, labels, classes)
    if name == "paco_lvis":
        ann = os.path.join(d, "vlpart", "paco", "annotations", "paco_lvis_v1_train.json")
        return PartSource(name, ann, os.path.join(d, "coco"))
    if name == "pascal_part":
        root = os.path.join(d, "vlpart", "pascal_part")
        image_root = os.path.join(root, "VOCdevkit", "VOC2010", "JPEGImages")
        return PartSource(name, os.path.join(root, "train.json"), image_root)
    raise ConfigError(f"unknown semantic segmentation dataset {name!r}; expected one of {list(SEM_SEG_DATASETS)}")


class SemSegDataset:
    """Semantic segmentation training source over several datasets.

    Per sample: a dataset is drawn uniformly, then a mode: true premise (``1 - denial - correction``), false-premise
    denial or false-premise correction (READ: 0.85 / 0.07 / 0.08). Up to ``num_classes_per_sample`` present classes
    (annotations for the part datasets) and as many absent classes are drawn. True premise: one row per present
    class with a ``[SEG]`` answer and its mask. False premise: one row per (present, absent) pair asking for the
    absent class, answered with a denial or with a correction naming the present class, without masks. Images
    without a valid label are redrawn.

    Arguments:
        dataset_dir: the dataset root.
        datasets: names from :data:`SEM_SEG_DATASETS`.
        templates: question/answer lists.
        num_classes_per_sample: maximum rows per image.
        denial_prob, correction_prob: false-premise mode probabilities.
        max_redraws: how many label-less images to skip before giving up.
    """

    def __init__(
        self,
        dataset_dir: str,
        datasets: list[str],
        *,
        templates: TemplateSet,
        num_classes_per_sample: int = 3,
        denial_prob: float = 0.07,
        correction_prob: float = 0.08,
        max_redraws: int = 20,
    ) -> None:
        if not datasets:
            raise ValueError("sem_seg: no datasets given")
        if denial_prob < 0 or correction_prob < 0 or denial_prob + correction_prob > 1:
            raise ValueError(f"sem_seg: invalid false-premise probabilities {denial_prob}, {correction_prob}")
        self.name = "sem_seg"
        self.templates = templates
        self.num_classes_per_sample = num_classes_per_sample
        self.mode_probs = (1.0 - denial_prob - correction_prob, denial_prob, correction_prob)
        self.max_redraws = max_redraws
        self.sources = {name: build_sem_seg_source(dataset_dir, name) for name in datasets}
        self.dataset_names = list(datasets)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources.values())

    def sample(self, rng: np.random.Generator) -> Sample:
        """Build one training sample (see the class docstring)."""
        ds = pick(rng, self.dataset_names)
        mode = MODES[int(rng.choice(len(MODES), p=self.mode_probs))]
        source = self.sources[ds]
        for _ in range(self.max_redraws):
            drawn = source.draw(rng, self.num_classes_per_sample)
            if drawn is not None:
                break
        else:
            raise DataError(f"{ds}: {self.max_redraws} consecutive images without a valid label")
        h, w = drawn.image.shape[:2]
        t = self.templates
        queries = []
        if mode == "true_premise":
            for name, mask in zip(drawn.positives, drawn.masks):
                question = pick(rng, t.short_question).format(class_name=name.lower())
                answer = pick(rng, t.short_answer).format(class_name=name.lower())
                meta = {"query": name, "exists": True, "mode": mode, "source": ds}
                queries.append(Query(single_turn(question, answer), mask[None], meta))
        else:
            # One row per (present, absent) pair; the reference indexes the absent list by the present index and
            # fails when there are fewer absent classes [FIX].
            for name, neg in zip(drawn.positives, drawn.negatives):
                question = pick(rng, t.short_question).format(class_name=neg.lower())
                if mode == "false_premise_denial":
                    answer = pick(rng, t.neg_answer).format(class_name=neg.lower())
                else:
                    answer = pick(rng, t.correct_answer).format(class_name=neg.lower(), gt_name=name.lower())
                meta = {"query": neg, "exists": False, "mode": mode, "source": ds}
                queries.append(Query(single_turn(question, answer), empty_masks(h, w), meta))
        return Sample(drawn.image, drawn.image_path, queries, ds)
