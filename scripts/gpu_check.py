"""The prepared GPU check: READ-7B with random weights, measured for real on one CUDA GPU, one JSON summary.

    bash scripts/gpu_check.sh                              # on the GPU machine (carried wheels first, then this)
    python scripts/gpu_check.py --out runs/gpu_check/gpu_check.json
    python scripts/gpu_check.py --config configs/bench_mid_cpu.yaml --device cpu --quick   # same code on a CPU

Nothing is downloaded: the model is built from the config with random weights directly on the device
(``scripts/bench_scale.py``'s ``build``), inputs are ``bench_scale.synthetic_batch`` batches of the real shapes
(576 image tokens, 60-120 text tokens, SAM at 1024 px). Each part runs in its own process with a time limit, so a
crash, a hang or an out-of-memory error becomes a named entry of the summary instead of the end of the check:

* ``sasp``: SasP at batch 8, N = the image tokens, C = the LM width (``bench_sasp.py``'s image sizes), forward
  and forward + backward;
* ``train``: ``train_ds.py``'s own engine set-up (``setup_distributed``, ``prepare_for_training``,
  ``create_engine``: DeepSpeed as configured, ZeRO-2 and bf16 for READ-7B, gradient checkpointing) and its
  ``train_step`` (one micro-batch per optimizer step): samples/s and tokens/s at ``train.batch_size``, then a short
  search for the largest batch that fits (doubling until out of memory or out of time), each with its peak memory
  beside ``read.tools.memory``'s estimate;
* ``inference``: a fresh model without LoRA in the evaluation dtype: teacher-forced evaluation images/s
  (``ReadModel.forward`` without logits) at ``--eval_batch_sizes``; generation queries/s and tokens/s at a fixed
  answer length (EOS disabled) the reference's way (batch 1, no KV cache) and with the KV cache at batch 1 and
  ``--gen_batch``; the estimated hours for 100,000 generation-mode queries both ways;
* ``bnb_8bit``, ``bnb_4bit``: the language model quantised by bitsandbytes as ``chat.py --load_in_8bit/4bit`` does
  (built on the host in bf16, ``read.model.quantize.quantize_language_model``) and one answer; skipped without
  CUDA or bitsandbytes.

The summary (printed last and written to ``--out``) holds the card, the torch / CUDA / package versions, and per part
its status (ok, error with the message, timeout with what was measured before, skipped with the reason), its time
and its figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_scale  # noqa: E402

from read.batch import ReadBatch  # noqa: E402
from read.config import ReadConfig, load_config  # noqa: E402
from read.constants import IGNORE_INDEX  # noqa: E402

PARTS = ("sasp", "train", "inference", "bnb_8bit", "bnb_4bit")
BUDGETS = {"sasp": 30.0, "train": 170.0, "inference": 110.0, "bnb_8bit": 75.0, "bnb_4bit": 75.0}  # seconds
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
# the config's weights are local paths that a fresh machine lacks: the check builds the architecture at random
RANDOM_INIT = ["model.init=random", "model.init_path=", "model.vision_tower_path=", "train.grad_accumulation_steps=1"]
PACKAGES = ("transformers", "peft", "deepspeed", "segment-anything", "bitsandbytes", "accelerate", "numpy")
GiB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "read_7b_reasonseg.yaml"))
    p.add_argument("--out", default=None, help="write the JSON summary here (default: runs/gpu_check/<time>.json)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--total_budget", type=float, default=470.0, help="seconds for all parts together")
    p.add_argument("--budget", nargs="*", default=[], metavar="PART=SECONDS", help="change a part's time limit")
    p.add_argument("--train_steps", type=int, default=4, help="timed training steps at train.batch_size")
    p.add_argument("--search_batches", type=int, nargs="*", default=[4, 8, 16, 32, 64],
                   help="larger training batches to try, in order, until one does not fit")  # fmt: skip
    p.add_argument("--eval_batch_sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--eval_steps", type=int, default=3, help="timed teacher-forced steps per batch size")
    p.add_argument("--answer_tokens", type=int, default=16, help="fixed answer length of the generation timings")
    p.add_argument("--gen_batch", type=int, default=8, help="batch of the KV-cache generation timing")
    p.add_argument("--slow_queries", type=int, default=2, help="queries timed the reference's way (batch 1, no cache)")
    p.add_argument("--quick", action="store_true",
                   help="small counts for a CPU run of the same code: 1 training step, search batch 4 only, "
                        "batches 1 and 2, 3-token answers")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)  # internal: where that part writes
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # internal: time.time() limit
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps, args.search_batches, args.eval_batch_sizes = 1, [4], [1, 2]
        args.eval_steps, args.answer_tokens, args.gen_batch, args.slow_queries = 1, 3, 2, 1
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in PARTS or not seconds:
            p.error(f"--budget {item!r}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
    return args


# ----------------------------------------------------------------------------------------------------------
# shared set-up


def check_config(args: argparse.Namespace, device: torch.device) -> tuple[ReadConfig, str]:
    """The config with random initialisation and the model dtype set by the training precision rule."""
    cfg = load_config(args.config, RANDOM_INIT + list(args.overrides))
    precision = bench_scale.resolve_precision(cfg.train.precision, device)
    cfg.model.dtype = bench_scale.PRECISION_TO_DTYPE[precision]
    return cfg, precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


_PROBES: dict[str, bench_scale.PeakMemory] = {}


def reset_peak(device: torch.device) -> None:
    """Start a peak-memory window (``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS)."""
    _PROBES.setdefault(str(device), bench_scale.PeakMemory(device)).reset()


def peak_gib(device: torch.device) -> float:
    return _PROBES.setdefault(str(device), bench_scale.PeakMemory(device)).peak() / GiB


def without_targets(batch: ReadBatch) -> ReadBatch:
    return replace(batch, labels=None, gt_masks=None)


def generation_prompts(batch: ReadBatch, pad_token_id: int) -> ReadBatch:
    """The rows of a ``synthetic_batch`` cut before their answers (the first supervised token), left-padded."""
    prompts = []
    for r in range(batch.input_ids.shape[0]):
        start = int((batch.labels[r] != IGNORE_INDEX).nonzero()[0, 0])
        prompts.append(batch.input_ids[r, :start])
    length = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, length - p.numel() :] = p
        mask[r, length - p.numel() :] = 1
    return replace(batch, input_ids=ids, attention_mask=mask, labels=None, gt_masks=None)


class Recorder:
    """A part's results, rewritten to its file after every measurement (a killed part keeps what it measured)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, default=str))
            tmp.replace(self.path)


