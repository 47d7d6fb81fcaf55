"""`vl extract images`: decode in DataLoader workers, encode in batches on the device,
append to the crash-safe store. The shared steps are in `pipeline`."""
from __future__ import annotations

import torch

from vl.extract.decode import ImageDataset, collate_decoded
from vl.extract.encoder import EncoderSpec, LoadedEncoder
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
from vl.extract.store_builder import StoreBuilder


def extract_images(inputs: list[MediaInput], spec: EncoderSpec, opts: ExtractOptions,
                   source: dict | None = None) -> ExtractSummary:
    """Extract features of images into `opts.out` (one row per image), skipping ids already there."""
    return run_extraction(inputs, spec, opts, IMAGES, source)


def run_image_batches(pending: list[MediaInput], encoder: LoadedEncoder, builder: StoreBuilder,
                      opts: ExtractOptions) -> list[dict]:
    """Decode in DataLoader workers, encode batch by batch, append to the store."""
    from tqdm import tqdm

    dataset = ImageDataset(pending, encoder.transform, opts.max_pixels,
                           delay_s=test_delay_s())
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=opts.batch_size,
        num_workers=opts.workers,
        collate_fn=collate_decoded,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if opts.workers > 0 else None,
        timeout=600 if opts.workers > 0 else 0,  # a stuck worker ends the run with an error, never a hang
    )
    store_dtype = STORE_DTYPES[opts.dtype]
    failures: list[dict] = []
    with tqdm(total=len(pending), unit="img", desc="extract", disable=not opts.progress,
              dynamic_ncols=True, mininterval=0.5, smoothing=0.05) as bar:
        for indices, images, failed in guarded(loader):
            if images is not None:
                features = encoder.encode(images)
                arrays = {k: v.to(store_dtype).cpu().numpy() for k, v in features.items()}
                builder.add([pending[i].id for i in indices], arrays)
            if failed:
                new = [{"id": pending[i].id, "path": pending[i].path, "reason": why,
                        "file": file_signature(pending[i].path)} for i, why in failed]
                builder.add_failures(new)
                failures.extend(new)
                bar.set_postfix(failed=len(failures), refresh=False)
            bar.update(len(indices) + len(failed))
    return failures


IMAGES = MediaKind(name="images", layout="fixed", run_batches=run_image_batches)
