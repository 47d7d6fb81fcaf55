"""Official submission files: every task written and read back, the exact bytes of the
image tasks' files, every bad-file case, and `score_file` end to end on tiny manifests
with scores computed by hand."""
from __future__ import annotations

import hashlib
import json

import pytest

from vl.evaluate.formats import FORMATS, official_file_name, read_submission, write_submission
from vl.evaluate.scoring import score_file, write_scores
from vl.shared.errors import VLError
from vl.shared.manifest import ManifestMeta, write_manifest

SUBS = [{"start": 0.0, "end": 2.0, "text": "Hi."}]


def _ex(eid, task, **fields):
    return {"id": eid, "task": task, "split": "val", "media": [fields.pop("media", f"m{eid}")], **fields}


EXAMPLES = {
    "vqa": [_ex("262148000", "vqa", question="What?", answers=["yes"] * 10, image_id=262148),
            _ex("42001", "vqa", question="How many?", answers=["2"] * 3 + ["3"] * 7, image_id=42)],
    "gqa": [_ex("20968122", "gqa", question="Is it red?", answers=["yes"], image_id="n1"),
            _ex("05451384", "gqa", question="Which?", answers=["left"], image_id="n2")],
    "nlvr2": [_ex("dev-850-0-0", "nlvr2", sentence="Two dogs.", answers=["true"]),
              _ex("dev-850-1-0", "nlvr2", sentence="Two dogs.", answers=["false"])],
    "caption": [_ex("391895", "caption", targets=["A man rides."], image_id=391895),
                _ex("522418", "caption", targets=["A woman cuts."], image_id=522418)],
    "tvqa": [_ex("7", "tvqa", question="Who?", choices=list("abcde"), answer_idx=2, answers=["c"], ts=[1.0, 2.0],
                 subtitles=SUBS, show_name="Friends"),
             _ex("8", "tvqa", question="Why?", choices=list("abcde"), answer_idx=0, answers=["a"], ts=None,
                 subtitles=SUBS, show_name="House M.D.")],
    "how2qa": [_ex("11", "how2qa", question="What?", choices=list("abcd"), answer_idx=3, answers=["d"], ts=None,
                   subtitles=SUBS)],
    "tvc": [_ex("86602", "tvc", media="s03e02_seg02_clip_10", clip_id=86602, ts=[35.73, 40.9], duration=94.03,
                subtitles=SUBS, targets=["Sheldon waves."], desc_ids=[109])],
    "yc2c": [_ex("13447", "yc2c", media="ljyO7IaGWLY", clip_id=13447, ts=[3.0, 7.5], duration=None,
                 subtitles=SUBS, targets=["Pour the sauce."], desc_ids=[1])],
    # the pre-training tasks read caption examples; the gold they drew is in `answers`
    "vl_lm": [_ex("391895", "caption", targets=["A man rides."], answers=["<extra_id_0> rides."]),
              _ex("522418", "caption", targets=["A woman cuts."], answers=["<extra_id_0> woman"])],
    "itm": [_ex("391895", "caption", targets=["A man rides."], answers=["true"]),
            _ex("522418", "caption", targets=["A woman cuts."], answers=["false"])],
}
PREDICTIONS = {
    "vqa": {"262148000": "yes", "42001": ""},  # an empty answer is a valid (wrong) answer
    "gqa": {"20968122": "no", "05451384": "left"},
    "nlvr2": {"dev-850-0-0": "true", "dev-850-1-0": "false"},
    "caption": {"391895": "a man riding a horse", "522418": "Ünïcode, \"quoted\""},
    "tvqa": {"7": 2, "8": 4},
    "how2qa": {"11": 0},
    "tvc": {"86602": "Sheldon waves at Penny."},
    "yc2c": {"13447": ""},
    "vl_lm": {"391895": "rides.", "522418": "man"},
    "itm": {"391895": "true", "522418": "true"},
}


