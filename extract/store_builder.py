"""Building a feature store so that no crash can lose or corrupt finished work.

Features are appended to a shard file under a temporary name in `<store>.parts/`; a
shard is renamed into place only once it is complete (every `shard_rows` items or
`shard_seconds`, and on Ctrl-C). A rerun keeps every finished shard and skips its
ids, so a run killed at any moment (even `kill -9`) loses at most the open shard.
When all inputs are done, the finished store (if any) and the shards are joined into
a new file that replaces `<store>` by an atomic rename; the store is never left
unreadable. Settings that decide the features (model, weights, preprocessing,
layer, pooling, dtype) are recorded in `<store>.parts/settings.json` and in the store,
and a rerun with other settings is refused, naming each field that differs.

Two layouts: `fixed` (images: one item_shape row per id) and `frames` (videos: a
variable number of frame rows per id, with each frame's timestamp and each video's
duration). Under torchrun every rank writes its own shards (`shard-r{rank}-*`) and
holds its own lock; rank 0 joins once all ranks are done (see `vl.shared.distributed`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from vl.shared.atomic import atomic_path, commit, write_json_atomic
from vl.shared.disk_full import DiskFullError, GuardedFile, check_space
from vl.shared.locks import HeldLock
from vl.shared.errors import VLError
from vl.shared.feature_store import (
    STORE_FORMAT,
    store_settings,
    STORE_SCHEMA_VERSION,
    parts_dir,
    settings_differences,
    sidecar_path,
)

NOT_COMPARED = {"encoder.weights.path"}  # a moved checkpoint file is the same weights (sha256 decides)
CHUNK_BYTES = 256 * 1024
COPY_ROWS = 256
LAYOUTS = ("fixed", "frames")


def reuse_problems(have: dict, want: dict, where: str) -> list[str]:
    diffs = [d for d in settings_differences(store_settings(have), store_settings(want)) if d[0] not in NOT_COMPARED]
    return [f"{where}: {path} is {a!r}, this run asks for {b!r}" for path, a, b in diffs]


def chunk_rows(item_shape: tuple[int, ...], dtype: np.dtype, n_rows: int) -> int:
    """Rows per HDF5 chunk: about 256 KiB, so reading one item reads little more."""
    item_bytes = int(np.prod(item_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(max(1, min(CHUNK_BYTES // max(item_bytes, 1), max(n_rows, 1))))


def _read_ids(f: h5py.File) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in f["ids"][()]]


def _read_failures(f: h5py.File) -> list[dict]:
    if "failures" not in f:
        return []
    v = f["failures"][()]
    return json.loads(v.decode("utf-8") if isinstance(v, bytes) else v)


class _OpenShard:
    """A shard being written under a temporary name; items are appended batch by batch.
    Per-item datasets: ids (+ lengths, durations for frames); per-row: features (+ timestamps)."""

    def __init__(self, tmp: Path, final: Path, item_shapes: dict[str, tuple[int, ...]], dtype: np.dtype,
                 frames: bool):
        self.tmp, self.final, self.frames = tmp, final, frames
        self.file = GuardedFile(tmp)  # a full disk never reaches HDF5 (see vl.shared.disk_full)
        self.f = h5py.File(self.file, "w")
        self.n = 0  # items
        self.n_rows = 0  # feature rows (= items for the fixed layout)
        self.failures: list[dict] = []
        self.opened = time.monotonic()
        self.f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(1024,))
        grp = self.f.create_group("features")
        for name, shape in item_shapes.items():
            grp.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                               chunks=(chunk_rows(shape, dtype, 1 << 20), *shape))
        if frames:
            for name, dt in (("lengths", np.int64), ("durations", np.float64), ("timestamps", np.float64)):
                self.f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))

    def _per_item(self) -> list[h5py.Dataset]:
        return [self.f["ids"]] + ([self.f["lengths"], self.f["durations"]] if self.frames else [])

    def _per_row(self) -> list[h5py.Dataset]:
        return list(self.f["features"].values()) + ([self.f["timestamps"]] if self.frames else [])

    def append(self, ids: list[str], features: dict[str, np.ndarray], frames: "FrameInfo | None") -> None:
        k = len(ids)
        rows = int(sum(frames.lengths)) if frames else k
        n, r = self.n, self.n_rows
        for name, arr in features.items():
            _put(self.f["features"][name], r, arr)
        _put(self.f["ids"], n, ids)
        if frames:
            _put(self.f["timestamps"], r, np.asarray(frames.timestamps, dtype=np.float64))
            _put(self.f["lengths"], n, np.asarray(frames.lengths, dtype=np.int64))
            _put(self.f["durations"], n, np.asarray(frames.durations, dtype=np.float64))
        # last: anything beyond (n, n_rows) is cut off if we stop between the lines above
        self.n, self.n_rows = n + k, r + rows

    def close_and_commit(self) -> None:
        for ds in self._per_item():
            ds.resize(self.n, axis=0)
        for ds in self._per_row():
            ds.resize(self.n_rows, axis=0)
        self.f.create_dataset("failures", data=json.dumps(self.failures), dtype=h5py.string_dtype("utf-8"))
        self.f.close()
        self.file.close()
        self.file.raise_if_full()  # the caller discards this shard and names the space needed
        commit(self.tmp, self.final)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.f.close()
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _put(ds: h5py.Dataset, start: int, values) -> None:
    ds.resize(start + len(values), axis=0)
    ds[start:start + len(values)] = values


class BackgroundWriter:
    """Appends to a StoreBuilder from one background thread, so that HDF5 writes batch k
    while the device encodes batch k + 1. On a GPU the writes are not small beside the
    forward: RN101 grids (196 KiB a row) write at about 5,000 items/s on one core
    (bench/store_write.py), against 1,000-2,000 images/s for the forward alone, so writing
    in line would cost a fifth of the run or more.

    Use as a context manager around the batch loop, calling `add` and `add_failures` as one
    would the builder's: they are queued and done in call order, at most `depth` batches
    waiting (the features are held until written). The builder is touched by the thread
    alone until the block ends. The first error in the thread (a full disk) is raised in the
    caller at its next call or when the block ends; what was queued after it is dropped. When
    the block ends, for whatever reason (a stop by a signal included), everything queued
    before is written first, so every batch already encoded is kept."""

    def __init__(self, builder: "StoreBuilder", depth: int = 2):
        self.builder = builder
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="vl-store-writer", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None and self.error is not exc:  # a full disk tells more than what it stopped
            raise self.error

    def add(self, ids: list[str], features: dict[str, np.ndarray], frames: "FrameInfo | None" = None) -> None:
        self._put(self.builder.add, ids, features, frames)

    def add_failures(self, failures: Iterable[dict]) -> None:
        self._put(self.builder.add_failures, list(failures))

    def _put(self, method, *args) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((method, args))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self.error is None:  # after an error the rest is dropped (the caller raises it)
                method, args = job
                try:
                    method(*args)
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    self.error = e


@dataclass
class FrameInfo:
    """The frame layout of a batch of videos: frames per video, each frame's time, each
    video's duration (features rows are the videos' frames, concatenated in order)."""

    lengths: list[int]
    timestamps: list[float]
    durations: list[float]


class StoreBuilder:
    """Use as a context manager around one extraction run (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, provenance: dict, item_shapes: dict[str, tuple[int, ...]],
                 dtype: str = "float16", *, layout: str = "fixed", overwrite: bool = False,
                 shard_rows: int = 1024, shard_seconds: float = 60.0, rank: int = 0):
        assert layout in LAYOUTS, layout
        self.layout = layout
        self.out = Path(out)
        self.parts = parts_dir(self.out)
        self.provenance = provenance
        self.item_shapes = {k: tuple(v) for k, v in item_shapes.items()}
        self.dtype = np.dtype(dtype)
        self.overwrite = overwrite
        self.shard_rows = shard_rows
        self.shard_seconds = shard_seconds
        self.rank = rank
        self.done_in_store: set[str] = set()  # ids in the finished store being extended
        self.done_in_parts: set[str] = set()  # ids in finished shards of an earlier, unfinished run
        self.discarded_shards: list[str] = []
        self.prior_failures: dict[str, dict] = {}  # failures recorded in the finished store
        self.items_to_add: int | None = None  # what this run will add, if the caller says: sizes a full disk's message
        self._kept_items = self._kept_rows = 0  # in the shards this run committed
        self._shard: _OpenShard | None = None
        self._lock_file = None

    # -- opening: lock, check settings, find what is done ------------------------------
    def __enter__(self) -> "StoreBuilder":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._prepare()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._shard is not None:
                try:  # whatever stopped the run, the shard's first `n` rows are complete: keep them
                    self._commit_shard()
                except Exception:  # noqa: BLE001 - a shard that cannot be closed is redone instead
                    self._shard.discard()
                    self._shard = None
                    if exc_type is None:
                        raise
            if self.parts.is_dir() and not self._shards():
                shutil.rmtree(self.parts, ignore_errors=True)  # nothing unfinished to keep
        finally:
            self._unlock()

    def _lock(self) -> None:
        suffix = f".r{self.rank}" if self.rank else ""  # each torchrun rank holds its own
        lock = HeldLock(self.out.with_name(f".{self.out.name}.lock{suffix}"), "vl extract", lambda holder: VLError(
            f"another `vl extract` is writing {self.out} right now ({holder}); wait for it to end or choose "
            "another --out"))
        self._lock_file = lock.__enter__()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.__exit__(None, None, None)
            self._lock_file = None

    def _prepare(self) -> None:
        hint = ("Use the settings it was made with, write to another --out, "
                "or pass --overwrite to replace it (the old store stays until the new one is complete).")
        if self.out.exists() and not self.overwrite:
            try:
                with h5py.File(self.out, "r") as f:
                    if f.attrs.get("vl_format") != STORE_FORMAT:
                        raise VLError(f"{self.out} exists and is not a vl feature store; choose another --out or pass --overwrite")
                    have = json.loads(f.attrs["provenance"])
                    problems = reuse_problems(have, self.provenance, str(self.out))
                    if problems:
                        raise VLError(problems, hint=f"{self.out} was made with other settings. {hint}")
                    self.done_in_store = set(_read_ids(f))
                    self.prior_failures = {x["id"]: x for x in _read_failures(f)}
                    self._sync_sidecar(have, list(self.prior_failures.values()))
            except OSError as e:
                raise VLError(f"{self.out} exists but is not a readable HDF5 file ({e}); pass --overwrite to replace it") from None

        settings_file = self.parts / "settings.json"
        if self.parts.is_dir() and not settings_file.is_file():
            shutil.rmtree(self.parts)  # killed before it recorded anything: nothing to keep
        if self.parts.is_dir():
            have = json.loads(settings_file.read_text())
            problems = reuse_problems(have, self.provenance, str(self.parts))
            if problems and not self.overwrite:
                raise VLError(problems, hint=(
                    f"{self.parts} holds the finished part of an interrupted run with other settings. "
                    "Rerun that command to finish it, or pass --overwrite to discard it."))
            if problems:
                shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        if not settings_file.is_file():
            write_json_atomic(settings_file, store_settings(self.provenance))
        for tmp in self.parts.glob(f".{self._shard_prefix()}*.tmp-*"):  # shards open when a run was killed
            tmp.unlink()
        for shard in self._shards():
            try:
                with h5py.File(shard, "r") as f:
                    self.done_in_parts.update(_read_ids(f))
            except Exception:  # noqa: BLE001 - a damaged shard is redone, not trusted
                if shard.name.startswith(self._shard_prefix()):  # other ranks judge their own
                    self.discarded_shards.append(shard.name)
                    shard.unlink()

    def _sync_sidecar(self, provenance: dict, failures: list[dict]) -> None:
        """Write `<store>.json` unless it already says the same (a run killed between the
        store's rename and the sidecar's leaves it stale; the store's attributes win)."""
        sidecar = {"kind": "feature_store", "schema_version": STORE_SCHEMA_VERSION, "store": self.out.name,
                   "provenance": provenance, "failures": failures}
        path = sidecar_path(self.out)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()) == sidecar:
                return
        write_json_atomic(path, sidecar)

    def _shards(self) -> list[Path]:
        """The committed shards of every rank; none once the folder is gone (another rank that
        found nothing left to keep may remove it while this one looks)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(self.parts.glob("shard-*.h5"))
        return []

    def _shard_prefix(self) -> str:
        return f"shard-r{self.rank:04d}-"

    @property
    def done_ids(self) -> set[str]:
        return self.done_in_store | self.done_in_parts

    # -- writing ------------------------------------------------------------------------
    def _open_shard(self) -> _OpenShard:
        if self._shard is None:
            mine = [p for p in self._shards() if p.name.startswith(self._shard_prefix())]
            seq = 1 + max(int(p.stem.rsplit("-", 1)[-1]) for p in mine) if mine else 0
            final = self.parts / f"{self._shard_prefix()}{seq:06d}.h5"
            self._shard = _OpenShard(final.with_name(f".{final.name}.tmp-{os.getpid()}"), final,
                                     self.item_shapes, self.dtype, frames=self.layout == "frames")
        return self._shard

    def add(self, ids: list[str], features: dict[str, np.ndarray], frames: FrameInfo | None = None) -> None:
        """Append finished items. Fixed layout: features[name] is (len(ids), *item_shape).
        Frames layout: features[name] is (sum(frames.lengths), *item_shape), the videos'
        frames in order."""
        assert (frames is not None) == (self.layout == "frames"), "frames go with the frames layout"
        shard = self._open_shard()
        shard.append(ids, {k: np.asarray(v, dtype=self.dtype) for k, v in features.items()}, frames)
        if shard.file.error is not None:
            self._disk_full(shard.file.error.errno)
        if shard.n >= self.shard_rows or time.monotonic() - shard.opened >= self.shard_seconds:
            self._commit_shard()

    def add_failures(self, failures: Iterable[dict]) -> None:
        self._open_shard().failures.extend(failures)

    def commit_open_shard(self) -> None:
        """Close and keep the open shard (before other ranks' shards are joined)."""
        self._commit_shard()

    def _commit_shard(self) -> None:
        if self._shard is not None:
            try:
                self._shard.close_and_commit()
            except DiskFullError as e:
                self._disk_full(e.errno)
            self._kept_items += self._shard.n
            self._kept_rows += self._shard.n_rows
            self._shard = None

    def _row_bytes(self) -> int:
        row = sum(int(np.prod(shape, dtype=np.int64)) for shape in self.item_shapes.values()) * self.dtype.itemsize
        return row + (8 if self.layout == "frames" else 0)  # + a frame's timestamp

    def _disk_full(self, error_number: int) -> None:
        """Drop the open shard (its items are redone by the rerun) and raise one line: the space
        the items left need, as shards and then joined into the store, if the caller said how
        many there are; else what the open shard needed."""
        shard, self._shard = self._shard, None
        rows_per_item = self._kept_rows / self._kept_items if self._kept_items else 1.0
        if shard is not None:
            shard.discard()
            rows_per_item = shard.n_rows / shard.n if shard.n else rows_per_item
        if self.items_to_add is not None:
            left = max(self.items_to_add - self._kept_items, 1)
            store = int((len(self.done_ids) + self.items_to_add) * rows_per_item * self._row_bytes())
            if error_number == errno.EFBIG:  # a limit on each file: the joined store is the largest
                raise DiskFullError(self.parts, error_number, store, "for the joined store, its largest file")
            raise DiskFullError(self.parts, error_number, int(left * rows_per_item * self._row_bytes()) + store,
                                f"for the {left} items left and the store they are joined into")
        needed = int(max(shard.n if shard else 1, 1) * rows_per_item * self._row_bytes())
        raise DiskFullError(self.parts, error_number, needed, "for the shard being written")

    # -- joining ------------------------------------------------------------------------
    def finish(self, run_record: dict, retried_ids: set[str]) -> dict:
        """Join the finished store and all shards (of every rank) into a new store that
        replaces the old one atomically; return the final counts. `retried_ids` are the
        inputs of this run, whose failures from earlier runs are replaced by this run's
        outcome. Fills in the run record's counts of new items and failures."""
        self._commit_shard()
        frames = self.layout == "frames"
        old = [self.out] if self.out.exists() and not self.overwrite else []
        plan: list[tuple[Path, _Items, list[int]]] = []  # (source, its items, the item indices taken)
        seen: set[str] = set()
        failures: dict[str, dict] = {}
        old_prov: dict = {}
        new_items = 0
        for src in old + self._shards():
            with h5py.File(src, "r") as f:
                items = _Items.read(f, frames)
                for x in _read_failures(f):
                    if src not in old or x["id"] not in retried_ids:
                        failures[x["id"]] = x
                if src in old:
                    old_prov = json.loads(f.attrs["provenance"])
            take = [i for i, ident in enumerate(items.ids) if ident not in seen]
            seen.update(items.ids[i] for i in take)
            new_items += 0 if src in old else len(take)
            plan.append((src, items, take))
        failures = {k: v for k, v in failures.items() if k not in seen}
        all_ids = [items.ids[i] for _, items, take in plan for i in take]
        failure_list = sorted(failures.values(), key=lambda x: x["id"])
        run_record = {**run_record, "extracted": new_items,
                      "failed": sum(1 for x in failure_list if x["id"] in retried_ids)}

        provenance = dict(self.provenance)
        provenance["runs"] = old_prov.get("runs", []) + [run_record]
        provenance["count"] = len(all_ids)
        provenance["failed"] = len(failure_list)
        row_lists = [(src, items.rows(take)) for src, items, take in plan]
        n_rows = sum(len(rows) for _, rows in row_lists)
        needed = n_rows * self._row_bytes()
        needed_for = f"to join {len(all_ids)} items into it (the parts stay until it is complete)"
        check_space(self.out, needed, needed_for)  # before hours of copying
        with atomic_path(self.out) as tmp:
            # a full disk never reaches HDF5 (see vl.shared.disk_full)
            guard = GuardedFile(tmp, report_as=self.out, needed=needed, needed_for=needed_for)
            try:
                with h5py.File(guard, "w") as f:
                    self._write_joined(f, guard, provenance, all_ids, failure_list, plan, row_lists, n_rows)
            finally:
                guard.close()
            guard.raise_if_full()
        self._sync_sidecar(provenance, failure_list)
        shutil.rmtree(self.parts, ignore_errors=True)
        return {"count": len(all_ids), "failed": len(failure_list), "extracted": new_items}

    def _write_joined(self, f: h5py.File, guard: GuardedFile, provenance: dict, all_ids: list[str],
                      failure_list: list[dict], plan: list, row_lists: list[tuple[Path, list[int]]],
                      n_rows: int) -> None:
        frames = self.layout == "frames"
        f.attrs["vl_format"] = STORE_FORMAT
        f.attrs["schema_version"] = STORE_SCHEMA_VERSION
        f.attrs["layout"] = self.layout
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        f.create_dataset("ids", data=np.array(all_ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("failures", data=json.dumps(failure_list), dtype=h5py.string_dtype("utf-8"))
        grp = f.create_group("features")
        for name, shape in self.item_shapes.items():
            grp.create_dataset(name, shape=(n_rows, *shape), dtype=self.dtype,
                               chunks=(chunk_rows(shape, self.dtype, n_rows), *shape) if n_rows else None)
        if frames:
            lengths = np.concatenate([items.lengths[take] for _, items, take in plan] or [np.zeros(0, np.int64)])
            f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            f.create_dataset("durations", data=np.concatenate(
                [items.durations[take] for _, items, take in plan] or [np.zeros(0)]).astype(np.float64))
            f.create_dataset("timestamps", shape=(n_rows,), dtype=np.float64)
        start = 0
        for src, rows in row_lists:
            if rows:
                with h5py.File(src, "r") as s:
                    for name in self.item_shapes:
                        _copy_rows(s["features"][name], rows, grp[name], start, guard)
                    if frames:
                        _copy_rows(s["timestamps"], rows, f["timestamps"], start, guard)
            start += len(rows)


@dataclass
class _Items:
    """The items of one join source (the old store or a shard): ids and where their rows are."""

    ids: list[str]
    starts: np.ndarray  # first feature row of each item
    lengths: np.ndarray  # rows of each item (1 for the fixed layout)
    durations: np.ndarray | None

    @classmethod
    def read(cls, f: h5py.File, frames: bool) -> "_Items":
        ids = _read_ids(f)
        if not frames:
            return cls(ids, np.arange(len(ids)), np.ones(len(ids), dtype=np.int64), None)
        if "offsets" in f:  # a finished store
            offsets = f["offsets"][()]
            lengths = np.diff(offsets)
        else:  # a shard
            lengths = f["lengths"][()]
            offsets = np.concatenate([[0], np.cumsum(lengths)])
        return cls(ids, offsets[:-1].astype(np.int64), lengths.astype(np.int64), f["durations"][()])

    def rows(self, take: list[int]) -> list[int]:
        out: list[int] = []
        for i in take:
            out.extend(range(int(self.starts[i]), int(self.starts[i] + self.lengths[i])))
        return out


def _copy_rows(src: h5py.Dataset, rows: list[int], dst: h5py.Dataset, start: int, guard: GuardedFile) -> None:
    """Copy src[rows] to dst[start:...] in blocks; contiguous runs are read as slices. Stops
    after the first block that found the disk full."""
    for b in range(0, len(rows), COPY_ROWS):
        guard.raise_if_full()
        block = rows[b:b + COPY_ROWS]
        if block[-1] - block[0] == len(block) - 1:
            data = src[block[0]:block[-1] + 1]
        else:
            data = src[block]
        dst[start + b:start + b + len(block)] = data
