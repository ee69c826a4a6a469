"""train_ds.py as a command: 2 CPU processes (torchrun, gloo) follow the loss trajectory of 1 process with the same
global batch, and a run killed with SIGKILL and resumed with --resume auto ends like an uninterrupted one.

Both are slow (several process starts with DeepSpeed and model builds):
``pytest -m slow tests/test_train_distributed.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_utils import TINY_CONFIG
from read.training.checkpoint import CheckpointManager
from test_train_ds import make_data, step_rows, train_overrides

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Tolerance of the 1-vs-2-process comparison. Both see the same samples per step and average the same gradients;
# only the summation order differs (gloo all-reduce vs local accumulation, float32). Measured on the CPU: bitwise
# equal losses over 12 steps with one thread per process; changing the thread count alone moves them by ~7e-8.
LOSS_RTOL = 1e-5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    return env


def _command(nproc: int, overrides: list[str], resume: bool = False) -> list[str]:
    launcher = [sys.executable, "train_ds.py"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_port", str(_port()), "train_ds.py"]  # fmt: skip
    return [*launcher, "--config", str(TINY_CONFIG), *overrides, *(["--resume", "auto"] if resume else [])]


def _train(nproc: int, overrides: list[str], resume: bool = False, threads: int = 1) -> subprocess.CompletedProcess:
    out = subprocess.run(_command(nproc, overrides, resume), cwd=ROOT, env=_env(threads), capture_output=True,
                         text=True, timeout=1800)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return out


RUN = ("train.epochs=2", "train.steps_per_epoch=3", "train.save_every=1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("synthetic"), num_train=12, num_val=3)


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
    """1 process, micro-batch 1, 2 accumulation steps: global batch 2."""
    out = tmp_path_factory.mktemp("one")
    _train(1, train_overrides(data_dir, out, *RUN, "train.grad_accumulation_steps=2"))
    return out


def test_two_processes_follow_the_one_process_trajectory(one_process, data_dir, tmp_path):
    out = tmp_path / "two"
    _train(2, train_overrides(data_dir, out, *RUN, "train.grad_accumulation_steps=1"))
    one, two = step_rows(one_process), step_rows(out)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for k in one:
        assert two[k]["lr"] == one[k]["lr"]
        for part in ("loss", "ce_loss", "bce_loss", "dice_loss"):
            assert two[k][part] == pytest.approx(one[k][part], rel=LOSS_RTOL), (k, part)
    # the weights did move (the comparison is not trivially between constant losses)
    assert abs(one[6]["loss"] - one[3]["loss"]) > 1e-3
    epochs = [CheckpointManager(p).latest() for p in (one_process, out)]
    assert all(e is not None and e.name == "step_00000006" for e in epochs)


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(one_process, data_dir, tmp_path):
    out = tmp_path / "killed"
    overrides = train_overrides(data_dir, out, *RUN, "train.grad_accumulation_steps=2")
    proc = subprocess.Popen(_command(1, overrides), cwd=ROOT, env=_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 1200
        while time.time() < deadline and proc.poll() is None:
            if (out / "metrics.jsonl").is_file() and max(step_rows(out), default=0) >= 4:  # epoch 2, step 1
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = CheckpointManager(out).latest()
    assert killed_at is not None and int(killed_at.name.split("_")[1]) in (3, 4, 5)
    _train(1, overrides, resume=True)
    assert CheckpointManager(out).latest().name == "step_00000006"
    ref, resumed = step_rows(one_process), step_rows(out)
    assert sorted(resumed) == list(range(1, 7))
    for k in ref:
        for part in ("loss", "ce_loss", "bce_loss", "dice_loss", "lr"):
            assert resumed[k][part] == pytest.approx(ref[k][part], rel=1e-6, abs=1e-9), (k, part)
