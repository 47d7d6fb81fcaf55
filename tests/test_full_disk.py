"""A full disk during extraction and training (issue #17, finding 8): a file size limit
(`ulimit -f`, EFBIG) hits each file `vl extract` and `vl train` write, in a subprocess;
each time the command ends with one line naming the file and the space it needed, exit 1,
no crash (the h5py store writes used to end in a segmentation fault), no half-written
file in place of a good one; the rerun without the limit continues and ends as an
uninterrupted run (the same features; metrics.jsonl one record per epoch, the same weights).

Most limits are set by `ulimit -f N` before `exec vl`; a file smaller than those written
before it (metrics.jsonl, the store's sidecar, a checkpoint after the first) gets the
same RLIMIT_FSIZE lowered from inside the process, right before the call that writes it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import model_args, run_vl, write_photos
from vl.shared import FeatureStore
from vl.shared.cli import cli
from vl.shared.disk_full import DiskFullError, GuardedFile, disk_full_errno, reporting_disk_full
from vl.shared.feature_store import parts_dir
from vl.shared.run_dir import read_metrics

from test_train_loop import trainable_tensors, vl_train, write_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -f and EFBIG as on Linux")

# Lowers this process's file size limit right before the nth call of module.function, then runs `vl`.
LOWER_LIMIT_AT_CALL = """
import importlib, os, resource, sys
module, function, nth, limit, grow = sys.argv[1:6]
mod, calls = importlib.import_module(module), [0]
real = getattr(mod, function)
def lowered(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(nth):
        size = os.path.getsize(grow) if grow != "-" and os.path.exists(grow) else 0
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return real(*args, **kwargs)
setattr(mod, function, lowered)
from vl.shared.cli import main
sys.argv = ["vl", *sys.argv[6:]]
main()
"""


def vl_limited(args: list, ulimit_kib: int | None = None, lower_at: tuple | None = None) -> subprocess.CompletedProcess:
    """`vl ARGS` in a subprocess under `ulimit -f ulimit_kib`, or with the limit lowered at a
    call: lower_at = (module, function, nth call, bytes, file whose size is added or "-")."""
    args = [str(a) for a in args]
    if lower_at is not None:
        command = [sys.executable, "-c", LOWER_LIMIT_AT_CALL, *map(str, lower_at), *args]
    else:
        command = ["bash", "-c", f'ulimit -f {ulimit_kib}; exec "$0" -m vl.shared.cli "$@"', sys.executable, *args]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def assert_one_line_disk_error(proc: subprocess.CompletedProcess, names: str, how: str) -> str:
    """Exit 1 (not a signal, not a segfault), and one error line that names the file and the space."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}\n{output[-3000:]}"
    assert "Traceback" not in output and "Exception ignored" not in output and "HDF5" not in output, output[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: file too large: writing "), proc.stderr
    line = errors[0]
    assert names in line and "needs about " in line and "file size limit of " in line and how in line, line
    return line


def leftovers(folder: Path) -> list[str]:
    """Temporary files a failed write could leave behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


# -- extraction ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos_and_reference(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("full-disk-extract")
    write_photos(root / "images", 12)
    common = ["extract", "images", "--images", root / "images", *model_args(tiny_models), "--batch-size", 2,
              "--shard-size", 4, "--dtype", "float32", "--workers", 0, "--layer", "grid"]
    run_vl([*common, "--out", root / "reference.h5"])
    return common, FeatureStore(root / "reference.h5")


# (what the limit hits, `ulimit -f` KiB or a limit lowered at a call, the file the message names)
EXTRACT_LIMITS = [
    ("settings", 1, None, "out.h5.parts/settings.json"),  # 1.3 KiB: the first file written
    ("shard", 20, None, "out.h5.parts"),  # a 4-item shard allocates one 256 KiB chunk per dataset
    # loader workers pass batches in shared-memory files, which the limit also caps: decoding moves to
    # the main process (a batch over the limit used to be lost in the worker, and the run waited 10 min)
    ("shard, with loader workers", 20, None, "out.h5.parts"),
    ("joined store", 120, None, "out.h5"),  # 12 items of 3x3x256 float32: 108 KiB of features + metadata
    ("sidecar", None, ("vl.extract.store_builder", "write_json_atomic", 2, 500, "-"), "out.h5.json"),
]


@pytest.mark.parametrize("hits, ulimit_kib, lower_at, names", EXTRACT_LIMITS, ids=[x[0] for x in EXTRACT_LIMITS])
def test_extraction_on_a_full_disk_says_so_in_one_line_and_the_rerun_continues(
        photos_and_reference, tmp_path, hits, ulimit_kib, lower_at, names):
    common, reference = photos_and_reference
    out = tmp_path / "out.h5"
    workers = ["--workers", 1] if "workers" in hits else []
    proc = vl_limited([*common, *workers, "--out", out, "-q"], ulimit_kib, lower_at)
    line = assert_one_line_disk_error(proc, str(tmp_path / names), "run the same command again")
    if hits.startswith("shard"):
        assert "for the joined store" in line  # the largest file the limit must allow
    assert leftovers(tmp_path) == []
    if hits != "sidecar":  # (written after the store's rename: the store is complete)
        assert not out.exists()
    for shard in parts_dir(out).glob("shard-*.h5"):  # what is kept is whole
        with h5py.File(shard, "r") as f:
            assert len(f["ids"]) == len(f["features/grid"]) > 0

    run_vl([*common, "--out", out])
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(reference.ids)
    np.testing.assert_array_equal(store.get_many(reference.ids), reference.get_many(reference.ids))
    assert json.loads(out.with_name("out.h5.json").read_text())["provenance"]["count"] == len(reference.ids)
    assert not parts_dir(out).exists()


# -- training --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    run = tmp_path_factory.mktemp("full-disk-train") / "whole"
    result = vl_train("-c", str(write_config(world, run)), "--quiet")
    assert result.exit_code == 0, result.output
    return run


# (what the limit hits, `ulimit -f` KiB or a limit lowered at a call, the file named, how to go on)
RESUME = "continue with `vl train --resume "
TRAIN_LIMITS = [
    ("tokenizer", 3, None, "run/tokenizer", "run the same command again"),  # before the run dir holds a run
    ("first checkpoint", 100, None, "run/checkpoints/best/model.safetensors", RESUME),  # 220 KiB of weights
    ("optimizer state", 300, None, "run/checkpoints/last/state.pt", RESUME),  # 445 KiB with Adam's moments
    ("metrics.jsonl", None, ("vl.train.loop", "append_metrics", 2, 100, "run/metrics.jsonl"), "run/metrics.jsonl",
     RESUME),  # epoch 2's record, 100 bytes past the end
    ("checkpoint after epoch 1", None, ("vl.train.loop", "save_checkpoint", 3, 100_000, "-"),
     "run/checkpoints/last/model.safetensors", RESUME),  # epoch 1's best and last are saved
]


@pytest.mark.parametrize("hits, ulimit_kib, lower_at, names, how", TRAIN_LIMITS, ids=[x[0] for x in TRAIN_LIMITS])
def test_training_on_a_full_disk_says_so_in_one_line_and_the_rerun_ends_as_an_uninterrupted_run(
        world, uninterrupted, tmp_path, hits, ulimit_kib, lower_at, names, how, one_torch_thread):
    run = tmp_path / "run"
    config = write_config(world, run)
    if lower_at is not None:
        lower_at = (*lower_at[:4], tmp_path / lower_at[4] if lower_at[4] != "-" else "-")
    proc = vl_limited(["train", "-c", config, "--quiet"], ulimit_kib, lower_at)
    assert_one_line_disk_error(proc, str(tmp_path / names), how)
    assert leftovers(tmp_path) == []
    assert not (run / "tokenizer").exists() or (run / "tokenizer" / "tokenizer.json").is_file()
    if (run / "metrics.jsonl").exists():
        assert (run / "metrics.jsonl").read_text().endswith("\n")  # no half record
        assert [r["epoch"] for r in read_metrics(run)] in ([1], [1, 2])

    rerun = vl_train("--resume" if RESUME in how else "-c", str(run if RESUME in how else config), "--quiet")
    assert rerun.exit_code == 0, rerun.output
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]  # each epoch once
    whole = trainable_tensors(uninterrupted)
    resumed = trainable_tensors(run)
    assert whole.keys() == resumed.keys()
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=1e-6, msg=k)


def test_evaluation_on_a_full_disk_says_so_in_one_line_and_the_rerun_writes_every_file(uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    proc = vl_limited(["evaluate", "--run", run, "--split", "val", "--quiet"], ulimit_kib=1)
    assert_one_line_disk_error(proc, str(run / "eval/val/vqa_val_predictions.json"), "run the same command again")
    assert leftovers(run) == [] and not (run / "eval/val/vqa_val_predictions.json").exists()

    rerun = CliRunner().invoke(cli, ["evaluate", "--run", str(run), "--split", "val", "--quiet"], prog_name="vl")
    assert rerun.exit_code == 0, rerun.output
    for name in ("vqa.json", "vqa_val_predictions.json", "gqa.json", "gqa_val_predictions.json"):
        json.loads((run / "eval/val" / name).read_text())


# -- the pieces ------------------------------------------------------------------------------

def test_a_full_disk_is_recognised_in_any_library_s_error():
    import errno

    assert disk_full_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    assert disk_full_errno(Exception("Error while serializing: I/O error: File too large (os error 27)")) == errno.EFBIG
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as e:  # torch.save to a file object: the OSError is its context
        assert disk_full_errno(e) == errno.EDQUOT
    assert disk_full_errno(FileNotFoundError(2, "gone")) is None
    assert disk_full_errno(Exception("(os error 2)")) is None
    with pytest.raises(DiskFullError, match=r"no space left on the device: writing /x/y.bin needs about 2.0 KiB"):
        with reporting_disk_full("/x/y.bin", needed=2048):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError):  # anything else goes on as it was
        with reporting_disk_full("/x/y.bin"):
            raise ValueError("not a disk")


def test_hdf5_writes_through_the_guard_never_see_the_failure(tmp_path):
    """In a subprocess under `ulimit -f 64`: h5py writes 400 KiB through GuardedFile; the
    guard records EFBIG, HDF5 closes the file normally, and the interpreter exits cleanly
    (the same writes straight to the file end in a segmentation fault at exit)."""
    script = f"""
import h5py, numpy as np, sys
from vl.shared.disk_full import GuardedFile
guard = GuardedFile({str(tmp_path / 'x.h5')!r})
with h5py.File(guard, "w") as f:
    ds = f.create_dataset("x", shape=(0, 1024), maxshape=(None, 1024), chunks=(16, 1024), dtype="f4")
    for i in range(100):
        ds.resize(i + 1, axis=0)
        ds[i] = i
guard.close()
print(guard.error.errno if guard.error else None)
"""
    proc = subprocess.run(["bash", "-c", 'ulimit -f 64; exec "$0" -c "$1"', sys.executable, script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "27" and proc.stderr == "", (proc.returncode, proc.stderr)

    guard = GuardedFile(tmp_path / "ok.h5")  # without a limit: an ordinary file
    with h5py.File(guard, "w") as f:
        f["x"] = np.arange(10)
    guard.close()
    assert guard.error is None
    with h5py.File(tmp_path / "ok.h5", "r") as f:
        assert f["x"][()].tolist() == list(range(10))


def test_a_store_on_a_device_that_fills_up_keeps_its_finished_shards_and_says_what_the_rest_needs(tmp_path, monkeypatch):
    """ENOSPC (not a file size limit): the device has room for some shards; the error says
    how much the items left and the joined store need, the finished shards stay, the
    rerun adds the rest."""
    import errno

    from vl.extract.store_builder import StoreBuilder
    from vl.shared import disk_full

    room = [1_500_000]  # bytes left on the "device"
    real_pwrite = os.pwrite

    def filling_pwrite(fd, data, offset):  # GuardedFile's writes: the device fills up
        if len(data) > room[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        room[0] -= len(data)
        return real_pwrite(fd, data, offset)

    settings = {"encoder": {"model": "toy"}, "preprocess": {"size": [8, 8]}, "features": {"layer": "grid"}}
    grid = np.random.default_rng(0).standard_normal((40, 4, 3)).astype(np.float32)
    ids = [f"m{i:03d}" for i in range(40)]
    path = tmp_path / "s.h5"

    def build() -> None:
        with StoreBuilder(path, dict(settings), {"grid": (4, 3)}, "float32", shard_rows=8) as b:
            todo = [i for i in ids if i not in b.done_ids]
            b.items_to_add = len(todo)
            for s in range(0, len(todo), 4):
                b.add(todo[s:s + 4], {"grid": grid[[ids.index(i) for i in todo[s:s + 4]]]})
            b.finish({}, retried_ids=set(todo))

    monkeypatch.setattr(disk_full.os, "pwrite", filling_pwrite)
    with pytest.raises(DiskFullError) as error:
        build()
    message = str(error.value)
    assert message.startswith(f"no space left on the device: writing {parts_dir(path)} needs about ")
    left = 40 - 8 * len(list(parts_dir(path).glob("shard-*.h5")))
    assert 0 < left < 40 and f"for the {left} items left and the store they are joined into" in message
    assert message.endswith("then run the same command again: finished work is kept")
    assert leftovers(tmp_path) == [] and not path.exists()

    monkeypatch.undo()
    build()
    store = FeatureStore(path)
    assert sorted(store.ids) == ids
    np.testing.assert_array_equal(store.get_many(ids), grid)


def test_training_loader_workers_give_way_to_a_file_size_limit(monkeypatch):
    """Shared-memory batches are files too: under `ulimit -f` the batches are collated in the
    main process (the same batches), instead of a worker losing one and training waiting."""
    from vl.shared import disk_full
    from vl.train.data import make_loader

    class Collating(list):
        def collator(self, tokenizer):
            return lambda items: items

    data = Collating(range(4))
    assert make_loader(data, [[0, 1], [2, 3]], None, workers=2, seed=0).num_workers == 2
    monkeypatch.setattr(disk_full, "file_size_limit", lambda: 1 << 20)
    assert make_loader(data, [[0, 1], [2, 3]], None, workers=2, seed=0).num_workers == 0
