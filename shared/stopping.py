"""Stopping on SIGINT (Ctrl-C) and SIGTERM between batches, keeping finished work.

The commands that work in batches (`vl extract images|videos|import`, `vl train`,
`vl evaluate`, `vl predict`) run inside `stop_on_signals(kept)`. Its handlers only set a
flag and remember the signal; the batch loops call `check_stop()` between batches, which
raises `Stopped` once the flag is set, so the current batch finishes (or is dropped) and
the exception unwinds through the code's own `with`/`finally` blocks (open shards
committed, locks released). The `vl` root prints one line, `stopped by SIGINT: <what is
kept>`, and exits 128 + the signal: 130 for SIGINT, 143 for SIGTERM.

Why a flag rather than Python's KeyboardInterrupt: that exception is raised wherever the
interpreter happens to be, and when that was a weakref callback or a `__del__` (h5py
closes objects there) Python printed "Exception ignored in ..." and the run went on to
finish with exit 0 (issue #17, finding 6).

A second signal of the same kind while stopping is the user insisting: the default
action ends the process at once (what is committed stays: shards and checkpoints are
written whole). Handlers are installed in the main thread only (elsewhere `signal`
refuses), by the outermost scope, and the old ones come back when it ends. A signal
whose handler is SIG_IGN when the scope starts (a background job's SIGINT) stays ignored.
DataLoader workers get `worker_signals` as (part of) their worker_init_fn: Ctrl-C in a
terminal reaches the whole process group, and the parent decides.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A stop asked for by a signal. A BaseException, as KeyboardInterrupt, so that no
    `except Exception` on the way out takes it for an error. `kept`: what the stop leaves
    behind and how to continue (the scope's current `keep` text when None)."""

    def __init__(self, signum: int, kept: str | None = None):
        super().__init__(signum, kept)
        self.signum, self.kept = signum, kept

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"stopped by {self.signal_name}: {self.kept or 'run the same command again'}"


class _Scope:
    def __init__(self, kept: str):
        self.kept = kept
        self.signum: int | None = None  # the first signal: the one the exit code reports
        self.seen: set[int] = set()


_scope: _Scope | None = None  # the outermost stop_on_signals now running, if any


def stop_requested() -> int | None:
    """The signal that asked to stop (SIGINT, SIGTERM), or None."""
    return _scope.signum if _scope is not None else None


def check_stop() -> None:
    """Between batches: raise `Stopped` if a signal asked to stop."""
    signum = stop_requested()
    if signum is not None:
        raise Stopped(signum)


def keep(text: str) -> None:
    """Say what a stop from now on leaves behind, and how to continue (no-op outside a scope)."""
    if _scope is not None:
        _scope.kept = text


def _handle(signum: int, frame) -> None:
    scope = _scope
    if scope is None:  # a late signal, between restoring handlers: as if none were installed
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
    if signum in scope.seen:  # the second of its kind: quit at once
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    scope.seen.add(signum)
    if scope.signum is None:
        scope.signum = signum
        # os.write, not print: the handler may run in the middle of a print to stderr (a
        # progress bar), where a buffered write would fail as reentrant
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        try:
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after the current batch (finished work is "
                        f"kept; {again} again quits at once)\n".encode())
        except OSError:  # no stderr: the stop goes on all the same
            pass


@contextlib.contextmanager
def stop_on_signals(kept: str) -> Iterator[None]:
    """Handle SIGINT and SIGTERM by stopping between batches (see the module docstring).
    `kept`: what a stop leaves behind and how to continue, until `keep` says otherwise.
    A signal that came after the last check still ends the scope with `Stopped` (exit
    130/143): the user asked to stop, so a script's next step must not run."""
    global _scope
    if _scope is not None or threading.current_thread() is not threading.main_thread():
        yield  # an inner scope shares the outer one's; other threads cannot take signals
        return
    scope = _scope = _Scope(kept)
    installed = {}
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                installed[signum] = signal.signal(signum, _handle)
        try:
            yield
        except Stopped as e:
            if e.kept is None:
                e.kept = scope.kept
            raise
        if scope.signum is not None:
            raise Stopped(scope.signum, scope.kept)
    finally:
        for signum, old in installed.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        _scope = None


def worker_signals(worker_id: int = 0) -> None:
    """In a DataLoader worker: ignore SIGINT (the parent stops between batches and shuts its
    workers down) and take SIGTERM's default action (the DataLoader ends a stuck worker
    with it; a forked worker would otherwise inherit the parent's flag handler)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
