"""Processes started by `torchrun` (one GPU each), or one process.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Extraction: every rank computes the
same list of pending inputs, takes every WORLD_SIZE-th one from its RANK, writes its
own shards, and waits at a barrier; rank 0 then joins all shards into the store. Only
the barriers need a process group, so it is gloo on CPU and GPU alike. Training (DDP)
reduces gradients: nccl when every rank has a GPU, gloo on CPU. The timeout is long
either way: ranks may finish their slices hours apart.

Validation and `vl evaluate` split each split's batches over the ranks and gather the
predictions on rank 0 (`gather_to_main`); before anything is gathered every rank says
whether its work succeeded (`on_every_rank`), so a rank that failed stops all of them
with its message instead of leaving the others waiting for results that never come.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from vl.shared.errors import VLError

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


def one_line(error: Exception) -> str:
    """An exception as one line: a VLError's problems (and hint), else its type and message."""
    if isinstance(error, VLError):
        text = "; ".join(error.problems) + (f" ({error.hint})" if error.hint else "")
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())


def on_every_rank(work: Callable[[], T], ranks: Ranks, what: str) -> T:
    """`work()` on this rank, then every rank learns whether all of them succeeded (one
    all_gather_object of each rank's error or None): a rank that raised stops every rank
    with one VLError naming it and its message ("rank 1 of 2 failed predicting vqa: ..."), and a
    rank stopped by a signal (vl.shared.stopping.Stopped) stops every rank with that signal.
    One process: `work()` as it is, its errors untouched."""
    if ranks.world_size == 1:
        return work()
    import torch.distributed as dist

    from vl.shared.stopping import Stopped

    result, error, stop = None, None, None
    try:
        result = work()
    except Exception as e:  # noqa: BLE001 (reported to every rank below, this one included)
        error = one_line(e)
    except Stopped as e:  # a SIGINT/SIGTERM on this rank: every rank stops with it below
        stop = e.signum
    reports: list[tuple[str | None, int | None]] = [(None, None)] * ranks.world_size
    dist.all_gather_object(reports, (error, stop))
    stops = [signum for _, signum in reports if signum is not None]
    if stops:
        raise Stopped(stops[0])
    failed = [(rank, message) for rank, (message, _) in enumerate(reports) if message is not None]
    if failed:
        rank, message = failed[0]
        others = f" (ranks {', '.join(str(r) for r, _ in failed[1:])} failed too)" if len(failed) > 1 else ""
        raise VLError(f"rank {rank} of {ranks.world_size} failed {what}: {message}{others}")
    return result  # type: ignore[return-value]


def gather_to_main(work: Callable[[], T], ranks: Ranks, what: str) -> list[T] | None:
    """Every rank's `work()` result, in rank order, on rank 0 (None on the others), after
    `on_every_rank` has made sure that all of them succeeded. One process: [work()]."""
    mine = on_every_rank(work, ranks, what)
    if ranks.world_size == 1:
        return [mine]
    import torch.distributed as dist

    gathered: list[T] | None = [None] * ranks.world_size if ranks.is_main else None  # type: ignore[list-item]
    dist.gather_object(mine, gathered, dst=0)
    return gathered


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