# ----------------------------------------------------------------------------------------------------------
# parts (each runs in its own process)


def part_sasp(args: argparse.Namespace, device: torch.device, rec: Recorder) -> None:
    from bench_sasp import SIZES

    from read.model.sasp import SasP

    cfg, _ = check_config(args, device)
    dtype = bench_scale.TORCH_DTYPES[cfg.model.dtype]
    sasp = SasP(cfg.sasp, clip_size=cfg.model.vision.image_size)
    n, c = cfg.model.vision.num_patches, cfg.model.text.hidden_size
    g = torch.Generator().manual_seed(args.seed)
    image = torch.randn(len(SIZES), n, c, generator=g).to(device, dtype)
    seg = torch.randn(len(SIZES), c, generator=g).to(device, dtype)
    rec["shape"] = {"batch": len(SIZES), "tokens": n, "channels": c, "dtype": cfg.model.dtype,
                    "points": cfg.sasp.num_points, "image_sizes": SIZES}  # fmt: skip

    def forward() -> None:
        with torch.no_grad():
            sasp(image, seg, SIZES)

    def backward() -> None:
        x, s = image.detach().requires_grad_(True), seg.detach().requires_grad_(True)
        sasp(x, s, SIZES).coords.sum().backward()

    for name, fn in (("forward", forward), ("forward_backward", backward)):
        fn()
        times = [timed(fn, device) for _ in range(10)]
        rec[f"{name}_ms"] = 1000 * statistics.median(times)


