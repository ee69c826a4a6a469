"""Time batched SasP against the literal per-sample, per-point oracle (tests/sasp_oracle.py) on the CPU.

    python scripts/bench_sasp.py [--repeats 20] [--threads 2]

Batch of 8 [SEG] tokens, N = 576 image tokens, C = 4096, image sizes from 333x500 to 1080x1920 (both
orientations). Timings: points from a given similarity map, and from the hidden states (the same
``similarity_map`` call on both sides), each forward only and forward + backward of the sum of the coordinates.
The oracle runs ``--oracle-repeats`` times without warm-up (seconds a batch on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from read.config import SaspConfig  # noqa: E402
from read.model.sasp import select_points, similarity_map  # noqa: E402
from sasp_oracle import oracle_select_points  # noqa: E402

SIZES = [(333, 500), (480, 640), (1080, 1920), (1920, 1080), (376, 500), (720, 1280), (500, 375), (1024, 768)]
HPARAMS = dict(num_points=30, t_pos=0.8, t_neg=0.2, down_sample=2)


def timed(fn: Callable[[], object], repeats: int, warmup: bool = True) -> tuple[float, float]:
    """Median wall time and median process CPU time in seconds over ``repeats`` runs (after one warm-up run if
    ``warmup``). CPU time is less sensitive to other processes on a busy machine."""
    if warmup:
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the fast path (median reported)")
    parser.add_argument("--oracle-repeats", type=int, default=1, help="timed runs of the oracle (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--channels", type=int, default=4096)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    batch, n, c = len(SIZES), 576, args.channels
    image = torch.randn(batch, n, c, generator=g)
    seg = torch.randn(batch, c, generator=g)

    def fast(backward: bool, from_sim: bool = False) -> None:
        x, s = image.requires_grad_(backward), seg.requires_grad_(backward)
        sim = sim_leaf.requires_grad_(backward) if from_sim else similarity_map(x, s)
        coords, _ = select_points(sim, SIZES, SaspConfig(**HPARAMS))
        if backward:
            coords.sum().backward()

    def oracle(backward: bool, from_sim: bool = False) -> None:
        x, s = image.requires_grad_(backward), seg.requires_grad_(backward)
        sim = sim_leaf.requires_grad_(backward) if from_sim else similarity_map(x, s)
        coords, _, _ = oracle_select_points(sim, SIZES, **HPARAMS)
        if backward:
            coords.sum().backward()

    with torch.no_grad():
        sim = similarity_map(image, seg)
        fast_coords, fast_labels = select_points(sim, SIZES, SaspConfig(**HPARAMS))
        ref_coords, ref_labels, _ = oracle_select_points(sim, SIZES, **HPARAMS)
    same = torch.equal(fast_labels, ref_labels)
    err = float((fast_coords - ref_coords).abs().max())

    print(f"SasP, batch {batch}, N={n}, C={c}, sizes {SIZES}, torch threads {torch.get_num_threads()}")
    print(f"labels identical: {same}; max |coords - oracle| = {err:.2e} px")
    sim_leaf = sim.clone()
    cases = [
        ("sim -> points, forward", False, True),
        ("sim -> points, fwd+bwd", True, True),
        ("hidden -> points, forward", False, False),
        ("hidden -> points, fwd+bwd", True, False),
    ]
    for name, backward, from_sim in cases:
        with torch.enable_grad() if backward else torch.no_grad():
            fast_wall, fast_cpu = timed(partial(fast, backward, from_sim), args.repeats)
            oracle_wall, oracle_cpu = timed(partial(oracle, backward, from_sim), args.oracle_repeats, warmup=False)
        print(
            f"{name:25s} wall: fast {fast_wall * 1e3:7.1f} ms, oracle {oracle_wall * 1e3:8.0f} ms, "
            f"ratio {oracle_wall / fast_wall:6.1f}x | cpu: fast {fast_cpu * 1e3:7.1f} ms, "
            f"oracle {oracle_cpu * 1e3:8.0f} ms, ratio {oracle_cpu / fast_cpu:6.1f}x"
        )


if __name__ == "__main__":
    main()
