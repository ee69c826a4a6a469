"""read.data.scene_text: captions and question/answer turns generated from scene records."""

from __future__ import annotations

import numpy as np

from read.data.scene_text import QUESTION_KINDS, caption, instruction_turns, place_phrase, scene_questions
from read.data.synthetic import SceneObject, SyntheticConfig, region_name

SIZE = 120


def obj(color: str, shape: str, cx: float, cy: float, radius: float = 10.0) -> SceneObject:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    y0, x0 = int(cy - radius), int(cx - radius)
    mask[y0 : y0 + int(2 * radius), x0 : x0 + int(2 * radius)] = 1
    o = SceneObject(color, shape, cx, cy, radius, mask)
    o.visible = mask
    return o


def scene() -> list[SceneObject]:
    # a red circle top left, an orange square in the centre, a blue circle bottom right
    return [obj("red", "circle", 20, 20), obj("orange", "square", 60, 60, 14), obj("blue", "circle", 100, 100)]


def test_regions_and_places():
    assert region_name(20, 20, SIZE) == "top left" and region_name(60, 60, SIZE) == "centre"
    assert region_name(100, 60, SIZE) == "middle right" and region_name(60, 119.9, SIZE) == "bottom centre"
    assert place_phrase(scene()[1], SIZE) == "in the centre" and place_phrase(scene()[2], SIZE) == "at the bottom right"


def test_caption_lists_every_object_in_reading_order():
    objs = scene()
    assert caption(objs, SIZE) == ("There are three shapes: a red circle at the top left, an orange square in the "
                                   "centre and a blue circle at the bottom right.")  # fmt: skip
    assert caption(objs[::-1], SIZE) == caption(objs, SIZE)
    assert caption(objs[:1], SIZE) == "There is one shape: a red circle at the top left."


def test_questions_have_the_right_answers():
    cfg = SyntheticConfig(image_size=SIZE, colors=("red", "blue", "orange"), shapes=("circle", "square"))
    q = scene_questions(scene(), cfg, np.random.default_rng(0))
    assert set(q) == set(QUESTION_KINDS)
    assert q["colour"] == [(q["colour"][0][0], "The square is orange.")]  # the only unique shape
    assert "square" in q["colour"][0][0]
    assert sorted(a for _, a in q["shape"]) == ["The blue object is a circle.", "The orange object is a square.",
                                                "The red object is a circle."]  # fmt: skip
    assert [a for _, a in q["where"]] == ["The red circle is at the top left.", "The orange square is in the centre.",
                                          "The blue circle is at the bottom right."]  # fmt: skip
    assert sorted(a for _, a in q["what_at"]) == ["A blue circle.", "A red circle.", "An orange square."]
    assert [a for _, a in q["count"]] == [
        "There are three shapes.",
        "There is one red shape.",
        "There are two circles.",
    ]
    assert q["exists"] == [("Is there a blue circle in the image?", "Yes, at the bottom right."),
                           ("Is there a blue square in the image?", "No, there is no blue square.")]  # fmt: skip
    # reasoning sentences are answered with the target's colour, shape and place
    refer = dict(q["refer"])
    assert len(refer) == 11
    assert refer["Which shape is to the right of the square?"] == "The blue circle at the bottom right."
    assert refer["What is the leftmost shape in the picture?"] == "The red circle at the top left."
    assert refer["Find the shape that takes up the most space."] == "The orange square in the centre."
    assert refer["There are two circles in the image. Which one is red?"] == "The red circle at the top left."


def test_count_questions_include_zero():
    cfg = SyntheticConfig(image_size=SIZE, colors=("green",), shapes=("star",), holdout=())
    q = scene_questions(scene(), cfg, np.random.default_rng(1))
    assert ("How many green shapes are there?", "There are no green shapes.") in q["count"]
    assert ("How many stars are there?", "There are no stars.") in q["count"]


def test_instruction_turns_are_distinct_and_respect_weights():
    cfg = SyntheticConfig(image_size=SIZE)
    turns = instruction_turns(scene(), cfg, np.random.default_rng(3), num_turns=5)
    assert len(turns) == 5 and len(set(turns)) == 5
    only_counts = instruction_turns(scene(), cfg, np.random.default_rng(3), 10, {k: 0.0 for k in QUESTION_KINDS}
                                    | {"count": 1.0})  # fmt: skip
    assert len(only_counts) == 3 and all(q.startswith("How many") for q, _ in only_counts)
    again = instruction_turns(scene(), cfg, np.random.default_rng(3), num_turns=5)
    assert again == turns
