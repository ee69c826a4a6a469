"""Training progress on rank 0: a tqdm bar, TensorBoard scalars, optional Weights & Biases, a JSON-lines log and
one summary line per epoch.

``<run>/metrics.jsonl`` gets one line per logged step (``{"kind": "step", "step", "epoch", "loss", "ce_loss",
"bce_loss", "dice_loss", "query_loss", "lr", "grad_norm", "samples_per_s", "applied", "skipped_samples"}``, the last
counting the bad samples skipped since the previous logged step) and one per epoch (``{"kind": "epoch", ...,
"skipped_steps", "skipped_samples"}``: non-finite steps in total, bad samples skipped in this epoch). A resumed run
appends; a step that was replayed after a crash appears twice, the later line wins.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from read.config import ReadConfig
from read.errors import MissingPackageError
from read.training.loop import LOSS_PARTS, StepResult, TrainState

METRICS_FILE = "metrics.jsonl"


class ProgressLogger:
    """Rank-0 training output; every method is a no-op on the other ranks (``enabled=False``).

    Arguments:
        run_dir: the run directory.
        cfg: the run's config (``train.tensorboard``, ``train.wandb``, ``train.log_every``, sizes for the bar).
        enabled: True on rank 0.
        initial_step: optimizer steps already done (resume).
    """

    def __init__(self, run_dir: str | Path, cfg: ReadConfig, *, enabled: bool, initial_step: int = 0) -> None:
        self.enabled = enabled
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.tb: Any = None
        self.wandb: Any = None
        self.bar: Any = None
        self._epoch_sums: dict[str, float] = {}
        self._epoch_steps = 0
        self._epoch_samples = 0
        self._epoch_skipped = 0
        self._since_log_skipped = 0
        self._epoch_seconds = 0.0
        self._epoch_start = time.perf_counter()
        if not enabled:
            return
        from tqdm import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        total = cfg.train.epochs * cfg.train.steps_per_epoch
        self.bar = tqdm(total=total, initial=initial_step, desc="train", unit="step", dynamic_ncols=True)
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=initial_step or None)
        if cfg.train.wandb:
            self.wandb = _init_wandb(self.run_dir, cfg)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")

    # ------------------------------------------------------------------------------------------------------

    def start_epoch(self, epoch: int) -> None:
        self._epoch_sums = {}
        self._epoch_steps = self._epoch_samples = self._epoch_skipped = 0
        self._epoch_seconds = 0.0
        self._epoch_start = time.perf_counter()
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.cfg.train.epochs}")

    def log_step(self, state: TrainState, result: StepResult) -> None:
        """Record one optimizer step (``state`` already counts it)."""
        if not self.enabled:
            return
        self._epoch_samples += result.samples
        self._epoch_skipped += result.skipped_samples
        self._since_log_skipped += result.skipped_samples
        self._epoch_seconds += result.seconds
        if result.applied:
            self._epoch_steps += 1
            for name in LOSS_PARTS:
                self._epoch_sums[name] = self._epoch_sums.get(name, 0.0) + result.losses[name]
        self.bar.update(1)
        if state.global_step % self.cfg.train.log_every and state.step_in_epoch != self.cfg.train.steps_per_epoch:
            return
        speed = result.samples / result.seconds if result.seconds > 0 else math.nan
        row = {"step": state.global_step, "epoch": state.epoch, **result.losses, "samples_per_s": speed}
        self.bar.set_postfix(
            loss=_fmt(row["loss"]), ce=_fmt(row["ce_loss"]), bce=_fmt(row["bce_loss"]), dice=_fmt(row["dice_loss"]),
            lr=f"{row['lr']:.2e}", sps=f"{speed:.2f}", bad=self._epoch_skipped, refresh=False,
        )  # fmt: skip
        self._write({"kind": "step", **row, "applied": result.applied, "skipped_samples": self._since_log_skipped})
        self._since_log_skipped = 0
        scalars = {f"train/{k}": v for k, v in row.items() if k not in ("step", "epoch")}
        scalars["train/skipped_steps"] = state.skipped_steps
        scalars["train/skipped_samples"] = state.skipped_samples
        self._scalars(scalars, state.global_step)

    def end_epoch(self, state: TrainState, scores: dict[str, float] | None, is_best: bool) -> str:
        """Write the epoch summary (``state.epoch`` is the finished epoch); returns the summary line."""
        n = max(self._epoch_steps, 1)
        means = {k: v / n for k, v in self._epoch_sums.items()}
        summary = {
            "epoch": state.epoch + 1,
            "step": state.global_step,
            **{k: means.get(k, math.nan) for k in LOSS_PARTS},
            "samples_per_s": self._epoch_samples / self._epoch_seconds if self._epoch_seconds else math.nan,
            "skipped_steps": state.skipped_steps,
            "skipped_samples": self._epoch_skipped,
            "minutes": (time.perf_counter() - self._epoch_start) / 60,
        }
        if scores is not None:
            summary.update(val_giou=scores["giou"], val_ciou=scores["ciou"], best_ciou=state.best_ciou)
        line = (
            f"epoch {state.epoch + 1}/{self.cfg.train.epochs} | step {state.global_step} | "
            f"loss {_fmt(summary['loss'])} (ce {_fmt(summary['ce_loss'])} bce {_fmt(summary['bce_loss'])} "
            f"dice {_fmt(summary['dice_loss'])}"
            f"{' query ' + _fmt(summary['query_loss']) if self.cfg.loss.query_weight > 0 else ''}) | "
            f"{summary['samples_per_s']:.2f} samples/s | "
            f"skipped steps {state.skipped_steps}, bad samples {self._epoch_skipped} | {summary['minutes']:.1f} min"
        )
        if scores is not None:
            line += (
                f" | val gIoU {scores['giou']:.4f} cIoU {scores['ciou']:.4f}"
                f"{' (best)' if is_best else f' (best {state.best_ciou:.4f})'}"
            )
        if self.enabled:
            self.bar.write(line)
            self._write({"kind": "epoch", **summary})
            val = {f"val/{k}": v for k, v in (scores or {}).items() if k in ("giou", "ciou")}
            self._scalars(val, state.global_step)
        return line

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self._jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

    # ------------------------------------------------------------------------------------------------------

    def _write(self, row: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None and values:
            self.wandb.log(values, step=step)


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _init_wandb(run_dir: Path, cfg: ReadConfig) -> Any:
    """Start (or continue, after a resume) the W&B run of ``run_dir``; wandb is imported only here."""
    try:
        import wandb
    except ImportError as e:
        raise MissingPackageError("train.wandb=true needs the wandb package: pip install wandb") from e
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=cfg.train.wandb_project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
        config=cfg.to_dict(),
    )  # fmt: skip
