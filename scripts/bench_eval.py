"""Evaluation throughput (images/s) at batch 1 and batch 8, measured in one process on the same data and model.

    python scripts/bench_eval.py                       # default bench model, synthetic ReasonSeg-format images
    python scripts/bench_eval.py --tiny                # the unit tests' model
    python scripts/bench_eval.py --config configs/bench_mid_cpu.yaml --mode generate --images 16 --repeats 3

``--mode generate`` compares generation-mode evaluation against the reference's way of decoding (batch 1, no KV
cache: every step runs the language model over the whole sequence) in the same run: the reference's way first, then
the KV cache at each of ``--batch_sizes``. The random model is first edited so that it answers like a trained one,
with clear margins (:func:`script_answers`): about half of the questions get a ``--seg_answer``-token answer that
ends in ``[SEG]`` + EOS, the others a ``--other_answer``-token answer without ``[SEG]`` (lengths EOS included,
e.g. "Sure, it is [SEG]." and a false-premise correction). Every variant must write exactly the same records
(generated text, mask RLE, points, counts); the benchmark stops with an error otherwise.

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
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from read.batch import ReadBatch  # noqa: E402
from read.config import load_config  # noqa: E402
from read.data.collate import ReadCollator  # noqa: E402
from read.data.eval_sets import build_eval_dataset  # noqa: E402
from read.data.synthetic import make_synthetic  # noqa: E402
from read.evaluation import EvalConfig, evaluate  # noqa: E402
from read.model import ReadModel, build_read_model  # noqa: E402
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
    p.add_argument(
        "--max_new_tokens", type=int, default=32, help="generation budget (the scripted answers are shorter)"
    )
    p.add_argument("--seg_answer", type=int, default=7, help="generate: tokens of the scripted answer with [SEG]")
    p.add_argument("--other_answer", type=int, default=18, help="generate: tokens of the answer without [SEG]")
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


@torch.no_grad()
def script_answers(
    model: ReadModel,
    calibration: ReadBatch,
    *,
    token_pool: list[int],
    eos_token_id: int,
    seg_answer: int,
    other_answer: int,
) -> list[list[int]]:
    """Edit a random model so that greedy decoding gives one of two fixed answers, with clear margins.

    A random model's next-token scores are close together, so two decoders whose arithmetic differs in the last
    bits (a KV cache, padding) can pick different tokens. A trained model is confident; this edit makes the random
    one confident too, so that comparisons of decoders are exact:

    * the last prompt token and every answer token get an embedding along its own direction u_t (orthonormal
      directions, 50 times the size of the residual stream), so the last-layer state at that position points
      along u_t;
    * ``lm_head``'s row of the token that follows t in the script gets a large component along u_t;
    * the first answer token is chosen by the prompt: the two first tokens' rows get +-k d, where d splits the
      calibration prompts' last states at a wide gap near their median (about half of them each way).

    Answers: ``seg_answer`` tokens ``w_1 .. w_{n-2}, [SEG], EOS`` or ``other_answer`` tokens ``v_1 .. v_{m-1}, EOS``,
    with w, v from ``token_pool`` (tokens that no prompt contains).

    Arguments:
        model: a random-weight model (edited in place).
        calibration: (K >= 2 rows) left-padded generation prompts that all end with the same token.
        token_pool: candidate answer tokens.

    Returns:
        the two scripts (token ids, EOS included): with ``[SEG]`` first, then without.

    Raises:
        ValueError: the lengths or the pool do not allow the scripts; RuntimeError: the edited model does not follow
        them on the calibration prompts.
    """
    if seg_answer < 3 or other_answer < 2:
        raise ValueError("--seg_answer must be >= 3 and --other_answer >= 2 (EOS included)")
    words = seg_answer - 2 + other_answer - 1
    if len(token_pool) < words:
        raise ValueError(f"need {words} answer tokens that no prompt contains, found {len(token_pool)}")
    last = calibration.input_ids[:, -1]
    if calibration.input_ids.shape[0] < 2 or not bool((last == last[0]).all()):
        raise ValueError("the calibration prompts must be at least 2 rows ending with the same token")
    seg = model.seg_token_id
    seg_words, other_words = token_pool[: seg_answer - 2], token_pool[seg_answer - 2 : words]
    scripts = [seg_words + [seg, eos_token_id], other_words + [eos_token_id]]
    anchor = int(last[0])
    directed = [anchor, *seg_words, seg, *other_words]
    lm = model.llava.model.language_model
    embed = model.llava.get_input_embeddings().weight
    head = model.llava.lm_head.weight
    width = embed.shape[1]
    basis = torch.linalg.qr(torch.randn(width, len(directed), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64)).Q.T  # (D, C) orthonormal rows  # fmt: skip
    u = {t: basis[i] for i, t in enumerate(directed)}
    features = model.encode_images(calibration.pixel_values)[calibration.image_index]

    def last_states() -> tuple[Tensor, Tensor]:
        residual: list[Tensor] = []
        hook = lm.norm.register_forward_pre_hook(lambda m, a: residual.append(a[0][:, -1].double()))
        try:
            states = model.language_forward(calibration.input_ids, calibration.attention_mask, features)[:, -1]
        finally:
            hook.remove()
        return states.double(), residual[0]

    _, residual = last_states()
    size = 50.0 * float(residual.norm(dim=-1).max())
    for t in directed:
        embed[t] = (size * u[t]).to(embed.dtype)
    states, _ = last_states()  # (K, C), now pointing along u[anchor]
    gamma = states @ u[anchor]  # (K,)
    others = (states @ head.double().T).max(-1).values  # the random model's best scores
    d = states - states.mean(0)
    d = d - (d @ basis.T) @ basis  # orthogonal to every scripted direction
    direction = torch.linalg.svd(d, full_matrices=False).Vh[0]
    q = (states @ direction) / gamma  # the split variable, scale-free
    order = q.sort().values
    n = order.numel()
    lo, hi = n // 4, max(n // 4 + 1, n - n // 4 - 1)
    gaps = order[lo + 1 : hi + 1] - order[lo:hi]
    i = lo + int(gaps.argmax())
    cut, half_gap = float(order[i] + order[i + 1]) / 2, float(gaps.max()) / 2
    if half_gap <= 0:
        raise RuntimeError("the calibration prompts do not differ: cannot split them")
    k = 10.0 / (half_gap * float(gamma.min()))  # first-token margin >= 20 on the calibration prompts
    base = (float(others.max()) + 10.0) / float(gamma.min())  # both first tokens beat every other token
    split = k * (direction - cut * u[anchor])
    head[seg_words[0]] += (base * u[anchor] + split).to(head.dtype)
    head[other_words[0]] += (base * u[anchor] - split).to(head.dtype)
    # within the answers: the state at token t points along u[t]; off that direction it is ~1/50 of its size
    stray = k * float(gamma.max()) / 25.0
    strength = (float(others.max()) + 2.0 * stray + 20.0) / float(gamma.min())
    for script in scripts:
        for a, b in zip(script[:-1], script[1:]):
            head[b] += (strength * u[a]).to(head.dtype)
    tokens, _ = model.generate(calibration, max_new_tokens=max(seg_answer, other_answer) + 1,
                               eos_token_id=eos_token_id, image_features=None)  # fmt: skip
    for row in tokens.tolist():
        answer = row[: row.index(eos_token_id) + 1] if eos_token_id in row else row
        if answer not in scripts:
            raise RuntimeError(f"the edited model does not follow the scripted answers: {answer} not in {scripts}")
    return scripts


def answer_pool(dataset: Any, collator: ReadCollator, tokenizer: ReadTokenizer) -> list[int]:
    """Ordinary tokens (no special ones) that none of ``dataset``'s prompts contains, highest ids first."""
    used: set[int] = set()
    for i in range(len(dataset)):
        for query in dataset[i].queries:
            used.update(collator.encode_query(query).input_ids)
    special = {
        tokenizer.seg_token_id,
        tokenizer.image_token_id,
        tokenizer.im_start_token_id,
        tokenizer.im_end_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
    }
    return [t for t in range(tokenizer.seg_token_id - 1, 2, -1) if t not in used and t not in special]


