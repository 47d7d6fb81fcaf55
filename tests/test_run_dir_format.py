"""vl.shared.run_dir: the run directory's names, and reading and appending without torch."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vl.shared import VLError
from vl.shared.run_dir import (
    append_metrics,
    checkpoint_dir,
    eval_scores_path,
    find_checkpoint,
    is_run_dir,
    read_checkpoint_meta,
    read_metrics,
    read_run_json,
)


def test_names_of_the_files(tmp_path):
    assert checkpoint_dir(tmp_path, "best") == tmp_path / "checkpoints" / "best"
    assert eval_scores_path(tmp_path, "val", "vqa") == tmp_path / "eval" / "val" / "vqa.json"
    for bad in ("", ".last", "a/b", " last"):
        with pytest.raises(VLError, match="plain folder name"):
            checkpoint_dir(tmp_path, bad)
    assert not is_run_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert not is_run_dir(tmp_path)
    (tmp_path / "run.json").write_text('{"budget": {"percent": 1.5}}')
    assert is_run_dir(tmp_path) and read_run_json(tmp_path)["budget"] == {"percent": 1.5}
    with pytest.raises(VLError, match="is not a vl run directory"):
        read_run_json(tmp_path / "nothing")


def test_find_checkpoint_says_what_the_run_has(tmp_path):
    with pytest.raises(VLError, match="this run has: no checkpoints"):
        find_checkpoint(tmp_path, "best")
    (tmp_path / "checkpoints" / "last").mkdir(parents=True)
    (tmp_path / "checkpoints" / "last" / "meta.json").write_text('{"step": 3}')
    assert read_checkpoint_meta(tmp_path, "last") == {"step": 3}
    with pytest.raises(VLError, match="this run has: last"):
        find_checkpoint(tmp_path, "best")
    (tmp_path / "checkpoints" / ".best.old-123").mkdir()  # a save killed while replacing `best`
    with pytest.raises(VLError, match=r"rename that folder to .*checkpoints/best"):
        find_checkpoint(tmp_path, "best")


def test_metrics_survive_a_cut_last_line(tmp_path):
    append_metrics(tmp_path, {"step": 1, "loss": np.float64(0.5)})
    append_metrics(tmp_path, {"step": 2, "loss": np.float32(0.25)})
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-write
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    append_metrics(tmp_path, {"step": 3, "loss": 0.125})  # a resumed run appends cleanly
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25},
                                      {"step": 3, "loss": 0.125}]
    with open(path, "a") as f:
        f.write('{"step": 4}')  # whole record, newline lost
    append_metrics(tmp_path, {"step": 5})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    path.write_text(path.read_text().replace('{"step": 4}', '{"step": 4'))
    with pytest.raises(VLError, match="line 4 is not JSON"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "nothing") == []


def test_metrics_take_tensors_as_numbers(tmp_path):
    torch = pytest.importorskip("torch")
    append_metrics(tmp_path, {"loss": torch.tensor(0.5), "per_task": torch.tensor([1.0, 2.0])})
    assert read_metrics(tmp_path) == [{"loss": 0.5, "per_task": [1.0, 2.0]}]


def test_reading_a_run_dir_imports_no_torch(tmp_path):
    append_metrics(tmp_path, {"epoch": 1})
    code = (f"import sys, vl.shared.run_dir as r; r.read_metrics({str(tmp_path)!r}); "
            "print(json.dumps(sorted(m for m in ('torch', 'h5py', 'transformers') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
