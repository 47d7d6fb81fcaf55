"""SIGINT and SIGTERM stop every batch command between batches (vl.shared.stopping): exit
130 / 143, one line saying what was kept and how to continue, no traceback, finished work
kept, and the rerun (or `--resume`) ends as an uninterrupted run would (issue #17).

The signals are real: sent with os.kill to this process, at chosen points of a command run
in-process (deterministic), or to a command run as its own process (as a user would)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import model_args, run_vl, vl_subprocess, write_photos
from vl.shared import FeatureStore
from vl.shared.feature_store import parts_dir
from vl.shared.run_dir import read_metrics
from vl.shared.stopping import Stopped, check_stop, keep, stop_on_signals, stop_requested, worker_signals

pytestmark = pytest.mark.usefixtures("one_torch_thread_module")  # the module-scoped runs too


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler while a test runs: tests started in the background
    (`pytest &`) inherit SIGINT ignored, which stop_on_signals rightly leaves ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def one_stop_line(stderr: str, signum: int) -> str:
    """The command's one line about the stop (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("stopped by ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"stopped by {signal.Signals(signum).name}: "), lines
    return lines[0]


def send_on_call(monkeypatch, owner, name: str, signum: int, when) -> list:
    """Patch owner.name to send `signum` to this process right after the call whose
    arguments satisfy `when(calls so far, *args)`; returns the list of calls."""
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        out = real(*args, **kwargs)
        if when(len(calls), *args):
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# -- the module --------------------------------------------------------------------------------

def test_a_signal_only_sets_the_flag_and_the_check_raises_with_what_is_kept():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Stopped) as stopped:
        with stop_on_signals("partial work in x.parts"):
            assert stop_requested() is None
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop_requested() == signal.SIGTERM  # nothing raised where the signal arrived
            os.kill(os.getpid(), signal.SIGINT)  # another kind: noted, the first one decides
            assert stop_requested() == signal.SIGTERM
            check_stop()
    assert stopped.value.exit_code == 143 and str(stopped.value) == "stopped by SIGTERM: partial work in x.parts"
    assert {s: signal.getsignal(s) for s in before} == before and stop_requested() is None


def test_a_signal_after_the_last_check_still_ends_in_stopped_saying_what_was_done():
    with pytest.raises(Stopped) as stopped:
        with stop_on_signals("half"):
            os.kill(os.getpid(), signal.SIGINT)
            keep("all done: out.h5 is complete")
    assert stopped.value.exit_code == 130 and stopped.value.kept == "all done: out.h5 is complete"
    with stop_on_signals("nothing"):  # no signal: nothing happens
        check_stop()


