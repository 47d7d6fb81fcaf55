"""Dataset manifests: round trip, and validation that names the file, line and field."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from vl.shared import DatasetManifest, ManifestMeta, SourceFile, VLError, digest_strings, sha256_file, write_manifest
from vl.shared.manifest import meta_path_for

EXAMPLES = [
    {"id": "q1", "task": "vqa", "split": "val", "media": ["COCO_1"], "question": "what color?", "answers": ["red"] * 10},
    {"id": "q2", "task": "nlvr2", "split": "val", "media": ["a-img0", "a-img1"], "sentence": "two dogs", "answers": ["true"]},
    {"id": "q3", "task": "vqa", "split": "test", "media": ["COCO_2"], "question": "how many?"},
]


def meta(**kw):
    return ManifestMeta(dataset="toy", converter="test", sources=[SourceFile("/src/q.json", "ab" * 32)],
                        media_root="/data/images", **kw)


def test_round_trip_counts_and_media(tmp_path):
    path = tmp_path / "toy.jsonl"
    write_manifest(path, EXAMPLES, meta())
    m = DatasetManifest.read(path)
    assert m.examples == EXAMPLES
    assert m.meta.sources == [SourceFile("/src/q.json", "ab" * 32)]
    assert m.meta.counts == {"vqa/val": 1, "nlvr2/val": 1, "vqa/test": 1}
    assert m.counts() == m.meta.counts
    assert m.media_ids() == ["COCO_1", "a-img0", "a-img1", "COCO_2"]
    written = json.loads(meta_path_for(path).read_text())
    assert written["kind"] == "dataset_manifest" and written["schema_version"] == 1
    assert list(written) == sorted(written)  # sorted keys


def _write_lines(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))


@pytest.mark.parametrize("bad_line,fragment", [
    ("{not json", "toy.jsonl:2: not valid JSON"),
    ({"task": "vqa", "split": "val", "media": ["x"]}, "toy.jsonl:2: missing required field 'id'"),
    ({"id": "q9", "split": "val", "media": ["x"]}, "toy.jsonl:2 (id 'q9'): missing required field 'task'"),
    ({"id": "q9", "task": "vqa", "split": "val", "media": "x"}, "toy.jsonl:2 (id 'q9'): field 'media' must be a non-empty list"),
    ({"id": "q9", "task": "vqa", "split": "val", "media": []}, "field 'media' must be a non-empty list"),
    ({"id": "q9", "task": "vqa", "split": 3, "media": ["x"]}, "field 'split' must be a non-empty string"),
    ({"id": "q9", "task": "vqa", "split": "val", "media": ["x"], "answers": "red"}, "field 'answers' must be a list of strings"),
    ({"id": "q1", "task": "vqa", "split": "val", "media": ["x"]}, "toy.jsonl:2: duplicate id 'q1' (first on line 1)"),
    ("[1, 2]", "toy.jsonl:2: a line must be a JSON object"),
])
def test_validation_names_file_line_and_field(tmp_path, bad_line, fragment):
    path = tmp_path / "toy.jsonl"
    _write_lines(path, [EXAMPLES[0], bad_line])
    with pytest.raises(VLError) as err:
        DatasetManifest.read(path)
    assert fragment in str(err.value)


def test_all_problems_are_collected(tmp_path):
    path = tmp_path / "toy.jsonl"
    _write_lines(path, [{"id": "a"}, "{oops", {"id": "b", "task": "t", "split": "s", "media": [1]}])
    with pytest.raises(VLError) as err:
        DatasetManifest.read(path)
    text = str(err.value)
    assert "toy.jsonl:1" in text and "toy.jsonl:2" in text and "toy.jsonl:3" in text
    assert "vl data convert" in text


def test_bad_meta_and_missing_file(tmp_path):
    with pytest.raises(VLError, match="not found: write one with `vl data convert"):
        DatasetManifest.read(tmp_path / "none.jsonl")
    path = tmp_path / "toy.jsonl"
    write_manifest(path, EXAMPLES, meta())
    meta_path_for(path).write_text(json.dumps({"kind": "dataset_manifest", "schema_version": 99, "dataset": "toy", "converter": "x"}))
    with pytest.raises(VLError, match="schema_version 99 is not supported"):
        DatasetManifest.read(path)
    meta_path_for(path).write_text("{")
    with pytest.raises(VLError, match=r"toy.meta.json:1: not valid JSON"):
        DatasetManifest.read(path)


def test_invalid_examples_write_nothing_and_keep_the_old_manifest(tmp_path):
    path = tmp_path / "toy.jsonl"
    write_manifest(path, EXAMPLES, meta())
    before = path.read_bytes()
    with pytest.raises(VLError, match="nothing was written"):
        write_manifest(path, [*EXAMPLES, {"id": "q1", "task": "vqa", "split": "val", "media": ["y"]}], meta())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.jsonl", "toy.meta.json"]  # no temporary left


def test_digests(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"x" * 3_000_000)
    assert sha256_file(f) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert digest_strings(["ab", "c"]) != digest_strings(["a", "bc"])
    assert digest_strings(["a", "b"]) != digest_strings(["b", "a"])
    assert digest_strings(["a", "b"]) == digest_strings(iter(["a", "b"]))


def test_the_count_of_problems_is_every_one_not_the_lines_shown(tmp_path):
    path = tmp_path / "m.jsonl"
    bad = ['{"id": "%d", "task": "vqa", "split": "train"}' % i for i in range(46)] + ["not json"] * 3
    path.write_text("\n".join(bad) + "\n")
    with pytest.raises(VLError) as e:
        DatasetManifest.read(path)
    text = str(e.value)
    assert text.startswith("49 problems:") and "... and 29 more" in text
    assert len(e.value.problems) == 21  # 20 shown, then the "more" line


@pytest.mark.parametrize("media_id, why", [("../secret/x", "climbs out of the media root"),
                                           ("a/../../etc/passwd", "climbs out of the media root"),
                                           ("/etc/passwd", "is an absolute path")])
def test_media_ids_that_leave_the_media_root_are_refused_everywhere(world, tmp_path, media_id, why):
    """A manifest (or an official file a converter reads) cannot make vl read outside its media root."""
    from click.testing import CliRunner

    from vl.shared.cli import cli

    line = json.loads((world / "manifests/gqa_train.jsonl").read_text().splitlines()[0])
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({**line, "media": [media_id]}) + "\n")
    message = f"media id {media_id!r} {why}"
    with pytest.raises(VLError, match=re.escape(message)):
        DatasetManifest.read(path)
    for args in (["data", "check", path, "--media-root", world / "images"],
                 ["extract", "images", "--manifest", path, "--media-root", world / "images", "--out", tmp_path / "f.h5",
                  "--model-config", world / "tiny-rn.json", "--pretrained", "none"]):
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="vl")
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "f.h5").exists()
    questions = json.loads((world / "annotations/gqa/train_balanced_questions.json").read_text())
    first = next(iter(questions))
    official = tmp_path / "questions.json"
    official.write_text(json.dumps({first: {**questions[first], "imageId": media_id}}))
    result = CliRunner().invoke(cli, ["data", "convert", "gqa", "--split", "train", "--questions", str(official),
                                      "--images", str(world / "images"), "--out", str(tmp_path / "g.jsonl")],
                                prog_name="vl")
    assert result.exit_code == 1 and message in result.output and not (tmp_path / "g.jsonl").exists()


def test_a_manifest_or_release_file_that_is_not_utf8_names_its_line(tmp_path):
    from vl.data_manifests.source_files import read_jsonl

    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n')  # latin-1
    with pytest.raises(VLError, match=r"m.jsonl:2: not UTF-8 text") as e:
        DatasetManifest.read(path)
    assert len(e.value.problems) == 1
    with pytest.raises(VLError, match=r"m.jsonl:2: not UTF-8 text .*the VALUE annotations is UTF-8 JSON"):
        read_jsonl(path, what="VALUE annotations")
