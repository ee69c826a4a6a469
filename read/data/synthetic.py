"""A synthetic reasoning-segmentation dataset in ReasonSeg's exact on-disk format.

Each image is a plain scene of a few coloured shapes; each JSON asks for one object (or, rarely, for nothing else)
with a short phrase or a reasoning sentence and gives the object's exact visible region as polygons::

    <out>/reason_seg/ReasonSeg/{train,val,test}/<split>_<index>.jpg
    <out>/reason_seg/ReasonSeg/{train,val,test}/<split>_<index>.json
        {"text": [...], "is_sentence": bool, "shapes": [{"label": "target", "points": [[x, y], ...]}, ...],
         "synthetic": {"kind": ..., "target": i, "objects": [...]}}

so ``read.data.reason_seg`` (training) and ``read.data.eval_sets`` (evaluation) read it like the real data.

Queries (``text`` holds 1-3 phrasings of the same query about the same target):

* short (``is_sentence`` false): "red triangle", "triangle" (shape unique in the scene), "red shape" (colour unique);
* long (``is_sentence`` true), one of
  - relation: "Which shape is to the left of the blue circle?" (exactly one object on that side, with a margin);
  - comparison: "Which of the two squares is larger?" (exactly two objects share the attribute, areas differ);
  - superlative: "Which object is furthest to the right?", "Which shape is the largest?" (clear winner);
  - counting / chained attributes: "There are 2 stars in the image. Which one is green?", "Which shape has the
    same colour as the circle?".

Masks are exact: objects are drawn without anti-aliasing, later objects occlude earlier ones, and the polygons are
the ``cv2.findContours`` outlines of the target's visible pixels; every scene is checked to rasterise back (with the
loader's polylines + fillPoly rule) to exactly the visible mask, otherwise it is redrawn. The test split holds out
some colour x shape combinations: they never appear in train/val, and in test the target is one of them with
probability ``holdout_target_prob``.

Difficulty knobs (:class:`SyntheticConfig`; ``scripts/make_synthetic.py`` exposes them):

* ``image_size`` (default 160 px): side of the square images.
* ``num_objects`` (default 2-4): objects per scene.
* ``object_size`` (default 0.22-0.38): object diameter as a fraction of the image side (larger = easier).
* ``min_visible_pixels``: smallest visible target area.
* ``max_occlusion`` (default 0 = objects never overlap): largest fraction of an object that later ones may hide.
* ``long_fraction`` (default 0.5): share of long reasoning queries; ``long_kinds`` weights their kinds.
* ``colors`` / ``shapes``: the palettes (distinct saturated colours; circle, square, triangle, star, diamond, hexagon).
* ``rotation`` (default 15 degrees): random polygon rotation range.
* ``background``: "plain" (default, a light grey that varies a little) or "noise" (plus Gaussian noise).
* ``texts_per_image`` (default 1-3): phrasings per JSON.
* ``false_premise_queries`` (default 1): ``false_premise_QA`` triples per JSON, as in SESAME's FP-Aug files: a short
  query for a colour x shape that is not in the scene and the correcting answer "There is no <colour> <shape> in
  this image." (READ trains on them with ``data.reason_seg_fp_prob``).
* ``holdout`` / ``holdout_target_prob``: the held-out colour x shape combinations of the test split.

Generation is deterministic: item ``i`` of a split uses ``np.random.default_rng([seed, split_id, i])``, so the output
does not depend on the number of processes.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from read.data.masks import mask_to_polygons, reason_seg_mask

__all__ = [
    "COLORS",
    "SHAPES",
    "SPLITS",
    "SyntheticConfig",
    "SceneObject",
    "generate_item",
    "generate_scene",
    "explanation_of",
    "region_name",
    "referring_queries",
    "write_split",
    "make_synthetic",
]

# Distinct, saturated RGB colours.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (235, 205, 20),
    "purple": (140, 50, 200),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SPLITS = {"train": 0, "val": 1, "test": 2}

_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "hexagon": "hexagons"}  # fmt: skip
_NOUNS = ("shape", "object")


@dataclass
class SyntheticConfig:
    """Difficulty and appearance of the synthetic scenes (see the module docstring)."""

    image_size: int = 160
    num_objects: tuple[int, int] = (2, 4)
    object_size: tuple[float, float] = (0.22, 0.38)
    min_visible_pixels: int = 120
    max_occlusion: float = 0.0
    long_fraction: float = 0.5
    long_kinds: dict[str, float] = field(
        default_factory=lambda: {"relation": 1.0, "comparison": 1.0, "superlative": 1.0, "counting": 1.0}
    )
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES
    rotation: float = 15.0
    background: str = "plain"
    texts_per_image: tuple[int, int] = (1, 3)
    false_premise_queries: int = 1  # SESAME-style false_premise_QA entries per JSON (absent colour x shape)
    holdout: tuple[tuple[str, str], ...] = (("red", "star"), ("blue", "triangle"), ("yellow", "circle"))
    holdout_target_prob: float = 0.5
    jpeg_quality: int = 95
    max_attempts: int = 200

    def __post_init__(self) -> None:
        lo, hi = self.num_objects
        if not 1 <= lo <= hi:
            raise ValueError(f"num_objects must satisfy 1 <= min <= max, got {self.num_objects}")
        if not 0 < self.object_size[0] <= self.object_size[1] < 1:
            raise ValueError(f"object_size must satisfy 0 < min <= max < 1, got {self.object_size}")
        if not 0 <= self.long_fraction <= 1 or not 0 <= self.max_occlusion < 1:
            raise ValueError("long_fraction must be in [0, 1] and max_occlusion in [0, 1)")
        unknown = [c for c in self.colors if c not in COLORS] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes {unknown}; known: {list(COLORS)}, {list(SHAPES)}")
        bad_kinds = set(self.long_kinds) - {"relation", "comparison", "superlative", "counting"}
        if bad_kinds or sum(self.long_kinds.values()) <= 0:
            raise ValueError(f"long_kinds must weight relation/comparison/superlative/counting, got {self.long_kinds}")
        if self.background not in ("plain", "noise"):
            raise ValueError(f"background must be 'plain' or 'noise', got {self.background!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        allowed = [(c, s) for c in self.colors for s in self.shapes if (c, s) not in set(self.holdout)]
        if not allowed:
            raise ValueError("holdout removes every colour x shape combination")


@dataclass
class SceneObject:
    """One drawn object; ``mask`` is its full (unoccluded) region, ``visible`` what remains after occlusion."""

    color: str
    shape: str
    cx: float
    cy: float
    radius: float
    mask: np.ndarray
    visible: np.ndarray | None = None
    area: int = field(init=False)

    def __post_init__(self) -> None:
        self.area = int(np.count_nonzero(self.mask))

    def describe(self) -> dict[str, Any]:
        return {"color": self.color, "shape": self.shape, "center": [round(self.cx, 1), round(self.cy, 1)],
                "radius": round(self.radius, 1), "area": self.area}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# drawing


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a polygonal shape with circumradius ``r``, rotated by ``angle`` radians."""
    if shape == "square":
        base = [math.pi / 4 + k * math.pi / 2 for k in range(4)]
        radii = [r] * 4
    elif shape == "triangle":
        base = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        radii = [r] * 3
    elif shape == "hexagon":
        base = [k * math.pi / 3 for k in range(6)]
        radii = [r] * 6
    elif shape == "star":
        base = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
    elif shape == "diamond":  # a rhombus, narrower than tall
        base = [-math.pi / 2, 0.0, math.pi / 2, math.pi]
        radii = [r, 0.62 * r, r, 0.62 * r]
    else:
        raise ValueError(f"not a polygonal shape: {shape}")
    pts = [(cx + q * math.cos(a + angle), cy + q * math.sin(a + angle)) for a, q in zip(base, radii)]
    return np.round(np.asarray(pts)).astype(np.int32)


