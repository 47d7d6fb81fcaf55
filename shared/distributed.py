"""Processes started by `torchrun` (one GPU each), or one process.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Extraction: every rank computes the
same list of pending inputs, takes every WORLD_SIZE-th one from its RANK, writes its
own shards, and waits at a barrier; rank 0 then joins all shards into the store. Only
the barriers need a process group, so it is gloo on CPU and GPU alike. Training (DDP)
reduces gradients: nccl when every rank has a GPU, gloo on CPU. The timeout is long
either way: ranks may finish their slices (or rank 0 its validation) hours apart.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")
BARRIER_TIMEOUT = dt.timedelta(hours=int(os.environ.get("VL_BARRIER_TIMEOUT_HOURS", "48")))


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slice(self, items: Sequence[T]) -> list[T]:
        """This rank's share: a deterministic, interleaved split (balanced when items vary in cost)."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def device(self, requested: str) -> str:
        """Each rank on its own GPU (cuda:LOCAL_RANK) unless a device index was given."""
        if self.world_size > 1 and requested in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank}"
        return requested


def ranks_from_env(backend: str = "gloo") -> Ranks:
    """Read torchrun's variables; join the process group (`backend`: gloo or nccl) when
    there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    import torch.distributed as dist

    if not dist.is_initialized():
        if backend == "nccl":
            import torch

            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend, rank=ranks.rank, world_size=world, timeout=BARRIER_TIMEOUT)
    return ranks


def close() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
