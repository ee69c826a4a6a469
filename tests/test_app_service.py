"""The demo's service (answers, pictures, mask files, errors, SasP settings, the encoding cache) and its pictures,
on tiny models; no web server."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from app_utils import seg_model, silent_model
from read.app.render import (
    SEPARATOR,
    mask_colour,
    mask_edge,
    masks_overlay,
    similarity_panels,
    write_mask_pngs,
)
from read.app.service import DemoInputError, DemoService, SaspSettings, _status
from read.inference import segment
from read.viz import mask_overlay, similarity_heatmap

H, W = 40, 56


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    image = np.random.default_rng(0).integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path, image


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return seg_model(tiny_tokenizer)


def _settings(model, **changes):
    s = SaspSettings.of_model(model)
    return SaspSettings(**{**s.__dict__, **changes})


def test_answer_matches_segment_and_draws_every_mask(model, tiny_tokenizer, image_file, tmp_path):
    path, image = image_file
    service = DemoService(model, tiny_tokenizer, max_new_tokens=3)
    got = service.ask(path, "  Where is the red circle?  ", SaspSettings.of_model(model))
    want = segment(model, tiny_tokenizer, image, "Where is the red circle?", max_new_tokens=3)
    assert got.answer == want.answer == "[SEG] [SEG] [SEG]"
    np.testing.assert_array_equal(got.prediction.masks, want.masks)
    assert got.found == bool(want.masks.any())
    # one colour per [SEG], later masks on top, white edges
    expected = image
    for j in range(3):
        expected = mask_overlay(expected, want.masks[j], mask_colour(j))
    edges = np.any([mask_edge(m) for m in want.masks], axis=0)
    expected[edges] = 255
    np.testing.assert_array_equal(got.overlay, expected)
    assert len({mask_colour(j) for j in range(3)}) == 3
    # the similarity maps side by side, with the points
    assert got.similarity.shape == (H, 3 * W + 2 * SEPARATOR, 3)
    np.testing.assert_array_equal(
        got.similarity[:, W + SEPARATOR : 2 * W + SEPARATOR],
        similarity_heatmap(image, want.similarity[1], 32, want.point_coords[1], want.point_labels[1]),
    )
    assert (got.similarity[:, W : W + SEPARATOR] == 255).all()
    # one 0/255 PNG per [SEG], named after the image
    assert [p.name for p in got.mask_files] == ["scene_mask_1.png", "scene_mask_2.png", "scene_mask_3.png"]
    for j, p in enumerate(got.mask_files):
        png = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (H, W)
        np.testing.assert_array_equal(png, want.masks[j].astype(np.uint8) * 255)
    assert got.found and got.status == f"Found 3 masks (red, blue, yellow) ({got.seconds:.2f} s)."
    service.close()
    assert not got.mask_files[0].exists()


def test_found_nothing_without_seg(tiny_tokenizer, image_file):
    path, image = image_file
    model = silent_model(tiny_tokenizer)
    service = DemoService(model, tiny_tokenizer, max_new_tokens=3)
    got = service.ask(path, "Is there a dog?", SaspSettings.of_model(model))
    assert "[SEG]" not in got.answer
    assert got.found is False and got.mask_files == [] and got.similarity is None
    np.testing.assert_array_equal(got.overlay, image)
    assert got.status.startswith("Found nothing: the answer has no [SEG], so there is no mask (")


def test_status_lines():
    on, off = np.ones((2, 2), bool), np.zeros((2, 2), bool)
    none = np.zeros((0, 2, 2), bool)
    assert _status(none, 1.234) == "Found nothing: the answer has no [SEG], so there is no mask (1.23 s)."
    assert _status(off[None], 0.5) == "Found nothing: the mask is empty (0.50 s)."
    assert _status(np.stack([off, off]), 0.5) == "Found nothing: all 2 masks are empty (0.50 s)."
    assert _status(on[None], 0.5) == "Found 1 mask (red) (0.50 s)."
    assert _status(np.stack([on, off, on]), 2) == "Found 3 masks (red, blue, yellow); empty: mask 2 (2.00 s)."


@pytest.mark.parametrize(
    "image, question, message",
    [
        (None, "where?", "no image: upload one or pick an example"),
        ("IMG", "", "the question is empty"),
        ("IMG", "   \n ", "the question is empty"),
        ("IMG", "x" * 101, "the question is too long (101 characters, at most 100)"),
        ("IMG", "where is the <image> here?", "must not contain '<image>'"),
    ],
)
def test_input_errors(model, tiny_tokenizer, image_file, image, question, message):
    service = DemoService(model, tiny_tokenizer, max_new_tokens=3, max_question_chars=100)
    with pytest.raises(DemoInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        service.ask(image_file[0] if image == "IMG" else image, question, SaspSettings.of_model(model))


def test_too_many_tokens_is_refused_before_generation(model, tiny_tokenizer, image_file):
    service = DemoService(model, tiny_tokenizer, max_new_tokens=3, max_question_chars=100_000)
    service.predictor.set_image(image_file[0])
    short = service.predictor.prompt_length("where?")
    question = " ".join(["where"] * 600)
    tokens = service.predictor.prompt_length(question)
    assert tokens > 512 - 3 > short
    with pytest.raises(
        DemoInputError,
        match=f"the prompt takes {tokens} tokens and the answer up to 3, but the model reads at most 512",
    ):
        service.ask(image_file[0], question, SaspSettings.of_model(model))


def test_unreadable_image_is_named(model, tiny_tokenizer, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    service = DemoService(model, tiny_tokenizer, max_new_tokens=3)
    with pytest.raises(DemoInputError, match="cannot read the image holiday.png: it is not an image file"):
        service.ask(bad, "where?", SaspSettings.of_model(model))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"t_pos": 0.3, "t_neg": 0.3}, r"the negative threshold \(0.3\) must be below the positive one \(0.3\)"),
        ({"down_sample": 5}, "down-sampling by 5 leaves no cell of the 4x4 similarity map; choose 1 to 4"),
        ({"num_points": 0}, "the number of points must be at least 1"),
    ],
)
def test_bad_sasp_settings(model, tiny_tokenizer, image_file, changes, message):
    service = DemoService(model, tiny_tokenizer, max_new_tokens=3)
    with pytest.raises(DemoInputError, match=message):
        service.ask(image_file[0], "where?", _settings(model, **changes))
    _settings(model, enabled=False, **changes).check(16)  # ignored while SasP is off


def test_sasp_settings_apply_to_one_request_only(model, tiny_tokenizer, image_file):
    path, image = image_file
    own = model.point_prompter
    service = DemoService(model, tiny_tokenizer, max_new_tokens=1)
    assert service.default_settings == SaspSettings(True, 4, 0.8, 0.2, 2)
    dense = service.ask(path, "where?", _settings(model, num_points=9, down_sample=1, t_pos=0.6))
    assert dense.prediction.point_coords.shape == (1, 9, 2)
    assert model.point_prompter is own and (own.cfg.num_points, own.cfg.t_pos, own.cfg.down_sample) == (4, 0.8, 2)
    # SasP off: the [SEG] embedding alone, as a model built without SasP
    off = service.ask(path, "where?", _settings(model, enabled=False))
    assert off.similarity is None and off.prediction.point_coords.shape == (1, 0, 2)
    model.point_prompter = None
    try:
        want = segment(model, tiny_tokenizer, image, "where?", max_new_tokens=1)
    finally:
        model.point_prompter = own
    np.testing.assert_array_equal(off.prediction.masks, want.masks)

    # restored even when the request fails inside the model
    def boom(*a, **k):
        raise RuntimeError("decoder failure")

    service.predictor.predict = boom
    with pytest.raises(RuntimeError):
        service.ask(path, "where?", _settings(model, enabled=False))
    assert model.point_prompter is own


def test_sasp_can_be_turned_on_for_a_model_trained_without_it(tiny_tokenizer, image_file):
    model = seg_model(tiny_tokenizer, "sasp.enabled=false")
    assert model.point_prompter is None
    service = DemoService(model, tiny_tokenizer, max_new_tokens=1)
    assert service.default_settings.enabled is False
    got = service.ask(image_file[0], "where?", _settings(model, enabled=True, num_points=3))
    assert got.prediction.point_coords.shape == (1, 3, 2) and got.similarity is not None
    assert model.point_prompter is None


def test_encodings_cached_per_image_content(model, tiny_tokenizer, image_file, tmp_path):
    path, _ = image_file
    copy = tmp_path / "same_pixels.png"
    shutil.copy(path, copy)
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), np.full((H, W, 3), 90, np.uint8))
    third = tmp_path / "third.png"
    cv2.imwrite(str(third), np.full((H, W, 3), 30, np.uint8))
    service = DemoService(model, tiny_tokenizer, max_new_tokens=1, cache_images=2)
    calls = []
    encode = model.encode_images
    model.encode_images = lambda *a, **k: calls.append(1) or encode(*a, **k)
    try:
        s = SaspSettings.of_model(model)
        first = service.ask(path, "where?", s)
        again = service.ask(copy, "and now?", s)  # the same pixels under another name
        assert len(calls) == 1
        service.ask(other, "where?", s)
        service.ask(path, "where?", s)
        assert len(calls) == 2  # both still cached
        service.ask(third, "where?", s)  # evicts "other" (least recently used)
        service.ask(path, "where?", s)
        assert len(calls) == 3
        service.ask(other, "where?", s)
        assert len(calls) == 4
    finally:
        model.encode_images = encode
    assert again.mask_files[0].name == "same_pixels_mask_1.png"
    np.testing.assert_array_equal(first.overlay, again.overlay)


def test_old_answer_files_are_deleted(model, tiny_tokenizer, image_file):
    service = DemoService(model, tiny_tokenizer, max_new_tokens=1, keep_answers=2)
    s = SaspSettings.of_model(model)
    files = [service.ask(image_file[0], "where?", s).mask_files[0] for _ in range(3)]
    assert [f.exists() for f in files] == [False, True, True]


def test_render_helpers_exact():
    image = np.zeros((5, 8, 3), np.uint8)
    masks = np.zeros((2, 5, 8), bool)
    masks[0, 0:5, 0:4] = True  # touches the top, bottom and left borders
    masks[1, 1:4, 3:8] = True  # overlaps column 3
    edge = mask_edge(masks[0])
    assert edge.nonzero()[1].tolist() == [3] * 5  # only the side that faces the outside
    out = masks_overlay(image, masks, alpha=1.0)
    assert out[2, 1].tolist() == list(mask_colour(0))  # inside mask 1
    assert out[2, 5].tolist() == list(mask_colour(1))  # inside mask 2
    assert out[0, 3].tolist() == [255, 255, 255] and out[2, 3].tolist() == [255, 255, 255]  # edges
    assert out[1, 4].tolist() == [255, 255, 255] and out[2, 7].tolist() == list(mask_colour(1))
    assert out[0, 5].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(masks_overlay(image, masks[:0]), image)
    assert masks_overlay(image, masks[:0]) is not image
    assert mask_colour(5) == mask_colour(0)


def test_write_mask_pngs_keeps_empty_masks(tmp_path):
    masks = np.zeros((2, 3, 4), bool)
    masks[1, 0, 0] = True
    paths = write_mask_pngs(masks, tmp_path / "d", "x")
    assert [p.name for p in paths] == ["x_mask_1.png", "x_mask_2.png"]
    assert cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED).sum() == 0
    assert cv2.imread(str(paths[1]), cv2.IMREAD_UNCHANGED)[0, 0] == 255


def test_similarity_panels_none_without_maps():
    from read.inference import Prediction

    pred = Prediction(
        "no",
        np.zeros((0, 2, 2), bool),
        torch.zeros(0, 2, 2),
        False,
        np.zeros((0, 0, 2)),
        np.zeros((0, 0)),
        np.zeros((0, 0)),
    )
    assert similarity_panels(np.zeros((2, 2, 3), np.uint8), pred, 32) is None


def test_similarity_maps_use_the_geometry_of_the_points(tiny_tokenizer, tmp_path):
    image = np.random.default_rng(2).integers(0, 255, size=(40, 57, 3), dtype=np.uint8)  # odd crop excess (13)
    path = tmp_path / "odd.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for geometry in ("reference", "clip"):
        model = seg_model(tiny_tokenizer, f"sasp.geometry={geometry}")
        got = DemoService(model, tiny_tokenizer, max_new_tokens=1).ask(path, "where?", SaspSettings.of_model(model))
        pred = got.prediction
        drawn = {
            g: similarity_heatmap(image, pred.similarity[0], 32, pred.point_coords[0], pred.point_labels[0], geometry=g)
            for g in ("reference", "clip")
        }
        assert not np.array_equal(drawn["reference"], drawn["clip"])
        np.testing.assert_array_equal(got.similarity, drawn[geometry])
