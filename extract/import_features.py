"""`vl extract import`: per-video features someone else released, written as a normal
feature store in the `frames` layout, so `vl train` reads them as it reads `vl extract
videos` stores.

Formats (docs/fidelity.md, "Video features", cites the sources):

- `value-npz`: VALUE's release, one `<vid_name>.npz` per video holding one array,
  `features` (frames x 512, float16, CLIP ViT-B/32 `encode_image`), one frame every
  1.5 s (HERO_Video_Feature_Extractor's `clip/extract.py`: ffmpeg `fps=1/clip_len`,
  `clip_len` 3/2; `np.savez(output_file, features=features)`). The reference reads
  `np.load(path)["features"]` by `vid_name` (VL_adapter `VL-T5/src/video/tvqa_data.py`).
- `npy-dir`: a folder of `<id>.npy` arrays (frames x width) at a rate given by `--fps`.

The release stores no times: frame k gets t_k = k / fps (ffmpeg's fps filter puts its
k-th output frame at k / fps) and a video's duration is n / fps, the span its n
features cover. The provenance says the features were imported (format, source folder,
a sha256 over the source files' names, sizes and contents), which encoder they are
claimed to come from (recorded as claimed, not verified), and the derived times.

A file that cannot be used (unreadable, no `features` array, not 2-D, no frames, another
width than the other files', non-numbers) is recorded as a failure with its reason, as
`vl extract videos` records a broken video, and the rest are imported: a release of
thousands of files with one bad download still gives a usable store, and `vl train`
names the missing ids and where the reasons are. Writing goes through `StoreBuilder`:
crash-safe shards, resumable, the store replaced atomically. No torch.

A rerun opens only the files that are new or changed since the last run
(`source_cache.py`: each file's sha256 and header by path, size and mtime_ns, in
`<out>.sources.json`); the source digest is the same value as reading every file gives.
A file whose id is already in the store but whose bytes changed since its features were
imported (the cache's `imported` record) is not imported again: the summary lists it
(`changed`) and the command warns, naming --overwrite.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import platform
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vl.extract.inputs import MediaInput, find_media
from vl.extract.source_cache import SourceCache, source_cache_path
from vl.extract.store_builder import FrameInfo, StoreBuilder
from vl.shared.digests import digest_strings
from vl.shared.errors import VLError
from vl.shared.feature_store import STORE_FORMAT, FeatureStore
from vl.shared.manifest import DatasetManifest
from vl.shared.progress import progress_bar
from vl.shared.stopping import check_stop, stop_requested
from vl.shared.version import __version__

ImportFormat = Literal["value-npz", "npy-dir"]
VALUE_KEY = "features"  # the one array of a VALUE .npz
VALUE_FPS = 2 / 3  # one feature every 1.5 s (HERO_Video_Feature_Extractor clip/extract.py: clip_len 3/2)
ADD_VIDEOS = 256  # videos handed to the store builder at once


@dataclass(frozen=True)
class FormatSpec:
    extension: str
    default_fps: float | None  # None: --fps is required
    default_model: str | None  # what the release is known to be made with (a claim)
    default_pretrained: str | None
    description: str


FORMATS: dict[str, FormatSpec] = {
    "value-npz": FormatSpec(".npz", VALUE_FPS, "ViT-B-32", "openai",
                            "VALUE release: <vid_name>.npz with one array `features` (frames x 512, float16), "
                            "one frame every 1.5 s (HERO_Video_Feature_Extractor clip/extract.py)"),
    "npy-dir": FormatSpec(".npy", None, None, None, "a folder of <id>.npy arrays (frames x width)"),
}
TIME_RULE = ("derived on import, the release stores no times: t_k = k / fps for k = 0 .. n - 1 (where ffmpeg's "
             "fps filter puts its k-th output frame); duration = n / fps, the span the n features cover")


@dataclass
class ImportOptions:
    format: ImportFormat
    src: Path
    out: Path
    fps: float | None = None  # None: the format's rate
    model: str | None = None  # claimed encoder; None: the format's known one (or unknown)
    pretrained: str | None = None
    manifests: tuple[Path, ...] = ()  # check that the store covers their media ids
    id_from: str = "stem"
    dtype: str = "float16"
    overwrite: bool = False
    shard_rows: int = 1024
    progress: bool = True


@dataclass
class ImportSummary:
    out: Path
    files: int
    already_done: int
    imported: int
    failures: list[dict]
    store_count: int
    width: int
    fps: float
    source_sha256: str
    changed: list[str] = field(default_factory=list)  # files of ids in the store, changed since imported
    # manifest path -> (its distinct media ids, those not in the store)
    coverage: dict[str, tuple[int, list[str]]] = field(default_factory=dict)


class FeatureFileError(Exception):
    """Why one source file cannot be imported (recorded as its failure reason)."""


# -- reading one file ------------------------------------------------------------------------
def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), np.dtype(dtype)


def _open_array(source, fmt: str):
    """The .npy stream inside `source` (a path or bytes): the file itself, or the npz's `features` member."""
    if fmt == "npy-dir":
        return open(source, "rb") if not isinstance(source, bytes) else io.BytesIO(source)
    try:
        archive = zipfile.ZipFile(source if not isinstance(source, bytes) else io.BytesIO(source))
    except zipfile.BadZipFile:
        raise FeatureFileError("not a readable .npz file (not a zip archive)") from None
    names = [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]
    if VALUE_KEY not in names:
        raise FeatureFileError(f"has no '{VALUE_KEY}' array (it holds: {', '.join(names) or 'nothing'}); a VALUE "
                               f"feature file holds its frames as `{VALUE_KEY}`")
    return archive.open(f"{VALUE_KEY}.npy")


