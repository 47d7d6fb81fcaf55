"""`vl extract images`: decode in DataLoader workers, encode in batches on the device,
append to the crash-safe store. The shared steps are in `pipeline`."""
from __future__ import annotations

import torch

from vl.extract.decode import ImageDataset, collate_decoded
from vl.extract.encoder import EncoderSpec, LoadedEncoder
from vl.extract.gpu_decode import DeviceDecoder, JpegBytesDataset, collate_raw, resolve_decode_path
from vl.extract.inputs import MediaInput
from vl.extract.pipeline import (
    STORE_DTYPES,
    ExtractOptions,
    ExtractSummary,
    MediaKind,
    file_signature,
    guarded,
    run_extraction,
    test_delay_s,
)
from vl.extract.store_builder import BackgroundWriter, StoreBuilder
from vl.shared.progress import progress_bar
from vl.shared.stopping import check_stop, worker_signals


def extract_images(inputs: list[MediaInput], spec: EncoderSpec, opts: ExtractOptions,
                   source: dict | None = None, encoder: LoadedEncoder | None = None) -> ExtractSummary:
    """Extract features of images into `opts.out` (one row per image), skipping ids already there."""
    if opts.decode != "auto":  # a --decode the device cannot do is refused before anything is loaded
        from vl.shared.devices import pick_device

        resolve_decode_path(opts.decode, encoder.device if encoder else pick_device(spec.device))
    return run_extraction(inputs, spec, opts, IMAGES, source, encoder)


# Images a worker decodes per hand-over. Workers hand over small chunks that the main
# process joins into device batches: with one batch per worker, a batch of 256 kept 255
# images waiting on one worker, and a run of 512 images used 2 of 8 workers (GPU bench).
WORKER_CHUNK = 16


class BatchJoiner:
    """Joins (indices, images) chunks into batches of exactly `batch_size` images (the last
    may be smaller)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.indices: list[int] = []
        self.images: list[torch.Tensor] = []

    def push(self, indices: list[int], images: torch.Tensor) -> None:
        self.indices += indices
        self.images.append(images)

    def batches(self, final: bool = False):
        """Yield the (indices, images) batches that are full (all that is left if `final`)."""
        if len(self.indices) < self.batch_size and not (final and self.indices):
            return
        joined = torch.cat(self.images) if len(self.images) > 1 else self.images[0]
        while len(self.indices) >= self.batch_size or (final and self.indices):
            n = min(self.batch_size, len(self.indices))
            yield self.indices[:n], joined[:n]
            self.indices, joined = self.indices[n:], joined[n:]
        self.images = [joined] if self.indices else []


def run_image_batches(pending: list[MediaInput], encoder: LoadedEncoder, builder: StoreBuilder,
                      opts: ExtractOptions) -> tuple[list[dict], dict]:
    """Decode in DataLoader workers (JPEGs on the device with --decode gpu: gpu_decode),
    encode batch by batch, append to the store. -> (failures, where images were decoded)"""
    on_device = resolve_decode_path(opts.decode, encoder.device) == "gpu"
    decoder = DeviceDecoder(encoder.transform, encoder.device, opts.max_pixels) if on_device else None
    dataset = (JpegBytesDataset if on_device else ImageDataset)(pending, encoder.transform, opts.max_pixels,
                                                                 delay_s=test_delay_s(), fetch=opts.fetch)
    chunk = opts.batch_size if opts.workers == 0 else max(1, min(opts.batch_size, WORKER_CHUNK))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=chunk,
        num_workers=opts.workers,
        worker_init_fn=worker_signals,  # Ctrl-C in a terminal reaches the workers too: the parent decides
        collate_fn=collate_raw if on_device else collate_decoded,
        pin_memory=encoder.device.type == "cuda" and not on_device,
        prefetch_factor=max(4, 2 * opts.batch_size // chunk) if opts.workers > 0 else None,
        # a stuck worker ends the run with an error, never a hang (downloads may take their time first)
        timeout=600 + (opts.fetch.longest_s() if any(x.is_url for x in pending) else 0) if opts.workers > 0 else 0,
    )
    store_dtype = STORE_DTYPES[opts.dtype]
    failures: list[dict] = []
    joiner = BatchJoiner(opts.batch_size)
    with BackgroundWriter(builder) as writer, progress_bar(
            total=len(pending), unit="img", desc="extract", enabled=opts.progress, mininterval=0.5,
            smoothing=0.05) as bar:

        def encode(final: bool = False) -> None:
            for indices, images in joiner.batches(final):
                features = encoder.encode(images)
                arrays = {k: v.to(store_dtype).cpu().numpy() for k, v in features.items()}
                writer.add([pending[i].id for i in indices], arrays)
                bar.update(len(indices))

        chunks = decoder.batches(guarded(loader), opts.batch_size) if decoder else guarded(loader)
        for indices, images, failed in chunks:
            check_stop()  # SIGINT/SIGTERM: this chunk is dropped, the open shard committed
            if images is not None:
                joiner.push(indices, images)
                encode()
            if failed:
                new = [{"id": pending[i].id, "path": pending[i].location, "reason": why,
                        "file": file_signature(pending[i].path)} for i, why in failed]
                writer.add_failures(new)
                failures.extend(new)
                bar.set_postfix(failed=len(failures), refresh=False)
                bar.update(len(failed))
        encode(final=True)
    return failures, {"decode": "gpu", "decoded": dict(decoder.counts)} if decoder else {"decode": "cpu"}


IMAGES = MediaKind(name="images", layout="fixed", run_batches=run_image_batches)
