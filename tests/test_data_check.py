"""`vl data check`: validation, counts, answer statistics, missing media."""
from __future__ import annotations

import json

from PIL import Image

from conftest import run_vl
from vl.shared import ManifestMeta, write_manifest


def _manifest(tmp_path, media_root):
    examples = [
        {"id": "1", "task": "vqa", "split": "val", "media": ["a"], "question": "q?", "answers": ["red"] * 10,
         "multiple_choice_answer": "red"},
        {"id": "2", "task": "vqa", "split": "val", "media": ["b"], "question": "q?", "answers": ["2"] * 10,
         "multiple_choice_answer": "2"},
        {"id": "3", "task": "vqa", "split": "val", "media": ["sub/c"], "question": "q?", "answers": ["red"] * 10,
         "multiple_choice_answer": "red"},
        {"id": "4", "task": "vqa", "split": "val", "media": ["gone"], "question": "q?", "answers": ["no"] * 10,
         "multiple_choice_answer": "no"},
    ]
    meta = ManifestMeta(dataset="toy", converter="test", media_root=str(media_root), extra={"media": "image"})
    return write_manifest(tmp_path / "toy.jsonl", examples, meta).path


def test_check_reports_counts_answers_and_missing_media(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        Image.new("RGB", (4, 4)).save(root / name)
    path = _manifest(tmp_path, root)
    result = run_vl(["data", "check", path], expect=1)
    assert "valid, 4 examples" in result.stdout
    assert "vqa/val: 4" in result.stdout
    assert "3 distinct; most common: 'red' 2" in result.stdout
    assert "1 of 4 MISSING" in result.stdout and "gone" in result.stdout

    Image.new("RGB", (4, 4)).save(root / "gone.jpg")
    ok = run_vl(["data", "check", path, "--json"])
    report = json.loads(ok.stdout)
    assert report["missing_media"] == [] and report["media_checked"] and report["examples"] == 4


def test_check_without_media_root_and_with_other_root(tmp_path):
    path = _manifest(tmp_path, tmp_path / "nowhere")
    result = run_vl(["data", "check", path])
    assert "not checked" in result.stdout
    other = tmp_path / "other"
    other.mkdir()
    assert "4 of 4 MISSING" in run_vl(["data", "check", path, "--media-root", other], expect=1).stdout


def test_check_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "task": "vqa", "split": "val", "media": ["a"]}\n{"id": "2", "task": "vqa"}\n')
    result = run_vl(["data", "check", path], expect=1)
    assert "bad.jsonl:2 (id '2'): missing required field 'split'" in result.stderr
    assert "Traceback" not in result.stderr
