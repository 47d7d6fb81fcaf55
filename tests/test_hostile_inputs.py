"""Hostile and careless inputs through the `vl` command, one table: each gets its exit code,
one `error:` line naming the problem (no traceback), and leaves every input untouched.
The cases with more to check (a run in use, a store re-extracted under a run, FIFOs and
devices, unsafe checkpoints, problem counts) have their own tests beside the code they
guard; this table keeps the command-level promise for all of them in one place."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from vl.shared.cli import cli

Case = Callable[[Path, Path], tuple[list, list[Path]]]  # (world, tmp) -> (vl args, inputs that must not change)


def _manifest_with(world: Path, tmp: Path, **fields) -> Path:
    line = json.loads((world / "manifests/gqa_train.jsonl").read_text().splitlines()[0])
    path = tmp / "m.jsonl"
    path.write_text(json.dumps({**line, **fields}) + "\n")
    return path


def escaping_id(world, tmp):
    m = _manifest_with(world, tmp, media=["../../../../etc/passwd"])
    return ["data", "check", m, "--media-root", world / "images"], [m]


def absolute_id_to_extract(world, tmp):
    m = _manifest_with(world, tmp, media=["/etc/passwd"])
    return ["extract", "images", "--manifest", m, "--media-root", world / "images", "--out", tmp / "f.h5",
            "--model-config", world / "tiny-rn.json", "--pretrained", "none"], [m]


def convert_out_is_its_input(world, tmp):
    q = tmp / "q.json"
    q.write_bytes((world / "annotations/gqa/train_balanced_questions.json").read_bytes())
    return ["data", "convert", "gqa", "--split", "train", "--questions", q, "--images", world / "images", "--out", q], [q]


def score_out_is_its_predictions(world, tmp):
    p = tmp / "p.json"
    p.write_text("[]")
    return ["evaluate", "score", "--task", "gqa", "--predictions", p, "--manifest", world / "manifests/gqa8.jsonl",
            "--out", p], [p]


def yaml_alias_bomb(world, tmp):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    c = tmp / "bomb.yaml"
    c.write_text("\n".join(lines) + "\n")
    return ["train", "-c", c], [c]


def config_not_utf8(world, tmp):
    c = tmp / "c.yaml"
    c.write_bytes(b"run_dir: caf\xe9\n")
    return ["train", "-c", c], [c]


def manifest_not_utf8(world, tmp):
    m = tmp / "m.jsonl"
    m.write_bytes(b'{"id": "caf\xe9"}\n')
    return ["data", "check", m], [m]


def out_folder_not_writable(world, tmp):
    q = world / "annotations/gqa/train_balanced_questions.json"
    return ["data", "convert", "gqa", "--split", "train", "--questions", q, "--images", world / "images",
            "--out", "/sys/vl-hostile/m.jsonl"], [q]


def evaluate_a_folder_that_is_no_run(world, tmp):
    (tmp / "notarun").mkdir()
    return ["evaluate", "--run", tmp / "notarun", "--split", "val"], []


def predict_without_media(world, tmp):
    return ["predict", "--run", tmp, "--image", tmp / "missing.jpg", "--question", "q"], []


CASES: list[tuple[Case, int, str]] = [
    (escaping_id, 1, "media id '../../../../etc/passwd' climbs out of the media root"),
    (absolute_id_to_extract, 1, "media id '/etc/passwd' is an absolute path"),
    (convert_out_is_its_input, 1, "is also the input --questions"),
    (score_out_is_its_predictions, 1, "is also the input --predictions"),
    (yaml_alias_bomb, 1, "expand to more than 100,000 values"),
    (config_not_utf8, 1, "not a UTF-8 text file"),
    (manifest_not_utf8, 1, "m.jsonl:1: not UTF-8 text"),
    (out_folder_not_writable, 1, "permission denied: /sys/vl-hostile"),
    (evaluate_a_folder_that_is_no_run, 1, "is not a vl run directory"),
    (predict_without_media, 1, "is not a vl run directory"),
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case, exit_code, message", CASES, ids=[c[0].__name__ for c in CASES])
def test_a_hostile_input_gets_one_line_and_changes_nothing(world, tmp_path, case, exit_code, message):
    args, inputs = case(world, tmp_path)
    before = {p: digest(p) for p in inputs}
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="vl")
    assert result.exit_code == exit_code, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no exception escaped the command
    assert sum(line.startswith("error:") for line in result.output.splitlines()) == 1, result.output
    assert {p: digest(p) for p in inputs} == before
