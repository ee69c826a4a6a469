"""Evaluate a READ model: gIoU / cIoU on ReasonSeg and RefCOCO(+/g), See / Segment on FP-RefCOCO(+/g).

Examples::

    # a model written by save_pretrained, ReasonSeg test, teacher forcing (the paper's protocol)
    python eval.py --model runs/read/export --dataset_dir data --dataset ReasonSeg --split test --precision bf16

    # a released checkpoint in its original layout, READ-13B's SasP settings, both modes
    python eval.py --released --model READ-LLaVA-v1.5-13B-for-ReasonSeg-testset \\
        --vision_tower clip-vit-large-patch14-336 --dataset_dir data --dataset ReasonSeg --split test \\
        --sasp num_points=60 t_pos=0.6 down_sample=1 --mode both

    # FP-RefCOCO val: generation with the vicuna_v1 system prompt (the defaults for fprefcoco*)
    python eval.py --released --model READ-LLaVA-v1.5-7B-for-fprefcoco --vision_tower clip-vit-large-patch14-336 \\
        --dataset_dir data --dataset fprefcoco --split val

    # 8 processes (each one shards the split; results are gathered on rank 0)
    torchrun --nproc_per_node 8 eval.py --model ... --dataset ReasonSeg --split test

Writes ``<output_dir>/results.json`` (scores and every setting), ``<output_dir>/<mode>/predictions.jsonl`` (one
line per query: counts, existence, generated text, mask as COCO RLE, SasP points) and, with ``--vis N``, pictures
of the first N images under ``<output_dir>/<mode>/vis``. Rerunning the same command resumes an interrupted run,
provided the weights' content, the data files and the settings are unchanged; otherwise it starts over and says why.
A split with a missing image or with ground truth that cannot be scored is refused (the files are named);
``--skip_invalid`` scores the valid queries only and lists the others in results.json.
A user error (a missing or broken file, a bad setting) ends with one line ``error: ...`` and exit status 1;
``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from read.cli import add_debug_flag, check_output_dir, run_main
from read.config import ReadConfig, parse_overrides
from read.data.refer import FALSE_PREMISE_DATASETS, REFER_DATASETS, REFER_PROTOCOLS
from read.distributed import setup_distributed
from read.errors import ConfigError, MissingFileError
from read.evaluation import EvalConfig, EvalResult, evaluate, format_table
from read.fingerprint import DIGEST_CACHE, shared_weights_fingerprint
from read.model.dtypes import PRECISIONS

logger = logging.getLogger("eval")

DATASETS = ("ReasonSeg",) + tuple(REFER_DATASETS)
# Evaluated by the reference's test_read.py / eval_sesame.py: generation, module-default vicuna_v1 template.
GENERATION_DATASETS = tuple(FALSE_PREMISE_DATASETS) + ("R-refcoco", "R-refcoco+", "R-refcocog")
RESULTS_FILE = "results.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="a save_pretrained directory, or with --released an original one")
    p.add_argument("--released", action="store_true", help="--model is a READ/SESAME/LISA checkpoint as published")
    p.add_argument("--vision_tower", default=None, help="local CLIP tower directory (with --released)")
    p.add_argument("--dataset_dir", required=True, help="root holding reason_seg/ and refer_seg/")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--split", required=True, help="ReasonSeg: val | test; RefCOCO: val | testA | testB | test")
    p.add_argument(
        "--mode",
        choices=("teacher", "generate", "both"),
        default=None,
        help="teacher forcing (answer given) or generation; default: generate for fprefcoco* and R-refcoco*, "
        "teacher otherwise",
    )
    p.add_argument(
        "--prompts",
        choices=("read", "lisa"),
        default="read",
        help="question/answer templates: READ's fixed ReasonSeg prompts and seeded SESAME RefCOCO prompts (read), "
        "or LISA's validation prompts (lisa)",
    )
    p.add_argument(
        "--conv_type",
        choices=("llava_v1", "vicuna_v1", "llava_llama_2"),
        default=None,
        help="conversation template; default: vicuna_v1 for fprefcoco* and R-refcoco* (what the reference's test "
        "script used, needed for the published numbers), llava_v1 otherwise",
    )
    p.add_argument(
        "--sasp",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="SasP overrides, e.g. num_points=60 t_pos=0.6 down_sample=1 (READ-13B) or enabled=false",
    )
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default=None,
        help="default: the saved dtype; with --released bf16 on a GPU (the reference's setting), else fp32",
    )
    p.add_argument("--batch_size", type=int, default=1, help="images per step")
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=42, help="seed of the RefCOCO template draws (--prompts read)")
    p.add_argument(
        "--protocol",
        choices=REFER_PROTOCOLS,
        default="auto",
        help="RefCOCO refs files: READ/SESAME's refs(*_exclude_unified).p (read), the standard refs(unc|umd).p "
        "(lisa), or auto: READ/SESAME's when present, else the standard one (the file used is printed and stored)",
    )
    p.add_argument(
        "--skip_invalid",
        action="store_true",
        help="leave out queries whose ground truth cannot be scored (e.g. a degenerate polygon, an empty target) "
        "instead of refusing the split; they are listed in results.json and the score is that of the valid queries",
    )
    p.add_argument("--output_dir", default=None, help="default: outputs/eval/<model name>/<dataset>_<split>")
    p.add_argument("--no_resume", action="store_true", help="start over even if output_dir holds results")
    p.add_argument("--no_masks", action="store_true", help="do not store predicted masks (RLE) per query")
    p.add_argument("--vis", type=int, default=0, metavar="N", help="pictures of the first N images")
    p.add_argument("--device", default=None, help="default: cuda:<LOCAL_RANK> if available, else cpu")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1:
        p.error("--batch_size and --max_new_tokens must be >= 1")
    if args.num_workers < 0 or args.vis < 0:
        p.error("--num_workers and --vis must be >= 0")
    if args.vision_tower and not args.released:
        p.error("--vision_tower only applies with --released (a save_pretrained directory contains CLIP)")
    return args


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the dataset-dependent defaults (mode, conversation template, output directory)."""
    false_premise = args.dataset in GENERATION_DATASETS
    if args.mode is None:
        args.mode = "generate" if false_premise else "teacher"
    if args.conv_type is None:
        # the template is always explicit; vicuna_v1 is what the reference's test script used
        args.conv_type = "vicuna_v1" if false_premise else "llava_v1"
    if args.output_dir is None:
        name = Path(args.model).resolve().name
        args.output_dir = os.path.join("outputs", "eval", name, f"{args.dataset}_{args.split}")
    return args


