"""Building the tiny base in the layout READ's training loads (``model.init: llava``):

    <out>/llava/              a llava-hf directory (config.json, model.safetensors) + the tokenizer files
                              (model.llava_path; the tokenizer is found there too)
    <out>/sam.safetensors     the SAM weights (model.sam_checkpoint)
    <out>/manifest.json       the settings, the command, SHA-256 of every file, timings and held-out figures

Vocabulary. The base's text vocabulary (``model.text.vocab_size`` of the fine-tuning config) is the V sentencepiece
pieces followed by ``<im_start>`` and ``<im_end>``. The tokenizer written into ``<out>/llava`` is READ's: it adds
``[SEG]`` (V + 2) and ``<image>`` (V + 3, last, as the LM's classes require:
``read.model.read_model.text_only_logits``). The base LLaVA itself is pre-trained with its own placeholder,
``<image>`` = V + 2, and V + 3 embedding rows (as a llava-hf checkpoint brings its own ``<image>`` row); READ's
fine-tuning keeps the first V + 2 rows and gives ``[SEG]`` and ``<image>`` fresh ones
(``read.model.build_from_base``), so no row of the base ever saw ``[SEG]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from read.config import ReadConfig, load_config
from read.constants import IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN
from read.data import templates
from read.data.collate import ReadCollator
from read.data.conversation import CONV_TEMPLATES
from read.data.scene_text import CAPTION_PROMPTS, caption, scene_questions
from read.data.synthetic import referring_queries
from read.model import build_read_model
from read.model.sam import build_sam
from read.pretraining.config import PretrainConfig
from read.pretraining.llava import evaluate_llava, train_llava_stage
from read.pretraining.sam import evaluate_sam, train_sam
from read.pretraining.scenes import STREAMS, SceneStream
from read.tokenizer import SP_MODEL_FILE, ReadTokenizer, train_sentencepiece

logger = logging.getLogger(__name__)

LLAVA_DIR = "llava"
SAM_FILE = "sam.safetensors"
MANIFEST_FILE = "manifest.json"
TEXT_TOKENS = (IM_START_TOKEN, IM_END_TOKEN)  # the added tokens of the base's text vocabulary
PRETRAIN_TOKENS = (*TEXT_TOKENS, IMAGE_TOKEN)  # the base LLaVA's own vocabulary: the placeholder last


def model_config(cfg: PretrainConfig, root: Path) -> ReadConfig:
    """The READ config the base is built for (``cfg.model_config``, relative to ``root`` if not absolute)."""
    path = Path(cfg.model_config)
    return load_config(path if path.is_absolute() else root / path)


def tokenizer_corpus(cfg: PretrainConfig) -> list[str]:
    """Text the base tokenizer learns from: the captions, questions, answers and referring phrasings of
    ``tokenizer.corpus_scenes`` scenes, the same phrasings inside every question/answer template of
    :mod:`read.data.templates` (the fine-tuning prompts), the false-premise answers of the synthetic dataset, and the
    caption requests and system prompts (repeated: they begin every row)."""
    stream = SceneStream(cfg.scenes, "tokenizer")
    size = cfg.scenes.image_size
    lists = [getattr(templates, name) for name in templates.__all__ if isinstance(getattr(templates, name), tuple)]
    singles = [getattr(templates, name) for name in templates.__all__ if isinstance(getattr(templates, name), str)]
    forms = [t for group in lists for t in group] + singles
    lines: list[str] = []
    for index in range(cfg.tokenizer.corpus_scenes):
        scene = stream[index]
        rng = np.random.default_rng([cfg.seed, STREAMS["tokenizer"], index])
        lines.append(caption(scene.objects, size))
        for pairs in scene_questions(scene.objects, stream.config, rng).values():
            for q, a in pairs:
                lines += [q, a]
        for _, target, texts in referring_queries(scene.objects, stream.config):
            o = scene.objects[target]
            lines.append(f"There is no {o.color} {o.shape} in this image.")
            for text in texts:
                form = forms[int(rng.integers(len(forms)))]
                lines.append(form.format(class_name=text, sent=text, gt_name=text))
    lines += list(CAPTION_PROMPTS) * 20
    for conv in CONV_TEMPLATES.values():
        lines += [conv.system] * 50
    # cut at the added tokens as the tokenizer does, so that e.g. "." after "[SEG]" is learned as "▁."
    pieces = []
    for line in lines:
        for token in (IMAGE_TOKEN, "[SEG]"):
            line = line.replace(token, "\n")
        pieces += [chunk.strip() for chunk in line.split("\n") if chunk.strip()]
    return pieces


def build_tokenizer(cfg: PretrainConfig, directory: Path) -> ReadTokenizer:
    """Train the sentencepiece model (deterministic, one thread) and write READ's tokenizer over it into
    ``directory``: the pieces, ``<im_start>``, ``<im_end>``, ``[SEG]``, ``<image>``."""
    train_sentencepiece(tokenizer_corpus(cfg), cfg.tokenizer.vocab_size, directory / SP_MODEL_FILE)
    pieces = cfg.tokenizer.vocab_size
    tokenizer = ReadTokenizer(directory / SP_MODEL_FILE, {t: pieces + i for i, t in enumerate(TEXT_TOKENS)})
    tokenizer.save_pretrained(directory)
    return tokenizer


def pretraining_tokenizer(directory: Path) -> ReadTokenizer:
    """The tokenizer the base LLaVA is pre-trained with: the same pieces, then ``<im_start>``, ``<im_end>`` and
    its own ``<image>`` (V + 2, the last of its V + 3 rows; the tokenizer's ``[SEG]`` id lies past them and never
    occurs)."""
    sp_model = directory / SP_MODEL_FILE
    pieces = ReadTokenizer(sp_model).vocab_size
    return ReadTokenizer(sp_model, {t: pieces + i for i, t in enumerate(PRETRAIN_TOKENS)})


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _collator(read_cfg: ReadConfig, tokenizer: ReadTokenizer) -> ReadCollator:
    m = read_cfg.model
    return ReadCollator(tokenizer, "llava_v1", clip_size=m.vision.image_size, sam_size=m.sam.image_size,
                        num_image_tokens=m.vision.num_patches, max_length=None, strict=True)  # fmt: skip


def pretrain_llava(cfg: PretrainConfig, read_cfg: ReadConfig, out: Path) -> dict[str, Any]:
    """Both LLaVA stages from random weights (seeded with ``cfg.seed``); writes ``<out>/llava`` (the tokenizer must
    already be there). Returns the stage histories, held-out figures and timings."""
    directory = out / LLAVA_DIR
    tokenizer = pretraining_tokenizer(directory)
    text_vocab = tokenizer.vocab_size + len(TEXT_TOKENS)
    if read_cfg.model.text.vocab_size != text_vocab:
        raise ValueError(
            f"{cfg.model_config}: model.text.vocab_size is {read_cfg.model.text.vocab_size}, but the base's text "
            f"vocabulary is {text_vocab} ({tokenizer.vocab_size} pieces + {', '.join(TEXT_TOKENS)})"
        )
    base_vocab = text_vocab + 1  # and the base's own <image>
    read_cfg.loss.query_weight = 0.0
    torch.manual_seed(cfg.seed)
    model = build_read_model(read_cfg, base_vocab, seg_token_id=tokenizer.seg_token_id,
                             image_token_id=tokenizer.image_token_id)  # fmt: skip
    model.float()
    collator = _collator(read_cfg, tokenizer)
    report: dict[str, Any] = {}
    for name in ("language", "alignment", "instruction"):
        t0 = time.time()
        history = train_llava_stage(model, collator, getattr(cfg, name), SceneStream(cfg.scenes, name), cfg.seed, name)
        report[name] = {"history": history, "seconds": round(time.time() - t0, 1)}
    t0 = time.time()
    report["eval"] = evaluate_llava(model, collator, SceneStream(cfg.scenes, "eval"), cfg.eval_scenes, cfg.seed)
    report["eval_seconds"] = round(time.time() - t0, 1)
    model.llava.save_pretrained(directory, safe_serialization=True)
    return report


def pretrain_sam(cfg: PretrainConfig, read_cfg: ReadConfig, out: Path) -> dict[str, Any]:
    """SAM from random weights (seeded with ``cfg.seed``); writes ``<out>/sam.safetensors``."""
    torch.manual_seed(cfg.seed)
    sam = build_sam(read_cfg.model.sam).float()
    t0 = time.time()
    history = train_sam(sam, cfg.sam, SceneStream(cfg.scenes, "sam"), cfg.seed)
    report: dict[str, Any] = {"history": history, "seconds": round(time.time() - t0, 1)}
    t0 = time.time()
    report["eval"] = evaluate_sam(sam, cfg.sam, SceneStream(cfg.scenes, "eval"), cfg.eval_scenes, cfg.seed)
    report["eval_seconds"] = round(time.time() - t0, 1)
    state = {k: v.detach().contiguous() for k, v in sam.state_dict().items()}
    save_file(state, str(out / SAM_FILE), metadata={"format": "pt"})
    return report


def write_manifest(out: Path, cfg: PretrainConfig, command: str, parts: dict[str, Any]) -> Path:
    """``<out>/manifest.json``: settings, command, per-file SHA-256, figures."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {
        "command": command,
        "config": cfg.to_dict(),
        "torch": torch.__version__,
        "files": {str(p.relative_to(out)): sha256(p) for p in files},
        **parts,
    }
    path = out / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
