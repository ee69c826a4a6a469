"""Settings and result of one evaluation run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from read.evaluation.records import QueryRecord

Mode = Literal["teacher", "generate"]
MODES: tuple[str, ...] = ("teacher", "generate")


@dataclass
class EvalConfig:
    """Settings of one evaluation run.

    Attributes:
        mode: "teacher" (answer given, the reference protocol) or "generate" (greedy decoding).
        batch_size: images per step (their rows share one language-model pass).
        conv_type: conversation template: "llava_v1" (training, ReasonSeg/RefCOCO parity) or "vicuna_v1"
            (FP-RefCOCO parity, docs/reference.md#conversation-template).
        max_new_tokens: generation budget per row (the reference uses 512).
        kv_cache: generation decodes with a KV cache (default); False re-encodes the whole sequence at every step
            as the reference does (same records, many times slower; for speed comparisons).
        num_workers: DataLoader worker processes for reading and preprocessing images.
        output_dir: where per-query records, predictions and pictures go; None keeps everything in memory (no
            resume).
        resume: skip images already recorded in ``output_dir``.
        save_masks: write the predicted masks (RLE) and points to the per-query file.
        vis: write pictures for the first ``vis`` images of the dataset.
        progress: show a progress bar (rank 0 only).
    """

    mode: Mode = "teacher"
    batch_size: int = 1
    conv_type: str = "llava_v1"
    max_new_tokens: int = 512
    kv_cache: bool = True
    num_workers: int = 0
    output_dir: str | None = None
    resume: bool = True
    save_masks: bool = True
    vis: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_workers < 0 or self.vis < 0:
            raise ValueError("num_workers and vis must be >= 0")


@dataclass
class EvalResult:
    """Scores of one dataset in one mode (identical on every rank).

    Attributes:
        mode: "teacher" or "generate".
        scores: see :func:`summarize`.
        records: the per-query records (without details) of the whole split, sorted by (image index, query index).
        evaluated: images evaluated by this call (all processes of the group; resumed ones excluded).
        resumed: images taken from an earlier run's records.
        restart_reason: why the records found in ``output_dir`` were discarded (None when there were none, they
            were resumed, or ``resume`` was off).
    """

    mode: str
    scores: dict[str, Any]
    records: list[QueryRecord] = field(repr=False)
    evaluated: int = 0
    resumed: int = 0
    restart_reason: str | None = None
