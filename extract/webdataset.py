"""webdataset tar shards as extraction inputs (`vl extract images --input-format webdataset`).

A shard is a plain (uncompressed) tar file; a sample is the members that share a key,
and the key is the member name up to the first dot of its file name, folder part
included (webdataset's own rule: `a/000042.seg.png` has key `a/000042`, extension
`seg.png`). Each key with one `jpg|jpeg|png|webp` member becomes one input, stored
under the key; other members (`.txt`, `.json`, `.cls`, ...) are ignored.

Shards are listed by reading their headers only (the tar reader seeks over member
data), so nothing of a shard is held in memory; each input remembers where its bytes
lie (`TarMember`), and the decoding workers read them with one seek, in shard order.
Resuming skips finished keys without reading their bytes, and torchrun ranks split the
inputs like any others.

Bad shards and members never stop a large job; they become recorded failures naming
the shard and the member: a key with two image members (`k.jpg` and `k.png`, or the
same key in two shards), a shard that is not a tar file or is cut short (recorded
under the shard's own name, which cannot clash with a key: keys have no dot), and,
when decoded, a member named `.jpg` that is not an image. Missing shard files are an
error before any work starts.
"""
from __future__ import annotations

import glob
import os
import re
import tarfile
from collections import defaultdict
from pathlib import Path

from vl.extract.inputs import MediaInput, TarMember
from vl.shared.errors import VLError, collect_or_raise

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIX = ".tar"
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand `{00000..00009}` ranges (zero-padded to the wider end, as the braceexpand
    package that webdataset uses does) and `{a,b}` alternatives, left to right, nested
    allowed: `s/{0..1}-{x,y}.tar` -> s/0-x.tar, s/0-y.tar, s/1-x.tar, s/1-y.tar."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, end = 0, -1
    for i in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if depth == 0:
            end = i
            break
    if end < 0:
        raise VLError(f"shard pattern {pattern!r}: '{{' at position {start} is never closed")
    head, body, tail = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    m = _RANGE.match(body)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        width = max(len(m.group(1)), len(m.group(2))) if m.group(1).startswith("0") or m.group(2).startswith("0") else 0
        step = 1 if b >= a else -1
        options = [str(n).zfill(width) for n in range(a, b + step, step)]
    else:
        options = [x for part in _split_top_level(body) for x in expand_braces(part)]
    return [head + o + rest for o in options for rest in expand_braces(tail)]


def _split_top_level(body: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    return parts + [cur]


def find_shards(spec: str | os.PathLike) -> list[str]:
    """The shard files `spec` names: one .tar file, a folder (every .tar under it,
    recursively, sorted), a brace pattern (`shards/{00000..00009}.tar`) or a glob."""
    spec = os.path.expanduser(str(spec))
    flag = "--images (with --input-format webdataset)"
    if "{" in spec:
        shards = expand_braces(spec)
        missing = [s for s in shards if not os.path.isfile(s)]
        collect_or_raise([f"shard {s} (from {spec}): no such file" for s in missing], limit=5,
                         hint=f"{len(missing)} of the {len(shards)} shards the pattern names are missing; "
                              "fix the pattern or fetch them. Nothing was extracted.")
        return shards
    if os.path.isdir(spec):
        found = sorted(str(p) for p in Path(spec).rglob(f"*{SHARD_SUFFIX}") if p.is_file())
        if not found:
            raise VLError(f"{flag} {spec}: no {SHARD_SUFFIX} shards found in this folder")
        return found
    if os.path.isfile(spec):
        return [spec]
    if glob.has_magic(spec):
        found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        if found:
            return found
    raise VLError(f"{flag} {spec}: no such file, folder or pattern",
                  hint="give a .tar shard, a folder of shards, or a pattern such as 'shards/{00000..00009}.tar'")


def split_key(name: str) -> tuple[str, str]:
    """webdataset's (key, extension) of a member name: split at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def index_shards(shards: list[str]) -> list[MediaInput]:
    """One input per image key of the shards, in shard and member order; the failures
    found while listing (see the module docstring) are inputs with their `error` set."""
    members: dict[str, list[tuple[str, TarMember]]] = defaultdict(list)  # key -> (shard, member), in order
    shard_errors: list[MediaInput] = []
    for shard in shards:
        problem = _list_members(shard, members)
        if problem:
            shard_errors.append(MediaInput(shard, shard, error=problem))
    inputs = []
    for key, found in members.items():
        shard, member = found[0]
        if len(found) > 1:
            where = ", ".join(f"{s}#{m.name}" for s, m in found[:4])
            inputs.append(MediaInput(key, shard, member, error=(
                f"key {key!r} has {len(found)} image members ({where}); keep one image per key")))
        else:
            inputs.append(MediaInput(key, shard, member))
    return inputs + shard_errors


def _list_members(shard: str, members: dict[str, list[tuple[str, TarMember]]]) -> str | None:
    """Add the shard's image members to `members`; return why the shard could not be read
    (to the end), or None."""
    size = os.path.getsize(shard)
    listed = 0
    try:
        with tarfile.open(shard, mode="r:") as tar:
            while True:
                info = tar.next()
                if info is None:
                    break
                tar.members.clear()  # the reader keeps every header it has read; we keep our own index
                listed += 1
                key, ext = split_key(info.name)
                if not info.isfile() or ext not in IMAGE_EXTS or not key or key.endswith("/"):
                    continue  # not an image member, or one with no key (`.jpg`, `dir/.jpg`)
                if info.offset_data + info.size > size:
                    return (f"shard is truncated: it ends inside member {info.name} "
                            f"({size - info.offset_data:,} of {info.size:,} bytes); the members before it are kept")
                members[key].append((shard, TarMember(info.name, info.offset_data, info.size)))
            stopped_at = tar.offset
    except (tarfile.TarError, EOFError, OSError) as e:
        if listed == 0:
            compressed = " (compressed shards are not read: decompress .tar.gz shards first)" \
                if shard.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")) else ""
            return f"not a tar file: {e}{compressed}"
        return f"shard is damaged after {_members(listed)} ({e}); the members before it are kept"
    # The tar reader ends quietly at a damaged header past the first: whatever follows the
    # end of the archive must be the zero blocks that close it.
    with open(shard, "rb") as f:
        f.seek(stopped_at)
        rest = f.read(64 * 1024)
    if rest.strip(b"\0"):
        return (f"shard is damaged after {_members(listed)} (no valid tar header at byte {stopped_at:,}); "
                "the members before it are kept")
    return None


def _members(n: int) -> str:
    return f"{n} member" + ("" if n == 1 else "s")
