"""The feature store: one HDF5 file of CLIP features for every media id of a dataset.

Layout (schema version 1):

    /ids                  (N,) utf-8 strings, the media ids
    /features/<name>      features; <name> is `grid` (rows, T, C) and/or `pooled` (rows, D);
                          chunked by item for fast random reads
    /failures             scalar utf-8 JSON: [{"id", "path", "reason"}, ...]
    attrs: vl_format = "vl.feature_store", schema_version = 1, layout,
           provenance = JSON (how the features were made; see `vl.extract`)

Layout `fixed` (images): row i of each feature is ids[i]. Layout `frames` (videos):
video i owns rows offsets[i]:offsets[i+1] (its sampled frames), with

    /offsets              (N + 1,) int64
    /timestamps           (rows,) float64, each frame's time in seconds from the video's start
    /durations            (N,) float64, each video's duration in seconds

A sidecar `<store>.json` repeats the provenance, counts and failures for people and
tools that do not read HDF5. `vl extract` writes stores; everything else reads them
through `FeatureStore`, which opens the HDF5 file lazily in each process, so one
instance can be handed to DataLoader workers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from vl.shared.errors import VLError, collect_or_raise

STORE_FORMAT = "vl.feature_store"
STORE_SCHEMA_VERSION = 1
# The provenance sections that decide whether two stores hold the same features; the
# rest (versions, runs, counts) describe how and when they were made.
SETTINGS_KEYS = ("encoder", "preprocess", "features")


def store_settings(provenance: dict) -> dict:
    return {k: provenance.get(k) for k in SETTINGS_KEYS}


def sidecar_path(store_path: str | os.PathLike) -> Path:
    """`features/coco.h5` -> `features/coco.h5.json`."""
    p = Path(store_path)
    return p.with_name(p.name + ".json")


def parts_dir(store_path: str | os.PathLike) -> Path:
    """Where an unfinished extraction keeps its completed shards."""
    p = Path(store_path)
    return p.with_name(p.name + ".parts")


def settings_differences(have: Any, want: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-by-leaf differences between two JSON-like settings trees, as (dotted path,
    have, want); used to say exactly which provenance field stops a store's reuse."""
    if isinstance(have, dict) and isinstance(want, dict):
        out = []
        for key in sorted(set(have) | set(want)):
            out += settings_differences(have.get(key), want.get(key), f"{prefix}{key}.")
        return out
    if have != want:
        return [(prefix.rstrip("."), have, want)]
    return []



def _prune_to(have: Any, want: Any) -> Any:
    """`have` restricted to the keys `want` names, so a partial `want` compares only what it says."""
    if isinstance(want, dict):
        have = have if isinstance(have, dict) else {}
        return {k: _prune_to(have.get(k), v) for k, v in want.items()}
    return have


def check_store_matches(store: FeatureStore, expected: dict) -> None:
    """Raise one VLError naming every provenance field of `store` that differs from the
    partial settings tree `expected` (e.g. {"encoder": {"model": "RN101"}})."""
    want = json.loads(json.dumps(expected))  # tuples -> lists, as the provenance JSON has them
    diffs = settings_differences(_prune_to(store.provenance, want), want)
    problems = [f"{store.path}: {path} is {'not recorded' if have is None else repr(have)}, "
                f"the config asks for {w!r}" for path, have, w in diffs]
    kind = "import" if store_origin(store.provenance) == "imported" else "videos" if store.layout == "frames" else "images"
    collect_or_raise(problems, hint=(
        f"re-make the features with the settings the config names (`vl extract {kind} ... --out <new store>`) "
        "or change the config to match the store"))

def store_origin(provenance: dict) -> str:
    """'imported' for a store `vl extract import` made from released features (its encoder is
    only claimed), 'extracted' for one `vl extract` computed itself."""
    return str((provenance.get("encoder") or {}).get("origin", "extracted"))


def mixed_origin_problems(stores: Iterable["FeatureStore"]) -> list[str]:
    """One problem when a run's stores mix imported and extracted features: one model reads
    one encoder's features, and an imported store's encoder and preprocessing are only
    claimed, so a match cannot be checked."""
    by_origin: dict[str, list[str]] = {}
    for store in stores:
        by_origin.setdefault(store_origin(store.provenance), []).append(str(store.path))
    if len(by_origin) < 2:
        return []
    listed = "; ".join(f"{origin}: {', '.join(paths)}" for origin, paths in sorted(by_origin.items()))
    return [f"the run's feature stores mix imported and extracted features ({listed}); one model reads one "
            "encoder's features, made one way: import every task's features (`vl extract import`) or extract "
            "them all (`vl extract videos` / `vl extract images`)"]


