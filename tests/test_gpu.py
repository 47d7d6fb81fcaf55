"""Checks that need a CUDA device (opt in: `pytest -m gpu`); skipped where torch sees none."""
from __future__ import annotations

import pytest
import torch

from test_train_loop import read_metrics, trainable_tensors, vl_train, write_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_the_gpu_learns_and_keeps_fp32_weights(world, tmp_path, precision):
    run = tmp_path / precision
    result = vl_train("-c", str(write_config(world, run)), "--set", f"precision={precision}", "--set", "device=cuda",
                      "--set", "epochs=3", "--set", "optim.lr=2e-3")
    assert result.exit_code == 0, result.output
    records = read_metrics(run)
    losses = [r["train_loss"] for r in records]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert 0 <= records[-1]["mean_score"] <= 100
    saved = trainable_tensors(run)
    assert saved and all(t.dtype == torch.float32 for t in saved.values())  # autocast, not a half-precision model


def test_gpu_and_cpu_fp32_steps_agree(world, tmp_path):
    """The same run on the GPU in fp32 ends near the CPU's weights (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = tmp_path / device
        result = vl_train("-c", str(write_config(world, runs[device])), "--set", f"device={device}",
                          "--set", "epochs=1", "--set", "dropout=0.0")
        assert result.exit_code == 0, result.output
    a, b = trainable_tensors(runs["cpu"]), trainable_tensors(runs["cuda"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
