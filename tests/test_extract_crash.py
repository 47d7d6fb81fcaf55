"""Crash safety: a run killed with SIGKILL or stopped with Ctrl-C, then rerun, ends
with the same store as an uninterrupted run, and no store is ever left unreadable."""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from conftest import model_args, run_vl, vl_subprocess, write_photos
from vl.shared import FeatureStore
from vl.shared.feature_store import parts_dir


def _wait_for_shards(proc, parts, n: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shards = list(parts.glob("shard-*.h5")) if parts.is_dir() else []
        if len(shards) >= n:
            return len(shards)
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.communicate()}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no shards appeared in time")


def _start_slow_run(args, out, wait_for: int):
    """Start a throttled run and return it once `wait_for` shards are committed."""
    proc = vl_subprocess([*args, "--out", out], env={"VL_TEST_DECODE_DELAY_S": "0.2"})
    _wait_for_shards(proc, parts_dir(out), wait_for)
    return proc


def _kill_9(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _assert_same_store(out, reference) -> None:
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(reference.ids)
    np.testing.assert_allclose(store.get_many(reference.ids), reference.get_many(reference.ids), rtol=1e-5, atol=1e-6)


def _setup(tiny_models, tmp_path, n_images=40):
    folder = tmp_path / "images"
    write_photos(folder, n_images)
    common = ["extract", "images", "--images", folder, *model_args(tiny_models), "--batch-size", 2,
              "--shard-size", 4, "--dtype", "float32"]
    reference = tmp_path / "reference.h5"
    run_vl([*common, "--out", reference, "--workers", 0])
    return common, FeatureStore(reference)


def test_kill_9_mid_run_then_rerun_equals_uninterrupted_run(tiny_models, tmp_path):
    common, reference = _setup(tiny_models, tmp_path)
    out = tmp_path / "killed.h5"
    _kill_9(_start_slow_run([*common, "--workers", 1, "-q"], out, wait_for=2))
    assert not out.exists(), "the killed run should not have finished"
    kept = len(list(parts_dir(out).glob("shard-*.h5")))
    assert kept >= 2

    rerun = run_vl([*common, "--out", out, "--workers", 0])
    already = int(rerun.stderr.split(" already in store")[0].rsplit(", ", 1)[-1])
    assert already >= 4 * kept  # finished shards were kept, not redone
    assert not parts_dir(out).exists()
    _assert_same_store(out, reference)


def test_killed_extension_leaves_the_old_store_readable(tiny_models, tmp_path):
    common, reference = _setup(tiny_models, tmp_path)
    out = tmp_path / "grown.h5"
    subset = tmp_path / "subset"
    subset.mkdir()
    for p in sorted((tmp_path / "images").glob("*.jpg"))[:6]:
        (subset / p.name).symlink_to(p)
    first = [a if a != tmp_path / "images" else subset for a in common]
    run_vl([*first, "--out", out, "--workers", 0])

    _kill_9(_start_slow_run([*common, "--workers", 1, "-q"], out, wait_for=1))
    assert len(FeatureStore(out)) == 6  # the old store is intact and readable while unfinished work waits

    run_vl([*common, "--out", out, "--workers", 0])
    _assert_same_store(out, reference)


def test_ctrl_c_keeps_finished_work_and_says_how_to_continue(tiny_models, tmp_path):
    common, reference = _setup(tiny_models, tmp_path)
    out = tmp_path / "interrupted.h5"
    proc = _start_slow_run([*common, "--workers", 0], out, wait_for=1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    # The handler only sets a flag (vl.shared.stopping): no KeyboardInterrupt that Python could swallow
    # in a weakref callback and run on to exit 0 (issue #17), whatever the process was doing.
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    stops = [line for line in stderr.splitlines() if line.startswith("stopped by SIGINT: ")]
    assert len(stops) == 1 and "run the same command again to continue" in stops[0], stderr

    run_vl([*common, "--out", out, "--workers", 0])
    _assert_same_store(out, reference)
