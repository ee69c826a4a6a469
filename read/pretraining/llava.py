"""The tiny LLaVA's pre-training on synthetic scenes, with the READ model's own code paths.

* language (the language model's own pre-training, which LLaVA inherits from LLaMA): the same conversations as
  below, with the scene written out as text (its caption) where the image would be, so the language model learns to
  read a scene description and answer questions about it;
* alignment (LLaVA's feature-alignment stage): the image and a caption request ("Describe the image briefly.");
  the answer is the caption (:func:`read.data.scene_text.caption`). With the language model frozen, as in LLaVA,
  the vision side must learn to put into the image tokens what the language model reads in a description;
* instruction tuning: conversations of several question/answer turns about one scene
  (:func:`read.data.scene_text.instruction_turns`), plus a share of caption requests.

Conversations use the ``llava_v1`` template and ``<image>`` expands to ``<im_start><image>...<im_end>``, exactly as
in READ's training, so the fine-tuned model reads its prompts the way it was pre-trained. Only answer tokens are
learned (the labels of :mod:`read.data.text`). No mask and no ``[SEG]`` appear anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from read.batch import ReadBatch
from read.constants import IGNORE_INDEX, IMAGE_TOKEN
from read.data.collate import ReadCollator
from read.data.sample import ASSISTANT, USER, Query, Sample
from read.data.scene_text import CAPTION_PROMPTS, caption, instruction_turns, scene_questions
from read.data.text import encode_conversation, pad_batch
from read.model.read_model import ReadModel
from read.pretraining.config import LlavaStage
from read.pretraining.scenes import STREAMS, SceneStream

logger = logging.getLogger(__name__)

__all__ = ["answer_loss", "conversation_sample", "evaluate_llava", "llava_parameters", "train_llava_stage"]


def llava_parameters(model: ReadModel, groups: list[str]) -> list[torch.nn.Parameter]:
    """The parameters of the named groups ("vision_tower", "projector", "language_model": embeddings, layers, final
    norm and output head); sets ``requires_grad`` on exactly those within the LLaVA part."""
    modules = {
        "vision_tower": [model.llava.model.vision_tower],
        "projector": [model.llava.model.multi_modal_projector],
        "language_model": [model.llava.model.language_model, model.llava.lm_head],
    }
    for p in model.llava.parameters():
        p.requires_grad_(False)
    params = []
    for g in groups:
        for m in modules[g]:
            for p in m.parameters():
                p.requires_grad_(True)
                params.append(p)
    return params


def conversation_sample(
    scene_image: np.ndarray, turns: list[tuple[str, str]], meta: dict[str, Any] | None = None
) -> Sample:
    """A one-row sample: the image with the first question, then the answers and further questions."""
    messages: list[tuple[str, str | None]] = []
    for i, (question, answer) in enumerate(turns):
        messages.append((USER, f"{IMAGE_TOKEN}\n{question}" if i == 0 else question))
        messages.append((ASSISTANT, answer))
    h, w = scene_image.shape[:2]
    query = Query(messages=messages, masks=np.zeros((0, h, w), dtype=np.uint8), meta=dict(meta or {}))
    return Sample(image=scene_image, image_path="<synthetic>", queries=[query], dataset="synthetic_scenes")


def _stage_turns(
    stream: SceneStream, stage: LlavaStage, rng: np.random.Generator, objects: list
) -> list[tuple[str, str]]:
    size = stream.settings.image_size
    if rng.random() < stage.caption_fraction:
        return [(CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))], caption(objects, size))]
    turns = instruction_turns(objects, stream.config, rng, stage.turns, stage.kind_weights)
    return turns or [(CAPTION_PROMPTS[0], caption(objects, size))]


def answer_loss(model: ReadModel, batch: ReadBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Next-token cross-entropy over the answer tokens only (the LM head runs on those positions alone).

    Returns:
        (loss, correct (R,) answer tokens predicted right by argmax, total (R,) answer tokens) per row.
    """
    if batch.num_images:
        features = model.encode_images(batch.pixel_values)[batch.image_index]
    else:  # text only
        hidden_size = model.llava.config.text_config.hidden_size
        features = batch.input_ids.new_zeros(batch.num_rows, 0, hidden_size, dtype=torch.float32)
    hidden = model.language_forward(batch.input_ids, batch.attention_mask, features)
    labels = batch.labels[:, 1:]
    supervised = labels != IGNORE_INDEX  # (R, L-1)
    logits = model.llava.lm_head(hidden[:, :-1][supervised]).float()  # (T, V)
    targets = labels[supervised]
    loss = F.cross_entropy(logits, targets)
    hit = torch.zeros_like(labels, dtype=torch.long)
    hit[supervised] = (logits.argmax(-1) == targets).long()
    return loss, hit.sum(1), supervised.long().sum(1)


