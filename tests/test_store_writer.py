"""`BackgroundWriter`: the store's writes leave the extraction loop's thread (the device
encodes the next batch meanwhile) and stay in call order; an error in the writer reaches
the caller, and what was queued before a stop is written."""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from vl.extract.store_builder import BackgroundWriter, StoreBuilder
from vl.shared.feature_store import FeatureStore
from vl.shared.stopping import Stopped

SETTINGS = {"encoder": {"model": "x"}}
SHAPES = {"grid": (4, 3)}


def batches(n_batches: int = 7, size: int = 3):
    rng = np.random.default_rng(0)
    return [([f"m{b}-{i}" for i in range(size)], {"grid": rng.standard_normal((size, 4, 3)).astype(np.float32)})
            for b in range(n_batches)]


def build(path, writes, background: bool) -> FeatureStore:
    with StoreBuilder(path, dict(SETTINGS), SHAPES, "float32", shard_rows=4) as builder:
        writer = BackgroundWriter(builder) if background else None
        with writer or contextlib.nullcontext():
            for ids, features in writes:
                (writer or builder).add(ids, features)
            (writer or builder).add_failures([{"id": "bad", "path": "/x/bad.jpg", "reason": "corrupt image"}])
        builder.commit_open_shard()
        builder.finish({"extracted": sum(len(ids) for ids, _ in writes)}, retried_ids=set())
    return FeatureStore(path)


def test_the_store_equals_one_written_in_line(tmp_path):
    writes = batches()
    direct, background = build(tmp_path / "a.h5", writes, False), build(tmp_path / "b.h5", writes, True)
    assert background.ids == direct.ids == [i for ids, _ in writes for i in ids]  # call order kept
    assert background.failures == direct.failures and [f["id"] for f in background.failures] == ["bad"]
    for i in direct.ids:
        np.testing.assert_array_equal(background.get(i), direct.get(i))
    np.testing.assert_array_equal(background.get(writes[2][0][1]), writes[2][1]["grid"][1])  # the bytes given


class Recorder:
    """A builder whose `add` waits until the test lets it go, recording the thread it ran on."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[tuple[str, object]] = []
        self.threads: set[str] = set()
        self.release = threading.Event()
        self.fail_on = fail_on

    def add(self, ids, features, frames=None):
        assert self.release.wait(timeout=30), "the caller never released the writer"
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise OSError(28, "No space left on device")
        self.calls.append(("add", ids))

    def add_failures(self, failures):
        self.calls.append(("failures", [f["id"] for f in failures]))


def test_add_returns_before_the_write_is_done_and_writes_run_on_another_thread():
    rec = Recorder()
    with BackgroundWriter(rec) as writer:
        writer.add(["a"], {})  # returns at once: in line, it would wait for `release` and fail the test
        writer.add_failures([{"id": "x"}])
        assert rec.calls == []  # nothing written yet: the encoder is free to run the next batch
        rec.release.set()
        writer.add(["b"], {})
    assert rec.calls == [("add", ["a"]), ("failures", ["x"]), ("add", ["b"])]  # all written, in order, at exit
    assert rec.threads == {"vl-store-writer"}


def test_a_write_error_reaches_the_caller_and_drops_what_follows():
    rec = Recorder(fail_on=1)
    rec.release.set()
    with pytest.raises(OSError, match="No space left"):
        with BackgroundWriter(rec, depth=1) as writer:
            for k in range(50):  # the error surfaces at a later call, long before the loop ends
                writer.add([f"i{k}"], {})
    assert rec.calls[0] == ("add", ["i0"]) and len(rec.calls) == 1  # nothing written after the failure


def test_an_error_at_the_last_write_is_raised_when_the_block_ends():
    rec = Recorder(fail_on=0)
    rec.release.set()
    with pytest.raises(OSError, match="No space left"):
        with BackgroundWriter(rec) as writer:
            writer.add(["only"], {})


def test_a_stop_writes_everything_queued_before_it(tmp_path):
    writes = batches(5)
    path = tmp_path / "s.h5"
    with pytest.raises(Stopped):
        with StoreBuilder(path, dict(SETTINGS), SHAPES, "float32", shard_rows=1000) as builder:
            with BackgroundWriter(builder) as writer:
                for ids, features in writes:
                    writer.add(ids, features)
                raise Stopped(2)  # as check_stop() does between batches
    with StoreBuilder(path, dict(SETTINGS), SHAPES, "float32") as again:  # the rerun finds every queued item
        assert again.done_ids == {i for ids, _ in writes for i in ids}
