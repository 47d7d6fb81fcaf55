"""Advisory locks that say who holds them: one writer at a time for a feature store or a
run directory, released by the kernel when the holder dies (a killed run never leaves a
stale lock behind).

A POSIX record lock (`lockf`), not `flock`: forked DataLoader workers do not inherit it, so
a killed run's lingering workers never block the rerun. Record locks do not exclude the
same process, so this process's own locks are tracked here too.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vl.shared.errors import VLError

_HELD: set[str] = set()  # lock files this process holds


class HeldLock:
    """`with HeldLock(path, "vl train"):` holds `path` (created if missing) or raises
    VLError(busy(holder)), where holder is "pid N (vl train)" as the holder wrote it."""

    def __init__(self, path: str | os.PathLike, holder: str, busy):
        self.path, self.holder, self.busy = Path(path), holder, busy
        self._file = None

    def __enter__(self) -> "HeldLock":
        key = str(self.path.resolve())
        if key in _HELD:
            raise self.busy(f"pid {os.getpid()} (this process)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise self.busy(holder) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({self.holder})\n")
        f.flush()
        self._file, self._key = f, key
        _HELD.add(key)
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.lockf(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
            _HELD.discard(self._key)


def run_dir_lock(run_dir: str | os.PathLike, command: str) -> HeldLock:
    """The lock of a run directory, held while `vl train` trains or resumes into it and while
    `vl evaluate` writes its scores there."""
    run_dir = Path(run_dir)

    def busy(holder: str) -> VLError:
        return VLError(f"run dir {run_dir} is in use by {holder}: wait for it to end (or stop it) before "
                       f"{command} writes into it")

    return HeldLock(run_dir / ".vl.lock", command, busy)
