#!/usr/bin/env python
"""Train READ with DeepSpeed (docs/reference.md#training-recipe): LoRA + full embeddings + SAM mask decoder + [SEG]
head, ZeRO-2.

    python train_ds.py --config configs/synthetic_tiny.yaml                       # one process (CPU: fp32)
    torchrun --nproc_per_node 2 train_ds.py --config configs/synthetic_tiny.yaml # several processes / GPUs
    deepspeed --include localhost:0,1 train_ds.py --config configs/read_7b_reasonseg.yaml
    deepspeed --hostfile hostfile train_ds.py --config configs/read_13b_reasonseg.yaml   # several nodes
    python train_ds.py --config configs/X.yaml train.lr=1e-4 --resume auto        # overrides, resume

Every epoch is ``train.steps_per_epoch`` optimizer steps over the training mixture, then teacher-forced
validation on ``data.val_dataset``/``data.val_split`` (unless ``train.eval_every_epoch=false``) and a checkpoint:
the latest one (for ``--resume``) and the best one by validation cIoU (for ``scripts/export_model.py``).

``--resume`` compares the config with the one stored in the checkpoint: a change that breaks an exact resume (batch,
accumulation, lr and schedule, data mixture, seed, precision, model shape ...) is refused with the diff unless
``--accept_config_changes`` is given; every change let through is appended to ``<run>/config_changes.jsonl``
(``read.training.resume``).

Everything in the config is checked, and the datasets and the resumed checkpoint are opened, before anything is
written to ``train.output_dir``. A user error (bad config, missing file, unsafe checkpoint, full disk) ends with
one line ``error: ...`` and exit status 1; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from read.cli import add_debug_flag, run_main
from read.config import ReadConfig, load_config
from read.data.collate import ReadCollator
from read.data.eval_sets import build_eval_dataset
from read.data.mixture import MixtureDataset, build_train_dataset, samples_per_epoch
from read.distributed import DistInfo, setup_distributed
from read.errors import ConfigError, MissingFileError, MissingPackageError
from read.model.trainable import prepare_for_training
from read.training.checkpoint import (
    DS_TAG,
    STATE_FILE,
    CheckpointManager,
    CheckpointMeta,
    RunInUseError,
    load_rng_state,
    read_json,
    resolve_checkpoint,
)
from read.training.engine import (
    build_deepspeed_config,
    build_model,
    create_engine,
    load_tokenizer,
    resolve_precision,
    tokenizer_dir,
)
from read.training.logging import ProgressLogger
from read.training.loop import TrainState, epoch_sampler, train_step, validate
from read.training.resume import ConfigChange, check_resume_config, record_config_changes
from read.training.safe_checkpoint import scan_checkpoint, weights_only_loads

logger = logging.getLogger("train_ds")
PATH_FIELDS = ("init_path", "tokenizer_path", "llava_path", "sam_checkpoint", "vision_tower_path")


@dataclass
class Run:
    """Everything :func:`setup` builds for one training run."""

    cfg: ReadConfig
    dist: DistInfo
    precision: str
    engine: Any
    tokenizer: Any
    collator: ReadCollator
    train_set: MixtureDataset
    val_set: Any
    checkpoints: CheckpointManager
    state: TrainState
    exclude_frozen: bool  # checkpoints hold only the trainable weights (the rest comes from model.init)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4 sasp.num_points=60")
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint of train.output_dir, if any) or a path")
    p.add_argument(
        "--accept_config_changes",
        action="store_true",
        help="resume even if the config differs from the checkpoint's in keys that break an exact resume (lr, "
        "batch, schedule, data, seed, model ...); the changes are recorded in <run>/config_changes.jsonl",
    )
    p.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    add_debug_flag(p)
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(
    cfg: ReadConfig, resume: str | None = None, local_rank: int | None = None, accept_config_changes: bool = False
) -> Run:
    """Process group, tokenizer, model + LoRA, datasets, DeepSpeed engine, and the resumed state if any.

    Resuming checks the checkpoint's files and its config against this one first (see the module docstring), before
    anything is built. Nothing is written to ``train.output_dir`` before all of these exist: a config, data or
    checkpoint problem raises (a :class:`read.errors.UserError`) and leaves no trace there.
    """
    dist = setup_distributed(local_rank)
    precision = resolve_precision(cfg.train.precision, dist.device)
    build_deepspeed_config(cfg.train, dist.world_size, precision)  # the JSON's errors, before any model is built
    if cfg.train.wandb and importlib.util.find_spec("wandb") is None:
        raise MissingPackageError("train.wandb=true needs the wandb package: pip install wandb")
    run_dir = Path(cfg.train.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.output_dir={run_dir} is a file, not a directory")
    checkpoints = CheckpointManager(run_dir, dist.rank)
    ckpt = resolve_checkpoint(resume, run_dir) if resume else None
    if ckpt is None and checkpoints.latest() is not None:
        raise RunInUseError(
            f"{run_dir} already holds checkpoints: pass --resume auto to continue that run, or set another "
            f"train.output_dir"
        )
    changes: list[ConfigChange] = []
    if ckpt is not None:
        scan_checkpoint(ckpt)  # refuse a tampered checkpoint before building anything
        stored = CheckpointMeta.read(ckpt).config
        changes = check_resume_config(stored, checkpoint_config(cfg), accept=accept_config_changes,
                                      checkpoint=str(ckpt))  # fmt: skip
        for change in changes:
            logger.warning("config differs from the checkpoint's: %s%s", change,
                           "" if change.breaks_exact_resume else " (does not change what is computed)")  # fmt: skip
    logger.info("world size %d, device %s, precision %s", dist.world_size, dist.device, precision)

    seed_everything(cfg.train.seed)
    tokenizer = load_tokenizer(cfg)
    model = build_model(cfg, tokenizer)  # may take the architecture from the checkpoint it loads (cfg.model)
    trainable = prepare_for_training(model, cfg)
    logger.info("%d trainable tensors, %d trainable parameters", len(trainable),
                sum(p.numel() for p in model.parameters() if p.requires_grad))  # fmt: skip

    collator = ReadCollator.from_config(cfg, tokenizer)
    train_set = build_train_dataset(
        cfg.data, samples_per_epoch(cfg.train, dist.world_size), seed=cfg.train.seed, prepare=collator.encode_sample
    )
    val_set = None
    if cfg.train.eval_every_epoch:
        d = cfg.data
        val_set = build_eval_dataset(d.dataset_dir, d.val_dataset, d.val_split, prompts=d.eval_prompts,
                                     seed=cfg.train.seed, protocol=d.refer_protocol,
                                     skip_invalid=d.val_skip_invalid)  # fmt: skip
        if val_set.invalid:
            logger.warning("validation leaves out %d annotation(s) whose ground truth cannot be scored "
                           "(data.val_skip_invalid): %s", len(val_set.invalid),
                           "; ".join(i["problem"] for i in val_set.invalid))  # fmt: skip
    engine = create_engine(model, cfg, dist, precision)
    seed_everything(cfg.train.seed + dist.rank)  # per-rank dropout streams

    state = TrainState()
    exclude_frozen = cfg.model.init != "random"
    if ckpt is not None:
        state = load_checkpoint(engine, ckpt, dist.rank)
        logger.info("resumed from %s at epoch %d, step %d", ckpt, state.epoch + 1, state.global_step)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")  # the config in effect; what changed on a resume is in config_changes.jsonl
        if changes:
            step = read_json(ckpt / STATE_FILE)["global_step"]
            record_config_changes(run_dir, step, changes, accepted=accept_config_changes)
    return Run(cfg, dist, precision, engine, tokenizer, collator, train_set, val_set, checkpoints, state,
               exclude_frozen)  # fmt: skip


def load_checkpoint(engine: Any, ckpt: Path, rank: int) -> TrainState:
    """Restore the engine (weights, optimizer, lr scheduler), the loop state and this rank's RNG.

    DeepSpeed reads its files with every ``torch.load`` made weights-only (see ``read.training.safe_checkpoint``).
    """
    meta = CheckpointMeta.read(ckpt)
    with weights_only_loads():
        path, _ = engine.load_checkpoint(str(ckpt), tag=DS_TAG, load_module_strict=not meta.exclude_frozen)
    if path is None:
        raise MissingFileError(f"{ckpt}: DeepSpeed found no engine state under tag '{DS_TAG}'; use another checkpoint")
    load_rng_state(ckpt, rank)
    return TrainState.from_dict(read_json(ckpt / STATE_FILE))


def train_loader(run: Run, epoch: int, start_step: int) -> DataLoader:
    """This rank's micro-batches of ``epoch``, from optimizer step ``start_step`` on (see read.training.loop)."""
    t = run.cfg.train
    run.train_set.set_epoch(epoch)
    sampler = epoch_sampler(len(run.train_set), rank=run.dist.rank, world_size=run.dist.world_size,
                            batch_size=t.batch_size, grad_accumulation_steps=t.grad_accumulation_steps,
                            start_step=start_step)  # fmt: skip
    # its own generator: creating the loader must not draw from the global RNG that a checkpoint restores
    generator = torch.Generator().manual_seed(t.seed + epoch)
    return DataLoader(run.train_set, batch_size=t.batch_size, sampler=sampler, collate_fn=run.collator,
                      num_workers=run.cfg.data.num_workers, drop_last=True, generator=generator)  # fmt: skip