def test_every_task_has_a_format_and_cases_here():
    assert set(FORMATS) == set(EXAMPLES) == set(PREDICTIONS) == {
        "vqa", "gqa", "nlvr2", "caption", "tvqa", "how2qa", "tvc", "yc2c", "vl_lm", "itm"}


@pytest.mark.parametrize("task", sorted(EXAMPLES))
def test_round_trip(tmp_path, task):
    path = write_submission(task, PREDICTIONS[task], EXAMPLES[task], tmp_path / f"sub{FORMATS[task].suffix}")
    pairs = read_submission(task, path, EXAMPLES[task])
    assert pairs == list(PREDICTIONS[task].items())  # example order, ids mapped back, values as the metric takes them
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


# ---------------------------------------------------------------- exact files

def test_vqa_file(tmp_path):
    path = write_submission("vqa", PREDICTIONS["vqa"], EXAMPLES["vqa"], tmp_path / "vqa.json")
    assert path.read_text() == ('[\n{"question_id": 262148000, "answer": "yes"},\n'
                                '{"question_id": 42001, "answer": ""}\n]\n')
    assert json.loads(path.read_text())[0] == {"question_id": 262148000, "answer": "yes"}


def test_gqa_file_keeps_string_ids(tmp_path):
    path = write_submission("gqa", PREDICTIONS["gqa"], EXAMPLES["gqa"], tmp_path / "gqa.json")
    assert path.read_text() == ('[\n{"questionId": "20968122", "prediction": "no"},\n'
                                '{"questionId": "05451384", "prediction": "left"}\n]\n')


def test_nlvr2_csv_uses_the_label_spelling(tmp_path):
    preds = {"dev-850-0-0": "TRUE", "dev-850-1-0": "false"}
    path = write_submission("nlvr2", preds, EXAMPLES["nlvr2"], tmp_path / "nlvr2.csv")
    assert path.read_text() == "dev-850-0-0,True\ndev-850-1-0,False\n"


def test_nlvr2_other_answers_stay_one_field_and_score_wrong(tmp_path):
    preds = {"dev-850-0-0": "maybe, yes\nno", "dev-850-1-0": ""}
    path = write_submission("nlvr2", preds, EXAMPLES["nlvr2"], tmp_path / "nlvr2.csv")
    assert path.read_text() == "dev-850-0-0,maybe yes no\ndev-850-1-0,\n"
    assert read_submission("nlvr2", path, EXAMPLES["nlvr2"]) == [("dev-850-0-0", "maybe yes no"),
                                                                  ("dev-850-1-0", "")]


def test_coco_caption_file(tmp_path):
    path = write_submission("caption", PREDICTIONS["caption"], EXAMPLES["caption"], tmp_path / "cap.json")
    assert path.read_text(encoding="utf-8") == ('[\n{"image_id": 391895, "caption": "a man riding a horse"},\n'
                                                '{"image_id": 522418, "caption": "Ünïcode, \\"quoted\\""}\n]\n')


def test_value_files(tmp_path):
    qa = write_submission("tvqa", {"7": 2, "8": None}, EXAMPLES["tvqa"], tmp_path / "tvqa.json")
    assert qa.read_text() == '{\n"7": 2,\n"8": -1\n}\n'  # None (no choice named) -> -1, which no answer equals
    assert read_submission("tvqa", qa, EXAMPLES["tvqa"]) == [("7", 2), ("8", -1)]
    tvc = write_submission("tvc", PREDICTIONS["tvc"], EXAMPLES["tvc"], tmp_path / "tvc.jsonl")
    assert json.loads(tvc.read_text()) == {"vid_name": "s03e02_seg02_clip_10", "clip_id": 86602, "ts": [35.73, 40.9],
                                           "descs": [{"desc": "Sheldon waves at Penny."}]}
    yc2c = write_submission("yc2c", PREDICTIONS["yc2c"], EXAMPLES["yc2c"], tmp_path / "yc2c.jsonl")
    assert yc2c.read_text() == '{"video_id": "ljyO7IaGWLY", "clip_id": 13447, "descs": [{"desc": ""}]}\n'
    assert official_file_name("tvqa", "val") == "tvqa_val_predictions.json"
    assert official_file_name("yc2c", "test") == "yc2c_test_predictions.jsonl"


