"""bench/train_step.py --part mfu: the peak it divides by, and the paper's batch sizes it runs at."""
from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import train_step  # noqa: E402


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                       ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                       ("NVIDIA GeForce RTX 3080", None)])
def test_peak_is_looked_up_by_gpu_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert train_step.peak_tflops("cuda", None) == peak
    assert train_step.peak_tflops("cuda", 500.0) == 500.0  # --peak-tflops wins
    assert train_step.peak_tflops("cpu", None) is None  # MFU n/a on a CPU


def test_mfu_runs_full_and_single_adapter_at_the_papers_batch_sizes():
    settings = train_step.paper_settings()
    assert set(settings) == {"full", "adapter"}
    for method, (cfg, batches) in settings.items():
        assert cfg.method == method
        assert batches == {"vqa": 500, "gqa": 833, "nlvr2": 166, "caption": 416}
    assert settings["adapter"][0].adapter.sharing == "single"
