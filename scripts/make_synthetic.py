#!/usr/bin/env python
"""Write the synthetic reasoning-segmentation dataset (ReasonSeg's on-disk format) under --out.

    python scripts/make_synthetic.py --out data/synthetic --num_train 3000 --num_val 200 --num_test 300 --seed 0

Then train/evaluate with ``data.dataset_dir=data/synthetic`` (``data.datasets=[reason_seg]``,
``data.reason_seg_data="ReasonSeg|train"``). The difficulty knobs are described in ``read/data/synthetic.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from read.data.synthetic import COLORS, SHAPES, SyntheticConfig, make_synthetic  # noqa: E402


def _pair(text: str, kind: type) -> tuple:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'min,max', got {text!r}")
    return kind(parts[0]), kind(parts[1])


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output root (the dataset_dir)")
    p.add_argument("--num_train", type=int, default=3000)
    p.add_argument("--num_val", type=int, default=200)
    p.add_argument("--num_test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image_size", type=int, default=d.image_size, help="image side in pixels")
    p.add_argument("--num_objects", type=lambda s: _pair(s, int), default=d.num_objects, help="min,max objects")
    p.add_argument("--object_size", type=lambda s: _pair(s, float), default=d.object_size,
                   help="min,max object diameter as a fraction of the image side")  # fmt: skip
    p.add_argument("--min_visible_pixels", type=int, default=d.min_visible_pixels)
    p.add_argument("--max_occlusion", type=float, default=d.max_occlusion, help="0 = objects never overlap")
    p.add_argument("--long_fraction", type=float, default=d.long_fraction, help="share of long reasoning queries")
    p.add_argument("--colors", nargs="+", default=list(d.colors), choices=list(COLORS))
    p.add_argument("--shapes", nargs="+", default=list(d.shapes), choices=list(SHAPES))
    p.add_argument("--background", choices=("plain", "noise"), default=d.background)
    p.add_argument("--holdout_target_prob", type=float, default=d.holdout_target_prob)
    p.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    cfg = SyntheticConfig(
        image_size=args.image_size,
        num_objects=args.num_objects,
        object_size=args.object_size,
        min_visible_pixels=args.min_visible_pixels,
        max_occlusion=args.max_occlusion,
        long_fraction=args.long_fraction,
        colors=tuple(args.colors),
        shapes=tuple(args.shapes),
        background=args.background,
        holdout_target_prob=args.holdout_target_prob,
    )
    start = time.perf_counter()
    counts = make_synthetic(
        args.out, args.num_train, args.num_val, args.num_test, seed=args.seed, cfg=cfg, processes=args.processes
    )
    elapsed = time.perf_counter() - start
    print(f"wrote {counts} to {os.path.join(args.out, 'reason_seg', 'ReasonSeg')} in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
