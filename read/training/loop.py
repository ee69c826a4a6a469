"""The training step, non-finite handling, the data position and validation.

Data order. The training set is deterministic per (seed, epoch, index) (``read.data.mixture.MixtureDataset``) and
rank ``r`` of ``W`` reads indices ``r, r + W, r + 2W, ...`` (``ShardedSampler``). Optimizer step ``s`` of an epoch
therefore consumes exactly the indices ``[s * G, (s + 1) * G)`` with ``G = batch_size * grad_accumulation_steps * W``,
however the global batch is split into processes and accumulation steps, and a resumed run restarts at index
``step_in_epoch * G`` without reading what came before.

Non-finite losses [FIX]. A micro-batch whose loss is NaN/inf (or whose forward pass stops on NaN hidden states,
:func:`install_nonfinite_guard`) is not back-propagated; instead every trainable gradient is set to NaN
(:func:`poison_gradients`; under ZeRO-3 by back-propagating ``loss * nan`` through the forward graph), so
DeepSpeed's overflow check, which all-reduces over the ranks, skips the optimizer step on every rank: no parameter,
optimizer-moment or lr-scheduler update, gradients zeroed. The skipped step still consumes its data.
``train.max_nonfinite_steps`` skipped steps in a row stop the run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor

from read.batch import ReadBatch
from read.data.mixture import ShardedSampler
from read.errors import UserError
from read.model.sasp import NonFiniteActivation

logger = logging.getLogger(__name__)

LOSS_PARTS = ("loss", "ce_loss", "bce_loss", "dice_loss", "query_loss")


class NonFiniteLossError(UserError, RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient (the learning rate or the data)."""


def install_nonfinite_guard(model: torch.nn.Module) -> None:
    """Make a non-finite forward pass end in :class:`NonFiniteActivation` instead of an input error.

    SasP rejects NaN/inf similarity maps with a ``ValueError`` (bad input), but during training NaN hidden states
    mean a diverged step, which :func:`train_step` skips: this sets the point prompter's
    ``nonfinite_is_divergence``. No-op for models without a point prompter.
    """
    prompter = getattr(model, "point_prompter", None)
    if prompter is not None:
        prompter.nonfinite_is_divergence = True


@dataclass
class TrainState:
    """Where the run is; saved with every checkpoint (``train_state.json``).

    Attributes:
        epoch: the current epoch (0-based); equals ``train.epochs`` when training is done.
        step_in_epoch: optimizer steps finished in ``epoch``.
        global_step: optimizer steps finished in total (applied or skipped).
        skipped_steps: steps skipped for a non-finite loss / gradient, in total.
        skipped_samples: bad training samples (missing or truncated image, unusable annotation) drawn and skipped,
            in total over all ranks.
        nonfinite_streak: skipped steps in a row, up to now.
        best_ciou: best validation cIoU so far (None before the first validation).
        best_epoch: the epoch that reached it.
        history: one summary dict per finished epoch.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    skipped_steps: int = 0
    skipped_samples: int = 0
    nonfinite_streak: int = 0
    best_ciou: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        return cls(**data)

    def record_step(self, applied: bool, max_nonfinite: int, skipped_samples: int = 0) -> None:
        """Count one optimizer step (and the bad samples its data skipped); raises :class:`NonFiniteLossError` after
        ``max_nonfinite`` non-finite steps in a row."""
        self.global_step += 1
        self.step_in_epoch += 1
        self.skipped_samples += skipped_samples
        if applied:
            self.nonfinite_streak = 0
            return
        self.skipped_steps += 1
        self.nonfinite_streak += 1
        logger.warning(
            "step %d: non-finite loss or gradient, optimizer step skipped (%d in a row, %d in total)",
            self.global_step,
            self.nonfinite_streak,
            self.skipped_steps,
        )
        if self.nonfinite_streak >= max_nonfinite:
            raise NonFiniteLossError(
                f"stopping: {self.nonfinite_streak} optimizer steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite_steps={max_nonfinite}, last at step {self.global_step}); lower train.lr, "
                f"check the data, or resume from the latest checkpoint"
            )

    def record_validation(self, ciou: float) -> bool:
        """Update the best score with this epoch's validation cIoU; returns True if it is a new best."""
        if self.best_ciou is None or ciou > self.best_ciou:
            self.best_ciou, self.best_epoch = ciou, self.epoch
            return True
        return False


def epoch_sampler(
    num_samples: int, *, rank: int, world_size: int, batch_size: int, grad_accumulation_steps: int, start_step: int
) -> ShardedSampler:
    """This rank's dataset indices for one epoch, from optimizer step ``start_step`` on (see the module docstring).

    Consecutive groups of ``batch_size`` indices are the rank's micro-batches; ``grad_accumulation_steps`` of them
    make one optimizer step.
    """
    start = start_step * batch_size * grad_accumulation_steps
    return ShardedSampler(num_samples, rank=rank, world_size=world_size, start=start)


@dataclass
class StepResult:
    """One optimizer step, averaged over its micro-batches and all ranks (finite micro-batches only).

    ``samples`` and ``skipped_samples`` (bad samples skipped while drawing its data) are totals over all ranks.
    """

    losses: dict[str, float]
    applied: bool
    samples: int
    seconds: float
    skipped_samples: int = 0


