"""Training pieces without a DeepSpeed engine: the DeepSpeed config, precision, the data position across process
counts, atomic checkpoints (simulated crashes), RNG state, the loop state."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from read.config import load_config
from read.errors import DiskFullError
from read.training import checkpoint as ckpt_mod
from read.training.checkpoint import (
    CheckpointManager,
    CheckpointMeta,
    load_rng_state,
    resolve_checkpoint,
    save_rng_state,
)
from read.training.engine import build_deepspeed_config, resolve_precision
from read.training.loop import TrainState, epoch_sampler

ROOT = Path(__file__).resolve().parents[1]
ZERO2 = ROOT / "configs" / "deepspeed" / "zero2.json"


def train_cfg(*overrides: str):
    return load_config(ROOT / "configs" / "tiny_test.yaml", list(overrides)).train


# ----------------------------------------------------------------------------------------------------------
# DeepSpeed config


def test_deepspeed_config_is_filled_from_the_training_config():
    t = train_cfg("train.batch_size=3", "train.grad_accumulation_steps=5", "train.lr=2e-4", "train.epochs=4",
                  "train.steps_per_epoch=250", "train.warmup_steps=100", "train.grad_clip=1.0")  # fmt: skip
    ds = build_deepspeed_config(t, world_size=8, precision="bf16", path=ZERO2)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 3 * 5 * 8
    assert ds["gradient_clipping"] == 1.0
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 2e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0, "torch_adam": True},
    }
    assert ds["scheduler"] == {
        "type": "WarmupDecayLR",
        "params": {"total_num_steps": 1000, "warmup_min_lr": 0, "warmup_max_lr": 2e-4, "warmup_num_steps": 100,
                   "warmup_type": "linear"},
    }  # fmt: skip
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    z = ds["zero_optimization"]
    assert (z["stage"], z["contiguous_gradients"], z["overlap_comm"], z["reduce_scatter"]) == (2, True, True, True)
    assert z["reduce_bucket_size"] == z["allgather_bucket_size"] == 5e8
    fp32 = build_deepspeed_config(t, world_size=1, precision="fp32", path=ZERO2)
    assert fp32["bf16"] == {"enabled": False} and fp32["fp16"] == {"enabled": False}
    assert fp32["train_batch_size"] == 15


def test_deepspeed_config_rejects_contradictions_and_unfilled_auto(tmp_path):
    t = train_cfg("train.lr=1e-4")
    ds = json.loads(ZERO2.read_text())
    ds["optimizer"]["params"]["lr"] = 3e-4
    (tmp_path / "bad.json").write_text(json.dumps(ds))
    with pytest.raises(ValueError, match=r"bad.json: optimizer.params.lr = 0.0003 contradicts .*0.0001"):
        build_deepspeed_config(t, 1, "fp32", tmp_path / "bad.json")
    ds["optimizer"]["params"]["lr"] = 1e-4  # agreeing literals are fine
    ds["zero_optimization"]["reduce_bucket_size"] = "auto"
    (tmp_path / "auto.json").write_text(json.dumps(ds))
    with pytest.raises(ValueError, match=r"no config value fills zero_optimization.reduce_bucket_size"):
        build_deepspeed_config(t, 1, "fp32", tmp_path / "auto.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        build_deepspeed_config(t, 1, "fp32", tmp_path / "missing.json")


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------
# data position


def _steps(num_samples: int, world: int, batch: int, gas: int, steps: int, start_step: int = 0) -> list[list[int]]:
    """The sorted dataset indices of each optimizer step, over all ranks."""
    per_rank = []
    for rank in range(world):
        idx = list(epoch_sampler(num_samples, rank=rank, world_size=world, batch_size=batch,
                                 grad_accumulation_steps=gas, start_step=start_step))  # fmt: skip
        per_rank.append([idx[s * batch * gas : (s + 1) * batch * gas] for s in range(steps - start_step)])
    return [sorted(i for r in range(world) for i in per_rank[r][s]) for s in range(steps - start_step)]


def test_each_step_reads_the_same_indices_whatever_the_process_split():
    steps = 5
    for global_batch in (2, 4, 8):
        expected = [list(range(s * global_batch, (s + 1) * global_batch)) for s in range(steps)]
        splits = [(w, b, g) for w in (1, 2, 4) for b in (1, 2) for g in (1, 2, 4) if w * b * g == global_batch]
        assert len(splits) >= 2
        for world, batch, gas in splits:
            n = global_batch * steps  # samples_per_epoch
            assert _steps(n, world, batch, gas, steps) == expected, (world, batch, gas)


def test_resuming_inside_an_epoch_continues_at_the_next_step():
    full = _steps(24, 2, 2, 2, 3)
    assert _steps(24, 2, 2, 2, 3, start_step=1) == full[1:]
    assert _steps(24, 2, 2, 2, 3, start_step=3) == []


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def _writer(payload: str, fail_after_partial: bool = False):
    def write(directory: Path) -> None:
        (directory / "ds").mkdir()
        (directory / "ds" / "weights.bin").write_text(payload)
        if fail_after_partial:
            raise OSError("disk full (simulated)")
        (directory / "ds" / "optim.bin").write_text(payload + "-optim")

    return write


def _meta(payload: str) -> CheckpointMeta:
    return CheckpointMeta(config={"payload": payload}, vocab_size=8, seg_token_id=5, image_token_id=7,
                          tokenizer_path="tok", exclude_frozen=True, precision="fp32", world_size=1)  # fmt: skip


def _save(manager: CheckpointManager, step: int, payload: str, is_best: bool = False, **kw) -> Path:
    state = TrainState(global_step=step).to_dict()
    return manager.save(step, _writer(payload, **kw), state=state, meta=_meta(payload), is_best=is_best)


def _payload(path: Path) -> str:
    return (path / "ds" / "weights.bin").read_text()


def test_checkpoint_save_commits_atomically_and_prunes(tmp_path):
    m = CheckpointManager(tmp_path)
    assert m.latest() is None and m.best() is None
    first = _save(m, 10, "a", is_best=True)
    assert first == tmp_path / "checkpoints" / "step_00000010"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000010"
    assert m.latest() == m.best() == first
    assert json.loads((first / "train_state.json").read_text())["global_step"] == 10
    assert json.loads((first / "model_meta.json").read_text()) == _meta("a").to_json()
    assert CheckpointMeta.read(first) == _meta("a")
    assert (first / "rng" / "rank_00000.pt").is_file()
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
    _save(m, 20, "b")
    third = _save(m, 30, "c")
    # latest moved, best stayed; the checkpoint neither names (step 20) is gone
    assert m.latest() == third and m.best() == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == [
        "step_00000010", "step_00000030"
    ]  # fmt: skip
    assert _payload(first) == "a" and _payload(third) == "c"


def test_a_crash_during_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path)
    good = _save(m, 10, "good", is_best=True)
    # 1. killed while the engine writes: only a temporary directory is left behind
    with pytest.raises(OSError, match="simulated"):
        _save(m, 20, "partial", fail_after_partial=True)
    assert (tmp_path / "checkpoints" / ".tmp-step_00000020" / "ds" / "weights.bin").is_file()
    assert m.latest() == good and _payload(good) == "good"
    assert resolve_checkpoint("auto", tmp_path) == good
    # 2. killed between the directory rename and the pointer update: the pointer still names the old one
    real = ckpt_mod.write_text_atomic

    def die(path: Path, text: str) -> None:
        raise KeyboardInterrupt("killed (simulated)")

    monkeypatch.setattr(ckpt_mod, "write_text_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        _save(m, 30, "renamed")
    assert (tmp_path / "checkpoints" / "step_00000030").is_dir()
    assert m.latest() == good and m.best() == good
    # 3. killed while the pointer file itself is replaced: readers still see the old content
    monkeypatch.setattr(ckpt_mod, "write_text_atomic", real)
    real_replace = os.replace

    def replace_fails_for_pointers(src, dst):
        if Path(dst).name in ("latest", "best"):
            raise KeyboardInterrupt("killed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace_fails_for_pointers)
    with pytest.raises(KeyboardInterrupt):
        _save(m, 40, "pointer")
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000010"
    assert m.latest() == good
    # the next good save cleans up all the debris
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    last = _save(m, 50, "next")
    assert m.latest() == last and m.best() == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best", "latest", "step_00000010", "step_00000050"
    ]  # fmt: skip


def _failing_writer(error: BaseException):
    def write(directory: Path) -> None:
        (directory / "ds").mkdir()
        (directory / "ds" / "weights.bin").write_text("partial")
        raise error

    return write


def test_full_disk_during_save_says_so_and_keeps_the_previous_checkpoint(tmp_path):
    m = CheckpointManager(tmp_path)
    good = _save(m, 10, "good", is_best=True)
    state = TrainState(global_step=20).to_dict()
    with pytest.raises(DiskFullError) as err:
        m.save(20, _failing_writer(OSError(errno.ENOSPC, "No space left on device")), state=state, meta=_meta(""),
               is_best=True)  # fmt: skip
    message = str(err.value)
    assert message.startswith(
        f"no space left on device while writing checkpoint step_00000020 into {tmp_path / 'checkpoints'} ("
    )
    assert message.endswith(
        f" MiB free); the previous checkpoint {good} is kept: free some space, then continue with --resume auto"
    )
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    # the partial save is gone (its space is given back), the previous checkpoint and both pointers are intact
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "latest", "step_00000010"]
    assert m.latest() == m.best() == good and _payload(good) == "good"


def test_a_torch_save_failure_on_a_full_disk_is_a_full_disk(tmp_path, monkeypatch):
    """torch.save loses the errno ("unexpected pos ..."): with (almost) no free space left it is a full disk; with
    space left it stays the error it is."""
    m = CheckpointManager(tmp_path)
    good = _save(m, 10, "good")
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    state = TrainState(global_step=20).to_dict()
    usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30, 0))
    with pytest.raises(DiskFullError, match=r"no space left on device .* \(0 MiB free\); the previous checkpoint"):
        m.save(20, _failing_writer(torch_error), state=state, meta=_meta(""), is_best=False)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda path: usage(10 * 2**30, 2**30, 9 * 2**30))
    with pytest.raises(RuntimeError, match="unexpected pos") as err:
        m.save(20, _failing_writer(torch_error), state=state, meta=_meta(""), is_best=False)
    assert not isinstance(err.value, DiskFullError)
    assert m.latest() == good


def test_dangling_pointer_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    m = CheckpointManager(tmp_path)
    _save(m, 10, "a")
    (tmp_path / "checkpoints" / "latest").write_text("step_00000099\n")  # names a directory that is gone
    assert m.latest().name == "step_00000010"
    incomplete = tmp_path / "checkpoints" / "step_00000020"
    incomplete.mkdir()  # no train_state.json: not a checkpoint
    assert m.latest().name == "step_00000010"


def test_resolve_checkpoint_accepts_run_checkpoint_and_step_directories(tmp_path):
    m = CheckpointManager(tmp_path)
    assert resolve_checkpoint("auto", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        resolve_checkpoint("best", tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(str(tmp_path), tmp_path / "elsewhere")
    step = _save(m, 7, "x")
    for spec in ("auto", "latest", str(tmp_path), str(tmp_path / "checkpoints"), str(step)):
        assert resolve_checkpoint(spec, tmp_path) == step, spec


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_rng_state(tmp_path, rank=3)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert load_rng_state(tmp_path, rank=3)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert not load_rng_state(tmp_path, rank=4)  # another world size: warned, not restored


# ----------------------------------------------------------------------------------------------------------
# loop state


def test_train_state_round_trip_and_best_tracking():
    state = TrainState()
    assert state.record_validation(0.5)
    state.epoch = 1
    assert not state.record_validation(0.4)
    state.epoch = 2
    assert state.record_validation(0.6)
    assert (state.best_ciou, state.best_epoch) == (0.6, 2)
    state.record_step(True, max_nonfinite=3)
    assert TrainState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
