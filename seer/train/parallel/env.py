"""Joining the torchrun job: rank, world size, device and collective backend."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global/local rank, world size, device and collective backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _attempt_store(timeout: datetime.timedelta) -> tuple[dist.Store, int, int]:
    """torchrun's store with a prefix per restart attempt (`TORCHELASTIC_RESTART_COUNT`).

    torchrun's workers share the agent's c10d store, which outlives worker-group restarts and keeps
    the previous attempt's keys: a restarted rank that starts faster than its peers reads their old
    gloo/NCCL addresses and fails or hangs in `init_process_group` (seen with torch 2.14 --max-restarts).
    """
    from torch.distributed.rendezvous import rendezvous

    store, rank, world = next(
        rendezvous("env://", int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), timeout=timeout)
    )
    return dist.PrefixStore(f"seer/attempt-{os.environ['TORCHELASTIC_RESTART_COUNT']}", store), rank, world


def init_distributed(timeout_s: int = 1800) -> DistEnv:
    """Join the torchrun job (env `RANK`, `WORLD_SIZE`, …), or start a 1-process group without torchrun.

    nccl with one GPU per local rank when CUDA is available, gloo on CPU.
    """
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        if "TORCHELASTIC_RESTART_COUNT" in os.environ:  # under torchrun: see _attempt_store
            store, rank, world = _attempt_store(timeout)
            dist.init_process_group(
                backend,
                store=store,
                rank=rank,
                world_size=world,
                timeout=timeout,
                device_id=device if cuda else None,
            )
        elif "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout, device_id=device if cuda else None)
        else:
            dist.init_process_group(
                backend,
                store=dist.HashStore(),
                rank=0,
                world_size=1,
                timeout=timeout,
                device_id=device if cuda else None,
            )
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)
