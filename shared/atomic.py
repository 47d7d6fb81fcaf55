"""Writes that never leave a half-written file behind: write a temporary file in the
same folder, flush it to disk, then rename it into place (atomic on POSIX)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator


def refuse_overwriting_inputs(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]],
                              flag: str = "--out") -> None:
    """Refuse, before any work, an output that is one of the command's inputs (the same path,
    or the same file by another name or link): writing it would replace what was read.
    `inputs`: (the option that named it, its path)."""
    from vl.shared.errors import VLError

    target = Path(out)
    for option, path in inputs:
        if path is None or not Path(path).exists():
            continue
        same = os.path.samefile(target, path) if target.exists() else (
            os.path.realpath(target) == os.path.realpath(path))
        if same:
            raise VLError(f"{flag} {out} is also the input {option} {path}: writing it would replace that file",
                          hint=f"Give {flag} another path.")


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name beside `path`, so the final rename stays on one filesystem."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk and rename it over `path`."""
    fsync_path(tmp)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsync'ed
        fsync_path(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block succeeds. A full
    disk met on the way is one DiskFullError naming `path` (and `needed`, the bytes it takes)."""
    from vl.shared.disk_full import reporting_disk_full

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with reporting_disk_full(path, needed):
            yield tmp
            commit(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def dumps_json(obj) -> str:
    """The project's JSON style for files on disk: sorted keys, indented, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, dumps_json(obj))
