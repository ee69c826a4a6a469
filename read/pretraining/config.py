"""Settings of the tiny-base pre-training (``configs/pretrain/synthetic_base.yaml``, read by
``scripts/pretrain_base.py``).

The architecture is not repeated here: ``model_config`` names the READ config whose ``model`` section the base is
built for (its ``model.text.vocab_size`` must be the base vocabulary: the tokenizer's pieces plus ``<im_start>``,
``<im_end>`` and ``<image>``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from read.config import _from_dict

LLAVA_GROUPS = ("vision_tower", "projector", "language_model")


@dataclass
class SceneSettings:
    """The synthetic scenes (``read.data.synthetic``) every stage draws from."""

    image_size: int = 128
    num_objects: list[int] = field(default_factory=lambda: [2, 4])  # min, max objects per scene
    seed: int = 1  # the scene generator's seed (the quickstart's dataset uses 0: other scenes)
    jpeg_quality: int = 95  # images go through a JPEG round trip, as the written datasets do


@dataclass
class TokenizerSettings:
    vocab_size: int = 1500  # sentencepiece pieces
    corpus_scenes: int = 2000  # scenes whose captions and questions join the built-in corpus


@dataclass
class Schedule:
    """AdamW, linear warm-up then linear decay to 0, gradient clipping 1."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0


@dataclass
class LlavaStage(Schedule):
    """One LLaVA stage (``batch_size``: images per step, one conversation each)."""

    train: list[str] = field(default_factory=lambda: list(LLAVA_GROUPS))  # of LLAVA_GROUPS
    turns: int = 1  # question/answer turns per conversation (instruction stage)
    caption_fraction: float = 1.0  # share of conversations that are a caption request (the rest are questions)
    kind_weights: dict[str, float] = field(default_factory=dict)  # read.data.scene_text.QUESTION_KINDS weights


@dataclass
class SamStage(Schedule):
    """SAM pre-training: every object of every scene is segmented from a prompt drawn per step (``batch_size``:
    scenes per step, all their objects)."""

    batch_size: int = 8
    max_positive: int = 6  # points inside the object: 1 .. max_positive
    max_negative: int = 6  # points outside it: 0 .. max_negative
    prompt_mix: dict[str, float] = field(default_factory=lambda: {"points": 0.5, "box": 0.25, "box_points": 0.25})
    bce_weight: float = 2.0
    dice_weight: float = 0.5


@dataclass
class PretrainConfig:
    model_config: str = "configs/synthetic_tiny.yaml"
    seed: int = 0
    scenes: SceneSettings = field(default_factory=SceneSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    language: LlavaStage = field(default_factory=lambda: LlavaStage(steps=0, train=["language_model"]))
    alignment: LlavaStage = field(default_factory=LlavaStage)
    instruction: LlavaStage = field(default_factory=LlavaStage)
    sam: SamStage = field(default_factory=SamStage)
    eval_scenes: int = 200  # held-out scenes for the figures of the manifest

    def __post_init__(self) -> None:
        lo, hi = self.scenes.num_objects
        if not 1 <= lo <= hi:
            raise ValueError(
                f"scenes.num_objects must be [min, max] with 1 <= min <= max, got {self.scenes.num_objects}"
            )
        for name in ("language", "alignment", "instruction"):
            stage = getattr(self, name)
            unknown = [g for g in stage.train if g not in LLAVA_GROUPS]
            if unknown or not stage.train:
                raise ValueError(f"{name}.train must name groups of {list(LLAVA_GROUPS)}, got {stage.train}")
            if stage.steps < 0 or stage.batch_size < 1 or stage.lr <= 0 or stage.turns < 1:
                raise ValueError(f"{name}: need steps >= 0, batch_size >= 1, lr > 0, turns >= 1")
            if not 0 <= stage.caption_fraction <= 1:
                raise ValueError(f"{name}.caption_fraction must be in [0, 1], got {stage.caption_fraction}")
        s = self.sam
        if s.steps < 0 or s.batch_size < 1 or s.lr <= 0 or s.max_positive < 1 or s.max_negative < 0:
            raise ValueError("sam: need steps >= 0, batch_size >= 1, lr > 0, max_positive >= 1, max_negative >= 0")
        unknown = set(s.prompt_mix) - {"points", "box", "box_points"}
        if unknown or sum(s.prompt_mix.values()) <= 0:
            raise ValueError(f"sam.prompt_mix must weight points / box / box_points, got {s.prompt_mix}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    """Read a pre-training YAML file (unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pre-training config not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    return _from_dict(PretrainConfig, data, "")