def text_batch(collator: ReadCollator, samples: list[Sample], descriptions: list[str]) -> ReadBatch:
    """The conversations of ``samples`` with each scene's description (text) in place of its image tokens; the
    description is never a target. The batch has no image (``pixel_values`` of zero images)."""
    tokenizer = collator.tokenizer
    ids, labels = [], []
    for sample, description in zip(samples, descriptions):
        enc = encode_conversation(tokenizer, collator.template, sample.queries[0].messages, 1)
        at = enc.input_ids.index(tokenizer.image_token_id)
        text = tokenizer.encode(description, add_bos=False)
        ids.append(enc.input_ids[:at] + text + enc.input_ids[at + 1 :])
        labels.append(enc.labels[:at] + [IGNORE_INDEX] * len(text) + enc.labels[at + 1 :])
    input_ids, attention_mask, label_tensor = pad_batch(ids, labels, pad_id=tokenizer.pad_token_id)
    rows = len(ids)
    return ReadBatch(
        pixel_values=torch.zeros(0, 3, 1, 1),
        sam_images=torch.zeros(0, 3, 1, 1),
        input_ids=input_ids,
        attention_mask=attention_mask,
        image_index=torch.zeros(rows, dtype=torch.long),
        original_sizes=[],
        resized_sizes=[],
        labels=label_tensor,
    )


def _schedule(stage: LlavaStage | Any) -> Callable[[int], float]:
    warm = max(1, stage.warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (stage.steps - step) / max(1, stage.steps - warm))

    return factor


def train_llava_stage(
    model: ReadModel,
    collator: ReadCollator,
    stage: LlavaStage,
    stream: SceneStream,
    seed: int,
    name: str,
    log_every: int = 100,
) -> list[dict[str, float]]:
    """Train one stage in place (the parameters of ``stage.train``).

    Step ``s`` uses scenes ``s * batch_size ...`` of ``stream`` and text drawn with
    ``numpy.random.default_rng([seed, stream, scene index])``, so a run is a pure function of its settings.

    Returns:
        the logged rows: {"step", "loss", "token_accuracy", "lr", "seconds"}.
    """
    params = llava_parameters(model, stage.train)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.95), weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(stage))
    model.train()
    history: list[dict[str, float]] = []
    start = time.time()
    running = [0.0, 0, 0]
    stream_id = STREAMS[name]
    for step in range(stage.steps):
        samples, descriptions = [], []
        for i in range(stage.batch_size):
            index = step * stage.batch_size + i
            scene = stream[index]
            rng = np.random.default_rng([seed, stream_id, index])
            samples.append(conversation_sample(scene.image, _stage_turns(stream, stage, rng, scene.objects)))
            descriptions.append(caption(scene.objects, stream.settings.image_size))
        batch = text_batch(collator, samples, descriptions) if name == "language" else collator(samples)
        loss, correct, total = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        running[0] += loss.item()
        running[1] += int(correct.sum())
        running[2] += int(total.sum())
        if (step + 1) % log_every == 0 or step + 1 == stage.steps:
            n = (step % log_every) + 1
            row = {"step": step + 1, "loss": running[0] / n, "token_accuracy": running[1] / max(1, running[2]),
                   "lr": scheduler.get_last_lr()[0], "seconds": time.time() - start}  # fmt: skip
            history.append(row)
            logger.info("%s step %d/%d loss %.4f token accuracy %.3f (%.0f s)", name, step + 1, stage.steps,
                        row["loss"], row["token_accuracy"], row["seconds"])  # fmt: skip
            running = [0.0, 0, 0]
    return history


@torch.no_grad()
def evaluate_llava(
    model: ReadModel, collator: ReadCollator, stream: SceneStream, num_scenes: int, seed: int, batch_size: int = 16
) -> dict[str, Any]:
    """Teacher-forced answers on held-out scenes: per question kind (and "caption"), the fraction of answers whose
    every token is the model's argmax ("exact") and the token accuracy.

    Every question of :func:`read.data.scene_text.scene_questions` is asked once, one question per conversation.
    """
    model.eval()
    counts: dict[str, list[int]] = {}
    rows: list[tuple[str, Sample]] = []
    size = stream.settings.image_size

    def flush() -> None:
        if not rows:
            return
        batch = collator([s for _, s in rows])
        _, correct, total = answer_loss(model, batch)
        for (kind, _), c, t in zip(rows, correct.tolist(), total.tolist()):
            acc = counts.setdefault(kind, [0, 0, 0, 0])
            acc[0] += int(c == t)
            acc[1] += 1
            acc[2] += c
            acc[3] += t
        rows.clear()

    for index in range(num_scenes):
        scene = stream[index]
        rng = np.random.default_rng([seed, STREAMS["eval"], index])
        questions = [("caption", (CAPTION_PROMPTS[0], caption(scene.objects, size)))]
        for kind, pairs in scene_questions(scene.objects, stream.config, rng).items():
            questions += [(kind, pair) for pair in pairs]
        for kind, pair in questions:
            rows.append((kind, conversation_sample(scene.image, [pair])))
            if len(rows) >= batch_size:
                flush()
    flush()
    model.train()
    return {k: {"exact": v[0] / v[1], "token_accuracy": v[2] / max(1, v[3]), "questions": v[1]}
            for k, v in sorted(counts.items())}  # fmt: skip
