"""JPEGs decoded, resized and normalised on the GPU (`vl extract images --decode gpu`;
`auto`, the default, picks it on CUDA devices).

On one H200 the CPU path (PIL in 8 DataLoader workers) fed the encoder 274 images/s
against 952 for the forward alone (issue #18). Here the workers only read each input's
bytes and look at its JPEG header; the main process decodes a whole batch at once with
`torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on CUDA) and resizes, crops and
normalises each image on the device with the steps of the model's own preprocessing
(open_clip's transform, read step by step: shortest-side bicubic resize with antialias,
centre crop, ToTensor, Normalize), rounding and clamping to 0..255 after the resize as
PIL's 8-bit resize does. The same functions run on CPU tensors (`device="cpu"`), which
is how the tests compare them with the PIL path; docs/benchmarks.md states the measured
difference.

Everything else takes the CPU path (decode.py) for that image and is counted in the run
summary with its reason: inputs that are not JPEGs (PNG, WebP, ...), JPEGs whose header
says the batched decoder does not take them (progressive, CMYK/YCCK, 12-bit, lossless or
arithmetic-coded, RGB-coded), and any JPEG the device decoder raises on. Broken inputs
(truncated, over --max-pixels, unreadable) also go the CPU path, which records the
failure with its reason exactly as without this module.
"""
from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import torch

from vl.extract.decode import DEFAULT_MAX_PIXELS, ImageDataset, ImageDecodeError, rgb_from_file
from vl.extract.sources import Fetched, InputError, open_input
from vl.shared.errors import VLError

DecodePath = Literal["auto", "cpu", "gpu"]
DECODE_PATHS: tuple[str, ...] = ("auto", "cpu", "gpu")
ON_DEVICE = "device"  # the count of images decoded on the device (the other keys are CPU reasons)
_SOF_BASELINE = (0xC0, 0xC1)  # baseline and extended sequential Huffman: what nvJPEG's batched decoder takes
_NOT_SOF = (0xC4, 0xC8, 0xCC)  # DHT, JPG extension, DAC share the 0xC? range
_EOI_SEARCH = 1 << 16  # some cameras write data after the end-of-image marker; look this far back for it


def resolve_decode_path(requested: str, device: torch.device) -> Literal["cpu", "gpu"]:
    """auto: gpu on CUDA devices, cpu elsewhere. `gpu` on a CPU device is the user's mistake."""
    if requested not in DECODE_PATHS:
        raise VLError(f"--decode must be one of {', '.join(DECODE_PATHS)} (got {requested!r})")
    if requested == "auto":
        return "gpu" if device.type == "cuda" and _torchvision_decodes_jpegs() else "cpu"
    if requested == "gpu" and device.type != "cuda":
        raise VLError(f"--decode gpu decodes JPEGs on the CUDA device, but the encoder runs on {device}: "
                      "use --device cuda, or --decode auto/cpu")
    if requested == "gpu" and not _torchvision_decodes_jpegs():
        raise VLError("--decode gpu needs torchvision.io.decode_jpeg, which this torchvision lacks",
                      hint="Use --decode cpu, or a torchvision from 0.19 to 0.29.")
    return requested  # type: ignore[return-value]


def _torchvision_decodes_jpegs() -> bool:
    """torchvision 0.29 deprecates its image decoders for TorchCodec; a later one may lack them."""
    import torchvision.io

    return hasattr(torchvision.io, "decode_jpeg")


