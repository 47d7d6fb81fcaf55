"""Decoding images safely in DataLoader workers: one bad image never fails a batch.

Odd modes (grayscale, RGBA, palette, CMYK, 16-bit) are converted to RGB and
extracted. Broken inputs (missing, empty, truncated, not an image, over the pixel
limit; for tar members and URLs also unreadable shards, failed downloads and bodies
that are not images) come back as a reason string that the run records as a failure.
"""
from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from vl.extract.inputs import MediaInput
from vl.extract.sources import Fetched, FetchSettings, InputError, fetch_url, input_size, open_input
from vl.shared.media import file_error_reason

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (~ 9459 x 9459)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
FETCH_THREADS = 32  # downloads at once, per decoding process


class ImageDecodeError(Exception):
    """An input that cannot be turned into an RGB image; the message is the reason."""


def load_rgb(source: str | MediaInput, max_pixels: int = DEFAULT_MAX_PIXELS,
             fetch: FetchSettings = FetchSettings(), fetched: Fetched | InputError | None = None) -> Image.Image:
    """Open an image (a file path, or an input whose bytes are a file, a tar member or a
    URL: `vl.extract.sources`; `fetched`: a URL's download already done) as 8-bit RGB,
    or raise ImageDecodeError saying why not."""
    item = MediaInput(source, source) if isinstance(source, str) else source
    try:
        f, content_type = open_input(item, fetch, fetched)
    except InputError as e:
        raise ImageDecodeError(str(e)) from None
    with f:
        return rgb_from_file(f, max_pixels, content_type)


def rgb_from_file(f, max_pixels: int = DEFAULT_MAX_PIXELS, content_type: str = "") -> Image.Image:
    """An open image file (or BytesIO) as 8-bit RGB, or ImageDecodeError saying why not;
    `content_type`: what a server said the bytes are, for the message."""
    try:
        with _pixel_limit_off():
            im = Image.open(f)
            w, h = im.size  # read from the header: nothing decoded yet
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                    "(a decompression bomb guard; raise --max-pixels if the image is genuine)"
                )
            im.load()  # decode now, inside the try, so truncation is caught here
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError:
        sent = f" (the server sent {content_type})" if content_type else ""
        raise ImageDecodeError("empty file (0 bytes)" if input_size(f) == 0
                               else f"not an image Pillow can read{sent}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(file_error_reason(e, "an image file") or f"corrupt image: {e}") from None
    return to_rgb(im)


@contextlib.contextmanager
def _pixel_limit_off():
    """Our own limit (checked on the header) replaces Pillow's global one, so that
    --max-pixels can also raise it."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode), mode="L").convert("RGB")
    # L, LA, P, PA, RGBA, CMYK, YCbCr, 1, ...: Pillow's conversion (alpha dropped, as CLIP's own preprocessing does)
    return im.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (or 32-bit int / float) grayscale to 8 bits by its value range, not by clipping."""
    if mode == "F":
        a = np.nan_to_num(a.astype(np.float64))
        lo, hi = float(a.min()), float(a.max())
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return (scaled * 255.0 + 0.5).astype(np.uint8)
    a = a.astype(np.int64)
    top = 65535 if a.max() <= 65535 and a.min() >= 0 else int(a.max())
    return np.clip((a * 255 + top // 2) // max(top, 1), 0, 255).astype(np.uint8)


class ImageDataset(torch.utils.data.Dataset):
    """Items are (index, tensor or None, failure reason or None); never raises."""

    def __init__(self, inputs: Sequence[MediaInput], transform: Callable, max_pixels: int = DEFAULT_MAX_PIXELS,
                 delay_s: float = 0.0, fetch: FetchSettings = FetchSettings()):
        self.inputs = list(inputs)
        self.transform = transform
        self.max_pixels = max_pixels
        self.delay_s = delay_s  # tests use it to slow a run down so it can be killed part-way
        self.fetch = fetch

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        return self._decode(index)

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader's chunk at once: URLs are downloaded side by side (a download waits
        on the network, not on a core), then everything is decoded in order."""
        urls = [i for i in indices if self.inputs[i].is_url and not self.inputs[i].error]
        if len(urls) < 2:
            return [self[i] for i in indices]
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(urls))) as pool:
            fetched = dict(zip(urls, pool.map(self._fetch, urls)))
        return [self._decode(i, fetched.get(i)) for i in indices]

    def _fetch(self, index: int) -> Fetched | InputError:
        try:
            return fetch_url(self.inputs[index].path, self.fetch)
        except InputError as e:
            return e

    def _decode(self, index: int, fetched: Fetched | InputError | None = None):
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            image = load_rgb(self.inputs[index], self.max_pixels, self.fetch, fetched)
            return index, self.transform(image), None
        except ImageDecodeError as e:
            return index, None, str(e)
        except Exception as e:  # noqa: BLE001 - a transform bug must not kill the batch either
            return index, None, f"preprocessing failed: {type(e).__name__}: {e}"


def collate_decoded(items):
    """-> (indices of decoded images, stacked tensor or None, [(index, reason), ...])"""
    ok = [(i, t) for i, t, err in items if err is None]
    failed = [(i, err) for i, t, err in items if err is not None]
    if not ok:
        return [], None, failed
    return [i for i, _ in ok], torch.stack([t for _, t in ok]), failed
