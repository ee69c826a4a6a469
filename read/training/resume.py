"""Resuming with a changed config: what may change, what is refused, and the record of what changed.

A checkpoint stores the config of the run that wrote it (``model_meta.json``). Resuming replays that run exactly
only with the same settings: a different batch size, accumulation, learning rate or schedule, data mixture, seed,
precision or model shape silently changes the run from the resume step on (an lr 100x higher, a data order that no
longer matches the step count ...). :func:`check_resume_config` compares the two configs key by key:

* keys in :data:`RESUME_SAFE_KEYS` (logging, checkpoint frequency, worker count, file locations ...) do not change
  what is computed and may differ;
* any other difference breaks an exact resume and is refused with the diff (:class:`ResumeConfigError`), unless the
  caller accepts it explicitly (``train_ds.py --accept_config_changes``).

Every difference that is let through is appended to ``<run>/config_changes.jsonl`` (step, time, whether it breaks
an exact resume, and the old and new value of each key), so the run keeps a record of what changed and when.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from read.errors import UserError

__all__ = [
    "CHANGES_FILE",
    "RESUME_SAFE_KEYS",
    "ConfigChange",
    "ResumeConfigError",
    "check_resume_config",
    "config_changes",
    "record_config_changes",
]

CHANGES_FILE = "config_changes.jsonl"

# Keys that may differ on resume without changing what the run computes.
RESUME_SAFE_KEYS = frozenset({
    "train.output_dir", "train.log_every", "train.save_every", "train.tensorboard", "train.wandb",
    "train.wandb_project", "train.val_batch_size", "train.max_nonfinite_steps", "train.deepspeed_config",
    "data.dataset_dir", "data.num_workers", "data.strict", "data.max_sample_attempts",
    "model.init_path", "model.tokenizer_path", "model.llava_path", "model.sam_checkpoint", "model.vision_tower_path",
    "model.gradient_checkpointing",
})  # fmt: skip

# The architecture comes from the loaded checkpoint when the weights do (model.init "read" / "released").
ARCHITECTURE_KEYS = ("model.text", "model.vision", "model.sam", "model.projector_type", "model.out_dim")


@dataclass(frozen=True)
class ConfigChange:
    """One config key whose value differs between the checkpoint and the resumed run."""

    key: str
    old: Any
    new: Any

    @property
    def breaks_exact_resume(self) -> bool:
        return self.key not in RESUME_SAFE_KEYS

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


class ResumeConfigError(UserError):
    """The resumed run's config differs from the checkpoint's in keys that break an exact resume."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[ConfigChange]:
    """Every dotted key whose value differs between two ``ReadConfig.to_dict()`` trees, sorted by key.

    Architecture keys are left out when the weights come from a checkpoint (``model.init`` "read" or "released"
    in either config): they are taken from it, not from the YAML.
    """
    old, new = _flatten(stored), _flatten(current)
    adopted = {old.get("model.init"), new.get("model.init")} & {"read", "released"}
    changes = []
    for key in sorted(set(old) | set(new)):
        if adopted and key.startswith(ARCHITECTURE_KEYS):
            continue
        if old.get(key) != new.get(key):
            changes.append(ConfigChange(key, old.get(key), new.get(key)))
    return changes


def check_resume_config(
    stored: Mapping[str, Any], current: Mapping[str, Any], *, accept: bool, checkpoint: str
) -> list[ConfigChange]:
    """Compare the checkpoint's config with the resumed run's.

    Arguments:
        stored: the config saved with the checkpoint (``model_meta.json``'s ``config``).
        current: the config of the run being resumed, prepared the same way (paths resolved).
        accept: let changes that break an exact resume through.
        checkpoint: the checkpoint directory, for the message.

    Returns:
        every change (safe ones included), to be recorded with :func:`record_config_changes`.

    Raises:
        ResumeConfigError: a change breaks an exact resume and ``accept`` is False; the message lists each such
            change with its old and new value.
    """
    changes = config_changes(stored, current)
    breaking = [c for c in changes if c.breaks_exact_resume]
    if breaking and not accept:
        raise ResumeConfigError(
            f"{checkpoint} was written with another config, and resuming with these changes would not continue that "
            f"run: {'; '.join(str(c) for c in breaking)}. Resume with the checkpoint's values, start a new run in "
            "another train.output_dir, or accept the changes with --accept_config_changes (they are recorded in "
            f"{CHANGES_FILE})"
        )
    return changes


def record_config_changes(run_dir: str | Path, step: int, changes: list[ConfigChange], *, accepted: bool) -> Path:
    """Append one line for this resume to ``<run_dir>/config_changes.jsonl``:
    ``{"step", "time", "accepted", "changes": [{"key", "old", "new", "breaks_exact_resume"}, ...]}``."""
    path = Path(run_dir) / CHANGES_FILE
    row = {
        "step": step,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "accepted": accepted,
        "changes": [
            {"key": c.key, "old": c.old, "new": c.new, "breaks_exact_resume": c.breaks_exact_resume} for c in changes
        ],
    }
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return path