def test_an_ignored_signal_stays_ignored_and_other_threads_install_nothing():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job (`cmd &`)
    try:
        with stop_on_signals("x"):
            os.kill(os.getpid(), signal.SIGINT)
            assert stop_requested() is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
    seen = []

    def in_thread():
        with stop_on_signals("x"):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_second_signal_of_a_kind_quits_at_once(signum):
    script = ("import os, signal, time\nfrom vl.shared.stopping import stop_on_signals\n"
              f"with stop_on_signals('x'):\n    os.kill(os.getpid(), {int(signum)})\n"
              f"    os.kill(os.getpid(), {int(signum)})\n    time.sleep(5)\n    print('went on')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == -signum and "went on" not in done.stdout
    assert "again quits at once" in done.stderr


def test_a_dataloader_worker_leaves_sigint_to_its_parent():
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with stop_on_signals("x"):  # a forked worker inherits the parent's handlers
            worker_signals(0)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the DataLoader ends stuck workers with it
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- vl extract, stopped at several points --------------------------------------------------------

@pytest.fixture(scope="module")
def photos_and_reference(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("stop-extract")
    write_photos(root / "images", 12)
    common = ["extract", "images", "--images", root / "images", *model_args(tiny_models), "--batch-size", 2,
              "--shard-size", 2, "--dtype", "float32", "--workers", 0]
    run_vl([*common, "--out", root / "reference.h5"])
    return common, FeatureStore(root / "reference.h5")


def assert_same_store(out: Path, reference: FeatureStore) -> None:
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(reference.ids)
    np.testing.assert_allclose(store.get_many(reference.ids), reference.get_many(reference.ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("signum, after_batch", [
    (signal.SIGINT, 1),  # early
    (signal.SIGTERM, 3),  # half-way
    (signal.SIGINT, 6),  # after the last batch: the run completes, and still says it was stopped
])
def test_extract_images_stops_between_batches_and_the_rerun_completes(photos_and_reference, tmp_path, monkeypatch,
                                                                       signum, after_batch):
    from vl.extract.store_builder import BackgroundWriter

    common, reference = photos_and_reference
    out = tmp_path / "stopped.h5"
    # the signal comes as the loop hands its batch to the store's writer thread: that batch is written
    send_on_call(monkeypatch, BackgroundWriter, "add", signum, lambda n, *_: n == after_batch)
    result = run_vl([*common, "--out", out], expect=None)
    monkeypatch.undo()
    assert result.exit_code == 128 + signum
    line = one_stop_line(result.stderr, signum)
    if after_batch < 6:
        assert f"finished work is kept in {parts_dir(out)}; run the same command again to continue" in line
        assert not out.exists() and len(list(parts_dir(out).glob("shard-*.h5"))) == after_batch  # shards of 2
        rerun = run_vl([*common, "--out", out])
        assert f"{2 * after_batch} already in store" in rerun.stderr
    else:
        assert f"the extraction had finished: {out} is complete" in line and "done: 12 extracted" in result.stderr
    assert_same_store(out, reference)


@pytest.mark.parametrize("command", ["videos", "import"])
def test_extract_videos_and_import_stop_between_batches_and_the_rerun_completes(tiny_models, tmp_path, monkeypatch,
                                                                                command):
    import vl.extract.import_features as imp
    from vl.extract.store_builder import BackgroundWriter

    if command == "videos":
        from vl.data_manifests.demo import write_demo_world

        write_demo_world(tmp_path / "world", images=8, videos=6, seed=3)
        args = ["extract", "videos", "--videos", tmp_path / "world/videos", *model_args(tiny_models, "tiny-vit"),
                "--fps", 2, "--max-frames", 4, "--batch-size", 4, "--shard-size", 1, "--workers", 0]
        after, kept = (BackgroundWriter, "add", 1), range(1, 6)  # the videos of the first batch of frames
    else:
        from test_extract_import import write_value_release

        write_value_release(tmp_path / "src", {f"clip_{i:02d}": 2 + i for i in range(6)})
        args = ["extract", "import", "--format", "value-npz", "--src", tmp_path / "src", "--shard-size", 2, "-q"]
        after, kept = (imp, "load_array", 3), [3]  # the three files read
    args += ["--dtype", "float32"]
    run_vl([*args, "--out", tmp_path / "whole.h5"])
    out = tmp_path / "stopped.h5"
    send_on_call(monkeypatch, after[0], after[1], signal.SIGTERM, lambda n, *_: n == after[2])
    result = run_vl([*args, "--out", out], expect=None)
    monkeypatch.undo()
    assert result.exit_code == 143
    assert "run the same command again to continue" in one_stop_line(result.stderr, signal.SIGTERM)
    assert len(h5_ids(parts_dir(out))) in kept and not out.exists()
    run_vl([*args, "--out", out])
    whole, resumed = FeatureStore(tmp_path / "whole.h5"), FeatureStore(out)
    assert sorted(whole.ids) == sorted(resumed.ids)
    for vid in whole.ids:
        np.testing.assert_allclose(resumed.get(vid), whole.get(vid), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(resumed.timestamps(vid), whole.timestamps(vid))


def h5_ids(parts: Path) -> list[str]:
    import h5py

    ids = []
    for shard in sorted(parts.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            ids += [i.decode() if isinstance(i, bytes) else i for i in f["ids"][:]]
    return ids


# -- vl train: a step checkpoint, and --resume ends as the uninterrupted run -------------------------

def write_train_config(world: Path, run_dir: Path, **top) -> Path:
    m, store = world / "manifests", str(world / "features/coco.h5")
    cfg = {"run_dir": str(run_dir), "epochs": 2, "seed": 3, "backbone": "tiny-t5", "init": "random",
           "tokenizer_vocab_size": 400, "optim": {"lr": 1e-3, "warmup_ratio": 0.1},
           "logging": {"every_n_steps": 1},
           "tasks": [{"name": "vqa", "train_manifest": str(m / "vqa2_train.jsonl"), "store": store, "batch_size": 8,
                      "val_manifest": str(m / "vqa2_train.jsonl"), "val_split": "train"},
                     {"name": "gqa", "train_manifest": str(m / "gqa_train.jsonl"), "store": store, "batch_size": 8,
                      "val_manifest": str(m / "gqa8.jsonl"), "val_split": "train"}],
           **top}
    path = run_dir.parent / f"{run_dir.name}.json"
    path.write_text(json.dumps(cfg))
    return path


STEPS_AN_EPOCH = 9  # 36 vqa + 25 gqa items, batch 8: 5 + 4 steps


@pytest.fixture(scope="module")
def whole_run(world, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stop-train") / "whole"
    run_vl(["train", "-c", write_train_config(world, run), "-q"])
    return run


def comparable(records: list[dict]) -> list[dict]:
    timing = {"seconds", "samples_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


@pytest.mark.parametrize("signum, where", [
    (signal.SIGINT, "step 3"),  # inside epoch 1
    (signal.SIGTERM, "last step of epoch 1"),  # before its validation
    (signal.SIGINT, "validation of epoch 1"),
])
def test_train_stops_at_a_step_checkpoint_and_resume_ends_as_the_uninterrupted_run(world, whole_run, tmp_path,
                                                                                    monkeypatch, signum, where):
    from vl.train import loop
    from vl.train.trackers import Trackers

    run = tmp_path / "stopped"
    if where == "validation of epoch 1":
        send_on_call(monkeypatch, loop, "generate_predictions", signum, lambda n, *_: n == 1)
        stop_step = STEPS_AN_EPOCH
    else:
        stop_step = 3 if where == "step 3" else STEPS_AN_EPOCH
        send_on_call(monkeypatch, Trackers, "log", signum,
                     lambda n, trackers, record: record.get("kind") == "step" and record["step"] == stop_step)
    result = run_vl(["train", "-c", write_train_config(world, run), "-q"], expect=None)
    monkeypatch.undo()
    assert result.exit_code == 128 + signum, result.output
    line = one_stop_line(result.stderr, signum)
    assert (f"checkpoint step-{stop_step} holds the run after step {stop_step} (epoch 1, {stop_step} of its "
            f"{STEPS_AN_EPOCH} batches); continue with `vl train --resume {run}`") in line
    assert (run / f"checkpoints/step-{stop_step}/model.safetensors").is_file()
    assert not (run / "checkpoints/last").exists()  # epoch 1 never ended

    resumed = run_vl(["train", "--resume", run, "-q"])
    assert f"from checkpoint step-{stop_step} inside epoch 1" in resumed.output
    assert comparable(read_metrics(run, kind=None)) == comparable(read_metrics(whole_run, kind=None))
    want, got = (load_file(str(r / "checkpoints/last/model.safetensors")) for r in (whole_run, run))
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


@pytest.fixture(scope="module")
def reference_run(world, whole_run, tmp_path_factory):
    """reference(**top): the uninterrupted run of write_train_config(world, run, **top), made once."""
    runs = {(): whole_run}

    def reference(**top) -> Path:
        key = tuple(sorted(top.items()))
        if key not in runs:
            run = tmp_path_factory.mktemp("stop-reference") / "whole"
            run_vl(["train", "-c", write_train_config(world, run, **top), "-q"])
            runs[key] = run
        return runs[key]

    return reference


def checkpoint_contents(folder: Path) -> tuple[dict, dict, dict, dict]:
    """(tensors, meta.json, the state's `extra` without its timing, its RNG states) of a checkpoint."""
    state = torch.load(folder / "state.pt", weights_only=False)
    extra = state["extra"]
    if extra.get("sums"):
        extra["sums"] = {k: v for k, v in extra["sums"].items() if k != "seconds"}
    meta = json.loads((folder / "meta.json").read_text())
    del meta["model_sha256"]  # of the file's bytes: safetensors writes its metadata keys in hash-map order
    return load_file(str(folder / "model.safetensors")), meta, extra, state["rng"]


def assert_same_run(run: Path, reference: Path, leftover: set[str] = frozenset()) -> None:
    """metrics.jsonl's records apart from timings, each checkpoint (weights bit-identical, the
    same step, best, early-stopping state and RNG states) and each epoch's validation file are
    the uninterrupted run's; `leftover`: the step-N checkpoints the stop saved besides them."""
    assert comparable(read_metrics(run, kind=None)) == comparable(read_metrics(reference, kind=None))
    names = {p.name for p in (reference / "checkpoints").iterdir()}
    assert {p.name for p in (run / "checkpoints").iterdir()} == names | leftover
    for name in sorted(names):
        (want, want_meta, want_extra, want_rng), (got, got_meta, got_extra, got_rng) = (
            checkpoint_contents(r / "checkpoints" / name) for r in (reference, run))
        assert want.keys() == got.keys() and got_meta == want_meta and got_extra == want_extra, name
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
        assert str(got_rng) == str(want_rng), name
    evals = sorted(p.name for p in (reference / "eval").glob("epoch_*.json"))
    assert sorted(p.name for p in (run / "eval").glob("epoch_*.json")) == evals
    for name in evals:
        assert json.loads((run / "eval" / name).read_text()) == json.loads((reference / "eval" / name).read_text())


@pytest.mark.parametrize("signum, top, call", [
    (signal.SIGINT, {"max_steps": 5, "save_every_n_steps": 5}, 1),  # max_steps inside epoch 1
    (signal.SIGTERM, {"max_steps": STEPS_AN_EPOCH}, 1),  # max_steps at epoch 1's last step
    (signal.SIGINT, {}, 3),  # the last epoch's (2 epochs; vqa and gqa predict in each validation)
])
def test_a_stop_during_the_final_validation_resumes_to_that_validation_and_the_runs_end(
        world, reference_run, tmp_path, monkeypatch, signum, top, call):
    from vl.train import loop

    run, last_step = tmp_path / "stopped", top.get("max_steps", 2 * STEPS_AN_EPOCH)
    send_on_call(monkeypatch, loop, "generate_predictions", signum, lambda n, *_: n == call)
    result = run_vl(["train", "-c", write_train_config(world, run, **top), "-q"], expect=None)
    monkeypatch.undo()
    assert result.exit_code == 128 + signum, result.output
    assert f"checkpoint step-{last_step} holds the run after step {last_step}" in one_stop_line(result.stderr, signum)
    assert all(r["step"] < last_step for r in read_metrics(run))  # the final epoch's record is missing

    resumed = run_vl(["train", "--resume", run, "-q"])
    assert f"from checkpoint step-{last_step} inside epoch {(last_step - 1) // STEPS_AN_EPOCH + 1}" in resumed.output
    saved_every = top.get("save_every_n_steps")
    assert_same_run(run, reference_run(**top),
                    leftover=set() if saved_every and last_step % saved_every == 0 else {f"step-{last_step}"})
    if "max_steps" in top:  # it said what was left; done now, a further resume has nothing to do
        assert f"max_steps={last_step} was reached there: what is left is the end of that epoch" in resumed.output
        again = run_vl(["train", "--resume", run, "-q"])
        assert f"has reached max_steps={last_step} (step {last_step}); nothing to resume" in again.output


def test_a_signal_after_the_final_validation_lets_the_run_finish_and_says_so(world, reference_run, tmp_path,
                                                                             monkeypatch):
    """A signal while the final checkpoints are written: no check is left, so they are written whole."""
    from vl.train import loop

    top = {"max_steps": 5, "save_every_n_steps": 5}
    run = tmp_path / "stopped"
    send_on_call(monkeypatch, loop, "save_checkpoint", signal.SIGTERM, lambda n, run_dir, name, *_: name == "last")
    result = run_vl(["train", "-c", write_train_config(world, run, **top), "-q"], expect=None)
    monkeypatch.undo()
    assert result.exit_code == 143
    assert f"training had finished: {run} is complete" in one_stop_line(result.stderr, signal.SIGTERM)
    assert_same_run(run, reference_run(**top))
    assert "nothing to resume" in run_vl(["train", "--resume", run, "-q"]).output


class Killed(BaseException):
    """The process killed (SIGKILL, a power cut) at the point a test chooses."""


def test_a_kill_between_the_final_record_and_last_resumes_without_a_second_record(world, reference_run, tmp_path,
                                                                                 monkeypatch):
    """max_steps=5 with save_every_n_steps=5: step-5 is saved before the validation; killed after
    metrics.jsonl got the epoch's record but before `last`, the resume from step-5 writes that
    record once."""
    from vl.train import loop

    top = {"max_steps": 5, "save_every_n_steps": 5}
    run = tmp_path / "killed"
    real = loop.save_checkpoint

    def save_checkpoint(run_dir, name, *args, **kwargs):
        if name == "last":
            raise Killed
        return real(run_dir, name, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save_checkpoint)
    with pytest.raises(Killed):
        run_vl(["train", "-c", write_train_config(world, run, **top), "-q"])
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(run)] == [5] and not (run / "checkpoints/last").exists()
    resumed = run_vl(["train", "--resume", run, "-q"])
    assert "from checkpoint step-5 inside epoch 1" in resumed.output
    assert_same_run(run, reference_run(**top))


# -- vl evaluate: the tasks scored stay written ---------------------------------------------------------

def test_evaluate_keeps_the_tasks_scored_and_names_the_rest(whole_run, tmp_path, monkeypatch):
    import vl.train.predict as predict

    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    send_on_call(monkeypatch, predict, "generate_predictions", signal.SIGTERM, lambda n, *_: n == 1)
    result = run_vl(["evaluate", "--run", run, "--split", "val", "--quiet"], expect=None)
    monkeypatch.undo()
    # the signal came as vqa's predictions were done: vqa is scored and written, gqa stops at its first batch
    assert result.exit_code == 143
    line = one_stop_line(result.stderr, signal.SIGTERM)
    assert f"of vqa are written in {run / 'eval/val'}; for the rest, run the same command with --tasks gqa" in line
    assert (run / "eval/val/vqa.json").is_file() and not (run / "eval/val/gqa.json").exists()
    run_vl(["evaluate", "--run", run, "--split", "val", "--tasks", "gqa", "--quiet"])
    assert (run / "eval/val/gqa.json").is_file()


# -- whole commands in their own process, as a user stops them ----------------------------------------

def wait_for(proc, ready, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"it ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.05)


def test_ctrl_c_in_a_terminal_reaches_the_workers_too_and_they_leave_it_to_the_parent(photos_and_reference,
                                                                                     tmp_path):
    """A terminal sends Ctrl-C to the whole process group: the DataLoader workers must not die of it."""
    common, reference = photos_and_reference
    out = tmp_path / "group.h5"
    proc = vl_subprocess([*[a if a != 0 else 1 for a in common], "--out", out], start_new_session=True,
                         env={"VL_TEST_DECODE_DELAY_S": "0.3"})
    wait_for(proc, lambda: any(parts_dir(out).glob("shard-*.h5")), "a committed shard")
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "DataLoader" not in stderr and "run the same command again to continue" in one_stop_line(stderr, signal.SIGINT)
    run_vl([*common, "--out", out])
    assert_same_store(out, reference)


def test_sigterm_stops_a_training_process_at_a_step_checkpoint(world, tmp_path):
    run = tmp_path / "long"
    config = write_train_config(world, run, epochs=100000)  # it would not end by itself
    proc = vl_subprocess(["train", "-c", config, "-q"])
    metrics = run / "metrics.jsonl"
    wait_for(proc, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, "two steps")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    line = one_stop_line(stderr, signal.SIGTERM)
    step = int(line.split("checkpoint step-")[1].split(" ")[0])
    assert f"continue with `vl train --resume {run}`" in line and step >= 2
    assert (run / f"checkpoints/step-{step}/model.safetensors").is_file()
    assert max(r["step"] for r in read_metrics(run, kind=None)) == step  # nothing logged after the checkpoint


def test_one_ranks_signal_stops_every_rank_at_the_same_step(world, tmp_path):
    """Under torchrun a signal may reach one rank only (or one first): the ranks agree on the step."""
    from test_extract_distributed import torchrun

    run = tmp_path / "ddp"
    proc = torchrun(["train", "-c", write_train_config(world, run, epochs=100000, device="cpu"), "-q"])
    metrics = run / "metrics.jsonl"
    wait_for(proc, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, "two steps",
             timeout=240)
    (rank_1,) = [pid for pid in child_pids(proc.pid) if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
    os.kill(rank_1, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stops = [line for line in (out + err).splitlines() if "stopped by SIGTERM: checkpoint step-" in line]
    assert len(stops) == 2 and len(set(stops)) == 1, (out[-2000:], err[-3000:])  # both ranks, the same step
    step = int(stops[0].split("checkpoint step-")[1].split(" ")[0])
    assert (run / f"checkpoints/step-{step}/model.safetensors").is_file()
    assert max(r["step"] for r in read_metrics(run, kind=None)) == step


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_predict_stopped_writes_nothing(whole_run, world, tmp_path, monkeypatch):
    from vl.extract.store_builder import StoreBuilder

    image = sorted((world / "images").rglob("*.jpg"))[0]
    send_on_call(monkeypatch, StoreBuilder, "add", signal.SIGINT, lambda n, *_: n == 1)
    result = run_vl(["predict", "--run", whole_run, "--image", image, "--question", "what?", "--task", "vqa"],
                    expect=None)
    monkeypatch.undo()
    assert result.exit_code == 130 and result.stdout == ""
    assert "nothing was written; run the same command again" in one_stop_line(result.stderr, signal.SIGINT)
