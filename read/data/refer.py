"""Readers for the referring-expression annotation packs (REFER layout; gRefCOCO's G_REFER layout).

On disk, under ``<dataset_dir>/refer_seg/``::

    <dataset>/refs(<splitBy>).p        pickle: list of refs (REFER); grefcoco: grefs(<splitBy>).p or .json
    <dataset>/instances.json           COCO images / annotations / categories
    images/mscoco/images/train2014/    COCO train2014 images (every dataset except refclef)
    images/saiapr_tc-12/               ReferItGame images (refclef)

A ref is ``{ref_id, ann_id, image_id, category_id, split, sentences: [{sent, sent_id, tokens, ...}]}``. SESAME's
FP-/R-RefCOCO refs add ``is_false_premise`` + ``gt_sent`` (FP) or ``exist`` (R) to each sentence; gRefCOCO refs have
a list ``ann_id`` (multi-target) or ``[-1]`` (no target).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from read.data.masks import coco_segmentation_to_mask, polygon_problem
from read.data.safe_pickle import UnsafePickleError, load_pickle
from read.data.sample import DataError
from read.errors import ConfigError, MissingFileError

logger = logging.getLogger(__name__)

__all__ = [
    "REFER_DATASETS",
    "FALSE_PREMISE_DATASETS",
    "REFER_PROTOCOLS",
    "RefsFile",
    "find_refs_file",
    "split_by_for",
    "coco_target_problem",
    "refer_image_dir",
    "sentence_exists",
    "ReferIndex",
]

REFER_DATASETS = (
    "refclef",
    "refcoco",
    "refcoco+",
    "refcocog",
    "R-refcoco",
    "R-refcoco+",
    "R-refcocog",
    "fprefcoco",
    "fprefcoco+",
    "fprefcocog",
    "grefcoco",
)
FALSE_PREMISE_DATASETS = ("fprefcoco", "fprefcoco+", "fprefcocog")
REFER_PROTOCOLS = ("auto", "read", "lisa")


def split_by_for(dataset: str, protocol: str = "read") -> str:
    """The ``splitBy`` of a dataset's refs file.

    Arguments:
        dataset: one of :data:`REFER_DATASETS`.
        protocol: "read" (READ/SESAME: the ``*_exclude_unified`` files, which drop training refs whose images are
            in any refcoco/+/g val/test split) or "lisa" (the standard ``unc``/``umd`` files).
    """
    if dataset not in REFER_DATASETS:
        raise ConfigError(f"unknown referring dataset '{dataset}'; expected one of {list(REFER_DATASETS)}")
    if protocol not in ("read", "lisa"):
        raise ConfigError(f"unknown refer protocol '{protocol}'; expected 'read' or 'lisa'")
    if dataset in ("refclef", "grefcoco"):
        return "unc"
    if protocol == "lisa":
        return "umd" if dataset.endswith("refcocog") else "unc"
    if dataset in ("refcocog", "R-refcocog"):
        return "umd_exclude_unified"
    if dataset in FALSE_PREMISE_DATASETS:
        return "berkeley_exclude_unified"
    return "unc_exclude_unified"


@dataclass(frozen=True)
class RefsFile:
    """The refs file a referring dataset is read from.

    Attributes:
        path: the file.
        split_by: its ``splitBy`` (e.g. "unc_exclude_unified", "unc").
        convention: "read" (READ/SESAME's ``*_exclude_unified`` files) or "standard" (REFER's ``unc``/``umd``
            files, which LISA uses).
    """

    path: str
    split_by: str
    convention: str

    def describe(self) -> str:
        """E.g. ``refs(unc).p (standard convention)``."""
        name = "READ/SESAME" if self.convention == "read" else "standard"
        return f"{os.path.basename(self.path)} ({name} convention)"


def find_refs_file(refer_root: str, dataset: str, protocol: str = "auto") -> RefsFile:
    """The refs file of ``dataset`` under ``<refer_root>/<dataset>/``.

    Arguments:
        refer_root: ``<dataset_dir>/refer_seg``.
        dataset: one of :data:`REFER_DATASETS`.
        protocol: "read" (only READ/SESAME's ``*_exclude_unified`` file), "lisa" (only the standard ``unc``/``umd``
            file) or "auto": READ/SESAME's file when it is there (its training refs leave out every image of the
            refcoco/+/g val and test splits), else the standard one. Training and evaluation use the same rule.

    Raises:
        FileNotFoundError: none of the candidate files exists (the message lists them).
    """
    if protocol not in REFER_PROTOCOLS:
        raise ValueError(f"unknown refer protocol '{protocol}'; expected one of {list(REFER_PROTOCOLS)}")
    conventions = ("read", "lisa") if protocol == "auto" else (protocol,)
    stem = "grefs" if dataset == "grefcoco" else "refs"
    suffixes = (".p", ".json") if dataset == "grefcoco" else (".p",)
    tried: list[str] = []
    for convention in conventions:
        split_by = split_by_for(dataset, convention)
        for suffix in suffixes:
            path = os.path.join(refer_root, dataset, f"{stem}({split_by}){suffix}")
            if path in tried:
                continue
            tried.append(path)
            if os.path.isfile(path):
                kind = "read" if split_by.endswith("_exclude_unified") else "standard"
                return RefsFile(path, split_by, kind)
    raise MissingFileError(f"{dataset}: refs file not found (looked for {' and '.join(tried)})")


def coco_target_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why a COCO ``segmentation`` cannot outline a target, judged from its geometry alone (no decoding).

    Polygon parts with fewer than 3 points are dropped when decoding; a segmentation whose parts are all degenerate
    or entirely outside the image has no target, and a point far outside the image is a broken annotation (see
    :func:`read.data.masks.polygon_problem`). RLEs are checked for their size only. None when usable.
    """
    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if not isinstance(segmentation, list) or not segmentation:
        return "empty segmentation"
    if not all(isinstance(p, list) for p in segmentation):
        for p in segmentation:
            if isinstance(p, dict) and "size" in p and list(p["size"]) != [height, width]:
                return f"RLE size {list(p['size'])} does not match the image size {[height, width]}"
        return None
    problems = []
    for part in segmentation:
        try:
            points = np.asarray(part, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            return "polygon coordinates are not numbers"
        if not np.isfinite(points).all():
            return "polygon has non-finite coordinates"
        problem = polygon_problem(points, height, width) if len(points) else "an empty polygon"
        if problem is None:
            return None
        if "far outside" in problem:
            return problem
        problems.append(problem)
    return "no usable polygon: " + "; ".join(problems)


def refer_image_dir(refer_root: str, dataset: str) -> str:
    """Folder holding the images of ``dataset``."""
    if dataset == "refclef":
        return os.path.join(refer_root, "images", "saiapr_tc-12")
    return os.path.join(refer_root, "images", "mscoco", "images", "train2014")


def sentence_exists(sentence: dict) -> bool:
    """Whether a sentence's object is in the image (FP-RefCOCO ``is_false_premise``, R-RefCOCO ``exist``, else True)."""
    if "is_false_premise" in sentence:
        return not bool(sentence["is_false_premise"])
    if "exist" in sentence:
        return bool(sentence["exist"])
    return True


def _split_matches(wanted: str, ref_split: str) -> bool:
    # REFER's rules: "testA" matches "testA" and "testAB"; "test" matches every test split; train/val are exact.
    if wanted in ("testA", "testB", "testC"):
        return wanted[-1] in ref_split and ref_split.startswith("test")
    if wanted == "test":
        return "test" in ref_split
    return ref_split == wanted


class ReferIndex:
    """One referring dataset (refs + COCO instances), indexed by image.

    Arguments:
        refer_root: ``<dataset_dir>/refer_seg``.
        dataset: one of :data:`REFER_DATASETS`.
        split_by: the refs file variant, e.g. "unc_exclude_unified" (see :func:`split_by_for`).

    Raises:
        FileNotFoundError: the refs file or ``instances.json`` is missing (message names the path).
        DataError: a file is malformed.
    """

    def __init__(self, refer_root: str, dataset: str, split_by: str) -> None:
        if dataset not in REFER_DATASETS:
            raise ConfigError(f"unknown referring dataset '{dataset}'; expected one of {list(REFER_DATASETS)}")
        self.dataset = dataset
        self.split_by = split_by
        self.data_dir = os.path.join(refer_root, dataset)
        self.image_dir = refer_image_dir(refer_root, dataset)
        self.refs_path = self._refs_path()
        kind = "read" if split_by.endswith("_exclude_unified") else "standard"
        self.refs_file = RefsFile(self.refs_path, split_by, kind)
        self.refs: list[dict] = self._load_refs()
        self.instances_path = os.path.join(self.data_dir, "instances.json")
        instances = self._load_instances()
        for i, img in enumerate(instances["images"]):
            missing = {"id", "file_name", "height", "width"} - set(img)
            if missing:
                raise DataError(f"{self.instances_path}: images[{i}] has no {sorted(missing)}")
        self.images: dict[int, dict] = {img["id"]: img for img in instances["images"]}
        self.anns: dict[int, dict] = {ann["id"]: ann for ann in instances["annotations"] if "id" in ann}
        self.categories: dict[int, str] = {c["id"]: c["name"] for c in instances.get("categories", [])}
        self.image_refs: dict[int, list[dict]] = defaultdict(list)
        for i, ref in enumerate(self.refs):
            for key in ("ref_id", "ann_id", "image_id", "split", "sentences"):
                if key not in ref:
                    raise DataError(f"{self.refs_path}: ref #{i} has no '{key}'")
            self.image_refs[ref["image_id"]].append(ref)

    # ------------------------------------------------------------------------------------------------------
    # loading

    def _refs_path(self) -> str:
        stem = "grefs" if self.dataset == "grefcoco" else "refs"
        candidates = [os.path.join(self.data_dir, f"{stem}({self.split_by}).p")]
        if self.dataset == "grefcoco":
            candidates.append(os.path.join(self.data_dir, f"{stem}({self.split_by}).json"))
        for c in candidates:
            if os.path.isfile(c):
                return c
        raise MissingFileError(f"{self.dataset}: refs file not found (looked for {' and '.join(candidates)})")

    @classmethod
    def open(cls, refer_root: str, dataset: str, protocol: str = "auto") -> "ReferIndex":
        """The index of ``dataset`` with the refs file that :func:`find_refs_file` picks for ``protocol``
        (``refs_file`` says which; the choice is logged)."""
        refs_file = find_refs_file(refer_root, dataset, protocol)
        logger.info("%s: using %s", dataset, refs_file.describe())
        return cls(refer_root, dataset, refs_file.split_by)

    def _load_refs(self) -> list[dict]:
        if self.refs_path.endswith(".json"):
            refs = _read_json(self.refs_path)
        else:
            try:
                refs = load_pickle(self.refs_path)
            except UnsafePickleError:
                raise  # a user error already, naming the file and the refused global
            except pickle.UnpicklingError as e:  # a truncated or corrupt file; the message names it
                raise DataError(str(e)) from e
        if not isinstance(refs, list):
            raise DataError(f"{self.refs_path}: expected a list of refs, got {type(refs).__name__}")
        return refs

    def _load_instances(self) -> dict[str, Any]:
        if not os.path.isfile(self.instances_path):
            raise MissingFileError(f"{self.dataset}: instances file not found: {self.instances_path}")
        instances = _read_json(self.instances_path)
        for key in ("images", "annotations"):
            if key not in instances:
                raise DataError(f"{self.instances_path}: missing '{key}'")
        return instances

    # ------------------------------------------------------------------------------------------------------
    # queries

    def split_refs(self, split: str) -> list[dict]:
        """Refs of a split: "train", "val", "test", "testA", "testB", "testC" (REFER's matching rules)."""
        if split not in ("train", "val", "test", "testA", "testB", "testC"):
            raise ConfigError(f"{self.dataset}: unknown split '{split}'")
        return [ref for ref in self.refs if _split_matches(split, str(ref["split"]))]

    def split_images(self, split: str) -> list[dict]:
        """Image records (COCO ``images`` entries) that have refs in ``split``, sorted by image id."""
        ids = sorted({ref["image_id"] for ref in self.split_refs(split)})
        missing = [i for i in ids if i not in self.images]
        if missing:
            raise DataError(f"{self.instances_path}: no image record for image ids {missing[:5]} used by the refs")
        return [self.images[i] for i in ids]

    def image_path(self, image: dict) -> str:
        """Absolute path of an image record's file."""
        return os.path.join(self.image_dir, image["file_name"])

    def ann_mask(self, ann_id: int | list[int], image: dict) -> np.ndarray:
        """The mask of a ref's ``ann_id``.

        Arguments:
            ann_id: an annotation id, a list of ids (OR-ed), or ``[-1]`` / ``-1`` (no target: empty mask).
            image: the image record (gives height and width).

        Returns:
            (H, W) uint8 in {0, 1}.

        Raises:
            DataError: an annotation id is not in ``instances.json``.
        """
        height, width = int(image["height"]), int(image["width"])
        ids = ann_id if isinstance(ann_id, list) else [ann_id]
        out = np.zeros((height, width), dtype=np.uint8)
        for a in ids:
            if a == -1:
                continue
            ann = self.anns.get(a)
            if ann is None:
                raise DataError(f"{self.instances_path}: annotation {a} (image {image.get('id')}) not found")
            m = coco_segmentation_to_mask(
                ann.get("segmentation", []), height, width, f"{self.instances_path}: annotation {a}"
            )
            out |= m
        return out

    def target_problem(self, ann_id: int | list[int], image: dict, *, decode: bool = True) -> str | None:
        """Why a ref whose object is in the image has no usable target mask, or None when it has one.

        ``ann_id`` ``-1`` / ``[-1]`` (gRefCOCO's no-target expressions) has no target by design: None. Otherwise
        every annotation must exist in ``instances.json`` with a usable geometry (:func:`coco_target_problem`), and,
        with ``decode``, the decoded mask must not be empty.
        """
        ids = [a for a in (ann_id if isinstance(ann_id, list) else [ann_id]) if a != -1]
        if not ids:
            return None
        height, width = int(image["height"]), int(image["width"])
        usable = 0
        problems = []
        for a in ids:
            ann = self.anns.get(a)
            if ann is None:
                return f"annotation {a} not found in {self.instances_path}"
            problem = coco_target_problem(ann.get("segmentation", []), height, width)
            if problem is not None and "far outside" in problem:
                return f"annotation {a}: {problem}"
            if problem is None:
                usable += 1
            else:
                problems.append(f"annotation {a}: {problem}")
        if not usable:
            return "; ".join(problems)
        if decode:
            try:
                empty = not self.ann_mask(ann_id, image).any()
            except DataError as e:
                return str(e)
            if empty:
                return f"the mask of annotation(s) {ids} is empty"
        return None


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from e