def read_header(path: str, fmt: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the file's feature array, read without loading it."""
    try:
        with _open_array(path, fmt) as f:
            return _npy_header(f)
    except FeatureFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FeatureFileError(f"not a readable {FORMATS[fmt].extension} file ({type(e).__name__}: {e})") from None


def shape_problem(shape: tuple[int, ...], dtype: np.dtype, width: int | None) -> str | None:
    """Why an array of this shape and dtype cannot be one video's features, or None."""
    if dtype.kind not in "fiu":
        return f"holds {dtype} values, not numbers"
    if len(shape) != 2:
        return f"features have shape {shape}: expected 2-D (frames x width)"
    if shape[0] == 0:
        return "features are empty (0 frames)"
    if width is not None and shape[1] != width:
        return f"features are {shape[1]} wide, the other files' are {width}"
    return None


def load_array(data: bytes, fmt: str) -> np.ndarray:
    try:
        with _open_array(data, fmt) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except FeatureFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FeatureFileError(f"not a readable {FORMATS[fmt].extension} file ({type(e).__name__}: {e})") from None


# -- the import --------------------------------------------------------------------------------
def check_options(opts: ImportOptions) -> FormatSpec:
    problems = []
    spec = FORMATS.get(opts.format)
    if spec is None:
        raise VLError(f"unknown --format {opts.format!r}; choose one of: {', '.join(FORMATS)}")
    if not opts.src.is_dir():
        problems.append(f"--src {opts.src}: no such folder")
    if opts.fps is None and spec.default_fps is None:
        problems.append(f"--format {opts.format} stores no frame rate: give --fps (features per second of video)")
    if opts.fps is not None and not opts.fps > 0:
        problems.append(f"--fps must be positive (got {opts.fps})")
    if opts.out.is_dir():
        problems.append(f"--out {opts.out} is a folder; give a file path such as {opts.out}/features.h5")
    problems += [f"--manifest {m}: no such file" for m in opts.manifests if not m.is_file()]
    if problems:
        raise VLError(problems)
    return spec


def survey(inputs: list[MediaInput], opts: ImportOptions, spec: FormatSpec,
           cache: SourceCache | None = None) -> tuple[int, dict[str, str]]:
    """Headers only, before anything is written: the width most files share (ties: the
    first such file's, in sorted order) and why each file that cannot be used cannot.
    A header the cache knows for an unchanged file is not read again."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    reasons: dict[str, str] = {}
    for x in progress_bar(inputs, unit="file", desc="check", enabled=opts.progress, mininterval=0.5):
        check_stop()  # nothing is written yet
        known = cache.get(x.path, "header") if cache is not None else None
        if known is not None:
            headers[x.id] = (tuple(known[0]), np.dtype(known[1]))
            continue
        try:
            headers[x.id] = read_header(x.path, opts.format)
        except FeatureFileError as e:  # not cached: a reason may be passing (permissions)
            reasons[x.id] = str(e)
        else:
            if cache is not None:
                cache.put(x.path, "header", [list(headers[x.id][0]), headers[x.id][1].str])
    widths = Counter(s[1] for s, d in headers.values() if shape_problem(s, d, None) is None)
    if not widths:
        shown = "; ".join(f"{x.path}: {reasons.get(x.id) or shape_problem(*headers[x.id], None)}" for x in inputs[:3])
        raise VLError(f"--src {opts.src}: none of its {len(inputs)} {spec.extension} files holds usable features "
                      f"({shown})", hint=f"--format {opts.format} reads {spec.description}.")
    width = widths.most_common(1)[0][0]
    for ident, (shape, dtype) in headers.items():
        problem = shape_problem(shape, dtype, width)
        if problem:
            reasons[ident] = problem
    return width, reasons


def store_provenance(opts: ImportOptions, model: str | None, pretrained: str | None, fps: float, width: int) -> dict:
    """The store's provenance: its settings sections (compared on reuse and by `vl train`)
    say imported and what is claimed; `import` (the source digest) is added once it is known."""
    return {
        "encoder": {"origin": "imported", "format": opts.format, "model": model,
                    "weights": {"source": "claimed", "tag": pretrained}},
        "preprocess": {"sampling": {"mode": "fps", "fps": fps, "frames": None, "max_frames": None,
                                    "rule": TIME_RULE}},
        "features": {"layer": "pooled", "pool": None, "dtype": opts.dtype, "shapes": {"pooled": [width]}},
        "format": STORE_FORMAT,
        "layout": "frames",
        "versions": {"vl": __version__, "python": platform.python_version(), "numpy": np.__version__,
                     **_h5_versions()},
    }


def import_features(opts: ImportOptions) -> ImportSummary:
    """Import every feature file under `opts.src` into `opts.out` (ids already there are
    skipped; earlier failures are tried again), then check the manifests' coverage."""
    spec = check_options(opts)
    fps = opts.fps or spec.default_fps
    manifests = [DatasetManifest.read(m) for m in opts.manifests]  # a bad manifest stops us before any work
    inputs = find_media(opts.src, opts.id_from, (spec.extension,), "--src")
    started = dt.datetime.now(dt.timezone.utc)
    cache = SourceCache(source_cache_path(opts.out), [x.path for x in inputs])  # each file's size and mtime now

    width, reasons = survey(inputs, opts, spec, cache)
    model = opts.model or spec.default_model
    pretrained = opts.pretrained or spec.default_pretrained
    provenance = store_provenance(opts, model, pretrained, fps, width)
    builder = StoreBuilder(opts.out, provenance, {"pooled": (width,)}, opts.dtype, layout="frames",
                           overwrite=opts.overwrite, shard_rows=opts.shard_rows)
    if opts.overwrite:  # the store is made anew: what it held is no longer imported
        cache.imported.clear()
    with builder:
        done = builder.done_ids
        pending = [x for x in inputs if x.id not in done]
        builder.items_to_add = len(pending)  # sizes the message of a full disk
        _log(opts, f"{len(inputs)} {spec.extension} files in {opts.src}: {len(inputs) - len(pending)} already in "
                   f"{opts.out}, {len(pending)} to import ({width} wide, {fps:g} frames a second)")
        # 2. Every file's bytes are hashed for the source digest, but a file the cache knows
        #    unchanged (same size and mtime_ns) counts with its cached sha256; pending files are read.
        pending_ids = {x.id for x in pending}
        file_digests, failures, changed, batch = [], [], [], _Batch()
        with progress_bar(total=len(inputs), unit="file", desc="import", enabled=opts.progress,
                          mininterval=0.5) as bar:
            for x in inputs:
                if stop_requested():  # SIGINT/SIGTERM: what was read goes to the store first
                    batch.flush(builder)
                    check_stop()
                reading = x.id in pending_ids
                known = None if reading else cache.get(x.path, "sha256")
                data = _read_bytes(x.path) if known is None else None
                size, sha = (cache.get(x.path, "size"), known) if known is not None else _hashed(x.path, data, cache)
                file_digests.append(f"{Path(x.path).relative_to(opts.src).as_posix()}\t{size}\t{sha}")
                if reading:
                    features, reason = _usable(data, reasons.get(x.id), opts.format, width, opts.dtype)
                    if reason is not None:
                        failure = {"id": x.id, "path": x.path, "reason": reason}
                        builder.add_failures([failure])
                        failures.append(failure)
                        bar.set_postfix(failed=len(failures), refresh=False)
                    else:
                        batch.add(x.id, features, fps)
                        if len(batch.ids) >= ADD_VIDEOS:
                            batch.flush(builder)
                    cache.record_import(x.path, sha if reason is None else None)
                elif cache.changed_since_import(x.path, sha):  # skipped: its features are those of other bytes
                    changed.append(x.path)
                bar.update(1)
            batch.flush(builder)
        source_sha256 = digest_strings(sorted(file_digests))
        builder.provenance["import"] = {
            "format": opts.format, "description": spec.description, "source": str(opts.src.resolve()),
            "source_sha256": source_sha256,
            "source_digest_rule": "sha256 over the sorted lines `relative path<TAB>size<TAB>sha256 of the bytes`",
            "files": len(inputs), "claimed": {"model": model, "pretrained": pretrained}, "verified": False,
        }
        store_count = len(builder.done_ids)
        if pending or builder.done_in_parts or not opts.out.exists() or opts.overwrite:
            run_record = {
                "started": started.isoformat(timespec="seconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "source": {"import": opts.format, "src": str(opts.src.resolve()), "source_sha256": source_sha256},
                "inputs": len(inputs),
                "input_list_digest": digest_strings(f"{x.id}\t{x.path}" for x in inputs),
                "command": " ".join(sys.argv),
            }
            store_count = builder.finish(run_record, retried_ids=pending_ids)["count"]
    cache.save()  # after the store: an import that failed leaves the last finished run's cache
    imported = len(pending) - len(failures)
    summary = ImportSummary(opts.out, len(inputs), len(inputs) - len(pending), imported, failures, store_count,
                            width, fps, source_sha256, changed)
    if manifests:
        store = FeatureStore(opts.out)
        summary.coverage = {str(m.path): (len(m.media_ids()), [i for i in m.media_ids() if i not in store])
                            for m in manifests}
    return summary


def _usable(data: bytes | None, survey_reason: str | None, fmt: str, width: int,
            store_dtype: str) -> tuple[np.ndarray | None, str | None]:
    """(the file's features, None) or (None, why it cannot be imported)."""
    if survey_reason is not None:
        return None, survey_reason
    if data is None:
        return None, "file could not be read"
    try:
        return _checked(load_array(data, fmt), width, store_dtype), None
    except FeatureFileError as e:
        return None, str(e)


def _checked(features: np.ndarray, width: int, store_dtype: str) -> np.ndarray:
    problem = shape_problem(features.shape, features.dtype, width)
    if problem:
        raise FeatureFileError(problem)
    if not np.isfinite(features).all():
        raise FeatureFileError("features hold NaN or infinite values")
    limit = np.finfo(store_dtype).max
    if features.dtype.kind in "iu" or features.dtype.itemsize > np.dtype(store_dtype).itemsize:
        if np.abs(features.astype(np.float64)).max() > limit:
            raise FeatureFileError(f"features exceed {store_dtype}'s range (|x| > {limit:g}): import with "
                                   "--dtype float32")
    return features


def _hashed(path: str, data: bytes | None, cache: SourceCache) -> tuple[int, str]:
    """(size, sha256) of a file's bytes for the source digest ('unreadable' if it could not be
    read), kept in the cache for the next run."""
    if data is None:
        return 0, "unreadable"
    sha = hashlib.sha256(data).hexdigest()
    cache.put(path, "sha256", sha, size=len(data))
    return len(data), sha


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


@dataclass
class _Batch:
    """Videos waiting to go to the store builder together."""

    ids: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    def add(self, ident: str, features: np.ndarray, fps: float) -> None:
        n = len(features)
        self.ids.append(ident)
        self.arrays.append(features)
        self.times += [k / fps for k in range(n)]
        self.durations.append(n / fps)

    def flush(self, builder: StoreBuilder) -> None:
        if self.ids:
            builder.add(self.ids, {"pooled": np.concatenate(self.arrays)},
                        FrameInfo([len(a) for a in self.arrays], self.times, self.durations))
            self.__init__()


def _h5_versions() -> dict:
    import h5py

    return {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}


def _log(opts: ImportOptions, message: str) -> None:
    if opts.progress:
        print(message, file=sys.stderr, flush=True)

