"""scripts/gpu_check.py on the CPU: the same code path as on a GPU with small shapes, every part an entry of the
summary (ok, error, timeout, skipped) and never the end of the check."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_scale  # noqa: E402
import gpu_check  # noqa: E402

from read.config import load_config  # noqa: E402


def test_generation_prompts_cut_each_row_before_its_answer_and_pad_on_the_left():
    cfg = load_config(ROOT / "configs" / "tiny_test.yaml")
    ids = bench_scale.token_ids(cfg)
    batch = bench_scale.synthetic_batch(cfg, ids, 3, 1, torch.Generator().manual_seed(0))
    prompts = gpu_check.generation_prompts(batch, ids.pad)
    assert prompts.labels is None and prompts.gt_masks is None
    for r in range(3):
        start = int((batch.labels[r] != -100).nonzero()[0, 0])
        n = int(prompts.attention_mask[r].sum())
        assert n == start and torch.equal(prompts.input_ids[r, -n:], batch.input_ids[r, :start])
        assert (prompts.input_ids[r, :-n] == ids.pad).all() and (prompts.attention_mask[r, :-n] == 0).all()
    assert not bool((prompts.input_ids == ids.seg).any())  # no answer left


def test_a_part_over_its_limit_is_stopped_and_recorded(tmp_path):
    args = gpu_check.parse_args(["--config", str(ROOT / "configs" / "tiny_test.yaml"), "--device", "cpu"])
    start = time.perf_counter()
    argv = ["--config", str(ROOT / "configs" / "tiny_test.yaml"), "--device", "cpu"]
    entry = gpu_check.run_part("train", args, argv, 1.0, tmp_path)
    assert time.perf_counter() - start < 30
    assert entry["status"] == "timeout" and "limit of 1 s" in entry["error"]
    assert entry["limit_s"] == 1.0 and isinstance(entry["log_tail"], list)


def test_summary_lines_name_every_part():
    report = {
        "environment": {"card": "X", "torch": "2", "cuda": None, "transformers": "5", "deepspeed": None,
                        "bitsandbytes": None},
        "parts": {
            "sasp": {"status": "ok", "seconds": 1.0, "limit_s": 30.0, "forward_ms": 2.0},
            "train": {"status": "error", "error": "ValueError: bad", "seconds": 2.0, "limit_s": 170.0},
            "bnb_8bit": {"status": "skipped", "reason": "no GPU", "seconds": 0.5, "limit_s": 60.0},
        },
    }  # fmt: skip
    lines = gpu_check.summary_lines(report)
    assert lines[1:] == ["sasp       ok (1.0 s of 30.0 s)", "train      error: ValueError: bad (2.0 s of 170.0 s)",
                         "bnb_8bit   skipped: no GPU (0.5 s of 60.0 s)"]  # fmt: skip


def run_check(tmp_path: Path, config: str, *extra: str) -> dict:
    out = tmp_path / "check.json"
    report = gpu_check.main(["--config", str(ROOT / "configs" / config), "--device", "cpu", "--quick",
                             "--out", str(out), *extra])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
    return report


@pytest.mark.slow
def test_failures_are_entries_not_aborts(tmp_path):
    """The training part fails (its DeepSpeed file is missing) and SasP runs out of time: both are named entries,
    and the parts after them still run."""
    report = run_check(
        tmp_path, "tiny_test.yaml", "--budget", "sasp=2", "inference=600", "--total_budget", "1500",
        "--parts", "sasp", "train", "inference", "bnb_4bit", "--", "train.deepspeed_config=missing.json",
    )  # fmt: skip
    parts = report["parts"]
    assert list(parts) == ["sasp", "train", "inference", "bnb_4bit"]
    assert parts["sasp"]["status"] == "timeout"
    assert parts["train"]["status"] == "error" and "missing.json" in parts["train"]["error"]
    assert parts["inference"]["status"] == "ok"
    assert parts["bnb_4bit"] == {**parts["bnb_4bit"], "status": "skipped", "reason": "4-bit loading needs a CUDA GPU"}


@pytest.mark.slow
def test_the_check_runs_on_the_cpu_with_the_mid_size_config(tmp_path):
    report = run_check(tmp_path, "bench_mid_cpu.yaml", "--budget", "train=1500", "inference=1200", "sasp=300",
                       "--total_budget", "3600")  # fmt: skip
    env, parts = report["environment"], report["parts"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["transformers"]
    assert {k: v["status"] for k, v in parts.items()} == {
        "sasp": "ok", "train": "ok", "inference": "ok", "bnb_8bit": "skipped", "bnb_4bit": "skipped",
    }  # fmt: skip
    sasp = parts["sasp"]
    assert sasp["shape"]["tokens"] == 576 and sasp["shape"]["channels"] == 1024 and sasp["forward_ms"] > 0
    train = parts["train"]
    assert train["setup"]["zero_stage"] == 2 and train["setup"]["gradient_checkpointing"] is True
    assert train["configured_batch"]["batch"] == 2 and train["configured_batch"]["losses_finite"]
    assert train["search"][0]["batch"] == 4 and train["largest_batch"]["batch"] in (2, 4)
    assert train["configured_batch"]["estimate_gib"] > 0 and train["configured_batch"]["samples_per_s"] > 0
    inference = parts["inference"]
    assert set(inference["teacher_forced"]) == {"1", "2"}
    gen = inference["generation"]
    assert set(gen) >= {"reference_batch1_no_cache", "kv_cache_batch1", "kv_cache_batch2", "speed_up"}
    assert gen["answer_tokens"] == 3 and gen["kv_cache_batch2"]["tokens_per_s"] > 0
    assert gen["hours_per_100k_queries"]["reference"] > 0