def _object_mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    if shape == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        cv2.fillPoly(mask, [_shape_polygon(shape, cx, cy, r, angle).reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8)
    return mask


def _place_objects(
    rng: np.random.Generator, cfg: SyntheticConfig, combos: list[tuple[str, str]]
) -> list[SceneObject] | None:
    """Place one object per (colour, shape); None if the placement fails."""
    p = cfg.image_size
    objects: list[SceneObject] = []
    for color, shape in combos:
        for _ in range(50):
            r = rng.uniform(*cfg.object_size) * p / 2
            cx, cy = rng.uniform(r + 1, p - r - 1, size=2)
            if cfg.max_occlusion == 0 and any(math.hypot(cx - o.cx, cy - o.cy) < r + o.radius + 3 for o in objects):
                continue
            angle = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
            mask = _object_mask(shape, cx, cy, r, angle, p)
            objects.append(SceneObject(color, shape, float(cx), float(cy), float(r), mask))
            break
        else:
            return None
    # Visible regions: later objects are drawn on top.
    covered = np.zeros((p, p), dtype=bool)
    for o in reversed(objects):
        o.visible = (o.mask.astype(bool) & ~covered).astype(np.uint8)
        covered |= o.mask.astype(bool)
        if np.count_nonzero(o.visible) < max(cfg.min_visible_pixels, (1 - cfg.max_occlusion) * o.area):
            return None
    return objects


def _render(rng: np.random.Generator, cfg: SyntheticConfig, objects: list[SceneObject]) -> np.ndarray:
    """(P, P, 3) uint8 RGB image of the scene."""
    p = cfg.image_size
    grey = int(rng.integers(215, 246))
    image = np.full((p, p, 3), grey, dtype=np.int16)
    if cfg.background == "noise":
        image += rng.normal(0, 12, size=(p, p, 1)).astype(np.int16)
    for o in objects:
        color = np.asarray(COLORS[o.color], dtype=np.int16) + rng.integers(-12, 13, size=3)
        image[o.mask.astype(bool)] = color
    return np.clip(image, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# queries


@dataclass
class _Query:
    kind: str
    target: int
    texts: list[str]  # all phrasings that fit this query (several are drawn)
    is_sentence: bool


def _unique_names(objects: list[SceneObject], i: int) -> list[str]:
    """Short names that pick out object ``i`` alone."""
    o = objects[i]
    same_combo = sum(x.color == o.color and x.shape == o.shape for x in objects)
    same_shape = sum(x.shape == o.shape for x in objects)
    same_color = sum(x.color == o.color for x in objects)
    names = []
    if same_combo == 1:
        names.append(f"{o.color} {o.shape}")
    if same_shape == 1:
        names.append(o.shape)
    if same_color == 1:
        names += [f"{o.color} {noun}" for noun in _NOUNS]
    return names


def _short_queries(objects: list[SceneObject]) -> list[_Query]:
    out = []
    for i in range(len(objects)):
        names = _unique_names(objects, i)
        if names:
            out.append(_Query("short", i, names, False))
    return out


_RELATIONS = {
    "left": ("to the left of", lambda o, a, m: o.cx < a.cx - m, lambda o, a, m: o.cx > a.cx + m),
    "right": ("to the right of", lambda o, a, m: o.cx > a.cx + m, lambda o, a, m: o.cx < a.cx - m),
    "above": ("above", lambda o, a, m: o.cy < a.cy - m, lambda o, a, m: o.cy > a.cy + m),
    "below": ("below", lambda o, a, m: o.cy > a.cy + m, lambda o, a, m: o.cy < a.cy - m),
}


def _relation_queries(objects: list[SceneObject], margin: float) -> list[_Query]:
    out = []
    for a, anchor in enumerate(objects):
        anchor_names = [n for n in _unique_names(objects, a) if not n.endswith(_NOUNS)]
        if not anchor_names:
            continue
        for phrase, holds, opposite in _RELATIONS.values():
            others = [i for i in range(len(objects)) if i != a]
            hits = [i for i in others if holds(objects[i], anchor, margin)]
            if len(hits) != 1 or not all(i in hits or opposite(objects[i], anchor, margin) for i in others):
                continue
            texts = []
            for name in anchor_names:
                texts += [
                    f"Which shape is {phrase} the {name}?",
                    f"Find the object that is {phrase} the {name}.",
                    f"Something in this picture is located {phrase} the {name}. Which object is it?",
                ]
            out.append(_Query("relation", hits[0], texts, True))
    return out


def _comparison_queries(objects: list[SceneObject], ratio: float) -> list[_Query]:
    out = []
    groups: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(objects):
        groups.setdefault(("shape", o.shape), []).append(i)
        groups.setdefault(("color", o.color), []).append(i)
    for (attr, value), members in groups.items():
        if len(members) != 2:
            continue
        small, large = sorted(members, key=lambda i: objects[i].area)
        if objects[large].area < ratio * objects[small].area:
            continue
        group = _PLURAL[value] if attr == "shape" else f"{value} shapes"
        for target, adjective, superlative in ((large, "larger", "bigger"), (small, "smaller", "tinier")):
            texts = [
                f"Which of the two {group} is {adjective}?",
                f"There are two {group} in the image. Segment the {adjective} one.",
                f"Of the two {group}, which one looks {superlative}?",
            ]
            out.append(_Query("comparison", target, texts, True))
    return out


def _superlative_queries(objects: list[SceneObject], margin: float, ratio: float) -> list[_Query]:
    if len(objects) < 2:
        return []
    out = []
    axes = [
        (lambda o: o.cx, "furthest to the right", "rightmost"),
        (lambda o: -o.cx, "furthest to the left", "leftmost"),
        (lambda o: -o.cy, "closest to the top", "topmost"),
        (lambda o: o.cy, "closest to the bottom", "bottommost"),
    ]
    for key, phrase, adjective in axes:
        order = sorted(range(len(objects)), key=lambda i: key(objects[i]), reverse=True)
        if key(objects[order[0]]) - key(objects[order[1]]) >= margin:
            texts = [
                f"Which object is {phrase} in this image?",
                f"What is the {adjective} shape in the picture?",
                f"Among all the shapes, find the one that is {phrase}.",
            ]
            out.append(_Query("superlative", order[0], texts, True))
    by_area = sorted(range(len(objects)), key=lambda i: objects[i].area)
    if objects[by_area[-1]].area >= ratio * objects[by_area[-2]].area:
        texts = ["Which shape is the largest?", "What is the biggest object in this image?",
                 "Find the shape that takes up the most space."]  # fmt: skip
        out.append(_Query("superlative", by_area[-1], texts, True))
    if objects[by_area[1]].area >= ratio * objects[by_area[0]].area:
        texts = ["Which shape is the smallest?", "What is the tiniest object in this image?",
                 "Find the shape that takes up the least space."]  # fmt: skip
        out.append(_Query("superlative", by_area[0], texts, True))
    return out


def _counting_queries(objects: list[SceneObject]) -> list[_Query]:
    out = []
    words = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    shapes = {o.shape for o in objects}
    for shape in sorted(shapes):
        members = [i for i, o in enumerate(objects) if o.shape == shape]
        if len(members) < 2:
            continue
        n = words.get(len(members), str(len(members)))
        for i in members:
            if sum(objects[j].color == objects[i].color for j in members) == 1:
                color = objects[i].color
                texts = [
                    f"There are {n} {_PLURAL[shape]} in the image. Which one is {color}?",
                    f"Count the {_PLURAL[shape]}: there are {n}. Segment the {color} one.",
                ]
                out.append(_Query("counting", i, texts, True))
    for a, anchor in enumerate(objects):  # chained: same colour as an anchor, different object
        anchor_names = [n for n in _unique_names(objects, a) if not n.endswith(_NOUNS)]
        same = [i for i, o in enumerate(objects) if i != a and o.color == anchor.color]
        if anchor_names and len(same) == 1:
            texts = []
            for name in anchor_names:
                texts += [
                    f"Which shape has the same colour as the {name}?",
                    f"Find the other object painted in the same colour as the {name}.",
                ]
            out.append(_Query("counting", same[0], texts, True))
    return out


def _long_queries(objects: list[SceneObject], cfg: SyntheticConfig) -> dict[str, list[_Query]]:
    p = cfg.image_size
    return {
        "relation": _relation_queries(objects, 0.08 * p),
        "comparison": _comparison_queries(objects, 1.4),
        "superlative": _superlative_queries(objects, 0.15 * p, 1.3),
        "counting": _counting_queries(objects),
    }


# ----------------------------------------------------------------------------------------------------------
# items


def _combos(cfg: SyntheticConfig, split: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(combinations usable in the split, held-out combinations present in this palette)."""
    held = [c for c in cfg.holdout if c[0] in cfg.colors and c[1] in cfg.shapes]
    every = [(c, s) for c in cfg.colors for s in cfg.shapes]
    if split == "test":
        return every, held
    return [c for c in every if c not in set(held)], held


def generate_item(cfg: SyntheticConfig, split: str, index: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw one scene and its annotation (see :func:`generate_scene`, which also returns the objects)."""
    image, annotation, _ = generate_scene(cfg, split, index, seed)
    return image, annotation


def generate_scene(
    cfg: SyntheticConfig, split: str, index: int, seed: int
) -> tuple[np.ndarray, dict[str, Any], list[SceneObject]]:
    """Draw one scene and its annotation.

    Arguments:
        cfg: the generator settings.
        split: "train", "val" or "test".
        index: item number within the split.
        seed: dataset seed.

    Returns:
        (P, P, 3) uint8 RGB image, the JSON dict (``text``, ``is_sentence``, ``shapes``, ``synthetic``) and the
        drawn objects (their ``visible`` masks; the target is ``annotation["synthetic"]["target"]``).

    Raises:
        RuntimeError: no valid scene in ``cfg.max_attempts`` tries (settings too tight).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    allowed, held = _combos(cfg, split)
    want_long = rng.random() < cfg.long_fraction
    force_held = split == "test" and bool(held) and rng.random() < cfg.holdout_target_prob
    kinds = [k for k, w in cfg.long_kinds.items() if w > 0]
    weights = np.asarray([cfg.long_kinds[k] for k in kinds], dtype=np.float64)
    for _ in range(cfg.max_attempts):
        n = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
        combos = [allowed[int(rng.integers(len(allowed)))] for _ in range(n)]
        if force_held:
            combos[int(rng.integers(n))] = held[int(rng.integers(len(held)))]
        objects = _place_objects(rng, cfg, combos)
        if objects is None:
            continue
        if want_long:
            by_kind = _long_queries(objects, cfg)
            if force_held:
                by_kind = {k: [q for q in v if (objects[q.target].color, objects[q.target].shape) in held]
                           for k, v in by_kind.items()}  # fmt: skip
            available = [i for i, k in enumerate(kinds) if by_kind[k]]
            if not available:
                continue
            p = weights[available] / weights[available].sum()
            kind = kinds[available[int(rng.choice(len(available), p=p))]]
            candidates = by_kind[kind]
        else:
            candidates = _short_queries(objects)
            if force_held:
                candidates = [q for q in candidates if (objects[q.target].color, objects[q.target].shape) in held]
            if not candidates:
                continue
        query = candidates[int(rng.integers(len(candidates)))]
        target = objects[query.target]
        polygons = mask_to_polygons(target.visible)
        shapes = [{"label": "target", "points": poly} for poly in polygons]
        if not shapes or not np.array_equal(reason_seg_mask(shapes, cfg.image_size, cfg.image_size), target.visible):
            continue  # e.g. a visible region with a hole: polygons cannot describe it exactly
        k = int(rng.integers(cfg.texts_per_image[0], cfg.texts_per_image[1] + 1))
        order = rng.permutation(len(query.texts))[: max(1, min(k, len(query.texts)))]
        annotation = {
            "text": [query.texts[int(i)] for i in order],
            "is_sentence": query.is_sentence,
            "shapes": shapes,
            "synthetic": {
                "kind": query.kind,
                "target": query.target,
                "held_out_target": (target.color, target.shape) in set(held),
                "objects": [o.describe() for o in objects],
            },
        }
        if cfg.false_premise_queries > 0:
            annotation["false_premise_QA"] = _false_premise_queries(cfg, split, index, seed, objects, allowed)
        return _render(rng, cfg, objects), annotation, objects
    raise RuntimeError(
        f"synthetic: no valid {split} scene for item {index} in {cfg.max_attempts} attempts; loosen the settings "
        "(fewer or smaller objects, more occlusion, other query kinds)"
    )


def explanation_of(annotation: dict[str, Any], image_size: int) -> str:
    """The answer text of an item for LISA's explanatory training (``explanatory/train.json``): where the target
    is (a 3 x 3 region of the image) and what it is, e.g. "top left, red triangle.". A text-only answer thus starts
    with the target's place in the position where a mask answer ("[SEG].") has its ``[SEG]``."""
    syn = annotation["synthetic"]
    target = syn["objects"][syn["target"]]
    x, y = target["center"]
    return f"{region_name(x, y, image_size)}, {target['color']} {target['shape']}."


def region_name(x: float, y: float, image_size: int) -> str:
    """The cell of a 3 x 3 grid over the image that holds the point (x, y): "top left", "top centre", ...,
    "middle left", "centre", "middle right", ..., "bottom right"."""
    row = ("top", "middle", "bottom")[min(2, max(0, int(3 * y / image_size)))]
    col = ("left", "centre", "right")[min(2, max(0, int(3 * x / image_size)))]
    return {("middle", "centre"): "centre"}.get((row, col), f"{row} {col}")


def referring_queries(objects: list[SceneObject], cfg: SyntheticConfig) -> list[tuple[str, int, list[str]]]:
    """Every query the generator can ask about a scene, as ``(kind, target index, phrasings)``: the short names
    ("red triangle", "triangle", "red shape") and the reasoning sentences of every long kind, in a fixed order."""
    queries = _short_queries(objects)
    for kind_queries in _long_queries(objects, cfg).values():
        queries += kind_queries
    return [(q.kind, q.target, list(q.texts)) for q in queries]


def _false_premise_queries(
    cfg: SyntheticConfig, split: str, index: int, seed: int, objects: list[SceneObject], allowed: list[tuple[str, str]]
) -> list[list[Any]]:
    """``[query, is_sentence, answer]`` triples about colour x shape pairs absent from the scene (own random
    stream, so the scene and its query do not depend on this)."""
    rng = np.random.default_rng([seed, SPLITS[split], index, 1])
    present = {(o.color, o.shape) for o in objects}
    absent = [c for c in allowed if c not in present]
    order = rng.permutation(len(absent))[: cfg.false_premise_queries]
    return [[f"{absent[i][0]} {absent[i][1]}", False, f"There is no {absent[i][0]} {absent[i][1]} in this image."]
            for i in order.tolist()]  # fmt: skip


def _write_items(args: tuple[str, SyntheticConfig, str, int, int, int]) -> list[tuple[str, dict[str, str]]]:
    out_dir, cfg, split, seed, start, stop = args
    written = []
    params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]
    for i in range(start, stop):
        image, annotation = generate_item(cfg, split, i, seed)
        stem = os.path.join(out_dir, f"{split}_{i:06d}")
        if not cv2.imwrite(stem + ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"cannot write {stem}.jpg")
        with open(stem + ".json", "w", encoding="utf-8") as f:
            f.write(json.dumps(annotation))  # json.dumps uses the C encoder, json.dump does not
        explanation = {"image": os.path.basename(stem) + ".jpg", "query": annotation["text"][0],
                       "outputs": explanation_of(annotation, cfg.image_size)}  # fmt: skip
        written.append((stem + ".jpg", explanation))
    return written


def write_split(
    out: str, split: str, num: int, cfg: SyntheticConfig, seed: int, processes: int = 1, chunk: int = 64
) -> list[str]:
    """Write ``num`` items of a split under ``<out>/reason_seg/ReasonSeg/<split>/``; returns the image paths.

    For the train split, also ``<out>/reason_seg/ReasonSeg/explanatory/train.json`` (LISA's explanatory answers,
    used with ``data.explanatory >= 0``): one entry per image whose ``outputs`` names the target.
    """
    split_dir = os.path.join(out, "reason_seg", "ReasonSeg", split)
    os.makedirs(split_dir, exist_ok=True)
    jobs = [(split_dir, cfg, split, seed, s, min(s + chunk, num)) for s in range(0, num, chunk)]
    if processes <= 1 or len(jobs) <= 1:
        results = [_write_items(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=processes) as pool:
            results = list(pool.map(_write_items, jobs))
    written = [item for r in results for item in r]
    if split == "train":
        explanatory_dir = os.path.join(out, "reason_seg", "ReasonSeg", "explanatory")
        os.makedirs(explanatory_dir, exist_ok=True)
        with open(os.path.join(explanatory_dir, "train.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps([e for _, e in written]))
    return [path for path, _ in written]


def make_synthetic(
    out: str,
    num_train: int,
    num_val: int,
    num_test: int,
    *,
    seed: int = 0,
    cfg: SyntheticConfig | None = None,
    processes: int = 1,
) -> dict[str, int]:
    """Write the three splits and ``<out>/reason_seg/ReasonSeg/synthetic_config.json``; returns counts per split."""
    cfg = cfg or SyntheticConfig()
    counts = {}
    for split, num in (("train", num_train), ("val", num_val), ("test", num_test)):
        if num < 0:
            raise ValueError(f"number of {split} items must be >= 0, got {num}")
        counts[split] = len(write_split(out, split, num, cfg, seed, processes)) if num else 0
    meta = {"seed": seed, "counts": counts, "config": asdict(cfg)}
    with open(os.path.join(out, "reason_seg", "ReasonSeg", "synthetic_config.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return counts