def part_train(args: argparse.Namespace, device: torch.device, rec: Recorder) -> None:
    from read.distributed import setup_distributed
    from read.tools.memory import StepShape, estimate_memory
    from read.training.engine import build_deepspeed_config, create_engine
    from read.training.loop import train_step

    cfg, precision = check_config(args, device)
    build_deepspeed_config(cfg.train, 1, precision)  # a bad DeepSpeed file fails here, before anything is built
    dist = setup_distributed()
    device = dist.device
    cfg.train.output_dir = tempfile.mkdtemp(prefix="gpu_check_")
    ids = bench_scale.token_ids(cfg)
    stage, offload, _ = bench_scale.deepspeed_settings(cfg)
    rec["setup"] = {"precision": precision, "zero_stage": stage, "offload_optimizer": offload,
                    "gradient_checkpointing": cfg.model.gradient_checkpointing, "lora_r": cfg.lora.r,
                    "deepspeed_config": cfg.train.deepspeed_config}  # fmt: skip
    model, build_s = bench_scale.build(cfg, ids, device)
    rec["build_s"] = build_s
    rec["memory_method"] = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the process"
    start = time.perf_counter()
    engine = create_engine(model, cfg, dist, precision)
    rec["engine_s"] = time.perf_counter() - start
    rec["trainable_parameters"] = sum(p.numel() for p in engine.module.parameters() if p.requires_grad)
    generator = torch.Generator().manual_seed(args.seed)

    def measure(batch_size: int, steps: int) -> dict[str, Any]:
        batches = [bench_scale.synthetic_batch(cfg, ids, batch_size, 1, generator) for _ in range(steps + 1)]
        seq_len = max(b.input_ids.shape[1] for b in batches)
        train_step(engine, iter(batches[:1]), device)  # warm-up (allocations, kernels)
        reset_peak(device)
        times, losses = [], []
        for b in batches[1:]:
            result: list[Any] = []
            times.append(timed(lambda: result.append(train_step(engine, iter([b]), device)), device))
            losses.append(result[0].losses["loss"])
        per_step = statistics.median(times)
        estimate = estimate_memory(cfg, ids.vocab_size, StepShape(batch_size, 1, seq_len), optimizer="deepspeed",
                                   zero_stage=stage, offload_optimizer=offload, device=device.type)  # fmt: skip
        return {
            "batch": batch_size, "steps": steps, "seq_len": seq_len, "s_per_step": per_step,
            "samples_per_s": batch_size / per_step, "tokens_per_s": batch_size * seq_len / per_step,
            "peak_gib": peak_gib(device), "estimate_gib": estimate.peak / GiB,
            "losses_finite": all(math.isfinite(x) for x in losses),
        }  # fmt: skip

    largest = measure(cfg.train.batch_size, args.train_steps)
    rec["configured_batch"] = rec["largest_batch"] = largest
    tried: list[dict[str, Any]] = []
    for batch_size in [b for b in args.search_batches if b > largest["batch"]]:
        needed = 2.5 * largest["s_per_step"] * batch_size / largest["batch"]  # warm-up + one timed step
        if args.deadline is not None and time.time() + needed > args.deadline:
            tried.append({"batch": batch_size, "status": f"not tried: it needs about {needed:.0f} s"})
            rec["search"] = tried
            break
        try:
            largest = measure(batch_size, 1)
            tried.append({"batch": batch_size, "status": "fits"})
        except OUT_OF_MEMORY as e:
            tried.append({"batch": batch_size, "status": "out of memory", "message": str(e).splitlines()[0][:300]})
            break
        finally:
            rec["search"] = tried
            rec["largest_batch"] = largest