def train(run: Run) -> TrainState:
    """Epoch loop: steps, periodic checkpoints, validation, best/latest checkpoints, progress output."""
    t, state = run.cfg.train, run.state
    progress = ProgressLogger(t.output_dir, run.cfg, enabled=run.dist.is_main, initial_step=state.global_step)
    run.engine.train()
    try:
        while state.epoch < t.epochs:
            progress.start_epoch(state.epoch)
            batches = iter(train_loader(run, state.epoch, state.step_in_epoch))
            while state.step_in_epoch < t.steps_per_epoch:
                result = train_step(run.engine, batches, run.dist.device)
                state.record_step(result.applied, t.max_nonfinite_steps, result.skipped_samples)
                progress.log_step(state, result)
                mid_epoch = state.step_in_epoch < t.steps_per_epoch
                if t.save_every and state.global_step % t.save_every == 0 and mid_epoch:
                    save_checkpoint(run, is_best=False)
            scores = evaluate(run) if run.val_set is not None else None
            is_best = scores is not None and state.record_validation(scores["ciou"])
            line = progress.end_epoch(state, scores, is_best)
            state.history.append({"epoch": state.epoch + 1, "step": state.global_step, "summary": line,
                                  **(scores or {})})  # fmt: skip
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            save_checkpoint(run, is_best=is_best)
    finally:
        progress.close()
    return state


