"""Joining the process group of a launch (torchrun, the deepspeed launcher, MPI) and picking this process's device.

Training and evaluation share :func:`setup_distributed`; training always needs a group (DeepSpeed does), so a plain
``python train_ds.py`` makes a world of one, while a plain ``python eval.py`` runs without one.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_distributed(
    local_rank: int | None = None,
    *,
    device: torch.device | str | None = None,
    single_process_group: bool = True,
    timeout: datetime.timedelta | None = None,
) -> DistInfo:
    """Join (or create) the process group and pick this process's device.

    Works under ``deepspeed`` (``--local_rank`` or ``LOCAL_RANK``), ``torchrun`` (``RANK``/``WORLD_SIZE``/
    ``LOCAL_RANK``) and MPI launchers (DeepSpeed's discovery). The backend is NCCL on CUDA and gloo on the CPU.

    Arguments:
        local_rank: the launcher's ``--local_rank`` when it passes one (``LOCAL_RANK`` wins when set).
        device: this process's device; default ``cuda:<local_rank>`` when CUDA is there, else the CPU.
        single_process_group: without a launcher, make a group of one process (on a free local port), as DeepSpeed
            needs; False leaves a single process without a group.
        timeout: the group's collective timeout (None: the backend's default).
    """
    mpi = any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))  # DeepSpeed discovers MPI ranks
    launched = "RANK" in os.environ or mpi
    if not launched and single_process_group:  # plain `python train_ds.py`: a one-process world
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(local_rank or 0))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local = int(os.environ.get("LOCAL_RANK", local_rank if local_rank is not None else 0))
    if device is not None:
        device = torch.device(device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    wanted = single_process_group or int(os.environ.get("WORLD_SIZE", "1")) > 1 or mpi
    if wanted and not dist.is_initialized():
        import deepspeed

        kwargs = {} if timeout is None else {"timeout": timeout}
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False, **kwargs)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)
    return DistInfo(0, 1, local, device)
