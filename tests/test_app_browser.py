"""The demo page end to end in a real browser: ``app.py`` serves a tiny saved model on a free port of 127.0.0.1 and
headless Chromium (the system's, through Playwright) uploads images, asks questions and reads what the page shows,
which must be what the library computes for the same image and question.

Needs Chromium (Debian's ``chromium``; ``scripts/test.sh`` installs it when run as root). Without it the test fails
and says how to install it; ``READ_SKIP_BROWSER_TEST=1`` skips it on purpose.
"""

from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np
import pytest

from app_utils import seg_model
from fixtures import random_image
from read.app.browser import (
    BrowserNotFound,
    ask,
    clear_image,
    find_chromium,
    open_page,
    read_page,
    serve,
    set_slider,
    upload_image,
)
from read.app.page import IDS
from read.app.render import similarity_panels
from read.inference import segment
from read.model import from_pretrained, save_pretrained
from read.tokenizer import ReadTokenizer

H, W = 120, 160
NEW_TOKENS = 3
QUESTION = "Which shape is left of the blue circle?"


@pytest.fixture(scope="module")
def chromium():
    if os.environ.get("READ_SKIP_BROWSER_TEST") == "1":
        pytest.skip("READ_SKIP_BROWSER_TEST=1: the browser test was turned off on purpose")
    try:
        return find_chromium()
    except BrowserNotFound as e:
        pytest.fail(f"the browser test needs Chromium: {e}", pytrace=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("app")
    save_pretrained(seg_model(tiny_tokenizer), root / "model", tiny_tokenizer)
    image = random_image(H, W, seed=3)
    cv2.imwrite(str(root / "scene.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    examples = root / "examples"
    examples.mkdir()
    cv2.imwrite(str(examples / "ex1.png"), cv2.cvtColor(random_image(64, 96, seed=4), cv2.COLOR_RGB2BGR))
    (examples / "ex1.json").write_text('{"text": ["What is in the top left corner?"], "is_sentence": true}')
    (root / "broken.png").write_bytes(b"these bytes are not an image")
    return root


@pytest.fixture(scope="module")
def reference(files):
    """The model as app.py loads it, for the expected answers."""
    return from_pretrained(files / "model"), ReadTokenizer.from_pretrained(files / "model")


@pytest.fixture(scope="module")
def page(chromium, files):
    args = [
        "--model",
        str(files / "model"),
        "--max_new_tokens",
        str(NEW_TOKENS),
        "--examples",
        str(files / "examples"),
        "--max_question_chars",
        "300",
    ]
    with serve(args, log=files / "server.log") as url, open_page(url) as page:
        yield page


def _fetch_png(page, url: str) -> np.ndarray:
    response = page.request.get(url)
    assert response.ok, url
    return cv2.imdecode(np.frombuffer(response.body(), np.uint8), cv2.IMREAD_UNCHANGED)


def _image_src(page, key: str) -> str:
    return page.eval_on_selector(f"#{IDS[key]} img", "i => i.src")


def test_page_answers_as_the_library_does(page, files, reference, tmp_path_factory):
    model, tokenizer = reference
    image = cv2.cvtColor(cv2.imread(str(files / "scene.png")), cv2.COLOR_BGR2RGB)
    want = segment(model, tokenizer, image, QUESTION, max_new_tokens=NEW_TOKENS)
    assert want.answer == "[SEG] [SEG] [SEG]" and want.masks.any()

    upload_image(page, files / "scene.png")
    seconds = ask(page, QUESTION)
    shown = read_page(page)
    assert shown.answer == want.answer
    assert re.fullmatch(r"Found 3 masks \(red, blue, yellow\) \(\d+\.\d\d s\)\.", shown.status), shown.status
    assert shown.overlay_size == (W, H)
    assert shown.similarity_size == (3 * W + 2 * 4, H)
    assert len(shown.mask_links) == 3
    for j, link in enumerate(shown.mask_links):
        assert link.endswith(f"scene_mask_{j + 1}.png")
        np.testing.assert_array_equal(_fetch_png(page, link), want.masks[j].astype(np.uint8) * 255)
    shot = tmp_path_factory.mktemp("screenshot") / "app_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert cv2.imread(str(shot)).shape[1] == 1400
    print(f"\nbrowser test: answered in {seconds:.2f} s; screenshot {shot}")


def test_empty_question_is_an_error_in_the_page(page, files):
    upload_image(page, files / "scene.png")
    ask(page, "")
    shown = read_page(page)
    assert shown.status == "error: the question is empty: type a question about the image"
    assert shown.answer == "" and shown.overlay_size is None and shown.mask_links == []


def test_too_long_question_is_an_error_in_the_page(page, files):
    ask(page, "where " * 60)
    assert read_page(page).status == "error: the question is too long (359 characters, at most 300): shorten it"


def test_sasp_controls_reach_the_model(page, files, reference):
    model, tokenizer = reference
    image = cv2.cvtColor(cv2.imread(str(files / "scene.png")), cv2.COLOR_BGR2RGB)
    set_slider(page, "num_points", 7)
    set_slider(page, "down_sample", 1)
    upload_image(page, files / "scene.png")
    ask(page, QUESTION)
    model.point_prompter.cfg = dataclasses.replace(model.point_prompter.cfg, num_points=7, down_sample=1)
    want = segment(model, tokenizer, image, QUESTION, max_new_tokens=NEW_TOKENS)
    assert want.point_coords.shape == (3, 7, 2)
    shown = _fetch_png(page, _image_src(page, "similarity"))
    np.testing.assert_array_equal(shown, cv2.cvtColor(similarity_panels(image, want, 32), cv2.COLOR_RGB2BGR))

    page.locator(f"#{IDS['sasp_enabled']} input[type=checkbox]").uncheck()
    ask(page, QUESTION)
    state = read_page(page)
    assert state.similarity_size is None and state.overlay_size == (W, H) and state.answer == want.answer


def test_unreadable_image_is_an_error_in_the_page(page, files):
    clear_image(page)
    ask(page, QUESTION)
    assert read_page(page).status == "error: no image: upload one or pick an example"
    upload_image(page, files / "broken.png")
    ask(page, QUESTION)
    shown = read_page(page)
    assert shown.status == (
        "error: cannot read the image broken.png: it is not an image file that OpenCV or PIL "
        "can decode; upload a JPEG or PNG"
    )
    assert shown.answer == "" and shown.mask_links == []


def test_example_fills_image_and_question(page):
    question = "What is in the top left corner? Please output segmentation mask."  # READ's evaluation wording
    page.get_by_text("What is in the top left corner?").first.click()  # the table shortens long questions
    page.wait_for_function(
        "([box, q]) => document.querySelector(box).value === q", arg=[f"#{IDS['question']} textarea", question]
    )
    ask(page, question)
    shown = read_page(page)
    assert shown.answer == "[SEG] [SEG] [SEG]" and shown.overlay_size == (96, 64)
    assert shown.mask_links[0].endswith("ex1_mask_1.png")
