"""vl.shared.devices: the one device picker and autocast helper of extraction, training and
evaluation."""
from __future__ import annotations

import contextlib

import pytest
import torch

from vl.shared.devices import amp_dtype, autocast, pick_device
from vl.shared.distributed import Ranks
from vl.shared.errors import VLError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")


@no_gpu
def test_auto_is_the_cpu_without_a_gpu_and_a_named_gpu_is_refused_naming_the_setting():
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("auto", Ranks(rank=1, world_size=2, local_rank=1)) == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(VLError, match=r"--device cuda:1 was asked for, but torch sees no CUDA device: use --device "
                                      r"cpu \(or auto\)"):
        pick_device("cuda:1")
    with pytest.raises(VLError, match="device cuda was asked for.*use device cpu"):
        pick_device("cuda", option="device")


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ranks = Ranks(rank=3, world_size=4, local_rank=3)
    assert pick_device("auto", ranks) == torch.device("cuda:3")
    assert pick_device("cuda", ranks) == torch.device("cuda:3")
    assert pick_device("cuda:0", ranks) == torch.device("cuda:0")  # a named index is kept
    assert pick_device("auto") == torch.device("cuda")


def test_precisions_and_autocast():
    assert (amp_dtype("fp32"), amp_dtype("bf16"), amp_dtype("fp16")) == (None, torch.bfloat16, torch.float16)
    with pytest.raises(VLError, match="precision must be one of fp32, bf16, fp16 .got 'fp8'"):
        amp_dtype("fp8")
    assert isinstance(autocast("cpu", None), contextlib.nullcontext)
    x = torch.ones(2, 2)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16  # matmuls run in bf16 inside
    with autocast("cpu", None):
        assert (x @ x).dtype == torch.float32
