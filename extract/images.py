"""`vl extract images`: decode in DataLoader workers, encode in batches on the device,
append to a crash-safe store (see `store_builder`), and say what happened."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vl.extract.decode import DEFAULT_MAX_PIXELS, ImageDataset, collate_decoded
from vl.extract.encoder import EncoderSpec, LoadedEncoder, load_encoder
from vl.extract.inputs import MediaInput
from vl.extract.store_builder import StoreBuilder
from vl.shared.digests import digest_strings
from vl.shared.errors import VLError
from vl.shared.feature_store import STORE_FORMAT
from vl.shared.version import __version__

STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Test hook: seconds each worker sleeps per image, so a test can kill a run part-way.
_TEST_DELAY_ENV = "VL_TEST_DECODE_DELAY_S"


DEFAULT_BATCH = {"cuda": 256, "cpu": 8}  # on CPUs, batches beyond ~8 run slower per image


def default_workers(device_type: str, cpus: int | None = None) -> int:
    """Decoding processes. A GPU wants them all (up to 8). On the CPU they take cores from
    the forward pass, which is the bottleneck: none on small machines (measured fastest on
    2 cores), a quarter of the cores on larger ones."""
    cpus = cpus or os.cpu_count() or 1
    if device_type == "cuda":
        return max(1, min(8, cpus))
    return 0 if cpus <= 4 else min(8, cpus // 4)


@dataclass
class ExtractOptions:
    out: Path
    batch_size: int = 0  # 0: the device's default (DEFAULT_BATCH)
    workers: int | None = None  # None: default_workers(device)
    dtype: str = "float16"
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    shard_rows: int = 1024
    shard_seconds: float = 60.0
    progress: bool = True
    retry_failed: bool = False


@dataclass
class ExtractSummary:
    out: Path
    inputs: int
    already_done: int
    extracted: int
    failures: list[dict]
    seconds: float
    store_count: int
    discarded_shards: list[str]

    @property
    def throughput(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


def library_versions() -> dict:
    import h5py
    import open_clip
    import PIL
    import torchvision

    return {"vl": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "open_clip": open_clip.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "pillow": PIL.__version__,
            "numpy": np.__version__}


def file_signature(path: str) -> list[int] | None:
    """(size, mtime in ns) of a file, or None if it is missing: says whether a failed
    input changed since it failed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def probe_shapes(encoder: LoadedEncoder) -> dict[str, tuple[int, ...]]:
    """Run one blank image through the model: checks it works and gives the item shapes."""
    blank = torch.zeros(1, 3, *encoder.image_size)
    return {name: tuple(t.shape[1:]) for name, t in encoder.encode(blank).items()}


def check_options(opts: ExtractOptions) -> None:
    problems = []
    if opts.batch_size < 0:
        problems.append(f"--batch-size must be at least 1 (got {opts.batch_size})")
    if opts.workers is not None and opts.workers < 0:
        problems.append(f"--workers must be 0 (decode in the main process) or more (got {opts.workers})")
    if opts.dtype not in STORE_DTYPES:
        problems.append(f"--dtype must be one of {', '.join(STORE_DTYPES)} (got {opts.dtype!r})")
    if opts.max_pixels < 1:
        problems.append(f"--max-pixels must be positive (got {opts.max_pixels})")
    if opts.out.exists() and opts.out.is_dir():
        problems.append(f"--out {opts.out} is a folder; give a file path such as {opts.out}/features.h5")
    if problems:
        raise VLError(problems)


def extract_images(inputs: list[MediaInput], spec: EncoderSpec, opts: ExtractOptions,
                   source: dict | None = None) -> ExtractSummary:
    """Extract features of `inputs` into `opts.out`, skipping ids already there."""
    check_options(opts)
    started = dt.datetime.now(dt.timezone.utc)
    encoder = load_encoder(spec)
    if not opts.batch_size:
        opts = dataclasses.replace(opts, batch_size=DEFAULT_BATCH.get(encoder.device.type, 32))
    if opts.workers is None:
        opts = dataclasses.replace(opts, workers=default_workers(encoder.device.type))
    if encoder.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    shapes = probe_shapes(encoder)
    provenance = dict(encoder.provenance)
    provenance["features"] = {**provenance["features"], "dtype": opts.dtype,
                              "shapes": {k: list(v) for k, v in shapes.items()}}
    provenance["format"] = STORE_FORMAT
    provenance["versions"] = library_versions()

    with StoreBuilder(opts.out, provenance, shapes, opts.dtype, overwrite=opts.overwrite,
                      shard_rows=opts.shard_rows, shard_seconds=opts.shard_seconds) as builder:
        done = builder.done_ids
        pending = [x for x in inputs if x.id not in done]
        if not opts.retry_failed:  # a failure is final until its file changes
            unchanged = {x.id for x in pending if x.id in builder.prior_failures
                         and builder.prior_failures[x.id].get("file") == file_signature(x.path)}
            pending = [x for x in pending if x.id not in unchanged]
            done = done | unchanged
            earlier_failures = [{**builder.prior_failures[i], "earlier": True} for i in sorted(unchanged)]
        else:
            earlier_failures = []
        _log(opts, f"{len(inputs)} inputs: {len(inputs) - len(pending)} already done in {opts.out}, {len(pending)} to extract"
                   f" ({spec.model}, {encoder.device.type}, {spec.precision}, batch {opts.batch_size}, {opts.workers} workers)")
        t0 = time.perf_counter()
        failures: list[dict] = []
        if pending:
            with _cores_left_for_forward(encoder.device.type, opts.workers):
                failures = _run_batches(pending, encoder, builder, opts)
        seconds = time.perf_counter() - t0
        needs_join = bool(pending) or bool(builder.done_in_parts) or not opts.out.exists() or opts.overwrite
        store_count = len(builder.done_ids)
        if needs_join:
            run_record = {
                "started": started.isoformat(timespec="seconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "source": source or {},
                "inputs": len(inputs),
                "input_list_digest": digest_strings(f"{x.id}\t{x.path}" for x in inputs),
                "seconds": round(seconds, 3),
                "device": str(encoder.device),
                "command": " ".join(sys.argv),
            }
            final = builder.finish(run_record, retried_ids={x.id for x in pending})
            store_count = final["count"]
    return ExtractSummary(opts.out, len(inputs), len(inputs) - len(pending) - len(earlier_failures),
                          len(pending) - len(failures), failures + earlier_failures, seconds, store_count,
                          builder.discarded_shards)


def _run_batches(pending: list[MediaInput], encoder: LoadedEncoder, builder: StoreBuilder,
                 opts: ExtractOptions) -> list[dict]:
    from tqdm import tqdm

    dataset = ImageDataset(pending, encoder.transform, opts.max_pixels,
                           delay_s=float(os.environ.get(_TEST_DELAY_ENV, "0") or 0))
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
        for indices, images, failed in _guarded(loader):
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


@contextlib.contextmanager
def _cores_left_for_forward(device_type: str, workers: int):
    """On the CPU, leave the decoding workers their cores: the forward pass gets the rest."""
    threads = torch.get_num_threads()
    if device_type == "cpu" and workers > 0:
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _guarded(loader):
    """Iterate a DataLoader, turning a dead or stuck worker into a clear error."""
    try:
        yield from loader
    except RuntimeError as e:
        if "DataLoader" not in str(e):
            raise
        raise VLError(f"image decoding stopped: {e}. Finished work is kept; run the same command again to "
                      "continue (with --workers 0 to decode in the main process if it repeats).") from None


def _log(opts: ExtractOptions, message: str) -> None:
    if opts.progress:
        print(message, file=sys.stderr, flush=True)