def part_inference(args: argparse.Namespace, device: torch.device, rec: Recorder) -> None:
    cfg, precision = check_config(args, device)
    ids = bench_scale.token_ids(cfg)
    with bench_scale.creation_defaults(device, bench_scale.TORCH_DTYPES[cfg.model.dtype]):
        from read.model import build_read_model

        start = time.perf_counter()
        model = build_read_model(cfg, ids.vocab_size, seg_token_id=ids.seg, image_token_id=ids.image)
    model = model.to(device).eval()
    sync(device)
    rec["build_s"] = time.perf_counter() - start
    rec["dtype"] = cfg.model.dtype
    generator = torch.Generator().manual_seed(args.seed)

    teacher = {}
    for b in args.eval_batch_sizes:
        batches = [without_targets(bench_scale.synthetic_batch(cfg, ids, b, 1, generator)).to(device)
                   for _ in range(args.eval_steps + 1)]  # fmt: skip
        reset_peak(device)
        times = []
        with torch.no_grad():
            for i, batch in enumerate(batches):
                t = timed(lambda: model(batch, return_logits=False), device)
                if i:
                    times.append(t)
        teacher[str(b)] = {"images_per_s": b / statistics.median(times), "peak_gib": peak_gib(device)}
        rec["teacher_forced"] = teacher

    tokens = args.answer_tokens
    generation: dict[str, Any] = {"answer_tokens": tokens}

    def run_generation(label: str, batch_size: int, use_cache: bool, repeats: int) -> None:
        batches = [generation_prompts(bench_scale.synthetic_batch(cfg, ids, batch_size, 1, generator), ids.pad)
                   .to(device) for _ in range(repeats + 1)]  # fmt: skip
        times, seg_rows = [], 0
        reset_peak(device)
        for i, batch in enumerate(batches):
            out: list[Any] = []
            t = timed(
                lambda: out.append(
                    model.generate(
                        batch, max_new_tokens=tokens, eos_token_id=None, pad_token_id=ids.pad, use_cache=use_cache
                    )
                ),
                device,
            )
            new_tokens = out[0][0]
            if new_tokens.shape != (batch_size, tokens):
                raise RuntimeError(
                    f"{label}: expected {batch_size} x {tokens} new tokens, got {tuple(new_tokens.shape)}"
                )
            if i:
                times.append(t)
                seg_rows += int((new_tokens == ids.seg).any(1).sum())
        per_batch = statistics.median(times)
        generation[label] = {
            "batch": batch_size, "kv_cache": use_cache, "queries_per_s": batch_size / per_batch,
            "tokens_per_s": batch_size * tokens / per_batch, "rows_with_seg": seg_rows, "peak_gib": peak_gib(device),
        }  # fmt: skip
        rec["generation"] = generation

    with torch.no_grad():
        run_generation("reference_batch1_no_cache", 1, False, args.slow_queries)
        run_generation("kv_cache_batch1", 1, True, args.slow_queries)
        run_generation(f"kv_cache_batch{args.gen_batch}", args.gen_batch, True, 2)
    slow = generation["reference_batch1_no_cache"]["queries_per_s"]
    fast = generation[f"kv_cache_batch{args.gen_batch}"]["queries_per_s"]
    generation["speed_up"] = fast / slow
    # hours for 100k queries; the cached way's masks: one whole teacher-forced pass per query added (an upper bound:
    # it encodes the image again, and only answers with a [SEG] need it)
    mask_pass = 1.0 / teacher[str(max(args.eval_batch_sizes))]["images_per_s"]
    generation["hours_per_100k_queries"] = {
        "reference": 1e5 / slow / 3600,
        "kv_cache_with_mask_pass": 1e5 * (1.0 / fast + mask_pass) / 3600,
    }
    rec["generation"] = generation


