"""Speed and peak memory of READ at real input sizes, with random weights, next to the analytic estimate.

    python scripts/bench_scale.py --config configs/bench_mid_cpu.yaml --steps 3 --eval_steps 3
    python scripts/bench_scale.py --config configs/read_7b_reasonseg.yaml --steps 10 --eval_steps 10   # on a GPU
    python scripts/bench_scale.py --config configs/read_13b_reasonseg.yaml --estimate_only --device cuda  # anywhere

The model is built from the config with random weights (nothing is downloaded; on CUDA it is created directly on
the GPU in the training dtype), prepared for training exactly as the trainer does (LoRA, trainable set, gradient
checkpointing) and cast to ``train.precision`` (``auto``: bf16 on CUDA, fp32 on the CPU). Without a configured
tokenizer the vocabulary is ``model.text.vocab_size`` + 4 (32004 for LLaMA) with ``[SEG]`` = 32000 and the image
placeholder = 32003.

Inputs are synthetic but of the real shapes: B images (480x640-like original sizes, the configured CLIP and SAM
input sizes), one query row per image (``--rows_per_image``) made of a prompt of 60-120 text tokens around the
576 (= (336/14)^2) image placeholders and a short answer with one ``[SEG]``, and one ground-truth mask per ``[SEG]``.

Phases: ``--eval_steps`` no-grad forwards (``model.eval()``), then ``--steps`` training steps (forward, backward,
gradient clipping at ``train.grad_clip``, ``torch.optim.AdamW`` over the trainable parameters). ``--warmup`` untimed
steps precede each phase. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the peak resident set
size on the CPU (``VmHWM``, reset per phase through ``/proc/self/clear_refs`` where Linux allows it, otherwise
``resource.getrusage``'s lifetime peak), reported above the RSS of the process before the model was built.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from read.batch import ReadBatch  # noqa: E402
from read.config import ReadConfig, load_config  # noqa: E402
from read.constants import IGNORE_INDEX  # noqa: E402
from read.model import ReadModel, build_read_model  # noqa: E402
from read.model.trainable import GROUPS, prepare_for_training  # noqa: E402
from read.tools.memory import (  # noqa: E402
    MemoryEstimate,
    StepShape,
    count_parameters,
    estimate_memory,
    format_bytes,
    measured_parameter_counts,
)

PRECISION_TO_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMAGE_SIZES = [(480, 640), (640, 480), (375, 500), (427, 640)]  # (H, W), COCO-like
SYSTEM_TOKENS = 36  # llava_v1 system prompt + "USER:" under the LLaMA tokenizer, about
TEXT_TOKENS = (60, 120)  # prompt text tokens per row (everything but the image placeholders), ReasonSeg-like
ANSWER_TOKENS = (3, 10)  # answer tokens before "[SEG]"


@dataclass(frozen=True)
class TokenIds:
    vocab_size: int
    seg: int
    im_start: int
    im_end: int
    image: int
    bos: int = 1
    eos: int = 2
    pad: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (e.g. configs/bench_mid_cpu.yaml)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--eval_steps", type=int, default=3, help="timed no-grad evaluation steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each phase")
    parser.add_argument("--batch_size", type=int, default=None, help="images per step (default: train.batch_size)")
    parser.add_argument("--rows_per_image", type=int, default=1, help="query rows (conversations) per image")
    parser.add_argument("--device", default=None, help="cuda / cuda:N / cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world_size", type=int, default=1, help="for the DeepSpeed estimate only")
    parser.add_argument("--estimate_only", action="store_true", help="print the analytic estimate, build nothing")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. lora.train_embeddings=new_rows)")
    args = parser.parse_args(argv)
    for key in ("steps", "eval_steps", "warmup", "rows_per_image", "world_size"):
        if getattr(args, key) < 0 or (key in ("rows_per_image", "world_size") and getattr(args, key) < 1):
            parser.error(f"--{key} must be {'>= 1' if key in ('rows_per_image', 'world_size') else '>= 0'}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


# ----------------------------------------------------------------------------------------------------------
# set-up


def resolve_precision(precision: str, device: torch.device) -> str:
    """The trainer's rule: ``auto`` is bf16 on CUDA and fp32 elsewhere; fp16 needs CUDA."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return precision


