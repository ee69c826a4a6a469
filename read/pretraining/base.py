"""Building the tiny base in the layout READ's training loads (``model.init: llava``):

    <out>/llava/              a llava-hf directory (config.json, model.safetensors) + the tokenizer files
                              (model.llava_path; the tokenizer is found there too)
    <out>/sam.safetensors     the SAM weights (model.sam_checkpoint)
    <out>/manifest.json       the settings, the command, SHA-256 of every file, timings and held-out figures

The base vocabulary is the tokenizer's sentencepiece pieces followed by ``<im_start>``, ``<im_end>`` and
``<image>`` (as a LLaVA checkpoint brings its own image tokens); ``[SEG]`` comes after them and is not part of the
base: READ's training adds its rows (``read.model.build_from_base``).
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
BASE_TOKENS = (IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN)


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
    """Train the base tokenizer (deterministic, one thread) and write it into ``directory``."""
    train_sentencepiece(tokenizer_corpus(cfg), cfg.tokenizer.vocab_size, directory / SP_MODEL_FILE)
    pieces = cfg.tokenizer.vocab_size
    tokenizer = ReadTokenizer(directory / SP_MODEL_FILE, {t: pieces + i for i, t in enumerate(BASE_TOKENS)})
    tokenizer.save_pretrained(directory)
    return tokenizer


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
    tokenizer = ReadTokenizer.from_pretrained(directory)
    base_vocab = tokenizer.vocab_size + len(BASE_TOKENS)
    if read_cfg.model.text.vocab_size != base_vocab:
        raise ValueError(
            f"{cfg.model_config}: model.text.vocab_size is {read_cfg.model.text.vocab_size}, but the base vocabulary "
            f"is {base_vocab} ({tokenizer.vocab_size} pieces + {', '.join(BASE_TOKENS)})"
        )
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
