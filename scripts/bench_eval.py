"""Evaluation throughput (images/s) at batch 1 and batch 8, measured in one process on the same data and model.

    python scripts/bench_eval.py                       # default bench model, synthetic ReasonSeg-format images
    python scripts/bench_eval.py --tiny                # the unit tests' model
    python scripts/bench_eval.py --config configs/x.yaml --images 64 --mode generate --threads 2

The model has random weights (speed does not depend on them): by default a small READ with CLIP 224/16 (196 image
tokens), a 3-layer LLaMA at width 192 and a 2-block SAM at 224 px; ``--tiny`` uses the unit tests' model and
``--config`` any config. The
images come from ``read.data.synthetic`` (160 px scenes, ReasonSeg format), written to a temporary folder. The whole
``read.evaluation.evaluate`` path is timed: reading and preprocessing, tokenisation, encoders, language model, SasP,
mask decoding (one mask-decoder call for all ``[SEG]`` of a batch), metrics and the per-query records file. Batch
sizes alternate over ``--repeats`` rounds so that load from other processes hits both alike; the report gives each
batch size's median rate and the median of the per-round speed-ups (each round's rates are measured back to back,
so a slow spell of a shared machine cancels out of its ratio). Data loading runs in the timed process unless
``--num_workers`` says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from read.config import load_config  # noqa: E402
from read.data.eval_sets import build_eval_dataset  # noqa: E402
from read.data.synthetic import make_synthetic  # noqa: E402
from read.evaluation import EvalConfig, evaluate  # noqa: E402
from read.model import build_read_model  # noqa: E402
from read.tokenizer import ReadTokenizer  # noqa: E402

BENCH_SIZES = [
    "model.text.hidden_size=192", "model.text.intermediate_size=512", "model.text.num_hidden_layers=3",
    "model.text.num_attention_heads=4", "model.text.num_key_value_heads=4",
    "model.vision.image_size=224", "model.vision.patch_size=16", "model.vision.hidden_size=192",
    "model.vision.intermediate_size=768", "model.vision.num_hidden_layers=2", "model.vision.num_attention_heads=4",
    "model.sam.image_size=224", "model.sam.patch_size=16", "model.sam.encoder_embed_dim=96",
    "model.sam.encoder_depth=2", "model.sam.encoder_num_heads=4", "model.sam.encoder_window_size=7",
    "model.sam.prompt_embed_dim=64", "model.sam.decoder_mlp_dim=256", "model.sam.decoder_num_heads=4",
    "model.out_dim=64", "sasp.num_points=30", "sasp.down_sample=2",
]  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="model config (default: the bench sizes on configs/tiny_test.yaml)")
    p.add_argument("--tiny", action="store_true", help="the unit tests' model (configs/tiny_test.yaml) as it is")
    p.add_argument("--tokenizer", default=str(ROOT / "tests" / "assets" / "tiny_tokenizer"))
    p.add_argument("--images", type=int, default=192, help="images per timed run (longer runs average out noise)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--mode", choices=("teacher", "generate"), default="teacher")
    p.add_argument("--max_new_tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 0 = torch's default (on a small shared CPU, 1 is the most repeatable)",
    )
    p.add_argument(
        "--num_workers",
        type=int,
        default=0,
        help="DataLoader workers (reading, preprocessing, tokenising); 0 (default) keeps them in the timed process. "
        "At the tiny model's speed a worker's inter-process transfer costs more than it saves on 2 cores",
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = load_config(ROOT / "configs" / "tiny_test.yaml", [] if args.tiny else BENCH_SIZES)
    tokenizer = ReadTokenizer.from_pretrained(args.tokenizer)
    model = build_read_model(
        cfg, len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
    ).eval()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic(tmp, 0, args.images, 0, seed=0)
        dataset = build_eval_dataset(tmp, "ReasonSeg", "val", generation=args.mode == "generate")

        def run(batch_size: int, images: int | None = None) -> float:
            subset = dataset
            if images is not None:
                subset = type(dataset).__new__(type(dataset))
                subset.__dict__.update(dataset.__dict__, images=dataset.images[:images])
            eval_cfg = EvalConfig(
                mode=args.mode, batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                num_workers=args.num_workers, output_dir=str(Path(tmp) / f"out{batch_size}"), resume=False,
            )  # fmt: skip
            start = time.perf_counter()
            evaluate(model, tokenizer, subset, eval_cfg)
            return len(subset) / (time.perf_counter() - start)

        for b in args.batch_sizes:  # warm-up: allocator, kernels, lazy imports
            run(b, images=min(len(dataset), 2 * b))
        rates: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
        for _ in range(args.repeats):
            for b in args.batch_sizes:
                rates[b].append(run(b))

    print(
        f"model: {params / 1e6:.2f}M parameters, {cfg.model.vision.num_patches} image tokens, "
        f"SAM {cfg.model.sam.image_size}px; {args.images} images (160 px); mode {args.mode}; "
        f"threads {torch.get_num_threads()}; workers {args.num_workers}"
    )
    first = args.batch_sizes[0]
    base = statistics.median(rates[first])
    for b in args.batch_sizes:
        med = statistics.median(rates[b])
        runs = ", ".join(f"{r:.2f}" for r in rates[b])
        print(f"batch {b:>3}: {med:7.2f} images/s (median of {args.repeats}: {runs})  x{med / base:.2f}")
    for b in args.batch_sizes[1:]:
        ratios = [fast / slow for fast, slow in zip(rates[b], rates[first])]
        runs = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"batch {b:>3} vs {first}: x{statistics.median(ratios):.2f} (median of the per-round speed-ups: {runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
