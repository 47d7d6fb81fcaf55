"""Where a command runs and in which precision: one rule for `vl extract`, `vl train` and
`vl evaluate`. torch is imported inside the functions, so `vl.shared` stays light.

    device = pick_device("auto")                 # the GPU when torch sees one, else the CPU
    with autocast(device, amp_dtype("bf16")):    # mixed precision; fp32: no autocast at all
        ...

Each command keeps its own rule for which precisions a device may take (extraction runs
bf16 on CPUs, training refuses anything but fp32 there, evaluation falls back to fp32).
"""
from __future__ import annotations

import contextlib
import typing
from typing import TYPE_CHECKING, ContextManager, Literal

from vl.shared.distributed import Ranks
from vl.shared.errors import VLError

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]  # the one list: configs, --precision, amp_dtype
_AMP = dict(zip(typing.get_args(Precision), (None, "bfloat16", "float16")))


def pick_device(requested: str, ranks: Ranks = Ranks(), option: str = "--device") -> torch.device:
    """`requested` as a torch device: `auto` is the GPU when torch sees one, else the CPU;
    under torchrun each rank takes cuda:LOCAL_RANK unless an index is named. A CUDA device
    torch cannot see is a VLError naming `option`, the setting the user gave it with."""
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise VLError(f"{option} {requested} was asked for, but torch sees no CUDA device: use {option} cpu "
                      "(or auto)")
    if requested == "auto":
        return torch.device(ranks.device("cuda") if torch.cuda.is_available() else "cpu")
    return torch.device(ranks.device(requested))


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting (fp32: None, no autocast)."""
    import torch

    if precision not in _AMP:
        raise VLError(f"precision must be one of {', '.join(_AMP)} (got {precision!r})")
    name = _AMP[precision]
    return None if name is None else getattr(torch, name)


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> ContextManager:
    """torch.autocast on `device`'s type in `dtype`, or a context that does nothing for None."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
