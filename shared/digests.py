"""Content digests used for provenance: files, input lists, and JSON-able settings."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (safe for multi-GB checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def digest_strings(items: Iterable[str]) -> str:
    """Stable hex sha256 of a sequence of strings (order matters; each is length-prefixed,
    so ["ab", "c"] and ["a", "bc"] differ)."""
    h = hashlib.sha256()
    for s in items:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def digest_json(obj) -> str:
    """Hex sha256 of the canonical JSON form of `obj` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
