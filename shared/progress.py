"""The one progress bar every `vl` command uses (training epochs, validation, extraction).

    for batch in progress_bar(loader, total=len(loader), desc="epoch 1/5", unit="batch", enabled=not quiet):
        ...

- Off when the command's `--quiet` says so (`enabled=False`) or when `TQDM_DISABLE` is
  set in the environment (to anything but 0/false/no), whatever the command asked.
- On a terminal it is tqdm's ordinary bar, redrawn in place.
- With no terminal (a log file, CI, `nohup`) a redrawn bar would write a line per
  refresh; here it writes a plain line only when another 10 % of `total` is done (and
  where it stopped, if that was between two tenths), so a log holds at most 10 lines a
  bar. Its postfix (loss, task) shows in those lines.

tqdm is imported on the first bar, not with this module, so `vl --help` stays fast.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from typing import Any, Iterable, Iterator, TextIO

OFF_WORDS = {"", "0", "false", "no", "off"}
LINES_PER_BAR = 10  # without a terminal: one line per 10 % of the total


def bars_disabled_by_env() -> bool:
    """Whether `TQDM_DISABLE` asks for no bars (tqdm's own variable, which an explicit
    `disable=` argument would otherwise override)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in OFF_WORDS


@contextlib.contextmanager
def bars_off() -> Iterator[None]:
    """No progress bars inside the block (it sets TQDM_DISABLE, and restores it after)."""
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = before


def _is_terminal(file: TextIO) -> bool:
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", enabled: bool = True, file: TextIO | None = None, initial: int = 0,
                 **tqdm_kwargs: Any) -> Any:
    """A tqdm bar over `iterable` (or one updated by hand with `.update(n)`), as the module
    says. `enabled=False` (or TQDM_DISABLE) gives a disabled bar: iterating and update()
    still work and print nothing."""
    from tqdm.auto import tqdm

    file = file if file is not None else sys.stderr
    disable = not enabled or bars_disabled_by_env()
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if disable or _is_terminal(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=file, initial=initial,
                    dynamic_ncols=True, **tqdm_kwargs)
    return _log_lines_class()(iterable, total=total, desc=desc, unit=unit, file=file, initial=initial, **tqdm_kwargs)


@functools.cache
def _log_lines_class() -> type:
    """tqdm without a terminal: whole lines, one per 10 % of the total (see the module);
    made on first use, so that importing this module imports no tqdm."""
    from tqdm import tqdm

    class LogLines(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, total: int | None = None, **kwargs: Any):
            step = max(1, math.ceil(total / LINES_PER_BAR)) if total else 1
            self._printed_n = kwargs.get("initial", 0)  # where the last line was (tqdm's __init__ displays)
            # miniters set by hand (over the caller's timing): tqdm redraws only after that many
            # items, never by time (mininterval 0, no monitor thread raising the rate after maxinterval).
            kwargs.update(miniters=step, mininterval=0, maxinterval=float("inf"), ncols=100, ascii=True)
            super().__init__(*args, total=total, **kwargs)
            self.sp = None  # tqdm's in-place printer: unused here, and close() then writes no "\n"

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            finished = bool(self.total) and self.n >= self.total
            if self.n == self._printed_n or not (finished or self.n // self.miniters > self._printed_n // self.miniters):
                return True  # the same 10 % as the last line (or nothing done yet): no line
            self._printed_n = self.n
            self.fp.write(self.__str__().strip("\r") + "\n")
            self.fp.flush()
            return True

        def clear(self, nolock: bool = False) -> None:  # no line to wipe: every line stays
            pass

        def close(self) -> None:
            if not self.disable and self.n != self._printed_n:
                self._printed_n = -self.miniters  # the last line, whatever 10 % it is in
                self.display()
            super().close()  # writes nothing more: self.sp is None

    return LogLines
