#!/usr/bin/env python
"""Export a training checkpoint as a merged model directory for eval.py / chat.py.

    python scripts/export_model.py --run runs/read_7b_reasonseg --checkpoint best --out models/read_7b

``--checkpoint`` is "best" (highest validation cIoU), "latest", or a checkpoint directory. The output holds
``model.safetensors`` (LoRA folded into the base weights), ``read_config.json`` and the tokenizer files, and loads
with ``read.model.from_pretrained``.

The checkpoint is read without running code: a file that names anything but tensors, containers and DeepSpeed's few
bookkeeping types is refused with one line ``error: ...`` (exit status 1), before any model is built.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from read.cli import add_debug_flag, check_output_dir, run_main  # noqa: E402
from read.training.export import export_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (train.output_dir)")
    p.add_argument("--checkpoint", default="best", help="best | latest | path to a checkpoint directory")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="weight dtype (default: model.dtype of the run)")  # fmt: skip
    add_debug_flag(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_output_dir(args.out, "--out")
    export_checkpoint(args.run, args.out, checkpoint=args.checkpoint, dtype=args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
