"""Manual run for issue #17 ("the Ctrl-C test passes 20 times in a row under a busy sibling
process"): tests/test_extract_crash.py's Ctrl-C test, 20 times in one session, while a
sibling process spins on a core. Not part of the default run (the name does not start
with test_); run it by name:

    nice -n 15 .venv/bin/pytest tests/manual_ctrl_c_20x.py -q -p no:cacheprovider
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from test_extract_crash import test_ctrl_c_keeps_finished_work_and_says_how_to_continue as ctrl_c


@pytest.fixture(scope="module")
def busy_sibling():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield spin
    spin.kill()
    spin.wait()


@pytest.mark.parametrize("attempt", range(1, 21))
def test_ctrl_c_under_a_busy_sibling(busy_sibling, tiny_models, tmp_path, attempt):
    assert busy_sibling.poll() is None, "the sibling should still be spinning"
    ctrl_c(tiny_models, tmp_path)
