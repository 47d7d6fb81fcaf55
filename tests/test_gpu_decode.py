"""JPEGs decoded and resized by torch ops (`--decode gpu`, vl.extract.gpu_decode), run here on
CPU tensors through the same functions, against the PIL path: the pixels agree within one
8-bit level of the resize (0.02 % of values at most, the rest exactly), the features within
the tolerance that follows; JPEGs the
decoder does not take fall back to the PIL path and are counted."""
from __future__ import annotations

import io
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import vl.extract.images as images_module
from conftest import model_args, photo, run_vl, write_photos
from vl.extract.encoder import EncoderSpec
from vl.extract.gpu_decode import DevicePreprocess, decode_jpegs, describe_counts, jpeg_route, resolve_decode_path
from vl.extract.images import extract_images
from vl.extract.inputs import MediaInput
from vl.extract.pipeline import ExtractOptions, merge_notes
from vl.shared.errors import VLError
from vl.shared.feature_store import FeatureStore

LEVEL = 1 / 255  # one 8-bit level, in ToTensor's units
# the pixel tolerance after Normalize: one level over the smallest std (OpenAI's 0.2613)
PIXEL_TOL = LEVEL / min(open_clip.OPENAI_DATASET_STD) + 1e-6
# features of the tiny random encoders, relative to their largest magnitude (measured: 0.066 % RN, 0.096 % ViT)
FEATURE_TOL = 0.005


def jpeg_bytes(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **{"quality": 90, **save})
    return buf.getvalue()


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def transform(size, resize_mode: str = "shortest"):
    return open_clip.image_transform(size, is_train=False, resize_mode=resize_mode)


@pytest.mark.parametrize("size,mode", [(224, "shortest"), ((96, 128), "shortest"), (64, "longest"),
                                       ((48, 64), "squash")])
def test_torch_resize_matches_pil_within_one_level(size, mode):
    cpu_path = transform(size, mode)
    device_path = DevicePreprocess(cpu_path)
    for seed, (w, h) in enumerate([(640, 480), (300, 451), (97, 61), (224, 224), (1030, 770)]):
        data = jpeg_bytes(photo(w, h, seed))
        (decoded,) = decode_jpegs([as_tensor(data)], torch.device("cpu"))
        pil = Image.open(io.BytesIO(data)).convert("RGB")
        assert torch.equal(decoded, torch.from_numpy(np.array(pil)).permute(2, 0, 1))  # same libjpeg decode
        want, got = cpu_path(pil), device_path(decoded)
        assert got.shape == want.shape and got.dtype == torch.float32
        diff = (got - want).abs()
        assert diff.max() <= PIXEL_TOL, (w, h, diff.max())
        assert (diff > 1e-6).float().mean() < 1e-3  # measured: at most 0.02 % of the values are a level apart


def test_images_of_one_size_are_preprocessed_together_as_one_by_one():
    device_path = DevicePreprocess(transform(96))
    images = [torch.from_numpy(photo(130, 97, seed)).permute(2, 0, 1).contiguous() for seed in range(3)]
    together = device_path(torch.stack(images))
    assert together.shape == (3, 3, 96, 96)
    for image, out in zip(images, together):
        assert torch.equal(out, device_path(image))