def sasp_overrides(items: list[str]) -> dict[str, Any]:
    """``["num_points=60", "t_pos=0.6"]`` -> ``{"num_points": 60, "t_pos": 0.6}`` (keys checked against SaspConfig)."""
    tree = parse_overrides([f"sasp.{item}" for item in items])
    values = tree.get("sasp", {})
    known = {f.name for f in dataclasses.fields(ReadConfig().sasp)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--sasp: unknown key(s) {unknown}; known: {sorted(known)}")
    return values


# ----------------------------------------------------------------------------------------------------------
# setup


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """(model, tokenizer) from a save_pretrained directory or, with ``--released``, an original checkpoint
    (:func:`read.model.load_model`)."""
    from read.model import load_model as load

    if not Path(args.model).is_dir():
        raise MissingFileError(f"--model: directory not found: {args.model}")
    dtype = PRECISIONS[args.precision] if args.precision else None
    if dtype is None and args.released:
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    model, tokenizer = load(
        args.model,
        released=args.released,
        vision_tower=args.vision_tower,
        dtype=dtype,
        sasp_overrides=sasp_overrides(args.sasp),
    )
    return model.to(device).eval(), tokenizer


def build_dataset(args: argparse.Namespace, generation: bool) -> Any:
    from read.data.eval_sets import build_eval_dataset

    if not Path(args.dataset_dir).is_dir():
        raise MissingFileError(f"--dataset_dir: directory not found: {args.dataset_dir}")
    return build_eval_dataset(
        args.dataset_dir,
        args.dataset,
        args.split,
        prompts=args.prompts,
        generation=generation,
        seed=args.seed,
        protocol=args.protocol,
        skip_invalid=args.skip_invalid,
    )


def weight_directories(args: argparse.Namespace) -> dict[str, Any]:
    """The directories whose files make up the model: the checkpoint and, for a released one, the CLIP tower."""
    tower = args.vision_tower
    if args.released and tower is None:
        from read.json_io import read_json_object
        from read.model.released import CONFIG_FILE, resolve_vision_tower

        tower = resolve_vision_tower(None, read_json_object(Path(args.model) / CONFIG_FILE), args.model)
    return {"model": args.model, "vision_tower": tower}


def template_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The question/answer templates of this run, as text (for the results file)."""
    from read.data import templates as T

    if args.dataset == "ReasonSeg":
        if args.prompts == "read":
            return {
                "short": T.READ_EVAL_SHORT_QUESTION, "long": T.READ_EVAL_LONG_QUESTION, "answer": T.READ_EVAL_ANSWER
            }  # fmt: skip
        return {"short": T.LISA_VAL_SHORT_QUESTION, "long": T.LISA_VAL_LONG_QUESTION, "answer": T.LISA_VAL_ANSWER}
    if args.prompts == "lisa":
        return {"question": T.LISA_VAL_SHORT_QUESTION, "answer": T.LISA_VAL_ANSWER}
    return {
        "question": f"one of SHORT_QUESTION ({len(T.SHORT_QUESTION)}), drawn per sentence with seed "
        f"({args.seed}, image index)",
        "answer": f"one of SHORT_ANSWER ({len(T.SHORT_ANSWER)}); false premises: CORRECT_ANSWER / NEG_ANSWER",
    }


# ----------------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> dict[str, EvalResult]:
    args = resolve_defaults(parse_args(argv))
    check_output_dir(args.output_dir, "--output_dir")
    # join the group of a torchrun / deepspeed launch (gloo on CPU, nccl on CUDA); a plain run has none
    world = setup_distributed(args.local_rank, device=args.device, single_process_group=False,
                              timeout=datetime.timedelta(hours=2))  # fmt: skip
    rank, world_size, device = world.rank, world.world_size, world.device
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    modes = ("teacher", "generate") if args.mode == "both" else (args.mode,)
    # the dataset first: a wrong path should not wait for a 7B model to load
    datasets = {m: build_dataset(args, generation=m == "generate") for m in modes}
    model, tokenizer = load_model(args, device)
    weights = shared_weights_fingerprint(weight_directories(args), Path(args.output_dir) / DIGEST_CACHE)
    split_set = next(iter(datasets.values()))

    settings = {
        "model": str(Path(args.model).resolve()),
        "released": args.released,
        "vision_tower": args.vision_tower,
        "dataset": args.dataset,
        "split": args.split,
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "num_images": len(split_set),
        "skip_invalid": args.skip_invalid,
        "modes": list(modes),
        "prompts": args.prompts,
        "templates": template_settings(args),
        "conv_type": args.conv_type,
        "template_seed": args.seed,
        "refer_protocol": args.protocol,
        "refs_file": split_set.settings().get("refs_file"),
        "sasp": dataclasses.asdict(model.config.sasp),
        "precision": str(next(model.parameters()).dtype).replace("torch.", ""),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "world_size": world_size,
        "device": str(device),
    }
    results: dict[str, EvalResult] = {}
    for mode in modes:
        cfg = EvalConfig(
            mode=mode,
            batch_size=args.batch_size,
            conv_type=args.conv_type,
            max_new_tokens=args.max_new_tokens,
            num_workers=args.num_workers,
            output_dir=os.path.join(args.output_dir, mode),
            resume=not args.no_resume,
            save_masks=not args.no_masks,
            vis=args.vis,
            progress=not args.no_progress,
        )
        fingerprint = {"weights": weights, **{k: settings[k] for k in ("released", "prompts", "template_seed")}}
        results[mode] = evaluate(model, tokenizer, datasets[mode], cfg, fingerprint=fingerprint)

    if rank == 0:
        title = f"{args.dataset} {args.split}  ({Path(args.model).name}, {settings['precision']}, {args.conv_type})"
        print(format_table(results, title))
        if split_set.invalid:
            print(f"left out (--skip_invalid): {len(split_set.invalid)} annotation(s) whose ground truth cannot be "
                  f"scored; listed under 'invalid' in {RESULTS_FILE}")  # fmt: skip
        out = {
            "settings": settings,
            "results": {
                m: {
                    **r.scores,
                    "evaluated_images": r.evaluated,
                    "resumed_images": r.resumed,
                    "restart_reason": r.restart_reason,
                }
                for m, r in results.items()
            },  # fmt: skip
            "invalid": split_set.invalid,
        }
        path = Path(args.output_dir) / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"results: {path}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))
