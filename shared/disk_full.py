"""A full disk (ENOSPC, EDQUOT) or a file size limit (EFBIG, `ulimit -f`) said in one line:
which file, how much space it needed, how much there is; the rerun continues.

Writers say what they write and about how many bytes it needs (`reporting_disk_full`);
libraries that do not raise OSError (safetensors, tokenizers, torch.save) are recognised
by the OSError in their exception chain or the "(os error 28)" in their message.

HDF5 must never see a failed write: under h5py 3 / HDF5 2 the file can then be neither
flushed nor closed, and the library crashes the interpreter at exit (a segmentation
fault after pages of traces). `GuardedFile` is the file h5py writes through (its
`fileobj` driver): after the first disk-full error it drops the rest of the writes
(holding the small ones, metadata HDF5 may read back, in memory), so HDF5 closes the
file normally; the writer then discards it and raises the error.

SIGXFSZ (a write past `ulimit -f`) would kill the process; CPython ignores it at
startup, so such a write fails with EFBIG instead, which is what vl reports. Nothing in
vl installs a handler for it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from vl.shared.errors import VLError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)|errno = (\d+)")  # Rust's io::Error, HDF5's traces
HOLD_BYTES = 1 << 20  # writes after a failure up to this size are held in memory (HDF5's metadata)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def disk_full_errno(error: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EFBIG if `error` (or an exception it was raised from or while
    handling) is a full disk or a file size limit; None otherwise."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e.errno
        for match in _OS_ERROR_IN_TEXT.finditer(str(e)):
            number = int(match.group(1) or match.group(2))
            if number in DISK_FULL_ERRNOS:
                return number
        e = e.__cause__ or e.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space for this user on the file system that holds (or would hold) `path`."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def file_size_limit() -> int | None:
    """This process's file size limit in bytes (`ulimit -f`); None when there is none."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


RUN_AGAIN = "run the same command again: finished work is kept"


def disk_full_message(path: str | os.PathLike | None, error_number: int, needed: int | None = None,
                      needed_for: str = "", then: str = RUN_AGAIN) -> str:
    """One line: the file, the bytes it needed (`needed_for` says for what, e.g. "for the
    40 items left"), what the disk or the limit allows, and how to continue (`then`)."""
    writing = f"writing {path}" if path else "a write"
    needs = f" needs about {human_bytes(needed)}{' ' + needed_for if needed_for else ''}" if needed else " failed"
    again = f"then {then}"
    if error_number == errno.EFBIG:
        limit = file_size_limit()
        over = (f"over this process's file size limit of {human_bytes(limit)} (ulimit -f)" if limit else
                "over the largest file the file system allows")
        return (f"file too large: {writing}{needs}, {over}; raise the limit (ulimit -f unlimited) or choose "
                f"another file system, {again}")
    free = free_bytes(path) if path else None
    have = f", {human_bytes(free)} free" if free is not None else ""
    kind = "disk quota exceeded" if error_number == errno.EDQUOT else "no space left on the device"
    return f"{kind}: {writing}{needs}{have}; free some space (or choose another folder), {again}"


class DiskFullError(VLError):
    """A write that found the disk full or the file size limit reached (see disk_full_message)."""

    def __init__(self, path: str | os.PathLike | None, error_number: int, needed: int | None = None,
                 needed_for: str = "", then: str = RUN_AGAIN):
        self.path, self.errno, self.needed, self.needed_for = path, error_number, needed, needed_for
        super().__init__(disk_full_message(path, error_number, needed, needed_for, then))

    def retold(self, path: str | os.PathLike | None = None, then: str = RUN_AGAIN) -> "DiskFullError":
        """The same error naming another path (the file as the user knows it, not its temporary
        name) or another way to continue."""
        return DiskFullError(self.path if path is None else path, self.errno, self.needed, self.needed_for, then)


@contextlib.contextmanager
def reporting_disk_full(path: str | os.PathLike, needed: int | None = None, needed_for: str = "") -> Iterator[None]:
    """Turn a full disk met inside the block (by any library) into one DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:  # noqa: BLE001 - only a full disk is translated; the rest goes on as it was
        number = disk_full_errno(e)
        if number is None:
            raise
        raise DiskFullError(path, number, needed, needed_for) from None


class GuardedFile:
    """A file for h5py's `fileobj` driver that hides a full disk from HDF5 (see the module
    docstring): `error` holds the first disk-full OSError; after it, writes are dropped
    (small ones held in memory) and reported as done, so HDF5 can still close the file.
    Other OSErrors pass through as they are. `raise_if_full` names `report_as` (the file as
    the user knows it; default `path`) and the `needed` bytes `needed_for` what."""

    def __init__(self, path: str | os.PathLike, report_as: str | os.PathLike | None = None,
                 needed: int | None = None, needed_for: str = ""):
        self.path = Path(path)
        self.report_as, self.needed, self.needed_for = report_as or self.path, needed, needed_for
        self._f = open(self.path, "w+b", buffering=0)
        self._fd = self._f.fileno()  # written and read at explicit offsets (pwrite, preadv)
        self.error: OSError | None = None
        self._pos = 0
        self._size = 0  # the end of the file as HDF5 sees it
        self._held: list[tuple[int, bytes]] = []

    # -- what h5py's fileobj driver calls --------------------------------------------------
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                done = 0
                while done < n:  # a write may write part, then fail on the next call
                    done += os.pwrite(self._fd, view[done:], self._pos + done)  # one system call, no seek
            except OSError as e:
                if e.errno not in DISK_FULL_ERRNOS:
                    raise
                self.error = e
        if self.error is not None and n <= HOLD_BYTES:
            self._held.append((self._pos, bytes(view)))
        self._pos += n
        self._size = max(self._size, self._pos)
        return n

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        got = 0
        while got < len(view):  # to the end of what reached the disk
            step = os.preadv(self._fd, [view[got:]], self._pos + got)
            if step == 0:
                break
            got += step
        view[got:] = bytes(len(view) - got)  # beyond what reached the disk: zeros, as in a sparse file
        start, end = self._pos, self._pos + len(view)
        for at, held in self._held:  # what HDF5 wrote after the failure, in order
            lo, hi = max(at, start), min(at + len(held), end)
            if lo < hi:
                view[lo - start:hi - start] = held[lo - at:hi - at]
        self._pos = end
        return len(view)

    def read(self, size: int = -1) -> bytes:
        size = self._size - self._pos if size < 0 else size
        buffer = bytearray(max(size, 0))
        self.readinto(buffer)
        return bytes(buffer)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                self._f.truncate(size)
            except OSError as e:
                if e.errno not in DISK_FULL_ERRNOS:
                    raise
                self.error = e
        self._size = size
        return size

    def flush(self) -> None:
        pass  # unbuffered: every write has reached the OS

    # -- for the writer ----------------------------------------------------------------------
    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def raise_if_full(self) -> None:
        """One DiskFullError if a write found the disk full."""
        if self.error is not None:
            raise DiskFullError(self.report_as, self.error.errno, self.needed, self.needed_for)


def check_space(path: str | os.PathLike, needed: int, needed_for: str = "") -> None:
    """Refuse, before writing, a file of `needed` bytes that cannot fit: over the file size
    limit, or more than the free space of the device that will hold it. (An estimate that
    passes may still fail later; the writer reports that too.)"""
    limit = file_size_limit()
    if limit is not None and needed > limit:
        raise DiskFullError(path, errno.EFBIG, needed, needed_for)
    free = free_bytes(path)
    if free is not None and needed > free:
        raise DiskFullError(path, errno.ENOSPC, needed, needed_for)