def read_records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "predictions.jsonl").read_text().splitlines()]


def check_same_records(
    records: list[dict[str, Any]], reference: list[dict[str, Any]] | None, label: str
) -> list[dict[str, Any]]:
    """``records`` becomes the reference when there is none; otherwise they must equal it (exit 1 naming the first
    query and the fields that differ)."""
    if reference is None:
        return records
    if records != reference:
        if len(records) != len(reference):
            raise SystemExit(f"error: {label} wrote {len(records)} records, the reference's way {len(reference)}")
        a, b = next((a, b) for a, b in zip(records, reference) if a != b)
        fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise SystemExit(f"error: {label} wrote other records than the reference's way, first at query {b['key']} "
                         f"(fields {', '.join(fields)})")  # fmt: skip
    return reference


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
    generate = args.mode == "generate"
    # (label, batch size, KV cache); in generation mode the reference's way comes first
    variants = [(f"batch {b}", b, True) for b in args.batch_sizes]
    if generate:
        variants = [("READ's way: batch 1, no KV cache", 1, False)] + [
            (f"batch {b}, KV cache", b, True) for b in args.batch_sizes
        ]
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic(tmp, 0, args.images, 0, seed=0)
        dataset = build_eval_dataset(tmp, "ReasonSeg", "val", generation=generate)
        scripts = None
        if generate:
            collator = ReadCollator.from_config(
                cfg, tokenizer, template="llava_v1", padding_side="left", inference=True
            )
            calibration = collator([dataset[i] for i in range(min(8, len(dataset)))])
            scripts = script_answers(
                model, calibration, token_pool=answer_pool(dataset, collator, tokenizer),
                eos_token_id=tokenizer.eos_token_id, seg_answer=args.seg_answer, other_answer=args.other_answer,
            )  # fmt: skip

        def run(index: int, images: int | None = None) -> float:
            _, batch_size, kv_cache = variants[index]
            subset = dataset
            if images is not None:
                subset = type(dataset).__new__(type(dataset))
                subset.__dict__.update(dataset.__dict__, images=dataset.images[:images])
            eval_cfg = EvalConfig(
                mode=args.mode, batch_size=batch_size, max_new_tokens=args.max_new_tokens, kv_cache=kv_cache,
                num_workers=args.num_workers, output_dir=str(Path(tmp) / f"out{index}"), resume=False,
            )  # fmt: skip
            start = time.perf_counter()
            evaluate(model, tokenizer, subset, eval_cfg)
            return len(subset) / (time.perf_counter() - start)

        for i, v in enumerate(variants):  # warm-up: allocator, kernels, lazy imports
            run(i, images=min(len(dataset), 2 * v[1]))
        rates: dict[str, list[float]] = {v[0]: [] for v in variants}
        reference: list[dict[str, Any]] | None = None
        for _ in range(args.repeats):
            for i, v in enumerate(variants):
                rates[v[0]].append(run(i))
                if generate:
                    reference = check_same_records(read_records(Path(tmp) / f"out{i}"), reference, v[0])

    print(
        f"model: {params / 1e6:.2f}M parameters, {cfg.model.vision.num_patches} image tokens, "
        f"SAM {cfg.model.sam.image_size}px; {args.images} images (160 px); mode {args.mode}; "
        f"threads {torch.get_num_threads()}; workers {args.num_workers}"
    )
    if scripts is not None:
        with_seg = sum(r["num_seg"] > 0 for r in reference)
        tokens = sum(len(scripts[0]) if r["num_seg"] > 0 else len(scripts[1]) for r in reference)
        print(f"scripted answers: {with_seg} of {len(reference)} queries answer with [SEG] ({len(scripts[0])} tokens), "
              f"the others with {len(scripts[1])} tokens; {tokens / len(reference):.1f} tokens per query; "
              f"records identical in every variant and round")  # fmt: skip
    base_label = variants[0][0]
    base = statistics.median(rates[base_label])
    for label, _, _ in variants:
        med = statistics.median(rates[label])
        runs = ", ".join(f"{r:.3f}" for r in rates[label])
        print(f"{label:<34} {med:8.3f} images/s (median of {args.repeats}: {runs})  x{med / base:.2f}")
    for label, _, _ in variants[1:]:
        ratios = [fast / slow for fast, slow in zip(rates[label], rates[base_label])]
        runs = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"{label} vs {base_label}: x{statistics.median(ratios):.2f} "
              f"(median of the per-round speed-ups: {runs})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