class FeatureStore:
    """Read features by media id.

    >>> store = FeatureStore("features/coco_val2014_rn101.h5")
    >>> store.get("COCO_val2014_000000000042").shape    # (36, 2048) for a 6x6 RN101 grid
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            if parts_dir(self.path).is_dir():
                raise VLError(
                    f"feature store {self.path} is not finished: an extraction into it stopped part-way; "
                    "rerun the same `vl extract` command to complete it"
                )
            raise VLError(f"feature store {self.path} not found: make it with `vl extract images ... --out {self.path}`")
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise VLError(f"{self.path} is not a readable HDF5 file ({e}); extract it again with `vl extract`") from None
        with f:
            if f.attrs.get("vl_format") != STORE_FORMAT:
                raise VLError(f"{self.path} is an HDF5 file but not a vl feature store (no vl_format attribute)")
            version = int(f.attrs.get("schema_version", -1))
            if version != STORE_SCHEMA_VERSION:
                raise VLError(
                    f"{self.path} has feature-store schema version {version}; this vl reads "
                    f"{STORE_SCHEMA_VERSION}. Extract it again with this version of `vl extract`."
                )
            self._ids: list[str] = [s.decode("utf-8") if isinstance(s, bytes) else s for s in f["ids"][()]]
            self._provenance: dict = json.loads(f.attrs["provenance"])
            self._failures: list[dict] = json.loads(_read_scalar_string(f["failures"])) if "failures" in f else []
            self._features = {name: (tuple(ds.shape[1:]), ds.dtype) for name, ds in f["features"].items()}
            self.layout = str(f.attrs.get("layout", "fixed"))
            if self.layout == "frames":
                self._offsets = f["offsets"][()].astype(np.int64)
                self._durations = f["durations"][()].astype(np.float64)
        self._row = {ident: i for i, ident in enumerate(self._ids)}
        assert len(self._row) == len(self._ids), f"duplicate ids in {self.path}"
        # Prefer the grid: it is what the VL models read.
        self.default_feature = "grid" if "grid" in self._features else sorted(self._features)[0]
        self._h5: h5py.File | None = None
        self._h5_pid: int | None = None
        self._memory: dict[str, np.ndarray] = {}  # feature name (and "timestamps") -> all rows, see hold_in_memory

    # -- lazy, per-process file handle (DataLoader workers each get their own) --------
    def _file(self) -> h5py.File:
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._h5_pid = os.getpid()
        return self._h5

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_h5_pid"] = None
        return state

    def close(self) -> None:
        if self._h5 is not None and self._h5_pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what is in the store -------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, media_id: object) -> bool:
        return media_id in self._row

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the stored feature kinds, e.g. ('grid',) or ('grid', 'pooled')."""
        return tuple(sorted(self._features))

    def item_shape(self, feature: str | None = None) -> tuple[int, ...]:
        return self._features[self._feature_name(feature)][0]

    def dtype(self, feature: str | None = None) -> np.dtype:
        return self._features[self._feature_name(feature)][1]

    @property
    def provenance(self) -> dict:
        return json.loads(json.dumps(self._provenance))  # a copy the caller may change

    @property
    def failures(self) -> list[dict]:
        return [dict(x) for x in self._failures]

    # -- held in memory ---------------------------------------------------------------
    def bytes_of(self, feature: str | None = None) -> int:
        """The size of one feature's array for every stored item (uncompressed)."""
        shape, dtype = self._features[self._feature_name(feature)]
        rows = int(self._offsets[-1]) if self.layout == "frames" else len(self._ids)
        return rows * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    def hold_in_memory(self, feature: str | None = None, max_fraction: float = 0.5) -> int:
        """Read one feature of every item (and, for videos, the timestamps) into memory, so
        later reads touch no file; returns the bytes held. DataLoader workers forked after
        this share the arrays. Refuses (VLError) when they would take more than
        `max_fraction` of the memory available now."""
        name = self._feature_name(feature)
        if name in self._memory:
            return 0
        need = self.bytes_of(name)
        available = available_memory_bytes()
        if available is not None and need > max_fraction * available:
            raise VLError(f"feature '{name}' of {self.path} takes {need / 2**30:.1f} GiB, more than "
                          f"{max_fraction:.0%} of the {available / 2**30:.1f} GiB of memory available: it does not fit",
                          hint="Train without features_in_memory (the store is read by the DataLoader workers).")
        f = self._file()
        self._memory[name] = f["features"][name][()]
        if self.layout == "frames" and "timestamps" not in self._memory:
            self._memory["timestamps"] = f["timestamps"][()]
        return need

    def _dataset(self, feature: str | None):
        name = self._feature_name(feature)
        return self._memory[name] if name in self._memory else self._file()["features"][name]

    # -- reading --------------------------------------------------------------------
    def _feature_name(self, feature: str | None) -> str:
        name = feature or self.default_feature
        if name not in self._features:
            raise VLError(f"{self.path} has no '{name}' features; it has: {', '.join(self.features)}")
        return name

    def _rows(self, ids: Iterable[str]) -> list[int]:
        rows = []
        for media_id in ids:
            row = self._row.get(media_id)
            if row is None:
                failed = next((x for x in self._failures if x.get("id") == media_id), None)
                why = f" (its extraction failed: {failed['reason']})" if failed else ""
                raise KeyError(f"media id {media_id!r} is not in feature store {self.path}{why}")
            rows.append(row)
        return rows

    def get(self, media_id: str, feature: str | None = None) -> np.ndarray:
        """The features of one media id: (T, C) for an image's `grid`, (D,) for `pooled`;
        for a video, one row per sampled frame: (n_frames, D) or (n_frames, T, C)."""
        (row,) = self._rows([media_id])
        ds = self._dataset(feature)
        if self.layout == "frames":
            return ds[self._offsets[row]:self._offsets[row + 1]]
        return ds[row]

    def get_many(self, ids: Sequence[str], feature: str | None = None) -> np.ndarray | list[np.ndarray]:
        """Features of several ids in the order given: stacked (len(ids), ...) for images;
        a list of per-video arrays for videos (see `get_padded`)."""
        if self.layout == "frames":
            return [self.get(i, feature) for i in ids]
        ds = self._dataset(feature)
        rows = np.asarray(self._rows(ids), dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
        if isinstance(ds, np.ndarray):
            return ds[rows]
        unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing rows
        return ds[unique.tolist()][inverse]

    # -- videos -------------------------------------------------------------------------
    def _video_row(self, media_id: str) -> int:
        if self.layout != "frames":
            raise VLError(f"{self.path} holds images, not videos: it has no frames or timestamps")
        return self._rows([media_id])[0]

    def num_frames(self, media_id: str) -> int:
        row = self._video_row(media_id)
        return int(self._offsets[row + 1] - self._offsets[row])

    def timestamps(self, media_id: str) -> np.ndarray:
        """Seconds from the video's start of each stored frame, increasing."""
        row = self._video_row(media_id)
        times = self._memory.get("timestamps")
        if times is None:
            times = self._file()["timestamps"]
        return times[self._offsets[row]:self._offsets[row + 1]]

    def duration(self, media_id: str) -> float:
        return float(self._durations[self._video_row(media_id)])

    def get_span(self, media_id: str, start: float, end: float,
                 feature: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The frames of a clip [start, end] seconds and their timestamps; a span that falls
        between two sampled frames gives the frame nearest its middle, never nothing."""
        feats, times = self.get(media_id, feature), self.timestamps(media_id)
        inside = np.flatnonzero((times >= start) & (times <= end))
        if len(inside) == 0:
            inside = np.array([int(np.argmin(np.abs(times - (start + end) / 2)))])
        return feats[inside], times[inside]

    def get_padded(self, ids: Sequence[str], max_frames: int | None = None,
                   feature: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Videos as one zero-padded array (B, T, ...) and a mask (B, T), True on real frames.
        Videos with more than `max_frames` frames keep that many, spread uniformly."""
        videos = self.get_many(ids, feature)
        longest = max((len(v) for v in videos), default=0)
        t = min(longest, max_frames) if max_frames else longest
        shape = self.item_shape(feature)
        out = np.zeros((len(videos), t, *shape), dtype=self.dtype(feature))
        mask = np.zeros((len(videos), t), dtype=bool)
        for b, v in enumerate(videos):
            if len(v) > t:
                v = v[np.round(np.linspace(0, len(v) - 1, t)).astype(int)]
            out[b, :len(v)] = v
            mask[b, :len(v)] = True
        return out, mask


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_scalar_string(ds: h5py.Dataset) -> str:
    value = ds[()]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