def test_empty_predictions_write_an_empty_file_of_the_format(tmp_path):
    assert write_submission("vqa", {}, EXAMPLES["vqa"], tmp_path / "v.json").read_text() == "[]\n"
    assert write_submission("tvqa", {}, EXAMPLES["tvqa"], tmp_path / "t.json").read_text() == "{}\n"
    assert read_submission("vqa", tmp_path / "v.json", EXAMPLES["vqa"]) == []


def test_reading_maps_official_ids_to_example_ids(tmp_path):
    # COCO: the caption example whose image_id it is, whatever its manifest id
    examples = [_ex("img-a", "caption", targets=["x"], image_id=5), _ex("img-b", "caption", targets=["y"], image_id=6)]
    (tmp_path / "c.json").write_text('[{"image_id": 6, "caption": "b"}, {"image_id": 5, "caption": "a", "id": 1}]')
    assert read_submission("caption", tmp_path / "c.json", examples) == [("img-b", "b"), ("img-a", "a")]
    # VALUE captions: by clip_id, using only the first desc as the official scorer does
    clips = [_ex("c1", "tvc", clip_id=900, ts=[0, 1]), _ex("c2", "tvc", clip_id=901, ts=[0, 1])]
    (tmp_path / "t.jsonl").write_text('{"clip_id": 901, "descs": [{"desc": "first"}, {"desc": "second"}]}\n\n'
                                      '{"clip_id": 900, "descs": [{"desc": "z"}]}\n')
    assert read_submission("tvc", tmp_path / "t.jsonl", clips) == [("c2", "first"), ("c1", "z")]


def test_repeated_ids_survive_reading(tmp_path):
    (tmp_path / "v.json").write_text('[{"question_id": 42001, "answer": "a"}, {"question_id": 42001, "answer": "b"}]')
    assert read_submission("vqa", tmp_path / "v.json", EXAMPLES["vqa"]) == [("42001", "a"), ("42001", "b")]
    (tmp_path / "t.json").write_text('{"7": 1, "7": 2}')
    assert read_submission("tvqa", tmp_path / "t.json", EXAMPLES["tvqa"]) == [("7", 1), ("7", 2)]


# ---------------------------------------------------------------- bad files

