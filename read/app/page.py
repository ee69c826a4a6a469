"""The demo's web page (Gradio): an image and a question in, the answer, the masks, the similarity maps with the
SasP points and the mask files out.

Every problem a user can cause (no image, an unreadable file, an empty or too long question, SasP settings that do
not go together) is answered in the page's status line; anything else is logged on the server with its traceback
and the page says only that the server failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import gradio as gr

from read.app.discovery import Example
from read.app.render import COLOUR_NAMES
from read.app.service import DemoInputError, DemoService, SaspSettings

logger = logging.getLogger("read.app")

# Element ids the browser test and the CSS rely on.
IDS = {
    "image": "read-image",
    "question": "read-question",
    "ask": "read-ask",
    "status": "read-status",
    "answer": "read-answer",
    "overlay": "read-overlay",
    "similarity": "read-similarity",
    "masks": "read-masks",
    "sasp_enabled": "read-sasp-enabled",
    "num_points": "read-num-points",
    "t_pos": "read-t-pos",
    "t_neg": "read-t-neg",
    "down_sample": "read-down-sample",
}
# The status line while a question is being answered; the outputs of the previous answer are cleared meanwhile, so
# that no picture of an earlier question is taken for the answer to this one.
PENDING = "Answering ..."
CLEAR_JS = "() => [" + json.dumps(PENDING) + ", '', null, null, null]"
# Run in the browser after each answer is on the page: a count that automated clients (the browser test,
# scripts/bench_app.py) wait on.
COUNT_ANSWERS_JS = "() => { window.readAnswered = (window.readAnswered || 0) + 1; }"
# Pictures fill their boxes whatever their size (small images are enlarged without smoothing); the files served
# keep the image's own size.
CSS = """
#read-image img, #read-overlay img, #read-similarity img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
#read-status { font-size: 1.1em; }
"""
# System fonts only: the page must not fetch fonts from the internet.
_THEME_FONT = ("ui-sans-serif", "system-ui", "sans-serif")
_THEME_MONO = ("ui-monospace", "monospace")


def uploaded_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` input that hands the handler the uploaded file's path without decoding it, so that an
    unreadable upload reaches :meth:`DemoService.ask` and is reported in the page (``gr.Image`` itself would fail
    before the handler runs). The instance's ``preprocess`` is replaced rather than subclassed: Gradio writes a
    ``.pyi`` file next to the module of every component subclass."""
    image = gr.Image(type="filepath", **kwargs)
    decode = image.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return decode(payload)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def build_page(
    service: DemoService, examples: Sequence[Example] = (), *, model_name: str = "", title: str = "READ"
) -> gr.Blocks:
    """The page for ``service``; ``examples`` fill the image and the question when clicked.

    Returns:
        the ``gr.Blocks``; call ``.queue(...)`` and ``.launch(...)`` on it (see ``app.py``).
    """
    s = service.default_settings
    side = int(service.num_image_tokens**0.5)
    max_points = max(side * side, s.num_points)  # SasP uses at most one point per cell of the map

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(
            f"# {title}: reasoning segmentation\n"
            "Upload an image (or pick an example), ask a question about it, and the model answers; each `[SEG]` "
            "in the answer becomes a mask." + (f"\n\nModel: `{model_name}`" if model_name else "")
        )
        with gr.Row():
            with gr.Column():
                image = uploaded_image(sources=["upload", "clipboard"], label="Image", height=320, elem_id=IDS["image"])
                question = gr.Textbox(
                    lines=2, label="Question", placeholder="Which object ...?", elem_id=IDS["question"]
                )
                ask = gr.Button("Ask", variant="primary", elem_id=IDS["ask"])
                with gr.Accordion("SasP settings (similarity as points)", open=True):
                    enabled = gr.Checkbox(
                        value=s.enabled,
                        label="SasP on (off: SAM gets the [SEG] embedding only, as LISA)",
                        elem_id=IDS["sasp_enabled"],
                    )
                    num_points = gr.Slider(
                        1,
                        max_points,
                        value=s.num_points,
                        step=1,
                        label="number of points",
                        elem_id=IDS["num_points"],
                    )
                    t_pos = gr.Slider(
                        0.0, 1.0, value=s.t_pos, step=0.01, label="positive threshold (t_pos)", elem_id=IDS["t_pos"]
                    )
                    t_neg = gr.Slider(
                        0.0, 1.0, value=s.t_neg, step=0.01, label="negative threshold (t_neg)", elem_id=IDS["t_neg"]
                    )
                    down_sample = gr.Slider(
                        1,
                        max(side, 1),
                        value=s.down_sample,
                        step=1,
                        label="down-sampling of the point grid",
                        elem_id=IDS["down_sample"],
                    )
                if examples:
                    gr.Examples(
                        examples=[[str(e.image), e.question] for e in examples],
                        inputs=[image, question],
                        label="Examples",
                        examples_per_page=12,
                    )
            with gr.Column():
                status = gr.Markdown("Ask a question.", elem_id=IDS["status"])
                answer = gr.Textbox(label="Answer", interactive=False, elem_id=IDS["answer"])
                overlay = gr.Image(
                    label="Masks (one colour per [SEG]: " + ", ".join(COLOUR_NAMES) + ")",
                    format="png",
                    interactive=False,
                    height=320,
                    elem_id=IDS["overlay"],
                )
                similarity = gr.Image(
                    label="[SEG] similarity and SasP points (green positive, red negative, grey neutral)",
                    format="png",
                    interactive=False,
                    height=320,
                    elem_id=IDS["similarity"],
                )
                masks = gr.File(label="Mask PNG (one per [SEG])", file_count="multiple", elem_id=IDS["masks"])

        def respond(
            image_path: str | None, text: str, on: bool, points: float, pos: float, neg: float, down: float
        ) -> tuple[str, str, Any, Any, Any]:
            settings = SaspSettings(bool(on), int(points), float(pos), float(neg), int(down))
            try:
                result = service.ask(image_path, text, settings)
            except DemoInputError as e:
                return f"**error:** {e}", "", None, None, None
            except Exception:  # a bug: the traceback goes to the server log, never to the page
                logger.exception("the demo failed to answer")
                return "**error:** the server failed to answer this question (see its log)", "", None, None, None
            files = [str(p) for p in result.mask_files] or None
            return result.status, result.answer, result.overlay, result.similarity, files

        inputs = [image, question, enabled, num_points, t_pos, t_neg, down_sample]
        outputs = [status, answer, overlay, similarity, masks]
        for trigger in (ask.click, question.submit):
            trigger(None, None, outputs, js=CLEAR_JS, queue=False, show_progress="hidden").then(
                respond, inputs, outputs, concurrency_limit=1, show_progress="minimal"
            ).then(None, None, None, js=COUNT_ANSWERS_JS)
    return page


def theme() -> gr.themes.Base:
    """Gradio's default theme with system fonts (nothing is fetched from the internet)."""
    return gr.themes.Default(font=list(_THEME_FONT), font_mono=list(_THEME_MONO))
