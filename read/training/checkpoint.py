"""Atomic, resumable checkpoints in a run directory.

Layout (``<run>/checkpoints/``)::

    step_00000500/          one complete checkpoint
        ds/                 DeepSpeed engine state (module, ZeRO optimizer partitions, scheduler)
        latest              DeepSpeed's own tag file (contains "ds")
        train_state.json    loop position, best score, non-finite counters (read.training.loop.TrainState)
        model_meta.json     resolved config + vocabulary ids (what the exporter needs)
        rng/rank_00000.pt   per-rank RNG states
    latest                  name of the newest complete checkpoint
    best                    name of the checkpoint with the best validation cIoU
    .tmp-step_00000600/     a save in progress (or one that was killed); never read

A save writes everything into ``.tmp-<name>`` on every rank, then rank 0 fsyncs the files, renames the directory
to ``<name>`` (atomic on POSIX) and only then rewrites the ``latest`` / ``best`` pointers (write, fsync, rename).
A process killed at any point therefore leaves the previous good checkpoint and its pointer intact. Older
checkpoints that neither pointer names are deleted after the pointers move. The run directory must be on a file
system every rank sees (as for any DeepSpeed checkpoint). A save that fails because the disk is full raises
:class:`read.errors.DiskFullError` (naming the directory), removes its temporary directory and leaves the previous
checkpoint and the pointers as they were.

Checkpoint files are read back without running code (``read.training.safe_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from read.errors import DiskFullError, FileFormatError, MissingFileError, UserError
from read.json_io import read_json_object
from read.training.safe_checkpoint import load_file

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
DS_TAG = "ds"
STATE_FILE = "train_state.json"
META_FILE = "model_meta.json"
_NAME = re.compile(r"^step_(\d{8})$")
# A failed torch.save does not say why (its zip writer reports e.g. "unexpected pos"); with less free space than
# this left where it wrote, the failure is taken to be a full disk.
LOW_SPACE_BYTES = 64 * 2**20


@dataclass
class CheckpointMeta:
    """What a checkpoint records about its model (``model_meta.json``): enough to rebuild and export it.

    Attributes:
        config: the resolved config of the run (``ReadConfig.to_dict()`` with absolute paths).
        vocab_size: embedding rows; seg_token_id, image_token_id: the ids of ``[SEG]`` and ``<image>``.
        tokenizer_path: the tokenizer directory the run used.
        exclude_frozen: the DeepSpeed files hold the trainable parameters only (the frozen ones come from the base).
        precision: the training precision; world_size: the number of processes that wrote the checkpoint.
    """

    config: dict[str, Any]
    vocab_size: int
    seg_token_id: int
    image_token_id: int
    tokenizer_path: str
    exclude_frozen: bool
    precision: str
    world_size: int

    @classmethod
    def read(cls, checkpoint: Path) -> CheckpointMeta:
        """The metadata of ``checkpoint``; a missing file or key says that the checkpoint is damaged."""
        path = checkpoint / META_FILE
        data = read_json(path)
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise FileFormatError(f"{path}: expected the keys {', '.join(names)}; the checkpoint is damaged")
        return cls(**{n: data[n] for n in names})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RunInUseError(UserError, FileExistsError):
    """A new run would start in a run directory that already holds checkpoints."""


def checkpoint_name(global_step: int) -> str:
    return f"step_{global_step:08d}"


def _barrier() -> None:
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.barrier()


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see either the old or the new content."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class CheckpointManager:
    """Saves and finds checkpoints of one run; ``save`` is collective (every rank calls it).

    Arguments:
        run_dir: the run directory (``train.output_dir``).
        rank: this process's global rank; rank 0 commits.
    """

    def __init__(self, run_dir: str | Path, rank: int = 0) -> None:
        self.root = Path(run_dir) / CHECKPOINT_DIR
        self.rank = rank

    # -- lookup ---------------------------------------------------------------------------------------------

    def _pointer(self, name: str) -> Path | None:
        p = self.root / name
        if not p.is_file():
            return None
        target = self.root / p.read_text().strip()
        return target if is_complete(target) else None

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the ``latest`` pointer, else the highest complete step directory."""
        found = self._pointer("latest")
        if found is not None:
            return found
        complete = sorted(p for p in self.root.glob("step_*") if _NAME.match(p.name) and is_complete(p))
        return complete[-1] if complete else None

    def best(self) -> Path | None:
        return self._pointer("best")

    # -- save -----------------------------------------------------------------------------------------------

    def save(
        self,
        global_step: int,
        write: Callable[[Path], None],
        *,
        state: dict[str, Any],
        meta: CheckpointMeta,
        is_best: bool,
    ) -> Path:
        """Write one checkpoint atomically and move the pointers.

        Arguments:
            global_step: names the checkpoint (``step_<global_step>``).
            write: called on every rank with the temporary directory; writes the engine state into it (e.g.
                ``engine.save_checkpoint(tmp, tag="ds")``).
            state: the loop state (JSON), written by rank 0.
            meta: model metadata, written by rank 0.
            is_best: also point ``best`` at this checkpoint.

        Returns:
            the final checkpoint directory.
        """
        name = checkpoint_name(global_step)
        tmp = self.root / f".tmp-{name}"
        final = self.root / name
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a killed save
            tmp.mkdir()
        _barrier()
        try:
            write(tmp)
            save_rng_state(tmp, self.rank)
            if self.rank == 0:
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
                (tmp / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
        except (OSError, RuntimeError) as e:
            self._raise_if_disk_full(e, tmp)
            raise
        _barrier()
        if self.rank == 0:
            try:
                fsync_tree(tmp)  # a file system may report a full disk only here
            except OSError as e:
                self._raise_if_disk_full(e, tmp)
                raise
            if final.exists():  # re-reaching a step after resuming from an older checkpoint
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            write_text_atomic(self.root / "latest", name + "\n")
            if is_best:
                write_text_atomic(self.root / "best", name + "\n")
            self._prune()
        _barrier()
        return final

    def _raise_if_disk_full(self, error: BaseException, tmp: Path) -> None:
        """Turn a failed write into :class:`DiskFullError` when the disk is full (removing the partial save)."""
        if not is_disk_full(error, self.root):
            return
        free = shutil.disk_usage(self.root).free
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = self.latest()
        kept = f"the previous checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
        raise DiskFullError(
            f"no space left on device while writing checkpoint {tmp.name.removeprefix('.tmp-')} into {self.root} "
            f"({free / 2**20:.0f} MiB free); {kept}: free some space, then continue with --resume auto"
        ) from error

    def _prune(self) -> None:
        """Delete checkpoints that no pointer names, and abandoned temporary directories."""
        keep = {p.name for p in (self.latest(), self.best()) if p is not None}
        for p in self.root.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-") or (_NAME.match(p.name) and p.name not in keep)):
                shutil.rmtree(p, ignore_errors=True)


def is_disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed write into ``directory`` failed for lack of space: ENOSPC / EDQUOT, or a torch.save error
    (which loses the errno) with less than :data:`LOW_SPACE_BYTES` left on the device."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, RuntimeError):
        try:
            return shutil.disk_usage(directory).free < LOW_SPACE_BYTES
        except OSError:
            return False
    return False


def is_complete(path: Path) -> bool:
    """A committed checkpoint directory (the rename is the commit; the state file is written before it)."""
    return path.is_dir() and _NAME.match(path.name) is not None and (path / STATE_FILE).is_file()


def resolve_checkpoint(spec: str, run_dir: str | Path) -> Path | None:
    """Find the checkpoint that ``--resume`` / ``--checkpoint`` names.

    Arguments:
        spec: "auto" / "latest" (the run's newest checkpoint, None if there is none yet), "best", or a path to a
            checkpoint directory, a ``checkpoints/`` directory or a run directory.
        run_dir: the current run directory.
    """
    if spec in ("auto", "latest", "best"):
        manager = CheckpointManager(run_dir)
        found = manager.best() if spec == "best" else manager.latest()
        if found is None and spec == "best":
            raise MissingFileError(f"{manager.root}: no best checkpoint (was validation off?); try 'latest'")
        return found
    path = Path(spec)
    if is_complete(path):
        return path
    found = CheckpointManager(path.parent if path.name == CHECKPOINT_DIR else path).latest()
    if found is None:
        raise MissingFileError(
            f"no complete checkpoint at {path}: give a checkpoint directory (step_*, with {STATE_FILE}), a "
            f"{CHECKPOINT_DIR}/ directory or a run directory"
        )
    return found


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written into a checkpoint; errors name the file and say what to do."""
    return read_json_object(
        path, missing_hint="the checkpoint is incomplete", damaged_hint="the checkpoint is damaged: use another one"
    )


# ----------------------------------------------------------------------------------------------------------
# RNG state


def save_rng_state(directory: Path, rank: int) -> None:
    """Write this rank's torch / CUDA / numpy / python RNG states to ``rng/rank_<rank>.pt``."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": json.dumps(random.getstate()),
    }
    (directory / "rng").mkdir(exist_ok=True)
    torch.save(state, directory / "rng" / f"rank_{rank:05d}.pt")


def load_rng_state(directory: Path, rank: int) -> bool:
    """Restore what :func:`save_rng_state` wrote; False (and a warning) when this rank has no file."""
    path = directory / "rng" / f"rank_{rank:05d}.pt"
    if not path.is_file():
        logger.warning("%s: no RNG state for rank %d (different world size?); RNG not restored", directory, rank)
        return False
    state = load_file(path)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    return True