BAD_FILES = [
    ("vqa", "[{oops", ":1: not valid JSON"),
    ("vqa", '{"question_id": 42001, "answer": "2"}', "the top level is a JSON object, not a list"),
    ("vqa", "null", "the top level is a JSON null, not a list"),
    ("tvqa", "null", "the top level is a JSON null, not an object"),
    ("vqa", '[{"question_id": 42001, "answer": "2"}, {"question_id": 262148000}]', "record [1]: missing required field 'answer'"),
    ("vqa", '[{"question_id": "42001", "answer": "2"}]', "record [0]: field 'question_id' must be int (got \"42001\")"),
    ("vqa", '[{"question_id": true, "answer": "2"}]', "field 'question_id' must be int (got true)"),
    ("vqa", '[{"question_id": 42001, "answer": 2}]', "record [0]: field 'answer' must be str (got 2)"),
    ("vqa", '[["42001", "2"]]', "record [0]: must be an object {question_id, answer} (got list)"),
    ("vqa", '[{"question_id": 42001, "answer": "2"}, {"question_id": 999, "answer": "2"}]',
     "1 records name no vqa example of the 2 given (record [1]: question_id 999)"),
    ("gqa", '[{"questionId": 20968122, "prediction": "no"}]', "field 'questionId' must be str (got 20968122)"),
    ("gqa", '[{"questionId": "20968122", "answer": "no"}]', "record [0]: missing required field 'prediction'"),
    ("caption", '[{"image_id": 391895, "caption": null}]', "field 'caption' must be str (got null)"),
    ("caption", '[{"image_id": 1, "caption": "x"}]', "record [0]: image_id 1"),
    ("tvqa", "[1, 2]", "the top level is a JSON list, not an object"),
    ("tvqa", '{"7": "2"}', "entry [0] (qid '7'): the answer must be an integer choice index (got string '2')"),
    ("tvqa", '{"7": {"answer": 2}}', "the answer must be an integer choice index (got object"),
    ("tvqa", '{"7": 2, "99": 1}', "entry [1]: qid '99'"),
    ("how2qa", "not json", ":1: not valid JSON"),
    ("tvc", '{"clip_id": 86602, "descs": [{"desc": "a"}]}\n{"clip_id": 86602,', ".jsonl:2: not valid JSON"),
    ("tvc", '{"clip_id": 86602}', ".jsonl:1: missing key 'descs'"),
    ("tvc", '{"clip_id": 86602, "descs": []}', "'descs' must be a non-empty list whose first item is"),
    ("tvc", '{"clip_id": 86602, "descs": ["a"]}', "'descs' must be a non-empty list whose first item is"),
    ("tvc", '{"clip_id": 1.5, "descs": [{"desc": "a"}]}', "'clip_id' must be an integer"),
    ("tvc", '{"clip_id": "86602", "descs": [{"desc": "a"}]}', "line 1: clip_id '86602'"),  # official: int
    ("yc2c", "[1]", ".jsonl:1: a line must be a JSON object (got list)"),
    ("nlvr2", "dev-850-0-0,True,0.9\n", ".csv:1: expected 'identifier,prediction'"),
    ("nlvr2", "dev-850-0-0 True\n", ".csv:1: expected 'identifier,prediction'"),
    ("nlvr2", "identifier,prediction\ndev-850-0-0,True\n", ".csv:1: looks like a header"),
    ("nlvr2", "dev-850-0-0,True\ntest1-1-0-0,False\n", "line 2: identifier 'test1-1-0-0'"),
]


@pytest.mark.parametrize("task,text,fragment", BAD_FILES)
def test_bad_files_name_the_file_the_record_and_the_format(tmp_path, task, text, fragment):
    path = tmp_path / f"sub{FORMATS[task].suffix}"
    path.write_text(text)
    with pytest.raises(VLError) as err:
        read_submission(task, path, EXAMPLES[task])
    message = str(err.value)
    assert fragment in message
    assert str(path) in message
    assert f"A {task} submission is {FORMATS[task].shape}" in message  # the fix: what the file should hold