def jpeg_route(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None when the device decoder takes these bytes; otherwise why they go the CPU path.
    Reads only the markers up to the frame header (and looks for the end-of-image marker)."""
    if data[:3] != b"\xff\xd8\xff":
        return "not a JPEG"
    i, adobe_transform = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return "damaged JPEG header"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:i + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_transform = segment[11]  # 0: the three components are RGB, not YCbCr
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF:  # the frame header
            if len(segment) < 6:
                return "damaged JPEG header"
            bits, h, w, components = segment[0], int.from_bytes(segment[1:3], "big"), \
                int.from_bytes(segment[3:5], "big"), segment[5]
            if marker == 0xC2 or marker == 0xC6:
                return "progressive JPEG"
            if marker not in _SOF_BASELINE:
                return "lossless or arithmetic-coded JPEG"
            if components == 4:
                return "CMYK JPEG"
            if components not in (1, 3) or bits != 8:
                return f"{bits}-bit JPEG with {components} components"
            if components == 3 and adobe_transform == 0:
                return "RGB-coded JPEG"
            if not 0 < w * h <= max_pixels:
                return "over the pixel limit"  # the CPU path records the failure, as without --decode gpu
            if data.rfind(b"\xff\xd9", max(0, len(data) - _EOI_SEARCH)) < 0:
                return "truncated JPEG"  # likewise
            return None
        i += 2 + length
    return "damaged JPEG header"


class DevicePreprocess:
    """The model's preprocessing (an open_clip eval transform) as torch ops on decoded uint8
    (3, H, W) images, or (n, 3, H, W) of one size, on whatever device they are: (3, h, w) or
    (n, 3, h, w) float32, normalised."""

    def __init__(self, transform):
        from open_clip.transform import CenterCropOrPad, MaybeConvertMode, MaybeToTensor, ResizeKeepRatio
        from torchvision import transforms as T

        steps = getattr(transform, "transforms", None)
        known = (T.Resize, T.CenterCrop, ResizeKeepRatio, CenterCropOrPad, MaybeConvertMode, MaybeToTensor,
                 T.ToTensor, T.Normalize)
        unknown = [type(s).__name__ for s in steps or [None] if not isinstance(s, known)]
        if unknown:
            raise VLError(f"--decode gpu cannot follow this preprocessing step: {', '.join(unknown)}",
                          hint="Use --decode cpu for this model.")
        self.steps = list(steps)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
        from torchvision import transforms as T
        from torchvision.transforms import functional as TF

        x = image.float()  # (3, H, W), 0..255
        for step in self.steps:
            if isinstance(step, (T.Resize, ResizeKeepRatio)):
                if isinstance(step, ResizeKeepRatio):  # its sizes from the (w, h) it reads off a PIL image
                    size = ResizeKeepRatio.get_params(_Sized(x), step.size, step.longest)
                    max_size = None
                else:
                    size, max_size = step.size, step.max_size
                x = _resize_as_pil(x, size, step.interpolation, max_size)
            elif isinstance(step, (T.CenterCrop, CenterCropOrPad)):
                x = step(x)
            elif isinstance(step, (T.ToTensor,)):  # MaybeToTensor is one
                x = x / 255.0
            elif isinstance(step, T.Normalize):
                x = TF.normalize(x, step.mean, step.std)
        return x.contiguous()


def _resize_as_pil(x: torch.Tensor, size, interpolation, max_size) -> torch.Tensor:
    """PIL's 8-bit resize in torch ops: with antialias, bicubic is PIL's filter (a = -0.5,
    widened when shrinking); PIL resizes the width, rounds to 8 bits, then the height, and
    rounds again, and so does this (one pass in float was 2 levels off at 8x reductions)."""
    from torchvision.transforms import functional as TF

    # the output size as torchvision's resize works it out for a PIL image (shortest side, max_size)
    h, w = TF._compute_resized_output_size(list(x.shape[-2:]), list(size) if isinstance(size, (list, tuple))
                                           else [size], max_size)
    if w != x.shape[-1]:
        x = TF.resize(x, [x.shape[-2], w], interpolation, antialias=True).round_().clamp_(0, 255)
    if h != x.shape[-2]:
        x = TF.resize(x, [h, w], interpolation, antialias=True).round_().clamp_(0, 255)
    return x


class _Sized:
    """What ResizeKeepRatio.get_params reads of a PIL image: .size = (w, h)."""

    def __init__(self, x: torch.Tensor):
        self.size = (x.shape[-1], x.shape[-2])


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | str]:
    """Decode JPEG byte tensors to uint8 (3, H, W) RGB on `device`, all at once; if the
    batch is refused, one by one, so a refused image comes back as its error text."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except (RuntimeError, TypeError):  # TypeError: a torchvision before 0.19 decodes one image a call
        out: list[torch.Tensor | str] = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as e:
                out.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return out


class JpegBytesDataset(ImageDataset):
    """Items (index, payload, failure reason or None, CPU reason or None): JPEG bytes (a
    uint8 tensor) for the device when the header allows, else the CPU path's tensor and why."""

    def _decode(self, index: int, fetched: Fetched | InputError | None = None):
        try:
            f, _ = open_input(self.inputs[index], self.fetch, fetched)
            with f:
                data = f.read()
        except (InputError, OSError):
            i, tensor, error = super()._decode(index, fetched)  # records the reason as the CPU path words it
            return i, tensor, error, "unreadable"
        why = jpeg_route(data, self.max_pixels)
        if why is None:
            if self.delay_s:
                time.sleep(self.delay_s)  # the test hook, as the CPU path applies it
            return index, torch.frombuffer(bytearray(data), dtype=torch.uint8), None, None
        if self.inputs[index].is_url and fetched is None:
            fetched = Fetched(data, "")  # not downloaded twice
        i, tensor, error = super()._decode(index, fetched)
        return i, tensor, error, why


@dataclass
class RawChunk:
    """A worker's hand-over: JPEG bytes for the device, images the CPU path decoded, failures."""

    jpeg_indices: list[int] = field(default_factory=list)
    jpegs: list[torch.Tensor] = field(default_factory=list)
    cpu_indices: list[int] = field(default_factory=list)
    cpu_images: list[torch.Tensor] = field(default_factory=list)
    cpu_reasons: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def collate_raw(items) -> RawChunk:
    chunk = RawChunk()
    for index, payload, error, why in items:
        if error is not None:
            chunk.failed.append((index, error))
        elif why is None:
            chunk.jpeg_indices.append(index)
            chunk.jpegs.append(payload)
        else:
            chunk.cpu_indices.append(index)
            chunk.cpu_images.append(payload)
            chunk.cpu_reasons.append(why)
    return chunk


class DeviceDecoder:
    """Turns RawChunks into (indices, images on the device, failures), decoding JPEGs a
    batch at a time; `counts` says where each image was decoded (ON_DEVICE, or the CPU
    reason) for the run summary."""

    def __init__(self, transform, device: torch.device, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.preprocess = DevicePreprocess(transform)
        self.transform = transform  # the CPU path's, for images the device decoder refuses
        self.device = device
        self.max_pixels = max_pixels
        self.counts: Counter[str] = Counter()

    def decode(self, indices: list[int], jpegs: list[torch.Tensor]):
        """-> (indices, (n, 3, h, w) on the device or None, [(index, reason), ...])"""
        images: dict[int, torch.Tensor] = {}  # position in the batch -> preprocessed image
        same_size: dict[tuple[int, ...], list[int]] = {}  # decoded shape -> positions: resized together
        decoded_all = decode_jpegs(jpegs, self.device)
        failed = []
        for k, (index, data, decoded) in enumerate(zip(indices, jpegs, decoded_all)):
            if isinstance(decoded, str):  # refused: the CPU path for this one
                try:
                    image = self.transform(rgb_from_file(io.BytesIO(data.numpy().tobytes()), self.max_pixels))
                except ImageDecodeError as e:
                    failed.append((index, str(e)))
                    continue
                self.counts[f"refused by the {self.device.type} decoder"] += 1
                images[k] = image.to(self.device)
            else:
                same_size.setdefault(tuple(decoded.shape), []).append(k)
                self.counts[ON_DEVICE] += 1
        # Images of one size (most of COCO is 640x480) go through the resize as one tensor: a
        # few kernels a group instead of a few an image.
        for group in same_size.values():
            for k, image in zip(group, self.preprocess(torch.stack([decoded_all[k] for k in group]))):
                images[k] = image
        order = sorted(images)
        return [indices[k] for k in order], torch.stack([images[k] for k in order]) if order else None, failed

    def batches(self, chunks: Iterable[RawChunk], batch_size: int) -> Iterator:
        """(indices, images on the device or None, failures) per worker chunk, JPEGs decoded
        `batch_size` at a time (batched decoding is what makes nvJPEG fast)."""
        waiting_indices: list[int] = []
        waiting: list[torch.Tensor] = []
        for chunk in chunks:
            self.counts.update(chunk.cpu_reasons)
            if chunk.cpu_images:
                yield chunk.cpu_indices, torch.stack(chunk.cpu_images).to(self.device), []
            if chunk.failed:
                yield [], None, chunk.failed
            waiting_indices += chunk.jpeg_indices
            waiting += chunk.jpegs
            while len(waiting) >= batch_size:
                yield self.decode(waiting_indices[:batch_size], waiting[:batch_size])
                waiting_indices, waiting = waiting_indices[batch_size:], waiting[batch_size:]
        if waiting:
            yield self.decode(waiting_indices, waiting)


def describe_counts(counts: dict[str, int], device: str) -> str:
    """'4090 on cuda, 6 on the CPU (4 progressive JPEG, 2 CMYK JPEG)'"""
    on_device = counts.get(ON_DEVICE, 0)
    cpu = {k: v for k, v in counts.items() if k != ON_DEVICE and v}
    text = f"{on_device} on {device}"
    if cpu:
        text += f", {sum(cpu.values())} on the CPU (" + ", ".join(f"{v} {k}" for k, v in sorted(cpu.items())) + ")"
    return text
