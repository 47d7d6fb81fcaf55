"""vl.shared.progress: the one progress bar of every command (--quiet, TQDM_DISABLE, logs)."""
from __future__ import annotations

import io
import os

import pytest

from vl.shared.progress import bars_off, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def bar_lines(total: int, **kwargs) -> list[str]:
    out = io.StringIO()  # not a terminal: a log file, CI
    bar = progress_bar(range(total), desc="epoch 1/3", unit="batch", file=out, **kwargs)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}", refresh=True)  # a forced refresh adds no line
    bar.close()
    return out.getvalue().splitlines()


@pytest.mark.parametrize("total", [7, 10, 100, 1234])
def test_without_a_terminal_a_bar_writes_a_line_per_tenth_at_most(total, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    lines = bar_lines(total)
    assert 1 <= len(lines) <= min(total, 10), lines
    assert all(line.startswith("epoch 1/3:") and "\r" not in line for line in lines)
    assert f"{total}/{total}" in lines[-1] and "loss=" in lines[-1]  # the end, with the postfix


def test_a_bar_left_early_ends_with_a_line_where_it_stopped(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    out = io.StringIO()
    bar = progress_bar(range(100), desc="epoch", file=out)
    for i in bar:
        if i == 54:  # 54 items done (tqdm counts an item when the next is asked for)
            break
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and "54/100" in lines[-1], lines


def test_quiet_and_tqdm_disable_silence_bars(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert bar_lines(50, enabled=False) == []
    for value in ("1", "true", "True"):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert bar_lines(50) == []
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert bar_lines(50)
    monkeypatch.delenv("TQDM_DISABLE")
    with bars_off():
        assert bar_lines(50) == [] and os.environ["TQDM_DISABLE"] == "1"
    assert "TQDM_DISABLE" not in os.environ


def test_on_a_terminal_the_bar_redraws_in_place(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    out = Terminal()
    for _ in progress_bar(range(5), desc="extract", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue() and "5/5" in out.getvalue()
