"""Sharding an evaluation over the processes of a ``torch.distributed`` group, and collecting the records.

Each process takes every ``world_size``-th pending image (no image twice, no padding); the records are gathered on
rank 0 with ``gather_object`` and the scores broadcast, so that every rank returns the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

from read.evaluation.records import QueryRecord


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's share of ``indices``: every ``world_size``-th one starting at ``rank``.

    The shares of all ranks are disjoint and cover ``indices`` exactly (no padding, unlike DistributedSampler).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(indices[rank::world_size])


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the group's size (0 and 1 without an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_records(records: list[QueryRecord], *, dst: int = 0) -> list[list[QueryRecord]] | None:
    """Collect every process's records on ``dst`` with ``torch.distributed.gather_object``.

    Returns:
        On ``dst``: one list per rank, in rank order; elsewhere None. Without a process group: ``[records]``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [records]
    rank = dist.get_rank()
    out: list[Any] | None = [None] * dist.get_world_size() if rank == dst else None
    dist.gather_object(records, out, dst=dst)
    return out


def broadcast(obj: Any, src: int = 0) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
