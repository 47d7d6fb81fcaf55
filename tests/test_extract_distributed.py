"""Scale-out: `torchrun --nproc-per-node 2` (gloo, CPU) gives the same store as one process,
and a rerun after a crash redoes only the missing work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import model_args, run_vl, write_photos
from vl.shared import FeatureStore
from vl.shared.feature_store import parts_dir


def torchrun(args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", **kwargs.pop("env", {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vl.shared.cli", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def _same(a: FeatureStore, b: FeatureStore) -> None:
    assert sorted(a.ids) == sorted(b.ids)
    np.testing.assert_allclose(a.get_many(a.ids), b.get_many(a.ids), rtol=1e-5, atol=1e-5)
    assert sorted(x["id"] for x in a.failures) == sorted(x["id"] for x in b.failures)


def test_two_rank_torchrun_equals_one_process(tiny_models, tmp_path):
    folder = tmp_path / "images"
    write_photos(folder, 11)
    (folder / "broken.jpg").write_text("not an image")
    common = ["extract", "images", "--images", folder, *model_args(tiny_models), "--workers", 0, "--batch-size", 3,
              "--dtype", "float32"]
    run_vl([*common, "--out", tmp_path / "one.h5"])

    proc = torchrun([*common, "--out", tmp_path / "two.h5"])
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "11 extracted" in err and "1 failed" in err  # rank 0 reports the whole run
    two = FeatureStore(tmp_path / "two.h5")
    _same(FeatureStore(tmp_path / "one.h5"), two)
    assert two.provenance["runs"][-1]["world_size"] == 2
    assert not parts_dir(tmp_path / "two.h5").exists()


def test_rerun_after_a_killed_torchrun_redoes_only_missing_work(tiny_models, tmp_path):
    folder = tmp_path / "images"
    write_photos(folder, 24)
    common = ["extract", "images", "--images", folder, *model_args(tiny_models), "--workers", 0, "--batch-size", 2,
              "--shard-size", 2, "--dtype", "float32"]
    run_vl([*common, "--out", tmp_path / "one.h5"])

    out = tmp_path / "two.h5"
    proc = torchrun([*common, "--out", out], env={"VL_TEST_DECODE_DELAY_S": "0.1"})
    deadline = time.monotonic() + 180
    while len(list(parts_dir(out).glob("shard-r0001-*.h5"))) < 1 or len(list(parts_dir(out).glob("shard-r0000-*.h5"))) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, as a crashed node
    proc.wait(timeout=30)
    assert not out.exists()
    kept = len(list(parts_dir(out).glob("shard-*.h5")))

    rerun = torchrun([*common, "--out", out])
    _, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err[-3000:]
    already = int(err.split(" already in store")[0].rsplit(", ", 1)[-1])
    assert already >= 2 * kept
    _same(FeatureStore(tmp_path / "one.h5"), FeatureStore(out))