def test_every_problem_of_a_file_is_listed(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('[{"question_id": "1", "answer": "a"}, {"answer": "b"}, {"question_id": 3, "answer": 4}]')
    with pytest.raises(VLError) as err:
        read_submission("vqa", path, EXAMPLES["vqa"])
    assert all(f"record [{i}]" in str(err.value) for i in range(3))


def test_a_file_that_is_not_text(tmp_path):
    (tmp_path / "v.json").write_bytes(b"[\xff\xfe]")
    with pytest.raises(VLError, match=r"v\.json: not UTF-8 text \(byte 1\); a vqa submission is a JSON list"):
        read_submission("vqa", tmp_path / "v.json", EXAMPLES["vqa"])


def test_missing_file(tmp_path):
    with pytest.raises(VLError, match="no such predictions file"):
        read_submission("vqa", tmp_path / "none.json", EXAMPLES["vqa"])


def test_unknown_task():
    with pytest.raises(VLError, match="unknown task 'vqa2'; choose one of: vqa, gqa"):
        read_submission("vqa2", "x.json", [])


@pytest.mark.parametrize("task,predictions,examples,fragment", [
    ("vqa", {"1": "yes"}, EXAMPLES["vqa"], "1 prediction ids are not among the 2 examples given ('1')"),
    ("vqa", {"42001": 2}, EXAMPLES["vqa"], "1 vqa predictions are not strings ('42001': 2)"),
    ("tvqa", {"7": "a2"}, EXAMPLES["tvqa"], "tvqa predictions are not choice indices (int) or None"),
    ("tvqa", {"7": True}, EXAMPLES["tvqa"], "tvqa predictions are not choice indices"),
    ("vqa", {"q1": "yes"}, [_ex("q1", "vqa", answers=["yes"])], "example id 'q1' is not an integer"),
    ("caption", {"a": "x", "b": "y"}, [_ex("a", "caption", image_id=5), _ex("b", "caption", image_id=5)],
     "caption examples 'a' and 'b' share image_id 5"),
])
def test_write_refuses_what_the_format_cannot_hold(tmp_path, task, predictions, examples, fragment):
    path = tmp_path / "sub.json"
    with pytest.raises(VLError) as err:
        write_submission(task, predictions, examples, path)
    assert fragment in str(err.value) and f"Nothing was written to {path}" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_an_old_file_whole(tmp_path):
    path = tmp_path / "vqa.json"
    path.write_text("old and much longer content " * 10)
    write_submission("vqa", {"42001": "2"}, EXAMPLES["vqa"], path)
    assert json.loads(path.read_text()) == [{"question_id": 42001, "answer": "2"}]


# ---------------------------------------------------------------- score_file end to end

def _manifest(path, examples, *, has_answers=True):
    write_manifest(path, examples, ManifestMeta(dataset="toy", converter="test", has_answers=has_answers))
    return path


VQA_GOLD = [
    _ex("1", "vqa", answers=["yes"] * 10, answer_type="yes/no", question_type="is the"),
    _ex("2", "vqa", answers=["2"] * 3 + ["3"] * 7, answer_type="number", question_type="how many"),
    _ex("3", "vqa", answers=["yes"] * 10, answer_type="yes/no", question_type="is the"),
]


def test_score_vqa_by_hand(tmp_path):
    manifest = _manifest(tmp_path / "vqa.jsonl", VQA_GOLD)
    # "yes" vs ten "yes": 1; "two" -> "2" (the answers disagree, so normalised) matches 3 of 10: 0.9;
    # "no": 0. Overall (1 + 0.9 + 0) / 3 = 63.33
    preds = write_submission("vqa", {"1": "yes", "2": "two", "3": "no"}, VQA_GOLD, tmp_path / "p.json")
    result = score_file("vqa", preds, manifest)
    assert result["overall"] == 63.33
    assert result["per_answer_type"] == {"number": 90.0, "yes/no": 50.0}
    assert result["count"] == 3 and result["missing"] == 0
    assert result["task"] == "vqa" and result["split"] == "val"
    assert result["predictions_file"] == str(preds) and result["manifest"] == str(manifest)
    assert result["predictions_sha256"] == hashlib.sha256(preds.read_bytes()).hexdigest()
    assert result["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()

    out = write_scores(result, tmp_path / "scores" / "vqa.json")
    assert json.loads(out.read_text()) == result
    assert list(json.loads(out.read_text())) == sorted(result)


def test_score_nlvr2_accuracy_and_consistency_by_hand(tmp_path):
    gold = [_ex("dev-1-0-0", "nlvr2", answers=["true"]), _ex("dev-1-1-0", "nlvr2", answers=["false"]),
            _ex("dev-2-0-1", "nlvr2", answers=["true"]), _ex("dev-2-1-1", "nlvr2", answers=["true"])]
    manifest = _manifest(tmp_path / "nlvr2.jsonl", gold)
    preds = tmp_path / "p.csv"
    preds.write_text("dev-1-0-0,True\ndev-1-1-0,false\ndev-2-0-1,TRUE\ndev-2-1-1,False\n")
    result = score_file("nlvr2", preds, manifest)
    # 3 of 4 right; sentence "dev-1--0" all right, "dev-2--1" not: consistency 1 of 2
    assert (result["overall"], result["consistency"], result["sentences"]) == (75.0, 50.0, 2)


def test_score_tvqa_by_hand(tmp_path):
    gold = [_ex(str(q), "tvqa", answer_idx=a, answers=["x"], show_name=show)
            for q, a, show in [(1, 0, "A"), (2, 1, "A"), (3, 2, "B"), (4, 3, "B")]]
    manifest = _manifest(tmp_path / "tvqa.jsonl", gold)
    preds = write_submission("tvqa", {"1": 0, "2": 1, "3": 4, "4": None}, gold, tmp_path / "p.json")
    result = score_file("tvqa", preds, manifest)
    assert result["overall"] == 50.0
    assert result["per_group"] == {"A": 100.0, "B": 0.0}


def test_missing_predictions_are_an_error_unless_allowed(tmp_path):
    manifest = _manifest(tmp_path / "vqa.jsonl", VQA_GOLD)
    preds = write_submission("vqa", {"1": "yes", "2": "two"}, VQA_GOLD, tmp_path / "p.json")
    with pytest.raises(VLError) as err:
        score_file("vqa", preds, manifest)
    assert "1 of 3 references have no prediction ('3')" in str(err.value)
    assert str(preds) in str(err.value)
    result = score_file("vqa", preds, manifest, allow_missing=True)
    assert (result["overall"], result["missing"]) == (63.33, 1)  # question 3 scores 0, as "no" did

    preds = write_submission("vqa", {"1": "yes"}, VQA_GOLD, tmp_path / "p.json")
    assert score_file("vqa", preds, manifest, allow_missing=True)["overall"] == 33.33


def test_repeated_and_unknown_ids_are_errors_naming_the_file(tmp_path):
    manifest = _manifest(tmp_path / "vqa.jsonl", VQA_GOLD)
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"question_id": q, "answer": "yes"} for q in (1, 2, 3, 2)]))
    with pytest.raises(VLError, match=r"p\.json: 1 prediction ids are repeated \('2'\)"):
        score_file("vqa", preds, manifest)
    preds.write_text(json.dumps([{"question_id": q, "answer": "yes"} for q in (1, 2, 3, 4)]))
    with pytest.raises(VLError, match=r"p\.json: 1 records name no vqa example of the 3 given \(record \[3\]: "
                                      r"question_id 4\)"):
        score_file("vqa", preds, manifest)


