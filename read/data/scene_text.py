"""Text about synthetic scenes for pre-training a tiny LLaVA: captions that say what is where (the alignment
stage) and question/answer turns about colours, shapes, positions, relations, counts and existence (the
instruction stage). Everything is generated from the scene records of :mod:`read.data.synthetic`; nothing here
uses masks or ``[SEG]``.

Positions are the cells of a 3 x 3 grid (:func:`read.data.synthetic.region_name`), written as "at the top left",
"in the centre", ...; objects are named by colour and shape ("a red circle").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from read.data.synthetic import _PLURAL, SceneObject, SyntheticConfig, referring_queries, region_name

__all__ = [
    "CAPTION_PROMPTS",
    "QUESTION_KINDS",
    "caption",
    "instruction_turns",
    "place_phrase",
    "scene_questions",
]

CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "What is in this picture?",
    "List the shapes in the image and where they are.",
    "Give a short description of the scene.",
)
QUESTION_KINDS = ("colour", "shape", "where", "what_at", "refer", "count", "exists")
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def place_phrase(obj: SceneObject, image_size: int) -> str:
    """Where an object is: "at the top left", "in the centre", ..."""
    region = region_name(obj.cx, obj.cy, image_size)
    return "in the centre" if region == "centre" else f"at the {region}"


def _a(word: str) -> str:
    """The indefinite article for ``word``."""
    return "an" if word[:1] in "aeiou" else "a"


def _number(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _reading_order(objects: Sequence[SceneObject], image_size: int) -> list[int]:
    """Object indices top to bottom by grid row, then left to right."""
    return sorted(range(len(objects)), key=lambda i: (min(2, int(3 * objects[i].cy / image_size)), objects[i].cx))


def caption(objects: Sequence[SceneObject], image_size: int) -> str:
    """A caption listing every object and its place in reading order, e.g. "There are three shapes: a red circle at
    the top left, a blue square in the centre and a green star at the bottom right." """
    parts = [f"{_a(objects[i].color)} {objects[i].color} {objects[i].shape} {place_phrase(objects[i], image_size)}"
             for i in _reading_order(objects, image_size)]  # fmt: skip
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if len(objects) == 1:
        return f"There is one shape: {listed}."
    return f"There are {_number(len(objects))} shapes: {listed}."


def scene_questions(
    objects: Sequence[SceneObject], cfg: SyntheticConfig, rng: np.random.Generator
) -> dict[str, list[tuple[str, str]]]:
    """Every question this module can ask about a scene, by kind, each as (question, answer); one phrasing is drawn
    with ``rng`` where there are several.

    Kinds: "colour" (of a shape that is unique), "shape" (of a colour that is unique), "where" (a uniquely named
    object's place), "what_at" (the only object in a grid cell), "refer" (the generator's reasoning sentences:
    relations, comparisons, superlatives, counting; answered with the target's colour, shape and place), "count"
    (all shapes, a colour, a shape; zero included), "exists" (a colour x shape present or absent).
    """
    size = cfg.image_size
    objs = list(objects)
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in QUESTION_KINDS}
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    for o in objs:
        place = place_phrase(o, size)
        if shapes.count(o.shape) == 1:
            out["colour"].append((pick([f"What colour is the {o.shape}?", f"Which colour does the {o.shape} have?"]),
                                  f"The {o.shape} is {o.color}."))  # fmt: skip
        if colors.count(o.color) == 1:
            out["shape"].append((pick([f"What shape is the {o.color} object?", f"Which shape is {o.color}?"]),
                                 f"The {o.color} object is {_a(o.shape)} {o.shape}."))  # fmt: skip
        names = []
        if sum(x.color == o.color and x.shape == o.shape for x in objs) == 1:
            names.append(f"{o.color} {o.shape}")
        if shapes.count(o.shape) == 1:
            names.append(o.shape)
        if names:
            name = pick(names)
            out["where"].append((pick([f"Where is the {name}?", f"Where is the {name} in the image?"]),
                                 f"The {name} is {place}."))  # fmt: skip
    cells: dict[str, list[SceneObject]] = {}
    for o in objs:
        cells.setdefault(place_phrase(o, size), []).append(o)
    for place, members in cells.items():
        if len(members) == 1:
            o = members[0]
            out["what_at"].append((pick([f"What is {place} of the image?", f"Which shape is {place}?"]),
                                   f"{_a(o.color).capitalize()} {o.color} {o.shape}."))  # fmt: skip
    for kind, target, texts in referring_queries(objs, cfg):
        if kind == "short":
            continue
        o = objs[target]
        out["refer"].append((pick(texts), f"The {o.color} {o.shape} {place_phrase(o, size)}."))
    n = len(objs)
    out["count"].append((pick(["How many shapes are there?", "How many objects are in the image?"]),
                         f"There {'is' if n == 1 else 'are'} {_number(n)} shape{'' if n == 1 else 's'}."))  # fmt: skip
    color = pick(cfg.colors)
    k = colors.count(color)
    verb, plural = ("is", "") if k == 1 else ("are", "s")
    out["count"].append((f"How many {color} shapes are there?", f"There {verb} {_number(k)} {color} shape{plural}."))
    shape = pick(cfg.shapes)
    k = shapes.count(shape)
    verb, noun = ("is", shape) if k == 1 else ("are", _PLURAL[shape])
    out["count"].append((f"How many {_PLURAL[shape]} are there?", f"There {verb} {_number(k)} {noun}."))
    o = objs[int(rng.integers(len(objs)))]
    out["exists"].append(
        (f"Is there {_a(o.color)} {o.color} {o.shape} in the image?", f"Yes, {place_phrase(o, size)}.")
    )
    absent = [(c, s) for c in cfg.colors for s in cfg.shapes if (c, s) not in {(x.color, x.shape) for x in objs}]
    if absent:
        c, s = absent[int(rng.integers(len(absent)))]
        out["exists"].append((f"Is there {_a(c)} {c} {s} in the image?", f"No, there is no {c} {s}."))
    return out


def instruction_turns(
    objects: Sequence[SceneObject],
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    num_turns: int,
    kind_weights: dict[str, float] | None = None,
) -> list[tuple[str, str]]:
    """``num_turns`` (question, answer) pairs about one scene (fewer if the scene offers fewer), drawn without
    repetition: a kind by ``kind_weights`` (default: equal) among the kinds the scene has, then a question of it."""
    pool = {k: v for k, v in scene_questions(objects, cfg, rng).items() if v}
    weights = kind_weights or {}
    turns: list[tuple[str, str]] = []
    while pool and len(turns) < num_turns:
        kinds = sorted(pool)
        w = np.asarray([max(0.0, float(weights.get(k, 1.0))) for k in kinds])
        if w.sum() <= 0:
            break
        kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
        options = pool[kind]
        turns.append(options.pop(int(rng.integers(len(options)))))
        if not options:
            del pool[kind]
    return turns