def evaluate(run: Run) -> dict[str, float]:
    """Teacher-forced validation on ``data.val_dataset`` / ``data.val_split`` (collective)."""
    module = run.engine.module
    if run.engine.zero_optimization_stage() < 3:
        return validate(module, run.tokenizer, run.val_set, run.cfg)
    import deepspeed  # ZeRO-3 partitions the weights: gather them for the plain forward passes of validation

    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        return validate(module, run.tokenizer, run.val_set, run.cfg)


def checkpoint_config(cfg: ReadConfig) -> dict[str, Any]:
    """The config as a checkpoint stores it: a dict with the model's paths made absolute (the exporter may run from
    another directory)."""
    config = cfg.to_dict()
    for key in PATH_FIELDS:
        value = config["model"][key]
        if value and Path(value).exists():
            config["model"][key] = str(Path(value).resolve())
    return config


def save_checkpoint(run: Run, is_best: bool) -> Path:
    """Write the latest checkpoint atomically (and point ``best`` at it if ``is_best``); collective."""
    module = run.engine.module
    meta = CheckpointMeta(
        config=checkpoint_config(run.cfg),
        vocab_size=len(run.tokenizer),  # = embedding rows (checked when the model was built)
        seg_token_id=module.seg_token_id,
        image_token_id=module.image_token_id,
        tokenizer_path=str(Path(tokenizer_dir(run.cfg)).resolve()),
        exclude_frozen=run.exclude_frozen,
        precision=run.precision,
        world_size=run.dist.world_size,
    )

    def write(directory: Path) -> None:
        run.engine.save_checkpoint(str(directory), tag=DS_TAG, exclude_frozen_parameters=run.exclude_frozen)

    return run.checkpoints.save(run.state.global_step, write, state=run.state.to_dict(), meta=meta, is_best=is_best)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    cfg = load_config(args.config, args.overrides)
    run = setup(cfg, args.resume, args.local_rank, args.accept_config_changes)
    state = train(run)
    if run.dist.is_main:
        best = "" if state.best_ciou is None else f"best cIoU {state.best_ciou:.4f} (epoch {state.best_epoch + 1})"
        logger.info("done: %d steps, %d skipped (non-finite), %d bad samples skipped; %s; checkpoints in %s",
                    state.global_step, state.skipped_steps, state.skipped_samples, best,
                    run.checkpoints.root)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