def part_bnb(bits: int, args: argparse.Namespace, device: torch.device, rec: Recorder) -> None:
    if device.type != "cuda":
        raise SkipPart(f"{bits}-bit loading needs a CUDA GPU")
    try:
        import bitsandbytes
    except ImportError as e:
        raise SkipPart(f"bitsandbytes is not installed ({e})") from e
    from read.model import build_read_model
    from read.model.quantize import quantize_language_model

    rec["bitsandbytes"] = bitsandbytes.__version__
    cfg = load_config(args.config, RANDOM_INIT + list(args.overrides) + ["model.dtype=bfloat16"])
    ids = bench_scale.token_ids(cfg)
    start = time.perf_counter()
    with bench_scale.creation_defaults(torch.device("cpu"), torch.bfloat16):  # as chat.py: loaded on the host
        model = build_read_model(cfg, ids.vocab_size, seg_token_id=ids.seg, image_token_id=ids.image)
    rec["build_on_host_s"] = time.perf_counter() - start
    reset_peak(device)
    start = time.perf_counter()
    rec["layers_quantised"] = quantize_language_model(model, bits, device)
    model.to(device).eval()
    sync(device)
    rec["quantise_s"] = time.perf_counter() - start
    rec["weights_gib"] = torch.cuda.memory_allocated(device) / GiB  # the quantised LM, CLIP, SAM and the head
    batch = generation_prompts(bench_scale.synthetic_batch(cfg, ids, 1, 1, torch.Generator().manual_seed(0)), ids.pad)
    out: list[Any] = []
    with torch.no_grad():
        seconds = timed(lambda: out.append(model.generate(batch.to(device), max_new_tokens=8, eos_token_id=None,
                                                          pad_token_id=ids.pad)), device)  # fmt: skip
    new_tokens, masks = out[0]
    rec["answer"] = {"seconds": seconds, "tokens": new_tokens[0].tolist(), "masks": [int(m.shape[0]) for m in
                     masks.pred_masks], "peak_gib": peak_gib(device)}  # fmt: skip


class SkipPart(Exception):
    """The part cannot run here (no GPU, package missing); recorded as skipped, not as an error."""


def run_part_here(args: argparse.Namespace) -> int:
    """Child process: run ``args.part``, writing its results and status to ``args.result``."""
    rec = Recorder(args.result)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    parts: dict[str, Callable[[], None]] = {
        "sasp": lambda: part_sasp(args, device, rec),
        "train": lambda: part_train(args, device, rec),
        "inference": lambda: part_inference(args, device, rec),
        "bnb_8bit": lambda: part_bnb(8, args, device, rec),
        "bnb_4bit": lambda: part_bnb(4, args, device, rec),
    }
    try:
        parts[args.part]()
    except SkipPart as e:
        rec["status"] = "skipped"
        rec["reason"] = str(e)
        return 0
    except BaseException as e:  # every failure becomes the part's entry
        rec["status"] = "error"
        rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        rec["traceback"] = traceback.format_exc().splitlines()[-12:]
        return 1
    rec["status"] = "ok"
    return 0


# ----------------------------------------------------------------------------------------------------------
# the driver


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            card=props.name,
            memory_gib=round(props.total_memory / GiB, 1),
            capability=f"sm_{props.major}{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            env["driver"] = f"unknown ({type(e).__name__})"
    else:
        env["card"] = f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    for name in PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    return env


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (a part started with ``start_new_session``)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state ppid pgrp session
            if int(fields[3]) == sid:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
    try:
        os.killpg(sid, signal.SIGKILL)
    except OSError:
        pass


