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


def test_gpu_decoding_agrees_with_the_pil_path():
    """nvJPEG's decode differs a little from libjpeg's (IDCT, chroma upsampling): measured here
    (printed for docs/benchmarks.md) and bounded: a few 8-bit levels at most, well under one on average."""
    from test_gpu_decode import LEVEL, as_tensor, jpeg_bytes, transform
    from conftest import photo
    import io

    from PIL import Image

    from vl.extract.gpu_decode import DevicePreprocess, decode_jpegs

    cpu_path = transform(224)
    device_path = DevicePreprocess(cpu_path)
    arrays = [photo(w, h, seed) for seed, (w, h) in enumerate([(640, 480), (300, 451), (97, 61), (1030, 770)])]
    datas = [jpeg_bytes(a) for a in arrays] + [jpeg_bytes(arrays[0][..., 0])]  # and a grayscale JPEG
    decoded = decode_jpegs([as_tensor(d) for d in datas], torch.device("cuda"))  # one batch
    worst, mean = 0.0, 0.0
    for data, image in zip(datas, decoded):
        assert not isinstance(image, str), image
        want = cpu_path(Image.open(io.BytesIO(data)).convert("RGB"))
        diff = (device_path(image).cpu() - want).abs() * 0.2613 / LEVEL  # in 8-bit levels (about)
        worst, mean = max(worst, float(diff.max())), max(mean, float(diff.mean()))
    print(f"\ngpu decode vs PIL, 224 px: at most {worst:.2f} levels, mean {mean:.3f} levels")
    assert worst <= 4 and mean < 0.5


def test_gpu_decode_extracts_like_the_cpu_path_and_counts_fallbacks(tiny_models, tmp_path):
    import numpy as np

    from conftest import write_photos
    from test_gpu_decode import FEATURE_TOL, extract, odd_jpegs
    from vl.shared.feature_store import FeatureStore

    folder = tmp_path / "images"
    write_photos(folder, 9)
    odd_jpegs(folder)
    summaries = {d: extract(folder, tmp_path / f"{d}.h5", tiny_models, "tiny-rn", d, workers=2, device="cuda")
                 for d in ("cpu", "gpu")}
    assert summaries["gpu"].notes["decoded"] == {"device": 10, "progressive JPEG": 1, "CMYK JPEG": 1, "not a JPEG": 1}
    a, b = FeatureStore(tmp_path / "cpu.h5"), FeatureStore(tmp_path / "gpu.h5")
    assert sorted(a.ids) == sorted(b.ids)
    scale = max(float(np.abs(a.get(i, "grid")).max()) for i in a.ids)
    worst = max(float(np.abs(a.get(i, "grid").astype(np.float32) - b.get(i, "grid")).max()) for i in a.ids) / scale
    print(f"\ngpu decode vs cpu decode, tiny RN features: at most {100 * worst:.3f} % of the largest")
    assert worst <= 4 * FEATURE_TOL