def poison_gradients(engine: Any) -> None:
    """Back-propagate NaN into every trainable parameter, so the engine's overflow check skips the step.

    Arguments:
        engine: a DeepSpeed engine (its module's ``requires_grad`` parameters are the optimised ones).
    """
    params = [p for p in engine.module.parameters() if p.requires_grad]
    nan = sum(p.float().sum() for p in params) * float("nan")
    engine.backward(nan)


def touch_all_parameters(loss: Tensor, engine: Any) -> Tensor:
    """``loss`` plus an exact zero that depends on every trainable parameter.

    Every micro-batch then produces a gradient for the same parameter set on every rank (e.g. SAM's mask decoder
    also when a micro-batch holds no ``[SEG]``), which ZeRO-1/2's bucketed gradient reduction relies on. ZeRO-3
    partitions the parameters outside the forward pass and tracks unused ones itself: ``loss`` is returned as is.
    """
    if engine.zero_optimization_stage() >= 3:
        return loss
    params = [p for p in engine.module.parameters() if p.requires_grad]
    return loss + sum(p.reshape(-1)[0] for p in params) * 0.0


def train_step(engine: Any, micro_batches: Iterator[ReadBatch], device: torch.device) -> StepResult:
    """Run the ``gradient_accumulation_steps`` micro-batches of one optimizer step.

    Arguments:
        engine: the DeepSpeed engine; ``engine.step()`` is called after every micro-batch and performs the
            optimizer and lr-scheduler step at the accumulation boundary (unless the overflow check skips it).
        micro_batches: yields this rank's micro-batches.
        device: where the inputs go.

    Returns:
        the losses averaged over the finite micro-batches of all ranks, and whether the step was applied.
    """
    start = time.perf_counter()
    lr = float(engine.get_lr()[0])  # the lr this step uses (the scheduler moves at the boundary)
    zero3 = engine.zero_optimization_stage() >= 3
    sums = torch.zeros(len(LOSS_PARTS) + 3, dtype=torch.float64)  # parts, finite count, skipped samples, samples
    poisoned = False
    for _ in range(engine.gradient_accumulation_steps()):
        batch = next(micro_batches)
        sums[-1] += batch.num_images
        sums[-2] += batch.skipped_samples
        if poisoned and not zero3:  # the step is lost already: skip the forward, keep the micro-step count
            poison_gradients(engine)
            engine.step()
            continue
        try:
            out = engine(batch.to(device))
        except NonFiniteActivation as e:
            logger.warning("non-finite forward pass: %s", e)
            out = None
        if out is not None and out.loss is None:
            raise ValueError("a training batch has neither labels nor ground-truth masks: nothing to learn from")
        finite = out is not None and bool(torch.isfinite(out.loss.detach()).item())
        if finite and not poisoned:
            engine.backward(touch_all_parameters(out.loss, engine))
            for i, name in enumerate(LOSS_PARTS):
                value = getattr(out, name)
                sums[i] += 0.0 if value is None else float(value.detach())
            sums[len(LOSS_PARTS)] += 1
        elif out is not None and zero3:
            # ZeRO-3 keeps its gradient bookkeeping consistent only for backward passes through a forward graph
            engine.backward(out.loss * float("nan"))
        else:
            del out
            poison_gradients(engine)
        poisoned = poisoned or not finite
        engine.step()
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(sums)
    count = float(sums[len(LOSS_PARTS)])
    losses = {name: float(sums[i]) / count if count else math.nan for i, name in enumerate(LOSS_PARTS)}
    losses["lr"] = lr
    norm = engine.get_global_grad_norm()
    losses["grad_norm"] = float(norm) if norm is not None else math.nan
    return StepResult(
        losses, bool(engine.was_step_applied()), int(sums[-1]), time.perf_counter() - start, int(sums[-2])
    )


def validate(model: torch.nn.Module, tokenizer: Any, dataset: Any, cfg: Any) -> dict[str, float]:
    """Teacher-forced validation with the shared evaluation code (``read.evaluation``, ``read.evaluation.metrics``).

    Collective under ``torch.distributed``: every rank scores its share of the images (no duplicates) and gets the
    merged scores.

    Arguments:
        model: the bare model (``engine.module``); put in eval mode for the call.
        tokenizer: the model's tokenizer.
        dataset: a ``read.data.eval_sets`` dataset built with ``generation=False``.
        cfg: the :class:`read.config.ReadConfig` (``train.val_batch_size``, ``data.conv_type``, ``data.num_workers``).

    Returns:
        {"giou", "ciou", "num_masks"} over the whole split.
    """
    from read.evaluation import EvalConfig, evaluate

    settings = EvalConfig(
        mode="teacher",
        batch_size=cfg.train.val_batch_size,
        conv_type=cfg.data.conv_type,
        num_workers=cfg.data.num_workers,
    )
    overall = evaluate(model, tokenizer, dataset, settings).scores["overall"]
    return {"giou": float(overall["giou"]), "ciou": float(overall["ciou"]), "num_masks": int(overall["num_masks"])}