def token_ids(cfg: ReadConfig) -> TokenIds:
    """Ids from the configured tokenizer, or the LLaMA layout (base vocabulary + [SEG], <im_start>, <im_end>,
    <image>) when none is configured."""
    if cfg.model.tokenizer_path:
        from read.tokenizer import ReadTokenizer

        tok = ReadTokenizer.from_pretrained(cfg.model.tokenizer_path)
        return TokenIds(
            len(tok),
            tok.seg_token_id,
            tok.im_start_token_id,
            tok.im_end_token_id,
            tok.image_token_id,
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
    base = cfg.model.text.vocab_size
    return TokenIds(base + 4, base, base + 1, base + 2, base + 3)


@contextmanager
def creation_defaults(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create tensors on ``device`` in ``dtype`` (what transformers' ``from_config(dtype=...)`` does): a 13B model
    is initialised directly on the GPU in bf16 instead of in fp32 on the host."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build(cfg: ReadConfig, ids: TokenIds, device: torch.device) -> tuple[ReadModel, float]:
    """Random-weight model, prepared for training; returns it and the build time in seconds."""
    start = time.perf_counter()
    with creation_defaults(device, TORCH_DTYPES[cfg.model.dtype]):
        model = build_read_model(cfg, ids.vocab_size, seg_token_id=ids.seg, image_token_id=ids.image)
    prepare_for_training(model, cfg)
    model.to(device)
    _sync(device)
    return model, time.perf_counter() - start


def synthetic_batch(
    cfg: ReadConfig, ids: TokenIds, batch_size: int, rows_per_image: int, generator: torch.Generator
) -> ReadBatch:
    """A right-padded batch of the real shapes (see the module docstring), on the CPU."""
    n_img = cfg.model.vision.num_patches
    s_clip, s_sam = cfg.model.vision.image_size, cfg.model.sam.image_size
    text_vocab = min(cfg.model.text.vocab_size, ids.vocab_size) - 3  # ordinary pieces, ids 3..

    def words(n: int) -> list[int]:
        return (torch.randint(0, text_vocab, (n,), generator=generator) + 3).tolist()

    def between(lo_hi: tuple[int, int]) -> int:
        return int(torch.randint(lo_hi[0], lo_hi[1] + 1, (1,), generator=generator))

    rows, answer_starts, image_index = [], [], []
    for b in range(batch_size):
        for _ in range(rows_per_image):
            n_text = between(TEXT_TOKENS)
            n_question = max(n_text - SYSTEM_TOKENS - 3, 1)
            prompt = [ids.bos] + words(SYSTEM_TOKENS) + [ids.im_start] + [ids.image] * n_img + [ids.im_end]
            prompt += words(n_question)
            answer = words(between(ANSWER_TOKENS)) + [ids.seg] + words(1) + [ids.eos]
            rows.append(prompt + answer)
            answer_starts.append(len(prompt))
            image_index.append(b)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), ids.pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, (r, a) in enumerate(zip(rows, answer_starts)):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
        labels[i, a : len(r)] = input_ids[i, a : len(r)]
    sizes = [IMAGE_SIZES[b % len(IMAGE_SIZES)] for b in range(batch_size)]
    resized = [(int(h * s_sam / max(h, w) + 0.5), int(w * s_sam / max(h, w) + 0.5)) for h, w in sizes]
    sam_images = torch.zeros(batch_size, 3, s_sam, s_sam)
    for b, (h, w) in enumerate(resized):
        sam_images[b, :, :h, :w] = torch.randn(3, h, w, generator=generator)
    gt_masks = []
    for i in image_index:
        h, w = sizes[i]
        m = torch.zeros(1, h, w, dtype=torch.uint8)
        m[:, h // 4 : h // 4 + h // 3, w // 3 : w // 3 + w // 4] = 1
        gt_masks.append(m)
    return ReadBatch(
        pixel_values=torch.randn(batch_size, 3, s_clip, s_clip, generator=generator),
        sam_images=sam_images,
        input_ids=input_ids,
        attention_mask=attention,
        image_index=torch.tensor(image_index),
        original_sizes=sizes,
        resized_sizes=resized,
        labels=labels,
        gt_masks=gt_masks,
    )


# ----------------------------------------------------------------------------------------------------------
# memory probes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_now() -> int:
    return _proc_status("VmRSS")


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` value in bytes (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak memory of one phase: CUDA allocated bytes, or the process's peak RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.method = "peak RSS (VmHWM, reset per phase)"
        except OSError:
            self.method = "peak RSS (getrusage, process lifetime)"

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        hwm = _proc_status("VmHWM") if "VmHWM" in self.method else 0
        return hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------------------
# phases


def run_eval(model: ReadModel, batches: list[ReadBatch], warmup: int, device: torch.device) -> list[float]:
    """No-grad forwards; returns the timed step durations (the first ``warmup`` are untimed)."""
    model.eval()
    times = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            _sync(device)
            start = time.perf_counter()
            out = model(batch)
            del out
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def run_train(
    model: ReadModel, cfg: ReadConfig, batches: list[ReadBatch], warmup: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Training steps with AdamW over the trainable parameters; returns (timed durations, all losses)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay
    )
    times, losses = [], []
    for i, batch in enumerate(batches):
        _sync(device)
        start = time.perf_counter()
        out = model(batch)
        out.loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        del out
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    del optimizer
    return times, losses


# ----------------------------------------------------------------------------------------------------------
# report


def deepspeed_settings(cfg: ReadConfig) -> tuple[int, bool, str]:
    """(ZeRO stage, optimiser offload, source) from ``train.deepspeed_config`` (stage 2 when it is missing)."""
    path = Path(cfg.train.deepspeed_config)
    if not path.is_absolute():
        path = ROOT / path
    if not path.is_file():
        return 2, False, f"{cfg.train.deepspeed_config} (missing: assumed ZeRO-2)"
    zero = json.loads(path.read_text()).get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    return int(zero.get("stage", 0)), offload, cfg.train.deepspeed_config


def table(rows: list[tuple[Any, ...]], header: tuple[str, ...], numeric: bool = True) -> str:
    """Plain-text table; columns after the first are right-aligned when ``numeric``."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: tuple[Any, ...]) -> str:
        cells = [str(c).rjust(w) if j and numeric else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *[line(r) for r in rows]])


def estimate_rows(
    cfg: ReadConfig, vocab: int, shape: StepShape, world_size: int, device: str
) -> tuple[str, dict[str, MemoryEstimate]]:
    """The estimate table: evaluation, this script's training step, and DeepSpeed training as configured."""
    stage, offload, source = deepspeed_settings(cfg)
    ds_label = f"train (DeepSpeed ZeRO-{stage}{' +offload' if offload else ''}, world {world_size})"
    estimates = {
        "eval": estimate_memory(cfg, vocab, shape, training=False, device=device),
        "train (torch AdamW)": estimate_memory(cfg, vocab, shape, device=device),
        ds_label: estimate_memory(
            cfg,
            vocab,
            shape,
            optimizer="deepspeed",
            zero_stage=stage,
            world_size=world_size,
            offload_optimizer=offload,
            device=device,
        ),
    }
    labels = [label for label, _ in next(iter(estimates.values())).rows()]
    rows = [(label, *[format_bytes(dict(e.rows())[label]) for e in estimates.values()]) for label in labels]
    toggled = copy.deepcopy(cfg)
    toggled.model.gradient_checkpointing = not cfg.model.gradient_checkpointing
    other = estimate_memory(toggled, vocab, shape, device=device)
    rows.insert(
        4,
        (
            f"  (activations with checkpointing {'on' if toggled.model.gradient_checkpointing else 'off'})",
            "-",
            format_bytes(other.activations),
            format_bytes(other.activations),
        ),
    )
    notes = sorted({n for e in estimates.values() for n in e.notes})
    text = (
        table(rows, ("estimate", *estimates))
        + f"\n(DeepSpeed settings from {source}"
        + "".join(f"; {n}" for n in notes)
        + ")"
    )
    return text, estimates


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(cfg.train.precision, device)
    cfg.model.dtype = PRECISION_TO_DTYPE[precision]  # the trainer casts the model to train.precision
    batch_size = args.batch_size or cfg.train.batch_size
    ids = token_ids(cfg)
    generator = torch.Generator().manual_seed(args.seed)
    n_eval, n_train = args.warmup + args.eval_steps, args.warmup + args.steps
    batches = [
        synthetic_batch(cfg, ids, batch_size, args.rows_per_image, generator) for _ in range(max(n_eval, n_train, 1))
    ]
    seq_len = max(b.input_ids.shape[1] for b in batches)
    shape = StepShape(batch_size=batch_size, rows_per_image=args.rows_per_image, seq_len=seq_len)
    formula = count_parameters(cfg, ids.vocab_size)

    settings = [
        ("config", args.config + (" " + " ".join(args.overrides) if args.overrides else "")),
        ("device", f"{device.type} (estimate only)" if args.estimate_only else _device_name(device)),
        ("torch / transformers", _versions()),
        ("precision (weights)", f"{precision} ({cfg.model.dtype}; SAM prompt encoder fp32)"),
        ("attn_implementation", cfg.model.attn_implementation),
        ("gradient_checkpointing", str(cfg.model.gradient_checkpointing)),
        (
            "lora",
            f"r={cfg.lora.r} {','.join(cfg.lora.target_modules)} dropout={cfg.lora.dropout}"
            if cfg.lora.enabled
            else "off",
        ),
        ("train_embeddings", cfg.lora.train_embeddings),
        ("sasp", f"{cfg.sasp.num_points} points" if cfg.sasp.enabled else "off (LISA)"),
        ("images x rows/image", f"{batch_size} x {args.rows_per_image}"),
        (
            "CLIP / SAM input",
            f"{cfg.model.vision.image_size} ({cfg.model.vision.num_patches} image tokens) / {cfg.model.sam.image_size}",
        ),
        (
            "row length (tokens)",
            f"{min(b.attention_mask.sum(1).min().item() for b in batches)}-{seq_len} (padded to <= {seq_len})",
        ),
        ("vocabulary", f"{ids.vocab_size} ([SEG]={ids.seg}, <image>={ids.image})"),
        ("parameters (total / trainable)", f"{sum(formula.values()):,} / {_trainable(cfg, formula):,}"),
        ("steps (eval / train, + warmup)", f"{args.eval_steps} / {args.steps} (+{args.warmup} each)"),
    ]
    estimate_text, estimates = estimate_rows(cfg, ids.vocab_size, shape, args.world_size, device.type)
    result: dict[str, Any] = {
        "settings": dict(settings),
        "parameters": formula,
        "estimate_bytes": {k: dict(v.rows()) for k, v in estimates.items()},
    }
    print(f"== READ scale benchmark ==\n{table(settings, ('setting', 'value'), numeric=False)}\n")
    if args.estimate_only:
        print(table([(g, f"{formula[g]:,}") for g in GROUPS], ("parameter group", "count (formula)")) + "\n")
        print(estimate_text)
        _write_json(args.json, result)
        return result

    probe = PeakMemory(device)
    baseline = _rss_now() if device.type == "cpu" else 0
    model, build_s = build(cfg, ids, device)
    built = measured_parameter_counts(model)
    mismatch = [g for g in GROUPS if built[g] != formula[g]]
    batches = [b.to(device) for b in batches]

    probe.reset()
    eval_times = run_eval(model, batches[:n_eval], args.warmup, device)
    eval_peak = probe.peak()
    probe.reset()
    train_times, losses = run_train(model, cfg, batches[:n_train], args.warmup, device)
    train_peak = probe.peak()

    def speed(times: list[float]) -> tuple[str, str, str]:
        if not times:
            return "-", "-", "-"
        per_step = sum(times) / len(times)
        return f"{per_step:.2f}", f"{batch_size / per_step:.3f}", f"{shape.rows * seq_len / per_step:.0f}"

    over = baseline if device.type == "cpu" else 0
    perf = [
        (
            "eval",
            len(eval_times),
            *speed(eval_times),
            format_bytes(eval_peak - over),
            format_bytes(estimates["eval"].peak),
        ),
        (
            "train",
            len(train_times),
            *speed(train_times),
            format_bytes(train_peak - over),
            format_bytes(estimates["train (torch AdamW)"].peak),
        ),
    ]
    what = probe.method + (f", minus {format_bytes(baseline)} RSS before the build" if over else "")
    print(table(perf, ("phase", "steps", "s/step", "samples/s", "tokens/s", "peak memory", "estimate")))
    print(f"(peak memory: {what}; build {build_s:.1f} s; losses {', '.join(f'{x:.3f}' for x in losses)})\n")
    print(estimate_text)
    print(
        "parameter counts: formula == built model for every group"
        if not mismatch
        else "parameter count MISMATCH: "
        + ", ".join(f"{g} formula {formula[g]:,} built {built[g]:,}" for g in mismatch)
    )
    result.update(
        build_s=build_s,
        eval_s_per_step=eval_times,
        train_s_per_step=train_times,
        losses=losses,
        eval_peak_bytes=eval_peak - over,
        train_peak_bytes=train_peak - over,
        memory_method=what,
        parameter_mismatch=mismatch,
    )
    _write_json(args.json, result)
    return result


def _trainable(cfg: ReadConfig, formula: dict[str, int]) -> int:
    from read.model.trainable import trainable_groups

    return sum(formula[g] for g in trainable_groups(cfg))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        flash = torch.backends.cuda.flash_sdp_enabled() and props.major >= 8
        sdpa = "yes" if flash else "no"
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, flash SDPA {sdpa})"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _versions() -> str:
    import transformers

    return f"{torch.__version__} / {transformers.__version__}"


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