def run_part(name: str, args: argparse.Namespace, argv: list[str], limit: float, workdir: Path) -> dict[str, Any]:
    """Run one part in a child process with a time limit; returns its entry."""
    result = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    deadline = time.time() + limit
    # the part's own flags first: argv may end with "--" and config overrides
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--result", str(result),
               "--deadline", f"{deadline - 5:.1f}", *argv]  # fmt: skip
    start = time.perf_counter()
    entry: dict[str, Any]
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            code = child.wait(timeout=max(limit, 1.0))
        except subprocess.TimeoutExpired:
            kill_session(child.pid)  # the part and anything it started (build tools start their own groups)
            child.wait()
            code = None
    seconds = time.perf_counter() - start
    entry = json.loads(result.read_text()) if result.is_file() else {}
    if code is None:
        entry["status"] = "timeout"
        entry["error"] = f"stopped after its limit of {limit:.0f} s; the figures above were measured before"
    elif "status" not in entry:
        entry["status"] = "error"
        entry["error"] = f"the part ended with exit code {code} without a result (killed?)"
    if entry["status"] in ("timeout", "error"):
        entry["log_tail"] = log.read_text(errors="replace").strip().splitlines()[-15:]
    entry["seconds"] = round(seconds, 1)
    entry["limit_s"] = round(limit, 1)
    return entry


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few readable lines of the main figures."""
    env, parts = report["environment"], report["parts"]
    lines = [f"card: {env.get('card')}; torch {env['torch']} (CUDA {env['cuda']}); transformers "
             f"{env['transformers']}; deepspeed {env['deepspeed']}; bitsandbytes {env['bitsandbytes']}"]  # fmt: skip
    for name, entry in parts.items():
        status = entry["status"] + (f": {entry.get('error') or entry.get('reason')}" if entry["status"] != "ok" else "")
        lines.append(f"{name:<10} {status} ({entry['seconds']} s of {entry['limit_s']} s)")
    train = parts.get("train", {})
    for key in ("configured_batch", "largest_batch"):
        if key in train:
            t = train[key]
            lines.append(f"  train batch {t['batch']}: {t['samples_per_s']:.2f} samples/s, {t['tokens_per_s']:.0f} "
                         f"tokens/s, peak {t['peak_gib']:.2f} GiB (estimate {t['estimate_gib']:.2f} GiB)")  # fmt: skip
    inference = parts.get("inference", {})
    for b, t in inference.get("teacher_forced", {}).items():
        lines.append(f"  teacher-forced evaluation batch {b}: {t['images_per_s']:.2f} images/s")
    for label, g in inference.get("generation", {}).items():
        if isinstance(g, dict) and "queries_per_s" in g:
            lines.append(f"  generation {label}: {g['queries_per_s']:.3f} queries/s, {g['tokens_per_s']:.1f} tokens/s")
    if "speed_up" in inference.get("generation", {}):
        gen = inference["generation"]
        hours = gen["hours_per_100k_queries"]
        lines.append(f"  generation speed-up x{gen['speed_up']:.1f}; 100k queries: {hours['reference']:.1f} h "
                     f"the reference's way, {hours['kv_cache_with_mask_pass']:.1f} h with the KV cache")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.part:
        sys.exit(run_part_here(args))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budgets = dict(BUDGETS)
    budgets.update({name: float(s) for name, _, s in (b.partition("=") for b in args.budget)})
    out = Path(args.out) if args.out else ROOT / "runs" / "gpu_check" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "config": args.config,
                              "overrides": args.overrides, "environment": environment(device), "parts": {}}  # fmt: skip
    end = time.time() + args.total_budget
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in args.parts:
            left = end - time.time()
            if left < 10:
                report["parts"][name] = {"status": "timeout", "error": "no time left in --total_budget",
                                         "seconds": 0.0, "limit_s": 0.0}  # fmt: skip
            else:
                report["parts"][name] = run_part(name, args, argv, min(budgets[name], left), Path(tmp))
            print(f"{name}: {report['parts'][name]['status']} ({report['parts'][name]['seconds']} s)", flush=True)
            out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["total_seconds"] = round(time.time() - (end - args.total_budget), 1)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    print("\n".join(summary_lines(report)))
    print(f"summary written to {out}")
    return report


if __name__ == "__main__":
    main()
