"""Asking a READ model about an image: answer text, one mask per generated ``[SEG]``, and the SasP points.

    >>> predictor = ReadPredictor(model, tokenizer)          # doctest: +SKIP
    >>> predictor.set_image("dog.jpg")                        # encoders run once per image
    >>> pred = predictor.predict("Which animal could guard the house?")
    >>> pred.answer, pred.masks.shape, pred.found

``segment(model, tokenizer, image, query)`` does the same in one call. Prompts use the conversation template given
(llava_v1 by default, the template of training and evaluation; docs/reference.md#conversation-template).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from read.batch import ReadBatch
from read.constants import IMAGE_TOKEN
from read.data.collate import ReadCollator
from read.data.sample import Query, Sample, empty_masks, single_turn
from read.data.transforms import PreprocessedImage, load_image
from read.errors import UserError
from read.model.read_model import ReadModel
from read.tokenizer import ReadTokenizer

logger = logging.getLogger(__name__)


class PromptTooLongError(UserError, ValueError):
    """The question does not fit the language model's context together with the image and the template."""


class QueryError(UserError, ValueError):
    """A question that cannot be asked (empty, or containing the image placeholder)."""


@dataclass
class Prediction:
    """The model's reply to one query.

    Attributes:
        answer: generated text ("[SEG]" kept visible, special tokens dropped).
        masks: (k, H, W) bool, one per generated ``[SEG]`` (k = 0 when none was generated).
        mask_logits: (k, H, W) float32 logits.
        found: a ``[SEG]`` was generated and its first mask is non-empty (FP-RefCOCO's existence rule).
        point_coords: (k, P, 2) SasP points (x, y) in image pixels; P = 0 without SasP.
        point_labels: (k, P) labels in {1, 0, -1}.
        similarity: (k, N) similarity over the N image tokens (without SasP, the map of the ``[SEG]`` state, which
            prompts nothing).
    """

    answer: str
    masks: np.ndarray
    mask_logits: Tensor
    found: bool
    point_coords: np.ndarray
    point_labels: np.ndarray
    similarity: np.ndarray


@dataclass
class _Encoded:
    """An image with its preprocessed views and both encoder outputs."""

    image: np.ndarray
    views: PreprocessedImage
    features: Tensor
    sam_embeddings: Tensor


