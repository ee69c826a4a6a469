"""What the demo page asks of the model: one question about one image, with the SasP settings of the page, answered
as text, pictures and mask files, or refused with one line that says what to change.

``DemoService`` owns one model. Requests are served one at a time (a lock; the page also queues them), image
encodings are cached per image (by pixels), and the SasP settings of a request apply to that request only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from read.app.render import colour_name, masks_overlay, similarity_panels, write_mask_pngs
from read.data.transforms import ImageLoadError
from read.errors import UserError
from read.inference import Prediction, ReadPredictor
from read.model.read_model import ReadModel
from read.model.sasp import SasP
from read.tokenizer import ReadTokenizer


class DemoInputError(UserError):
    """A request the page answers with an error line: no or unreadable image, empty or too long question, SasP
    settings that do not go together."""


@dataclass(frozen=True)
class SaspSettings:
    """The SasP controls of the page (see :class:`read.model.sasp.SasP`); ``enabled=False`` prompts SAM with the
    ``[SEG]`` embedding alone, as the LISA baseline does."""

    enabled: bool
    num_points: int
    t_pos: float
    t_neg: float
    down_sample: int

    @classmethod
    def of_model(cls, model: ReadModel) -> SaspSettings:
        """The settings the model was loaded with (its SasP module, or its config when SasP is off)."""
        prompter = model.point_prompter
        source = prompter.cfg if prompter is not None else model.config.sasp
        return cls(
            enabled=prompter is not None,
            num_points=int(source.num_points),
            t_pos=float(source.t_pos),
            t_neg=float(source.t_neg),
            down_sample=int(source.down_sample),
        )

    def check(self, num_image_tokens: int) -> None:
        """Raise :class:`DemoInputError` unless SasP can run with these settings on ``num_image_tokens`` tokens."""
        if not self.enabled:
            return
        if self.num_points < 1:
            raise DemoInputError(f"SasP: the number of points must be at least 1, got {self.num_points}")
        if not (math.isfinite(self.t_pos) and math.isfinite(self.t_neg) and self.t_neg < self.t_pos):
            raise DemoInputError(
                f"SasP: the negative threshold ({self.t_neg:g}) must be below the positive one ({self.t_pos:g})"
            )
        side = math.isqrt(num_image_tokens)
        if not 1 <= self.down_sample <= side:
            raise DemoInputError(
                f"SasP: down-sampling by {self.down_sample} leaves no cell of the {side}x{side} similarity map; "
                f"choose 1 to {side}"
            )


@dataclass
class DemoAnswer:
    """What the page shows for one question.

    Attributes:
        answer: the generated text, ``[SEG]`` kept.
        status: one line: how many masks in which colours and the time taken, or why nothing was found.
        found: at least one mask is non-empty.
        overlay: (H, W, 3) uint8, the image with each ``[SEG]``'s mask in its colour (the image alone if none).
        similarity: (H, k * W + bars, 3) uint8 similarity maps with the SasP points, or None (no ``[SEG]``, or
            SasP off).
        mask_files: one PNG per ``[SEG]`` (255 inside the mask).
        seconds: time spent on the request (image encoding, when not cached, and the answer).
        prediction: the raw prediction.
    """

    answer: str
    status: str
    found: bool
    overlay: np.ndarray
    similarity: np.ndarray | None
    mask_files: list[Path]
    seconds: float
    prediction: Prediction


class DemoService:
    """One model behind the demo page.

    Arguments:
        model: a READ model, already on its device and in eval mode.
        tokenizer: its tokenizer.
        conv_type: conversation template name.
        max_new_tokens: generation budget per answer.
        max_question_chars: longer questions are refused before they are tokenised.
        cache_images: images whose encodings are kept (least recently used dropped first).
        keep_answers: how many answers keep their mask files on disk (older ones are deleted).
    """

    def __init__(
        self,
        model: ReadModel,
        tokenizer: ReadTokenizer,
        *,
        conv_type: str = "llava_v1",
        max_new_tokens: int = 128,
        max_question_chars: int = 1000,
        cache_images: int = 8,
        keep_answers: int = 64,
    ) -> None:
        self.model = model
        self.predictor = ReadPredictor(
            model, tokenizer, conv_type=conv_type, max_new_tokens=max_new_tokens, cache_images=cache_images
        )
        self.max_question_chars = max_question_chars
        self.max_positions = model.config.model.text.max_position_embeddings
        self.clip_size = model.config.model.vision.image_size
        self.num_image_tokens = model.config.model.vision.num_patches
        self.default_settings = SaspSettings.of_model(model)
        self.keep_answers = keep_answers
        self._lock = threading.Lock()
        self._workdir = tempfile.TemporaryDirectory(prefix="read_app_")
        self._answers: list[Path] = []
        self._count = 0

    @property
    def max_new_tokens(self) -> int:
        return self.predictor.max_new_tokens

    def ask(self, image_path: str | Path | None, question: str | None, settings: SaspSettings) -> DemoAnswer:
        """Answer ``question`` about the image file ``image_path``.

        Raises:
            DemoInputError: no image, an unreadable image, an empty or too long question, bad SasP settings.
        """
        question = (question or "").strip()
        if image_path is None or str(image_path) == "":
            raise DemoInputError("no image: upload one or pick an example")
        if not question:
            raise DemoInputError("the question is empty: type a question about the image")
        if len(question) > self.max_question_chars:
            raise DemoInputError(
                f"the question is too long ({len(question)} characters, at most {self.max_question_chars}): shorten it"
            )
        settings.check(self.num_image_tokens)
        name = Path(image_path).name
        with self._lock:
            start = time.perf_counter()
            try:
                self.predictor.set_image(image_path)
            except ImageLoadError as e:
                raise DemoInputError(
                    f"cannot read the image {name}: it is not an image file that OpenCV or PIL can decode; "
                    "upload a JPEG or PNG"
                ) from e
            prompt = self.predictor.prompt_length(question)
            if prompt + self.max_new_tokens > self.max_positions:
                raise DemoInputError(
                    f"the question is too long: the prompt takes {prompt} tokens and the answer up to "
                    f"{self.max_new_tokens}, but the model reads at most {self.max_positions}; shorten it"
                )
            try:
                with _sasp_settings(self.model, settings, self.clip_size) as prompter:
                    pred = self.predictor.predict(question)
            except ValueError as e:  # e.g. the question contains the image placeholder
                raise DemoInputError(str(e)) from e
            image = self.predictor.image
            assert image is not None
            overlay = masks_overlay(image, pred.masks)
            geometry = prompter.cfg.geometry if prompter is not None else self.model.config.sasp.geometry
            similarity = similarity_panels(image, pred, self.clip_size, geometry)
            mask_files = write_mask_pngs(pred.masks, self._answer_dir(), Path(image_path).stem or "image")
            seconds = time.perf_counter() - start
        found = bool(pred.masks.shape[0] and pred.masks.any())
        return DemoAnswer(
            answer=pred.answer,
            status=_status(pred.masks, seconds),
            found=found,
            overlay=overlay,
            similarity=similarity,
            mask_files=mask_files,
            seconds=seconds,
            prediction=pred,
        )

    def close(self) -> None:
        """Delete the mask files written so far."""
        self._workdir.cleanup()

    def _answer_dir(self) -> Path:
        """A fresh folder for one answer's files; the oldest beyond ``keep_answers`` are deleted."""
        self._count += 1
        d = Path(self._workdir.name) / f"answer_{self._count:06d}"
        d.mkdir(parents=True)
        self._answers.append(d)
        while len(self._answers) > self.keep_answers:
            shutil.rmtree(self._answers.pop(0), ignore_errors=True)
        return d


