"""What `vl extract images` and `vl extract videos` share: load the encoder, record
provenance, open the crash-safe store (see `store_builder`), work out what is left to
do, split it over torchrun ranks, run the media kind's batches, join, and say what
happened. The media kinds (`images`, `videos`) supply only their decoding and batching."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vl.extract.decode import DEFAULT_MAX_PIXELS
from vl.shared.distributed import ranks_from_env
from vl.extract.encoder import EncoderSpec, LoadedEncoder, load_encoder
from vl.extract.gpu_decode import DECODE_PATHS, DecodePath
from vl.extract.inputs import MediaInput
from vl.extract.sources import FetchSettings
from vl.extract.store_builder import StoreBuilder
from vl.shared.disk_full import file_size_limit
from vl.shared.digests import digest_strings
from vl.shared.errors import VLError
from vl.shared.feature_store import STORE_FORMAT
from vl.shared.version import __version__

STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Test hook: seconds each worker sleeps per item, so a test can kill a run part-way.
_TEST_DELAY_ENV = "VL_TEST_DECODE_DELAY_S"


def test_delay_s() -> float:
    return float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)


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
    fetch: FetchSettings = field(default_factory=FetchSettings)  # for http(s) inputs
    decode: DecodePath = "auto"  # images: where JPEGs are decoded, cpu / gpu / auto (gpu on CUDA): vl.extract.gpu_decode


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
    notes: dict = field(default_factory=dict)  # what the media kind reports (images: where they were decoded)

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


@dataclass
class MediaKind:
    """What differs between images and videos."""

    name: str  # "images" / "videos": the word used in messages
    layout: str  # the store layout: "fixed" / "frames"
    # (this rank's pending inputs, encoder, store builder, options) -> (failures, notes for the run record)
    run_batches: Callable[[list[MediaInput], LoadedEncoder, StoreBuilder, "ExtractOptions"], tuple[list[dict], dict]]
    preprocess: dict = field(default_factory=dict)  # extra settings that decide the features (sampling)
    versions: dict = field(default_factory=dict)  # extra library versions (PyAV / FFmpeg)


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
    if opts.decode not in DECODE_PATHS:
        problems.append(f"--decode must be one of {', '.join(DECODE_PATHS)} (got {opts.decode!r})")
    if opts.max_pixels < 1:
        problems.append(f"--max-pixels must be positive (got {opts.max_pixels})")
    if opts.out.exists() and opts.out.is_dir():
        problems.append(f"--out {opts.out} is a folder; give a file path such as {opts.out}/features.h5")
    if problems:
        raise VLError(problems)


def run_extraction(inputs: list[MediaInput], spec: EncoderSpec, opts: ExtractOptions, kind: MediaKind,
                   source: dict | None = None, encoder: LoadedEncoder | None = None) -> ExtractSummary:
    """Extract features of `inputs` into `opts.out`, skipping ids already there. Under
    torchrun each rank does its share; rank 0 joins and returns the whole run's summary.
    `encoder`: one `load_encoder(spec)` made already (a caller that extracts again and again,
    as `vl.load_run(...).predict` does), else it is loaded here."""
    check_options(opts)
    ranks = ranks_from_env()
    started = dt.datetime.now(dt.timezone.utc)
    if encoder is None:
        encoder = load_encoder(dataclasses.replace(spec, device=ranks.device(spec.device)))
    if not opts.batch_size:
        opts = dataclasses.replace(opts, batch_size=DEFAULT_BATCH.get(encoder.device.type, 32))
    if opts.workers is None:
        opts = dataclasses.replace(opts, workers=default_workers(encoder.device.type))
    if opts.workers and file_size_limit() is not None:
        # Loader workers hand batches over in shared-memory files, which `ulimit -f` limits too: one
        # over it is lost in the worker and the run would wait for it. The main process decodes.
        _log(opts, "a file size limit (ulimit -f) is set: decoding in the main process (--workers 0)")
        opts = dataclasses.replace(opts, workers=0)
    if not ranks.is_main:
        opts = dataclasses.replace(opts, progress=False)  # one progress bar, rank 0's
    if encoder.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    shapes = probe_shapes(encoder)
    provenance = dict(encoder.provenance)
    provenance["preprocess"] = {**provenance["preprocess"], **kind.preprocess}
    provenance["features"] = {**provenance["features"], "dtype": opts.dtype,
                              "shapes": {k: list(v) for k, v in shapes.items()}}
    provenance["format"] = STORE_FORMAT
    provenance["layout"] = kind.layout
    provenance["versions"] = {**library_versions(), **kind.versions}

    builder = StoreBuilder(opts.out, provenance, shapes, opts.dtype, layout=kind.layout, overwrite=opts.overwrite,
                           shard_rows=opts.shard_rows, shard_seconds=opts.shard_seconds, rank=ranks.rank)
    if not ranks.is_main:
        ranks.barrier()  # rank 0 checks the store and cleans up first
    with builder:
        if ranks.is_main:
            ranks.barrier()
        done = builder.done_ids
        pending = [x for x in inputs if x.id not in done]
        if not opts.retry_failed:  # a failure is final until its file changes
            unchanged = {x.id for x in pending if x.id in builder.prior_failures
                         and builder.prior_failures[x.id].get("file") == file_signature(x.path)}
            pending = [x for x in pending if x.id not in unchanged]
            earlier_failures = [{**builder.prior_failures[i], "earlier": True} for i in sorted(unchanged)]
        else:
            earlier_failures = []
        mine = ranks.slice(pending)
        builder.items_to_add = len(mine)  # sizes the message of a full disk
        share = f", {len(mine)} on each of {ranks.world_size} ranks" if ranks.world_size > 1 else ""
        _log(opts, f"{len(inputs)} {kind.name}: {len(inputs) - len(pending)} already done in {opts.out}, "
                   f"{len(pending)} to extract{share} ({spec.model}, {encoder.device.type}, {spec.precision}, "
                   f"batch {opts.batch_size}, {opts.workers} workers)")
        t0 = time.perf_counter()
        failures: list[dict] = []
        notes: dict = {}
        if mine:
            with _cores_left_for_forward(encoder.device.type, opts.workers):
                failures, notes = kind.run_batches(mine, encoder, builder, opts)
        seconds = time.perf_counter() - t0
        if ranks.world_size > 1:  # every rank's counts, for rank 0's run record and summary
            import torch.distributed as dist

            gathered: list = [None] * ranks.world_size
            dist.all_gather_object(gathered, notes)
            notes = merge_notes(gathered)
        builder.commit_open_shard()
        ranks.barrier()  # every rank's shards are complete
        extracted, store_count = len(mine) - len(failures), len(builder.done_ids)
        needs_join = bool(pending) or bool(builder.done_in_parts) or not opts.out.exists() or opts.overwrite
        if ranks.is_main and needs_join:
            run_record = {
                "started": started.isoformat(timespec="seconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "source": source or {},
                "inputs": len(inputs),
                "input_list_digest": digest_strings(f"{x.id}\t{x.location}" for x in inputs),
                "seconds": round(seconds, 3),
                "device": str(encoder.device),
                "world_size": ranks.world_size,
                "command": " ".join(sys.argv),
                **notes,
            }
            final = builder.finish(run_record, retried_ids={x.id for x in pending})
            store_count = final["count"]
            if ranks.world_size > 1:  # this run's outcome across all ranks, from the joined store
                from vl.shared.feature_store import FeatureStore

                joined = FeatureStore(opts.out)
                failures = [x for x in joined.failures if x["id"] in {p.id for p in pending}]
                extracted = final["extracted"]
    return ExtractSummary(opts.out, len(inputs), len(inputs) - len(pending) - len(earlier_failures),
                          extracted, failures + earlier_failures, seconds, store_count,
                          builder.discarded_shards, notes)


def merge_notes(notes: list[dict]) -> dict:
    """The ranks' notes as one: counts added, nested counts merged, anything else the first rank's."""
    merged: dict = {}
    for one in notes:
        for key, value in one.items():
            if isinstance(value, dict):
                merged[key] = merge_notes([merged.get(key, {}), value])
            elif isinstance(value, int) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged.setdefault(key, value)
    return merged


@contextlib.contextmanager
def _cores_left_for_forward(device_type: str, workers: int):
    """On the CPU, leave the decoding workers their cores when the forward pass keeps at
    least two: on 2 cores, one thread for the forward halved its speed (docs/benchmarks.md)
    while decoding needs a few percent of a core."""
    threads = torch.get_num_threads()
    left = (os.cpu_count() or 1) - workers
    if device_type == "cpu" and workers > 0 and left >= 2:
        torch.set_num_threads(min(threads, left))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def guarded(loader):
    """Iterate a DataLoader, turning a dead or stuck worker into a clear error."""
    try:
        yield from loader
    except RuntimeError as e:
        if "DataLoader" not in str(e):
            raise
        raise VLError(f"decoding stopped: {e}. Finished work is kept; run the same command again to "
                      "continue (with --workers 0 to decode in the main process if it repeats).") from None


def _log(opts: ExtractOptions, message: str) -> None:
    if opts.progress:
        print(message, file=sys.stderr, flush=True)
