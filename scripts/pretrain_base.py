#!/usr/bin/env python
"""Pre-train the tiny base of the synthetic quickstart on the CPU, deterministically from a seed.

    python scripts/pretrain_base.py --config configs/pretrain/synthetic_base.yaml --out assets/synthetic_base

Writes a tiny LLaVA (a llava-hf directory with its tokenizer: ``<out>/llava``, for ``model.llava_path``) trained in
LLaVA's two stages on synthetic scenes (alignment on captions that say what is where, then instruction tuning on
questions about colours, shapes, positions, relations, counts and existence), a tiny SAM trained to segment an
object from point and box prompts (``<out>/sam.safetensors``, for ``model.sam_checkpoint``), and
``<out>/manifest.json`` (settings, the command, SHA-256 of every file, timings, held-out figures). No mask reaches
the language model and no ``[SEG]`` exists yet: READ's fine-tuning adds it.

The LLaVA and SAM parts run as two processes side by side, ``--threads`` threads each (default 1: with one thread
the result is the same whatever the machine's core count; CPU kernels still differ between processor types, so the
weights are reproducible bit for bit on the same kind of machine). ``key=value`` arguments override the config
(e.g. ``instruction.steps=100``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from read.config import _merge, parse_overrides  # noqa: E402
from read.errors import UserError  # noqa: E402

PARTS = ("llava", "sam")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/pretrain/synthetic_base.yaml", help="pre-training settings (YAML)")
    p.add_argument("--out", required=True, help="output directory (must not hold a finished base)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per part (default 1)")
    p.add_argument("--part", choices=("all", "tokenizer") + PARTS, default="all", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the config")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def load(args: argparse.Namespace):
    import yaml

    from read.config import _from_dict
    from read.pretraining.config import PretrainConfig

    path = Path(args.config)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if args.overrides:
        data = _merge(data, parse_overrides(args.overrides))
    try:
        return _from_dict(PretrainConfig, data, "")
    except ValueError as e:
        raise UserError(f"{path}: {e}") from e


def run_part(args: argparse.Namespace) -> None:
    import torch

    from read.pretraining.base import LLAVA_DIR, build_tokenizer, model_config, pretrain_llava, pretrain_sam

    torch.set_num_threads(args.threads)
    cfg = load(args)
    out = Path(args.out)
    read_cfg = model_config(cfg, ROOT)
    if args.part == "tokenizer":
        build_tokenizer(cfg, out / LLAVA_DIR)
        return
    report = pretrain_llava(cfg, read_cfg, out) if args.part == "llava" else pretrain_sam(cfg, read_cfg, out)
    (out / f"{args.part}_report.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.part != "all":
            run_part(args)
            return 0
        from read.pretraining.base import MANIFEST_FILE, write_manifest

        cfg = load(args)
        out = Path(args.out)
        if (out / MANIFEST_FILE).is_file():
            raise UserError(f"{out} already holds a base ({MANIFEST_FILE}); choose another --out or delete it")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        start = time.time()
        base = [sys.executable, str(Path(__file__).resolve()), "--config", args.config, "--out", str(out),
                "--threads", str(args.threads)]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONHASHSEED="0")
        t0 = time.time()
        subprocess.run(base + ["--part", "tokenizer", *args.overrides], check=True, env=env)
        timing = {"tokenizer": round(time.time() - t0, 1)}
        procs = {part: subprocess.Popen(base + ["--part", part, *args.overrides], env=env) for part in PARTS}
        failed = [part for part, proc in procs.items() if proc.wait() != 0]
        if failed:
            raise UserError(f"the {' and '.join(failed)} part failed (see the log above)")
        parts = {}
        for part in PARTS:
            report_path = out / f"{part}_report.json"
            parts[part] = json.loads(report_path.read_text())
            report_path.unlink()
        timing["total"] = round(time.time() - start, 1)
        command = "python scripts/pretrain_base.py " + shlex.join(
            ["--config", args.config, "--out", args.out, "--threads", str(args.threads), *args.overrides]
        )
        path = write_manifest(out, cfg, command, {**parts, "timing_s": timing})
        print(path)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