def test_splits_must_be_chosen_when_several(tmp_path):
    val_and_train = VQA_GOLD + [{**VQA_GOLD[0], "id": "9", "split": "train"}]
    manifest = _manifest(tmp_path / "vqa.jsonl", val_and_train)
    preds = write_submission("vqa", {"1": "yes", "2": "two", "3": "no"}, VQA_GOLD, tmp_path / "p.json")
    with pytest.raises(VLError, match=r"of 2 splits \(train, val\); name the one"):
        score_file("vqa", preds, manifest)
    assert score_file("vqa", preds, manifest, split="val")["overall"] == 63.33
    with pytest.raises(VLError, match="no vqa examples of split 'test'; its splits: train, val"):
        score_file("vqa", preds, manifest, split="test")
    with pytest.raises(VLError, match=r"no gqa examples \(its tasks: vqa\)"):
        score_file("gqa", preds, manifest)


def test_a_test_split_without_answers_cannot_be_scored(tmp_path):
    test = [{k: v for k, v in ex.items() if k != "answers"} | {"split": "test"} for ex in VQA_GOLD]
    manifest = _manifest(tmp_path / "vqa_test.jsonl", test, has_answers=False)
    preds = write_submission("vqa", {"1": "yes", "2": "two", "3": "no"}, test, tmp_path / "p.json")
    with pytest.raises(VLError, match="no score can be claimed without answers"):
        score_file("vqa", preds, manifest)
    tvqa = [_ex("1", "tvqa", question="?", choices=["a", "b"])]
    manifest = _manifest(tmp_path / "tvqa_test.jsonl", tvqa, has_answers=False)
    preds = write_submission("tvqa", {"1": 0}, tvqa, tmp_path / "p.json")
    with pytest.raises(VLError, match="have no gold 'answer_idx' .* no score can be claimed without answers"):
        score_file("tvqa", preds, manifest)