class ReadPredictor:
    """Stateful inference: ``set_image`` once, ``predict`` many times (CLIP features and the SAM embedding are
    cached, like ``SamPredictor``).

    Arguments:
        model: a READ model (its device and dtype are used).
        tokenizer: the matching tokenizer.
        conv_type: conversation template name.
        max_new_tokens: generation budget.
        cache_images: how many images keep their encodings (least recently used dropped first); ``set_image``
            with the same pixels as a cached image reuses them. 1 keeps only the current image.
    """

    def __init__(
        self,
        model: ReadModel,
        tokenizer: ReadTokenizer,
        conv_type: str = "llava_v1",
        max_new_tokens: int = 128,
        cache_images: int = 1,
    ) -> None:
        if cache_images < 1:
            raise ValueError(f"cache_images must be >= 1, got {cache_images}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.cache_images = cache_images
        self._cache: OrderedDict[str, _Encoded] = OrderedDict()
        cfg = model.config
        self.collator = ReadCollator.from_config(
            cfg, tokenizer, template=conv_type, padding_side="left", inference=True
        )
        self.image: np.ndarray | None = None
        self.image_path = ""
        self._views: PreprocessedImage | None = None
        self._features: Tensor | None = None
        self._sam_embeddings: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_image(self, image: str | Path | np.ndarray) -> None:
        """Load (path) or take (H, W, 3) uint8 RGB array, preprocess, and cache both image encodings.

        Raises:
            read.data.transforms.ImageLoadError: the file is missing or not a decodable image.
            ValueError: the array is not (H, W, 3) uint8.
        """
        if isinstance(image, (str, Path)):
            array, path = load_image(image), str(image)
        else:
            array, path = np.asarray(image), "<array>"
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ValueError(f"image array must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}")
        key = _pixels_key(array)
        entry = self._cache.pop(key, None)
        if entry is None:
            views = self.collator.images(array)
            dtype = next(self.model.llava.parameters()).dtype
            with torch.no_grad():
                features = self.model.encode_images(views.pixel_values[None].to(self.device, dtype))
                sam_embeddings = self.model.encode_sam_images(views.sam_image[None].to(self.device, dtype))
            entry = _Encoded(array, views, features, sam_embeddings)
        self._cache[key] = entry  # most recently used last
        while len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        self.image, self.image_path, self._views = entry.image, path, entry.views
        self._features, self._sam_embeddings = entry.features, entry.sam_embeddings

    def reset_image(self) -> None:
        """Forget the current image and every cached encoding."""
        self.image = self._views = self._features = self._sam_embeddings = None
        self.image_path = ""
        self._cache.clear()

    def prompt_length(self, query: str) -> int:
        """Tokens of the prompt row for ``query`` about the current image (image placeholders included), i.e. what
        the language model reads before the first generated token."""
        if self.image is None:
            raise RuntimeError("no image: call set_image(...) first")
        return int(self._batch(query.strip()).input_ids.shape[1])

    def _batch(self, query: str) -> ReadBatch:
        assert self.image is not None
        h, w = self.image.shape[:2]
        sample = Sample(
            image=self.image,
            image_path=self.image_path,
            queries=[Query(messages=single_turn(f"{IMAGE_TOKEN}\n{query}", None), masks=empty_masks(h, w))],
            dataset="inference",
        )
        return self.collator([sample])

    def predict(self, query: str) -> Prediction:
        """Answer ``query`` about the current image.

        The prompt (template, image tokens and question) must leave room in the language model's context
        (``model.text.max_position_embeddings``) for at least one new token; when it leaves less than
        ``max_new_tokens``, the answer is limited to what fits, with a warning.

        Raises:
            RuntimeError: no image was set.
            QueryError: the query is empty or contains ``<image>``.
            PromptTooLongError: the question is too long for the model's context.
        """
        if self.image is None:
            raise RuntimeError("no image: call set_image(...) first")
        query = query.strip()
        if not query:
            raise QueryError("the query is empty: ask something about the image")
        if IMAGE_TOKEN in query:
            raise QueryError(f"the query must not contain {IMAGE_TOKEN!r}; the image is inserted automatically")
        batch = self._batch(query).to(self.device)
        max_new_tokens = self._generation_budget(query, int(batch.input_ids.shape[1]))
        with torch.no_grad():
            new_tokens, out = self.model.generate(
                batch,
                max_new_tokens=max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                image_features=self._features,
                sam_embeddings=self._sam_embeddings,
            )
        answer = self.tokenizer.decode(new_tokens[0].tolist(), skip_special_tokens=True).strip()
        logits = out.pred_masks[0].float().cpu()
        masks = (logits > 0).numpy()
        return Prediction(
            answer=answer,
            masks=masks,
            mask_logits=logits,
            found=bool(masks.shape[0] > 0 and masks[0].any()),
            point_coords=out.point_coords[0].detach().float().cpu().numpy(),
            point_labels=out.point_labels[0].detach().cpu().numpy(),
            similarity=out.similarity[0].detach().float().cpu().numpy(),
        )

    def _generation_budget(self, query: str, prompt_length: int) -> int:
        """``max_new_tokens``, lowered to what the context leaves after a prompt of ``prompt_length`` tokens."""
        context = self.model.config.model.text.max_position_embeddings
        room = context - prompt_length
        if room >= self.max_new_tokens:
            return self.max_new_tokens
        question = len(self.tokenizer.encode(query, add_bos=False))
        if room < 1:
            raise PromptTooLongError(
                f"the question is {question} tokens; with the image and the conversation template the prompt is "
                f"{prompt_length} tokens, more than the model's context of {context} tokens allows; shorten the "
                f"question to at most {max(0, question + room - 1)} tokens"
            )
        logger.warning("the prompt is %d tokens of the model's %d: the answer is limited to %d new tokens instead of "
                       "%d", prompt_length, context, room, self.max_new_tokens)  # fmt: skip
        return room


def _pixels_key(image: np.ndarray) -> str:
    """Identity of an (H, W, 3) uint8 image by its pixels (a SHA-1 of shape and bytes)."""
    digest = hashlib.sha1(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def segment(
    model: ReadModel,
    tokenizer: ReadTokenizer,
    image: str | Path | np.ndarray,
    query: str,
    conv_type: str = "llava_v1",
    max_new_tokens: int = 128,
) -> Prediction:
    """One-shot inference: the answer, one mask per generated ``[SEG]``, and whether a target was found."""
    predictor = ReadPredictor(model, tokenizer, conv_type=conv_type, max_new_tokens=max_new_tokens)
    predictor.set_image(image)
    return predictor.predict(query)
