"""Distributed evaluation with real torch.distributed process groups (gloo on CPU).

The fast tests fork two processes that already hold the model, so no start-up import is paid; the slow test
launches eval.py with torchrun.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from read.data.eval_sets import build_eval_dataset
from read.evaluation import EvalConfig, evaluate
from read.model import save_pretrained
from test_eval_support import tiny_eval_model, write_reason_seg_split

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 9
WORLD = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_data")
    write_reason_seg_split(root, "val", N_IMAGES)
    dataset = build_eval_dataset(str(root), "ReasonSeg", "val")
    model = tiny_eval_model(tiny_tokenizer)
    single_dir = tmp_path_factory.mktemp("single")
    single = evaluate(model, tiny_tokenizer, dataset, EvalConfig(batch_size=1, output_dir=str(single_dir)))
    return root, dataset, model, single, single_dir


def _worker(rank: int, store: str, queue, model, tokenizer, dataset, cfg: EvalConfig) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
        seen: list[int] = []
        index_of = {dataset[i].image_path: i for i in range(len(dataset))}
        model.register_forward_pre_hook(lambda m, args: seen.extend(index_of[r["image_path"]] for r in args[0].meta))
        res = evaluate(model, tokenizer, dataset, cfg)
        queue.put((rank, res.scores, res.records, res.evaluated, res.resumed, seen))
        dist.destroy_process_group()
    except BaseException:  # report instead of hanging the parent
        queue.put((rank, "error", traceback.format_exc(), 0, 0, []))


def run_group(model, tokenizer, dataset, cfg: EvalConfig, tmp_path: Path) -> list[tuple]:
    """Run ``evaluate`` in WORLD forked processes joined by a gloo group; results in rank order."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    store = str(tmp_path / "store")
    procs = [ctx.Process(target=_worker, args=(r, store, queue, model, tokenizer, dataset, cfg)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for r in results:
        assert r[1] != "error", r[2]
    return results


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_process_group_equals_one_process(setup, tiny_tokenizer, tmp_path):
    _, dataset, model, single, single_dir = setup
    out = tmp_path / "out"
    results = run_group(model, tiny_tokenizer, dataset, EvalConfig(batch_size=2, output_dir=str(out)), tmp_path)
    seen = [r[5] for r in results]
    assert seen == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]  # disjoint shards, every image once
    for rank, scores, records, evaluated, resumed, _ in results:  # every rank returns the gathered result
        assert scores == single.scores and records == single.records
        assert (evaluated, resumed) == (N_IMAGES, 0)
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(single_dir / "predictions.jsonl")


def test_two_process_group_resumes_a_single_process_run(setup, tiny_tokenizer, tmp_path):
    """Records of an interrupted run (5 images) are found by both ranks; only the other 4 are evaluated."""
    _, dataset, model, single, single_dir = setup
    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    lines = (single_dir / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "parts" / "rank000.jsonl").write_text("".join(lines[:5]))
    (out / "run.json").write_text((single_dir / "run.json").read_text())
    results = run_group(model, tiny_tokenizer, dataset, EvalConfig(batch_size=3, output_dir=str(out)), tmp_path)
    assert [r[5] for r in results] == [[5, 7], [6, 8]]
    for _, scores, records, evaluated, resumed, _ in results:
        assert scores == single.scores and records == single.records and (evaluated, resumed) == (4, 5)
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(single_dir / "predictions.jsonl")


@pytest.mark.slow
def test_torchrun_eval_cli_matches_one_process(setup, tiny_tokenizer, tmp_path):
    root, _, model, _, _ = setup
    model_dir = tmp_path / "model"
    save_pretrained(model, model_dir, tiny_tokenizer)
    common = [
        "--model", str(model_dir), "--dataset_dir", str(root), "--dataset", "ReasonSeg", "--split", "val",
        "--num_workers", "0", "--no_progress", "--batch_size", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(ROOT / "eval.py"), *common, "--output_dir", str(tmp_path / "two")],
        check=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), *common, "--output_dir", str(tmp_path / "one")],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    assert two["results"] == one["results"]
    assert read_jsonl(tmp_path / "two" / "teacher" / "predictions.jsonl") == read_jsonl(
        tmp_path / "one" / "teacher" / "predictions.jsonl"
    )
