"""What `vl extract import` learnt of each source file, kept beside the store so that a
rerun reads only the files that are new or changed.

The store's provenance carries a sha256 over every source file's bytes (and the survey
reads every file's array header), so without this a rerun of a finished import of
thousands of files read them all again to find nothing to do. `<out>.sources.json` keeps,
per file (absolute path), its size and mtime_ns when it was read, its sha256 and its
header; an entry is used only while the file's size and mtime_ns are still those, so a
rewritten or touched file is read again, and the digest is the same value as reading
every file gives. A file changed less than `RECENT_NS` before the run began is not kept:
within the file system's timestamp resolution it could change again under the same
mtime (git's "racily clean" entries). The cache is only a cache: a missing, unreadable or
other-version file is ignored and rewritten.

Beside it, `imported` keeps the sha256 of the bytes each file had when its features went
into the store, whatever its mtime: a rerun skips an id already in the store, so a file
changed since then would leave old features without a word; comparing that record with
the file's sha256 now (from the cache while the file is unchanged, else from the read the
digest makes anyway) finds it at no extra cost. A file with no record (the cache lost, a
store imported before the record existed, an interrupted run) is recorded as it is now.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from vl.shared.atomic import write_json_atomic

CACHE_FORMAT = "vl extract import: source files"
CACHE_VERSION = 1
RECENT_NS = 2_000_000_000  # coarser than any file system's mtime resolution (FAT: 2 s)


def source_cache_path(store_path: str | os.PathLike) -> Path:
    """`features/tv.h5` -> `features/tv.h5.sources.json`."""
    p = Path(store_path)
    return p.with_name(p.name + ".sources.json")


class SourceCache:
    """Facts about `files` (sha256, header) from the last run that still hold, by the file's
    size and mtime_ns taken now, before any file is read; `put` adds what this run learns."""

    def __init__(self, path: Path, files: list[str]):
        self.path = path
        self.started_ns = time.time_ns()
        kept, imported = _read(path)
        self.imported: dict[str, str] = imported  # absolute path -> sha256 of the bytes the store holds
        self.entries: dict[str, dict[str, Any]] = {}  # input path -> {size, mtime_ns, what is known}
        for file in files:
            try:
                st = os.stat(file)
            except OSError:
                continue  # unreadable: the import records it, nothing is cached
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            old = kept.get(os.path.abspath(file))
            if isinstance(old, dict) and all(old.get(k) == v for k, v in entry.items()):
                entry = {**old, **entry}
            self.entries[file] = entry

    def get(self, file: str, name: str) -> Any:
        return self.entries.get(file, {}).get(name)

    def put(self, file: str, name: str, value: Any, *, size: int | None = None) -> None:
        """Remember `name` of `file`; with `size` (the bytes read), only if the file still had
        the size it had when the run began (else it changed meanwhile: left for the next run)."""
        entry = self.entries.get(file)
        if entry is not None and (size is None or size == entry["size"]):
            entry[name] = value

    def record_import(self, file: str, sha256: str | None) -> None:
        """`file`'s features went into the store from bytes with this sha256 (None: they did not)."""
        if sha256 is None:
            self.imported.pop(os.path.abspath(file), None)
        else:
            self.imported[os.path.abspath(file)] = sha256

    def changed_since_import(self, file: str, sha256: str) -> bool:
        """Whether `file`, whose features the store holds, has other bytes now than when they
        were imported; a file with no record is recorded as it is now."""
        if sha256 == "unreadable":
            return False
        return self.imported.setdefault(os.path.abspath(file), sha256) != sha256

    def save(self) -> None:
        settled = self.started_ns - RECENT_NS
        files = {os.path.abspath(f): e for f, e in self.entries.items()
                 if e["mtime_ns"] < settled and len(e) > 2}
        write_json_atomic(self.path, {"format": CACHE_FORMAT, "version": CACHE_VERSION, "files": files,
                                      "rule": "an entry holds while the file's size and mtime_ns are those recorded",
                                      "imported": dict(sorted(self.imported.items())),
                                      "imported_rule": "the sha256 of each file's bytes when its features went "
                                                       "into the store"})


def _read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(files, imported) of the cache file; empty when it is missing, unreadable or of another version."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    if not (isinstance(doc, dict) and doc.get("format") == CACHE_FORMAT and doc.get("version") == CACHE_VERSION):
        return {}, {}
    files, imported = doc.get("files"), doc.get("imported")
    return (files if isinstance(files, dict) else {},
            {k: v for k, v in imported.items() if isinstance(v, str)} if isinstance(imported, dict) else {})
