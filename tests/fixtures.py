"""Writers of tiny datasets in each exact on-disk format (real JPEG/PNG files, JSON, pickles, COCO polygons/RLE).

Every writer takes the dataset root (``dataset_dir``) and returns what a test needs to check the loaders pixel by
pixel. ``write_all`` builds one root with every dataset type.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

# ----------------------------------------------------------------------------------------------------------
# files


def write_jpeg(path: Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image as a JPEG (quality 100)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    return path


def write_label_png(path: Path, label: np.ndarray, mode: str = "L") -> Path:
    """Write an (H, W) uint8 label map as a single-channel PNG: "L" (grey) or "P" (palette, like Mapillary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = label.astype(np.uint8)
    if mode == "P":
        im = Image.new("P", (label.shape[1], label.shape[0]))
        im.putdata(label.flatten().tolist())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        im = Image.fromarray(label)
    im.save(path)
    return path


def write_json(path: Path, data: Any, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(data, ensure_ascii=False).encode(encoding))
    return path


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """ReasonSeg polygon ``[[x, y], ...]`` of the rectangle with corners (x0, y0) and (x1, y1), inclusive."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def rect_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """(H, W) uint8 with ones on rows y0..y1 and columns x0..x1 (inclusive)."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0 : y1 + 1, x0 : x1 + 1] = 1
    return m


def coco_rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """COCO polygon of the pixel block x0..x1-1, y0..y1-1 (pycocotools rasterises it to exactly that block)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rle_of(mask: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of a binary mask: compressed (``counts`` str, as in COCO JSON) or uncompressed (``counts`` list)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


# ----------------------------------------------------------------------------------------------------------
# ReasonSeg


def write_reason_seg_item(
    dataset_dir: Path,
    split: str,
    stem: str,
    *,
    size: tuple[int, int] = (40, 60),
    text: list[str] | str = ("the red box",),
    is_sentence: bool = False,
    shapes: list[dict] | None = None,
    false_premise_qa: list | None = None,
    encoding: str = "utf-8",
    seed: int = 0,
    folder: str = "ReasonSeg",
) -> Path:
    """One ReasonSeg image + JSON; returns the image path."""
    root = dataset_dir / "reason_seg" / folder / split
    h, w = size
    image_path = write_jpeg(root / f"{stem}.jpg", random_image(h, w, seed))
    data: dict[str, Any] = {
        "text": list(text) if not isinstance(text, str) else text,
        "is_sentence": is_sentence,
        "shapes": shapes if shapes is not None else [{"label": "target", "points": rect_polygon(10, 5, 29, 24)}],
    }
    if false_premise_qa is not None:
        data["false_premise_QA"] = false_premise_qa
    write_json(root / f"{stem}.json", data, encoding=encoding)
    return image_path


def write_reason_seg(dataset_dir: Path) -> dict[str, Any]:
    """A small ReasonSeg: 3 train images (one with FP triples, one cp1252), 2 val, 3 test (2 short, 1 long)."""
    shapes_ignore = [
        {"label": "target", "points": rect_polygon(10, 5, 29, 24)},
        {"label": "ignore", "points": rect_polygon(15, 10, 20, 15)},
        {"label": "flag", "points": rect_polygon(0, 0, 59, 39)},
    ]
    write_reason_seg_item(
        dataset_dir, "train", "a", text=["the red box", "The Crimson Box"], shapes=shapes_ignore, seed=1,
        false_premise_qa=[["the blue car", False, "There is no blue car here, but there is a red box."],
                          ["What can fly in this picture?", True, "Nothing here can fly."]],
    )  # fmt: skip
    write_reason_seg_item(
        dataset_dir, "train", "b", text=["Which object would you sit on?"], is_sentence=True, seed=2,
        shapes=[{"label": "chair", "points": rect_polygon(2, 2, 12, 30)}],
    )  # fmt: skip
    write_reason_seg_item(dataset_dir, "train", "c", text=["the caf\u00e9 sign"], encoding="cp1252", seed=3)
    write_reason_seg_item(dataset_dir, "val", "v1", text=["the lamp"], shapes=shapes_ignore, seed=4)
    write_reason_seg_item(dataset_dir, "val", "v2", text=["What keeps the rain off?"], is_sentence=True, seed=5)
    write_reason_seg_item(dataset_dir, "test", "t1", text=["the Dog"], seed=6)
    write_reason_seg_item(dataset_dir, "test", "t2", text=["the cat"], seed=7)
    write_reason_seg_item(dataset_dir, "test", "t3", text=["What cuts paper?"], is_sentence=True, seed=8)
    return {"train": 3, "val": 2, "test": 3, "test_short": 2, "test_long": 1}


def write_explanatory(dataset_dir: Path, items: list[dict]) -> Path:
    return write_json(dataset_dir / "reason_seg" / "ReasonSeg" / "explanatory" / "train.json", items)


# ----------------------------------------------------------------------------------------------------------
# REFER family


def _coco_instances(images: list[dict], anns: list[dict], categories: list[dict]) -> dict:
    return {"images": images, "annotations": anns, "categories": categories, "info": {}, "licenses": []}


def write_refer(
    dataset_dir: Path,
    dataset: str,
    split_by: str,
    images: list[dict],
    anns: list[dict],
    refs: list[dict],
    categories: list[dict] | None = None,
    *,
    pickle_protocol: int = 2,
    image_seed: int = 10,
) -> None:
    """Write ``refer_seg/<dataset>/refs(<split_by>).p`` (or gRefCOCO's ``grefs(unc).json``), ``instances.json`` and
    the images (COCO: ``images/mscoco/images/train2014``; refclef: ``images/saiapr_tc-12``)."""
    refer = dataset_dir / "refer_seg"
    data_dir = refer / dataset
    data_dir.mkdir(parents=True, exist_ok=True)
    if dataset == "grefcoco":
        write_json(data_dir / f"grefs({split_by}).json", refs)
    else:
        (data_dir / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=pickle_protocol))
    cats = categories or [{"id": 1, "name": "thing", "supercategory": "thing"}]
    write_json(data_dir / "instances.json", _coco_instances(images, anns, cats))
    image_dir = refer / ("images/saiapr_tc-12" if dataset == "refclef" else "images/mscoco/images/train2014")
    for k, im in enumerate(images):
        path = image_dir / im["file_name"]
        if not path.exists():
            write_jpeg(path, random_image(im["height"], im["width"], image_seed + k))


def _sent(sent_id: int, text: str, **extra: Any) -> dict:
    return {"sent_id": sent_id, "sent": text, "raw": text, "tokens": text.split(), **extra}


def refcoco_world() -> dict[str, Any]:
    """Images, annotations and refs shared by the refcoco-family fixtures.

    Image 1 (40x60): ann 11 = polygon rows 5..24 x cols 10..29; ann 12 = compressed RLE of rows 30..35 x cols 40..49.
    Image 2 (32x48): ann 21 = uncompressed RLE of rows 0..9 x cols 0..9, plus a second polygon part rows 20..23 x
    cols 30..39.
    """
    m12 = np.zeros((40, 60), dtype=np.uint8)
    m12[30:36, 40:50] = 1
    m21 = np.zeros((32, 48), dtype=np.uint8)
    m21[0:10, 0:10] = 1
    images = [
        {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 60},
        {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 32, "width": 48},
        {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "height": 24, "width": 24},
    ]
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [coco_rect(10, 5, 30, 25)], "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": rle_of(m12), "iscrowd": 1},
        {"id": 21, "image_id": 2, "category_id": 1, "segmentation": rle_of(m21, compressed=False), "iscrowd": 1},
        {"id": 22, "image_id": 2, "category_id": 1, "segmentation": [coco_rect(30, 20, 40, 24)], "iscrowd": 0},
        {"id": 31, "image_id": 3, "category_id": 1, "segmentation": [coco_rect(0, 0, 4, 4)], "iscrowd": 0},
    ]
    masks = {
        11: rect_mask(40, 60, 10, 5, 29, 24),
        12: m12,
        21: m21,
        22: rect_mask(32, 48, 30, 20, 39, 23),
        31: rect_mask(24, 24, 0, 0, 3, 3),
    }
    return {"images": images, "anns": anns, "masks": masks}


def write_refcoco(dataset_dir: Path, dataset: str = "refcoco", split_by: str = "unc_exclude_unified") -> dict:
    """refcoco-style refs: image 1 in train (2 refs, 3 sentences), image 2 in val, image 3 in testA."""
    w = refcoco_world()
    refs = [
        {"ref_id": 100, "ann_id": 11, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [_sent(1000, "Left Box"), _sent(1001, "the box on the left")]},
        {"ref_id": 101, "ann_id": 12, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [_sent(1002, "small thing bottom right")]},
        {"ref_id": 102, "ann_id": 21, "image_id": 2, "category_id": 1, "split": "val",
         "sentences": [_sent(1003, "top left corner"), _sent(1004, "corner block")]},
        {"ref_id": 103, "ann_id": 31, "image_id": 3, "category_id": 1, "split": "testA",
         "sentences": [_sent(1005, "tiny square")]},
    ]  # fmt: skip
    write_refer(dataset_dir, dataset, split_by, w["images"], w["anns"], refs)
    return {"refs": refs, **w}


def write_fprefcoco(dataset_dir: Path, dataset: str = "fprefcoco") -> dict:
    """FP-RefCOCO: sentences with ``is_false_premise`` and ``gt_sent`` (splitBy berkeley_exclude_unified)."""
    w = refcoco_world()
    refs = [
        {"ref_id": 200, "ann_id": 11, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [_sent(2000, "the box", is_false_premise=False, gt_sent=""),
                       _sent(2001, "the Green Dog", is_false_premise=True, gt_sent="the Box ")]},
        {"ref_id": 201, "ann_id": 21, "image_id": 2, "category_id": 1, "split": "val",
         "sentences": [_sent(2002, "corner", is_false_premise=False, gt_sent=""),
                       _sent(2003, "a flying cat", is_false_premise=True, gt_sent="corner block")]},
    ]  # fmt: skip
    write_refer(dataset_dir, dataset, "berkeley_exclude_unified", w["images"], w["anns"], refs)
    return {"refs": refs, **w}


def write_rrefcoco(dataset_dir: Path, dataset: str = "R-refcoco") -> dict:
    """R-RefCOCO: sentences with ``exist``."""
    w = refcoco_world()
    refs = [
        {"ref_id": 300, "ann_id": 12, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [_sent(3000, "the thing", exist=True), _sent(3001, "a purple zebra", exist=False)]},
    ]  # fmt: skip
    split_by = "umd_exclude_unified" if dataset == "R-refcocog" else "unc_exclude_unified"
    write_refer(dataset_dir, dataset, split_by, w["images"], w["anns"], refs)
    return {"refs": refs, **w}


def write_grefcoco(dataset_dir: Path) -> dict:
    """gRefCOCO: a two-target expression (anns 11 and 12) and a no-target expression ([-1])."""
    w = refcoco_world()
    refs = [
        {"ref_id": 400, "ann_id": [11, 12], "image_id": 1, "category_id": [1, 1], "split": "train",
         "sentences": [_sent(4000, "both things")], "no_target": False},
        {"ref_id": 401, "ann_id": [-1], "image_id": 1, "category_id": [-1], "split": "train",
         "sentences": [_sent(4001, "the elephant")], "no_target": True},
    ]  # fmt: skip
    write_refer(dataset_dir, "grefcoco", "unc", w["images"], w["anns"], refs)
    return {"refs": refs, **w}


def write_refclef(dataset_dir: Path) -> dict:
    images = [{"id": 7, "file_name": "7.jpg", "height": 30, "width": 30}]
    anns = [{"id": 71, "image_id": 7, "category_id": 1, "segmentation": [coco_rect(5, 5, 15, 15)], "iscrowd": 0}]
    refs = [{"ref_id": 700, "ann_id": 71, "image_id": 7, "category_id": 1, "split": "train",
             "sentences": [_sent(7000, "sky")]}]  # fmt: skip
    write_refer(dataset_dir, "refclef", "unc", images, anns, refs)
    return {"refs": refs, "mask": rect_mask(30, 30, 5, 5, 14, 14)}


# ----------------------------------------------------------------------------------------------------------
# semantic segmentation


def write_ade20k(dataset_dir: Path) -> dict:
    """Two ADE20K images; raw labels 0 (other), 1 (wall), 3 (sky); the second image has only 0."""
    label = np.zeros((24, 32), dtype=np.uint8)
    label[:, :16] = 1
    label[:8, 16:] = 3
    for k, lab in enumerate([label, np.zeros((24, 32), dtype=np.uint8)]):
        stem = f"ADE_train_{k:08d}"
        write_jpeg(dataset_dir / "ade20k/images/training" / f"{stem}.jpg", random_image(24, 32, 20 + k))
        write_label_png(dataset_dir / "ade20k/annotations/training" / f"{stem}.png", lab)
    return {"label": label}


def write_cocostuff(dataset_dir: Path) -> dict:
    """One COCO-Stuff map: person (0), 'building-other' (95, ignored by name) and unlabeled (255)."""
    label = np.full((24, 32), 255, dtype=np.uint8)
    label[:12, :] = 0
    label[12:, :16] = 95
    write_label_png(dataset_dir / "cocostuff/train2017/000000000009.png", label)
    write_jpeg(dataset_dir / "coco/train2017/000000000009.jpg", random_image(24, 32, 30))
    return {"label": label}


def write_mapillary(dataset_dir: Path) -> dict:
    """Mapillary config with 3 classes and one palette label map using classes 0 and 2."""
    config = {"labels": [{"readable": "Bird", "name": "animal--bird"},
                         {"readable": "Curb", "name": "construction--curb"},
                         {"readable": "Traffic Light", "name": "object--traffic-light"}]}  # fmt: skip
    write_json(dataset_dir / "mapillary/config_v2.0.json", config)
    label = np.zeros((24, 32), dtype=np.uint8)
    label[5:15, 5:20] = 2
    write_label_png(dataset_dir / "mapillary/training/v2.0/labels/m0.png", label, mode="P")
    write_jpeg(dataset_dir / "mapillary/training/images/m0.jpg", random_image(24, 32, 40))
    return {"label": label}


def write_paco(dataset_dir: Path) -> dict:
    """PACO-LVIS: categories 'mug_(cup):handle' and 'knife'; one image with one handle annotation."""
    images = [{"id": 5, "file_name": "train2017/000000000005.jpg", "height": 24, "width": 32}]
    anns = [{"id": 51, "image_id": 5, "category_id": 1, "segmentation": [coco_rect(2, 3, 12, 13)], "iscrowd": 0}]
    cats = [{"id": 1, "name": "mug_(cup):handle"}, {"id": 2, "name": "knife"}]
    write_json(dataset_dir / "vlpart/paco/annotations/paco_lvis_v1_train.json", _coco_instances(images, anns, cats))
    write_jpeg(dataset_dir / "coco/train2017/000000000005.jpg", random_image(24, 32, 50))
    return {"mask": rect_mask(24, 32, 2, 3, 11, 12)}


def write_pascal_part(dataset_dir: Path) -> dict:
    images = [{"id": 6, "file_name": "2008_000001.jpg", "height": 24, "width": 32}]
    anns = [{"id": 61, "image_id": 6, "category_id": 3, "segmentation": [coco_rect(20, 10, 30, 20)], "iscrowd": 0}]
    cats = [{"id": 3, "name": "dog:head"}, {"id": 4, "name": "cat:tail"}]
    write_json(dataset_dir / "vlpart/pascal_part/train.json", _coco_instances(images, anns, cats))
    image_dir = dataset_dir / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages"
    write_jpeg(image_dir / "2008_000001.jpg", random_image(24, 32, 60))
    return {"mask": rect_mask(24, 32, 20, 10, 29, 19)}


# ----------------------------------------------------------------------------------------------------------
# VQA


def write_llava(dataset_dir: Path) -> dict:
    items = [
        {"id": "q1", "image": "000000000001.jpg", "conversations": [
            {"from": "human", "value": "What is shown?\n<image>"},
            {"from": "gpt", "value": "A red box."},
            {"from": "human", "value": "What colour is it?"},
            {"from": "gpt", "value": "Red."}]},
        {"id": "q2", "image": "000000000002.jpg", "conversations": [
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": "Two boxes."}]},
    ]  # fmt: skip
    write_json(dataset_dir / "llava_dataset/llava_instruct_150k.json", items)
    for k, item in enumerate(items):
        write_jpeg(dataset_dir / "coco/train2017" / item["image"], random_image(24, 32, 70 + k))
    return {"items": items}


def write_all(dataset_dir: Path) -> dict[str, Any]:
    """Every dataset type under one root (the layout of docs/reference.md#data-layout)."""
    out = {"reason_seg": write_reason_seg(dataset_dir)}
    for ds in ("refcoco", "refcoco+"):
        out[ds] = write_refcoco(dataset_dir, ds)
    out["refcocog"] = write_refcoco(dataset_dir, "refcocog", "umd_exclude_unified")
    out["refclef"] = write_refclef(dataset_dir)
    for ds in ("fprefcoco", "fprefcoco+", "fprefcocog"):
        out[ds] = write_fprefcoco(dataset_dir, ds)
    for ds in ("R-refcoco", "R-refcoco+", "R-refcocog"):
        out[ds] = write_rrefcoco(dataset_dir, ds)
    out["grefcoco"] = write_grefcoco(dataset_dir)
    out["ade20k"] = write_ade20k(dataset_dir)
    out["cocostuff"] = write_cocostuff(dataset_dir)
    out["mapillary"] = write_mapillary(dataset_dir)
    out["paco_lvis"] = write_paco(dataset_dir)
    out["pascal_part"] = write_pascal_part(dataset_dir)
    out["vqa"] = write_llava(dataset_dir)
    return out


# ----------------------------------------------------------------------------------------------------------
# broken files


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its length (a download or copy that stopped early)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ReasonSeg ``shapes`` lists that cannot serve as ground truth in a 40 x 60 image, with the reason given.
DEGENERATE_SHAPES = {
    "one_point": ([{"label": "target", "points": [[20, 20]]}], "1 distinct point(s); a polygon needs at least 3"),
    "two_points": ([{"label": "target", "points": [[10, 10], [30, 20]]}], "2 distinct point(s)"),
    "collinear": ([{"label": "target", "points": [[10, 10], [20, 20], [30, 30]]}], "(nearly) on one line"),
    "outside": ([{"label": "target", "points": rect_polygon(70, 50, 90, 70)}], "lies entirely outside the 60x40"),
    "negative": ([{"label": "target", "points": rect_polygon(-30, -20, -5, -2)}], "lies entirely outside the 60x40"),
    "absurd": ([{"label": "target", "points": [[10, 10], [1e10, 10], [10, 30]]}], "point (1e+10, 10) lies far outside"),
    "no_shapes": ([], "no target: 'shapes' is empty"),
    "only_ignore": ([{"label": "ignore", "points": rect_polygon(10, 5, 29, 24)}], "every shape is labelled 'ignore'"),
    "covered": (  # equal areas: the later shape is drawn first, the ignore region on top
        [{"label": "ignore", "points": rect_polygon(10, 5, 29, 24)},
         {"label": "target", "points": rect_polygon(10, 5, 29, 24)}],
        "the target is empty: 'ignore' regions cover all of it",
    ),
}  # fmt: skip


def write_bad_reason_seg_items(dataset_dir: Path, split: str, size: tuple[int, int] = (40, 60)) -> dict[str, Path]:
    """Three unusable ReasonSeg items in ``split``: a 2-point target polygon, a truncated JPEG and an annotation
    whose image is missing. Returns {kind: the file a message must name}."""
    root = dataset_dir / "reason_seg" / "ReasonSeg" / split
    two = write_reason_seg_item(dataset_dir, split, "bad_two_points", size=size,
                                shapes=DEGENERATE_SHAPES["two_points"][0])  # fmt: skip
    cut = write_reason_seg_item(dataset_dir, split, "bad_truncated", size=size, seed=5)
    truncate_file(cut)
    gone = write_reason_seg_item(dataset_dir, split, "bad_no_image", size=size)
    gone.unlink()
    return {"degenerate": two.with_suffix(".json"), "truncated": cut, "missing_image": root / "bad_no_image.json"}