def test_jpeg_route_reads_the_header():
    rgb = photo(40, 30, 1)
    assert jpeg_route(jpeg_bytes(rgb)) is None
    assert jpeg_route(jpeg_bytes(rgb[..., 0])) is None  # grayscale: the decoder makes it RGB
    assert jpeg_route(jpeg_bytes(rgb, progressive=True)) == "progressive JPEG"
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    assert jpeg_route(cmyk.getvalue()) == "CMYK JPEG"
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    assert jpeg_route(png.getvalue()) == "not a JPEG"
    whole = jpeg_bytes(rgb)
    assert jpeg_route(whole[:len(whole) // 2]) == "truncated JPEG"
    assert jpeg_route(whole, max_pixels=40 * 30 - 1) == "over the pixel limit"
    assert jpeg_route(b"\xff\xd8\xff") == "damaged JPEG header"


def test_decode_path_selection():
    assert resolve_decode_path("auto", torch.device("cuda", 0)) == "gpu"
    assert resolve_decode_path("auto", torch.device("cpu")) == "cpu"
    assert resolve_decode_path("cpu", torch.device("cuda", 0)) == "cpu"
    assert resolve_decode_path("gpu", torch.device("cuda", 0)) == "gpu"
    with pytest.raises(VLError, match="--decode gpu .* use --device cuda"):
        resolve_decode_path("gpu", torch.device("cpu"))
    with pytest.raises(VLError, match="--decode must be one of auto, cpu, gpu"):
        resolve_decode_path("nvjpeg", torch.device("cpu"))


def test_decode_gpu_is_refused_without_a_cuda_device_before_any_work(tiny_models, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "f.h5"
    result = run_vl(["extract", "images", "--images", photos, *model_args(tiny_models), "--decode", "gpu",
                     "--out", out], expect=1)
    assert "--decode gpu" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not out.with_name("f.h5.parts").exists()


def test_auto_decodes_on_the_device_when_cuda_is_there(monkeypatch):
    """auto picks the device path from the encoder's device (CUDA mocked present)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from vl.shared.devices import pick_device

    assert resolve_decode_path("auto", pick_device("auto")) == "gpu"


def odd_jpegs(folder) -> dict[str, str]:
    """A progressive JPEG, a CMYK JPEG, a grayscale JPEG, a PNG and a truncated JPEG: id -> expected route."""
    rgb = photo(70, 52, 7)
    Image.fromarray(rgb).save(folder / "progressive.jpg", quality=90, progressive=True)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray(rgb[..., 1]).save(folder / "gray.jpg", quality=90)
    Image.fromarray(rgb).save(folder / "lossless.png")
    whole = jpeg_bytes(rgb)
    (folder / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    return {"progressive": "progressive JPEG", "cmyk": "CMYK JPEG", "lossless": "not a JPEG"}


def extract(folder, out, tiny_models, name: str, decode: str, workers: int = 0, device: str = "cpu"):
    m = tiny_models[name]
    items = [MediaInput(p.stem, str(p)) for p in sorted(folder.iterdir())]
    spec = EncoderSpec(model=name, pretrained=str(m["checkpoint"]), model_config=str(m["config"]), device=device)
    return extract_images(items, spec, ExtractOptions(out=out, batch_size=4, workers=workers, progress=False,
                                                      decode=decode))


@pytest.mark.parametrize("name", ["tiny-rn", "tiny-vit"])
def test_device_path_on_cpu_equals_the_pil_path_and_counts_its_fallbacks(tiny_models, tmp_path, monkeypatch, name):
    folder = tmp_path / "images"
    write_photos(folder, 9)
    routes = odd_jpegs(folder)
    reference = extract(folder, tmp_path / "cpu.h5", tiny_models, name, "cpu")
    assert reference.notes == {"decode": "cpu"}
    monkeypatch.setattr(images_module, "resolve_decode_path", lambda requested, device: "gpu")  # the CUDA path, on CPU
    summary = extract(folder, tmp_path / "gpu.h5", tiny_models, name, "gpu", workers=1)

    assert summary.notes["decode"] == "gpu"
    assert summary.notes["decoded"] == {"device": 10, "progressive JPEG": 1, "CMYK JPEG": 1, "not a JPEG": 1}
    assert [(f["id"], f["reason"]) for f in summary.failures] == [(f["id"], f["reason"]) for f in reference.failures]
    assert [f["id"] for f in summary.failures] == ["cut"]
    record = json.loads((tmp_path / "gpu.h5.json").read_text())["provenance"]["runs"][-1]
    assert record["decode"] == "gpu" and record["decoded"] == summary.notes["decoded"]

    a, b = FeatureStore(tmp_path / "cpu.h5"), FeatureStore(tmp_path / "gpu.h5")
    assert sorted(a.ids) == sorted(b.ids) and len(a.ids) == 13
    scale = max(float(np.abs(a.get(i, "grid")).max()) for i in a.ids)
    worst = 0.0
    for i in a.ids:
        x, y = a.get(i, "grid").astype(np.float32), b.get(i, "grid").astype(np.float32)
        if i in routes:  # decoded by PIL in both runs: the same features
            np.testing.assert_array_equal(x, y)
        worst = max(worst, float(np.abs(x - y).max()) / scale)
    assert 0 < worst <= FEATURE_TOL, worst  # the resize differs (else this test proves nothing), within tolerance


def test_a_jpeg_the_device_decoder_refuses_goes_the_pil_path(tiny_models, tmp_path, monkeypatch):
    import torchvision.io

    folder = tmp_path / "images"
    paths = write_photos(folder, 5)
    refused = paths[2].read_bytes()
    real = torchvision.io.decode_jpeg

    def picky(data, **kw):  # as nvJPEG refusing one image of a batch: the batch raises, then that image
        batch = data if isinstance(data, list) else [data]
        if any(d.numel() == len(refused) and bytes(d.numpy()) == refused for d in batch):
            raise RuntimeError("nvjpegDecodeBatched failed: unsupported JPEG")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    monkeypatch.setattr(images_module, "resolve_decode_path", lambda requested, device: "gpu")
    summary = extract(folder, tmp_path / "gpu.h5", tiny_models, "tiny-rn", "gpu")
    assert summary.notes["decoded"] == {"device": 4, "refused by the cpu decoder": 1}
    assert not summary.failures and summary.extracted == 5
    assert describe_counts(summary.notes["decoded"], "the GPU") == "4 on the GPU, 1 on the CPU (1 refused by the cpu decoder)"
    reference = extract(folder, tmp_path / "cpu.h5", tiny_models, "tiny-rn", "cpu")
    assert reference.extracted == 5
    a, b = FeatureStore(tmp_path / "cpu.h5"), FeatureStore(tmp_path / "gpu.h5")
    np.testing.assert_array_equal(a.get(paths[2].stem, "grid"), b.get(paths[2].stem, "grid"))  # PIL in both


def test_the_summary_line_counts_fallbacks_and_ranks_add_up():
    counts = merge_notes([{"decode": "gpu", "decoded": {"device": 5, "CMYK JPEG": 1}},
                          {"decode": "gpu", "decoded": {"device": 3, "progressive JPEG": 2}}, {}])
    assert counts == {"decode": "gpu", "decoded": {"device": 8, "CMYK JPEG": 1, "progressive JPEG": 2}}
    assert describe_counts(counts["decoded"], "the GPU") == \
        "8 on the GPU, 3 on the CPU (1 CMYK JPEG, 2 progressive JPEG)"


def test_the_python_api_takes_decode_too(tiny_models, photos, tmp_path):
    import vl

    m = tiny_models["tiny-rn"]
    with pytest.raises(VLError, match="--decode gpu"):
        vl.extract_images(photos, out=tmp_path / "f.h5", model_config=m["config"], pretrained=m["checkpoint"],
                          device="cpu", decode="gpu", progress=False)
    assert not (tmp_path / "f.h5").exists()
    summary = vl.extract_images(photos, out=tmp_path / "f.h5", model_config=m["config"], pretrained=m["checkpoint"],
                                device="cpu", decode="auto", progress=False)
    assert summary.extracted == 10 and summary.notes == {"decode": "cpu"}