def _status(masks: np.ndarray, seconds: float) -> str:
    """The page's one-line summary of an answer."""
    k = masks.shape[0]
    took = f"({seconds:.2f} s)"
    if k == 0:
        return f"Found nothing: the answer has no [SEG], so there is no mask {took}."
    empty = [j for j in range(k) if not masks[j].any()]
    if len(empty) == k:
        what = "the mask is empty" if k == 1 else f"all {k} masks are empty"
        return f"Found nothing: {what} {took}."
    colours = ", ".join(colour_name(j) for j in range(k))
    line = f"Found {k} mask{'s' if k > 1 else ''} ({colours})"
    if empty:
        line += "; empty: " + ", ".join(f"mask {j + 1}" for j in empty)
    return f"{line} {took}."


@contextlib.contextmanager
def _sasp_settings(model: ReadModel, settings: SaspSettings, clip_size: int) -> Iterator[SasP | None]:
    """Run the model with ``settings`` in place of its own SasP module (yielded; None when off), and put its own
    back afterwards."""
    own = model.point_prompter
    prompter: SasP | None = None
    if settings.enabled:
        # A copy keeps the settings the page does not show (crop geometry, DtoC radius); a model trained without
        # SasP still has the sasp section in its config.
        base = own.cfg if own is not None else model.config.sasp
        cfg = dataclasses.replace(
            base,
            num_points=settings.num_points,
            t_pos=settings.t_pos,
            t_neg=settings.t_neg,
            down_sample=settings.down_sample,
        )
        prompter = SasP(cfg, own.clip_size if own is not None else clip_size)
    model.point_prompter = prompter
    try:
        yield prompter
    finally:
        model.point_prompter = own
