"""No command writes over one of its own inputs: an --out that is an input (by the same path,
another name or a link) is refused before any work, and the input is untouched."""
from __future__ import annotations

import json
import os

from click.testing import CliRunner

from vl.shared.cli import cli


def vl(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="vl")


def refused(result, path, before: bytes) -> None:
    assert result.exit_code == 1, result.output
    assert "is also the input" in result.output and "Traceback" not in result.output
    assert path.read_bytes() == before


def test_convert_score_extract_and_predict_refuse_an_out_that_is_an_input(world, tmp_path):
    questions = world / "annotations/gqa/train_balanced_questions.json"
    copy = tmp_path / "q.json"
    copy.write_bytes(questions.read_bytes())
    link = tmp_path / "link.json"
    os.symlink(copy, link)
    before = copy.read_bytes()
    for out in (copy, link):  # the same path, or the same file through a link
        refused(vl("data", "convert", "gqa", "--split", "train", "--questions", copy, "--images", world / "images",
                   "--out", out), copy, before)

    manifest = tmp_path / "gqa.jsonl"
    manifest.write_bytes((world / "manifests/gqa_train.jsonl").read_bytes())
    predictions = tmp_path / "p.json"
    predictions.write_text(json.dumps([{"questionId": json.loads(line)["id"], "prediction": "no"}
                                       for line in manifest.read_text().splitlines()]))
    before = predictions.read_bytes()
    refused(vl("evaluate", "score", "--task", "gqa", "--predictions", predictions, "--manifest", manifest,
               "--out", predictions), predictions, before)

    before = manifest.read_bytes()
    refused(vl("extract", "images", "--manifest", manifest, "--media-root", world / "images", "--out", manifest,
               "--model-config", world / "tiny-rn.json", "--pretrained", "none"), manifest, before)
    refused(vl("predict", "--run", tmp_path, "--manifest", manifest, "--out", manifest), manifest, before)


def test_import_refuses_an_out_that_is_its_manifest(world, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes((world / "manifests/gqa_train.jsonl").read_bytes())
    before = manifest.read_bytes()
    (tmp_path / "src").mkdir()
    refused(vl("extract", "import", "--format", "value-npz", "--src", tmp_path / "src", "--out", manifest,
               "--manifest", manifest), manifest, before)
