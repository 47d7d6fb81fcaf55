"""Image-dataset converters (VQA v2, GQA, NLVR2, COCO captions): hand-written records in
each official format -> the exact manifest lines; every bad input -> one message naming
the file, the record and the field, and no manifest written. Plus the official VQA
answer normalisation and the LXMERT / VL-T5 soft scores."""
from __future__ import annotations

import json

import pytest

from vl.data_manifests.registry import ConvertRequest, convert_dataset
from vl.shared import DatasetManifest, VLError
from vl.shared.answers import normalize_vqa_answer, vqa_soft_scores
from vl.shared.manifest import meta_path_for


def write_json(path, doc):
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def convert_fails(name, req, out, *fragments):
    """Convert, expect a VLError holding every fragment, and check nothing was written."""
    with pytest.raises(VLError) as err:
        convert_dataset(name, req, out)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in:\n{err.value}"
    assert not out.exists() and not meta_path_for(out).exists()
    return str(err.value)


# ---------------------------------------------------------------- answer normalisation

@pytest.mark.parametrize("raw,normalised", [
    ("Two", "2"),
    ("the dog", "dog"),
    ("A Dog", "dog"),
    ("yes.", "yes"),
    ("dont", "don't"),
    ("Whats up", "what's up"),
    ("no!", "no"),
    ("hot-dog", "hot dog"),
    ("hot - dog", "hot dog"),        # a mark beside a space is removed, not spaced
    ("1,000", "1000"),               # a comma between digits removes every mark
    ("1,000-2", "10002"),
    ("red,blue", "red blue"),
    ("yes, it is", "yes it is"),
    ("3.5", "3.5"),                  # a period before a digit stays
    ("5.", "5"),
    (" ten\tfeet \n", "10 feet"),
    ("none", "0"),
    ("an apple", "apple"),
    ("it's", "it's"),                # the apostrophe is not punctuation here
    ("Im", "im"),                    # the table's capitalised keys never match lower-cased text
    ("somebody'd", "somebodyd"),     # an oddity of the official table, kept
])
def test_normalize_vqa_answer_follows_the_official_script(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_soft_scores_count_normalised_answers():
    answers = ["red", "Red", "red.", "dark red", "maroon", "the maroon", "pink", "pink", "Pink", "pink!"]
    assert vqa_soft_scores(answers) == {"red": 0.9, "dark red": 0.3, "maroon": 0.6, "pink": 1.0}
    assert vqa_soft_scores(["yes"] * 10) == {"yes": 1.0}
    assert vqa_soft_scores(["Two", "2", "two.", "3"]) == {"2": 0.9, "3": 0.3}


# ------------------------------------------------------------------------------ VQA v2

def vqa_questions(subtype="val2014", questions=None):
    return {"info": {"description": "VQA v2"}, "license": {"name": "CC"}, "data_subtype": subtype,
            "task_type": "Open-Ended", "data_type": "mscoco",
            "questions": questions if questions is not None else [
                {"image_id": 42, "question": "What color is the bus?", "question_id": 42000},
                {"image_id": 42, "question": "Is it raining?", "question_id": 42001},
                {"image_id": 393267, "question": "How many dogs?", "question_id": 393267000},
            ]}


def human(answers):
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers, start=1)]


BUS = ["red", "Red", "red.", "dark red", "maroon", "the maroon", "pink", "pink", "Pink", "pink!"]
RAIN = ["no"] * 9 + ["yes"]
DOGS = ["2", "two", "Two", "3", "2", "2", "2 dogs", "2", "2", "2"]


def vqa_annotations(subtype="val2014", annotations=None):
    return {"info": {}, "license": {}, "data_subtype": subtype, "annotations": annotations if annotations is not None else [
        {"question_id": 42000, "image_id": 42, "question_type": "what color is the", "answer_type": "other",
         "multiple_choice_answer": "pink", "answers": list(reversed(human(BUS)))},  # answer_id puts them in order
        {"question_id": 42001, "image_id": 42, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "no", "answers": human(RAIN)},
        {"question_id": 393267000, "image_id": 393267, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": human(DOGS)},
    ]}


VQA_EXPECTED = [
    {"id": "42000", "task": "vqa", "split": "val", "media": ["COCO_val2014_000000000042"],
     "question": "What color is the bus?", "answers": BUS,
     "labels": {"red": 0.9, "dark red": 0.3, "maroon": 0.6, "pink": 1.0},
     "answer_type": "other", "question_type": "what color is the", "multiple_choice_answer": "pink", "image_id": 42},
    {"id": "42001", "task": "vqa", "split": "val", "media": ["COCO_val2014_000000000042"],
     "question": "Is it raining?", "answers": RAIN, "labels": {"no": 1.0, "yes": 0.3},
     "answer_type": "yes/no", "question_type": "is it", "multiple_choice_answer": "no", "image_id": 42},
    {"id": "393267000", "task": "vqa", "split": "val", "media": ["COCO_val2014_000000393267"],
     "question": "How many dogs?", "answers": DOGS, "labels": {"2": 1.0, "3": 0.3, "2 dogs": 0.3},
     "answer_type": "number", "question_type": "how many", "multiple_choice_answer": "2", "image_id": 393267},
]


def test_vqa2_official_questions_and_annotations(tmp_path):
    q = write_json(tmp_path / "q.json", vqa_questions())
    a = write_json(tmp_path / "a.json", vqa_annotations())
    out = tmp_path / "vqa_val.jsonl"
    m = convert_dataset("vqa2", ConvertRequest(split="val", questions=q, annotations=a), out)
    assert lines(out) == VQA_EXPECTED
    assert m.meta.has_answers and m.meta.counts == {"vqa/val": 3}
    assert [s.path for s in m.meta.sources] == [str(q.resolve()), str(a.resolve())]
    assert DatasetManifest.read(out).examples == VQA_EXPECTED


def test_vqa2_test_split_has_no_answers(tmp_path):
    questions = [{"image_id": 1, "question": "Why?", "question_id": 1000}]
    q = write_json(tmp_path / "q.json", vqa_questions("test-dev2015", questions))
    out = tmp_path / "vqa_testdev.jsonl"
    m = convert_dataset("vqa2", ConvertRequest(split="testdev", questions=q), out)
    # test-dev questions show their images under the test2015 file names
    assert lines(out) == [{"id": "1000", "task": "vqa", "split": "testdev", "media": ["COCO_test2015_000000000001"],
                           "question": "Why?", "image_id": 1}]
    assert m.meta.has_answers is False
    assert json.loads(meta_path_for(out).read_text())["has_answers"] is False


def test_vqa2_lxmert_format_keeps_labels_without_answers(tmp_path):
    records = [
        {"answer_type": "yes/no", "img_id": "COCO_val2014_000000393267", "label": {"no": 1}, "question_id": 393267001,
         "question_type": "is the", "sent": "Is the dog asleep?"},
        {"img_id": "COCO_train2014_000000000009", "label": {"2": 0.6, "3": 0.3}, "question_id": 9000, "sent": "How many?"},
    ]
    q = write_json(tmp_path / "minival.json", records)
    out = tmp_path / "vqa_minival.jsonl"
    m = convert_dataset("vqa2", ConvertRequest(split="minival", questions=q), out)
    assert m.meta.has_answers  # the soft labels are the gold
    assert lines(out) == [
        {"id": "393267001", "task": "vqa", "split": "minival", "media": ["COCO_val2014_000000393267"],
         "question": "Is the dog asleep?", "labels": {"no": 1}, "answer_type": "yes/no", "question_type": "is the",
         "image_id": 393267},
        {"id": "9000", "task": "vqa", "split": "minival", "media": ["COCO_train2014_000000000009"],
         "question": "How many?", "labels": {"2": 0.6, "3": 0.3}, "image_id": 9},
    ]


@pytest.mark.parametrize("listing", [
    "42\n",                                   # one per line, int
    "\nCOCO_val2014_000000000042\n",          # a media id
    "[42]",                                   # a JSON list
    '["COCO_val2014_000000000042", "7"]',
])
def test_vqa2_image_ids_keep_only_listed_images(tmp_path, listing):
    q = write_json(tmp_path / "q.json", vqa_questions())
    a = write_json(tmp_path / "a.json", vqa_annotations())
    ids = tmp_path / "karpathy_ids.txt"
    ids.write_text(listing)
    out = tmp_path / "vqa.jsonl"
    m = convert_dataset("vqa2", ConvertRequest(split="val", questions=q, annotations=a, image_ids=ids), out)
    assert lines(out) == VQA_EXPECTED[:2]
    assert str(ids.resolve()) in [s.path for s in m.meta.sources]


def test_vqa2_image_ids_bad_entry(tmp_path):
    q = write_json(tmp_path / "q.json", vqa_questions())
    ids = tmp_path / "ids.txt"
    ids.write_text("42\nbus\n")
    convert_fails("vqa2", ConvertRequest(split="val", questions=q, image_ids=ids), tmp_path / "o.jsonl",
                  "ids.txt:2: 'bus' is not an image id")


def _question(qid, **kw):
    return {"image_id": 42, "question": "What?", "question_id": qid, **kw}


@pytest.mark.parametrize("questions,annotations,fragments", [
    ([{"image_id": 42, "question_id": 1}], None, ["q.json: questions[0] (question_id 1): missing required field 'question'"]),
    ([_question(1, image_id="42")], None, ["q.json: questions[0] (question_id 1): field 'image_id' must be int"]),
    ([_question(1), _question(1)], None, ["q.json: questions[1] (question_id 1): duplicate id '1' (first at",
                                          "questions[0]"]),
    ([_question(1)], [{"question_id": 1, "image_id": 42, "question_type": "what", "answer_type": "other",
                       "multiple_choice_answer": "x", "answers": human(["x"] * 9)}],
     ["a.json: annotations[0] (question_id 1): field 'answers' must hold exactly 10 human answers (got 9)"]),
    ([_question(1)], [{"question_id": 1, "image_id": 42, "question_type": "what", "answer_type": "other",
                       "multiple_choice_answer": "x", "answers": human(["x"] * 10)},
                      {"question_id": 2, "image_id": 42, "question_type": "what", "answer_type": "other",
                       "multiple_choice_answer": "x", "answers": human(["x"] * 10)}],
     ["a.json: annotations[1] (question_id 2): field 'question_id' 2 is not in the questions file", "q.json"]),
    ([_question(1), _question(2)], [{"question_id": 1, "image_id": 42, "question_type": "what", "answer_type": "other",
                                     "multiple_choice_answer": "x", "answers": human(["x"] * 10)}],
     ["q.json: questions[1] (question_id 2): no annotation in", "a.json", "'question_id'"]),
    ([_question(1)], [{"question_id": 1, "image_id": 42, "question_type": "what", "answer_type": "other",
                       "answers": human(["x"] * 10)}],
     ["a.json: annotations[0] (question_id 1): missing required field 'multiple_choice_answer'"]),
    ([_question(1)], [{"question_id": 1, "image_id": 42, "question_type": "what", "answer_type": "other",
                       "multiple_choice_answer": "x", "answers": human(["x"] * 9) + [{"answer": "x", "answer_id": 1}]}],
     ["a.json: annotations[0] (question_id 1): field 'answer_id' of the answers must be 1..10"]),
    ([_question(1)], [{"question_id": 1, "image_id": 7, "question_type": "what", "answer_type": "other",
                       "multiple_choice_answer": "x", "answers": human(["x"] * 10)}],
     ["a.json: annotations[0] (question_id 1): field 'image_id' is 7 but the question in"]),
])
def test_vqa2_bad_records(tmp_path, questions, annotations, fragments):
    q = write_json(tmp_path / "q.json", vqa_questions(questions=questions))
    a = write_json(tmp_path / "a.json", vqa_annotations(annotations=annotations)) if annotations else None
    convert_fails("vqa2", ConvertRequest(split="val", questions=q, annotations=a), tmp_path / "out.jsonl", *fragments)


def test_vqa2_bad_files(tmp_path):
    out = tmp_path / "out.jsonl"
    q = tmp_path / "q.json"
    q.write_text('{"data_subtype": "val2014",\n "questions": [\n  {"image_id": 1,, }\n]}')
    convert_fails("vqa2", ConvertRequest(split="val", questions=q), out, "q.json:3: byte 61: questions[0]: not valid JSON")
    write_json(q, vqa_questions())
    other = write_json(tmp_path / "a.json", vqa_annotations(subtype="train2014"))
    convert_fails("vqa2", ConvertRequest(split="val", questions=q, annotations=other), out,
                  "a.json: annotations of 'train2014' do not belong to the questions of 'val2014'")
    write_json(q, {"questions": []})
    convert_fails("vqa2", ConvertRequest(split="val", questions=q), out, "q.json: missing required field 'data_subtype'")
    lxmert = write_json(tmp_path / "lx.json", [{"img_id": "COCO_val2014_000000000001", "question_id": 1, "sent": "?"}])
    convert_fails("vqa2", ConvertRequest(split="val", questions=lxmert, annotations=other), out,
                  "lx.json: is a JSON list, the LXMERT/VL-T5 format", "drop --annotations")


@pytest.mark.parametrize("record,fragment", [
    ({"img_id": "COCO_val2014_000000000001", "question_id": 1}, "lx.json: [1] (question_id 1): missing required field 'sent'"),
    ({"img_id": "393267", "question_id": 1, "sent": "?"}, "lx.json: [1] (question_id 1): field 'img_id' must look like"),
    ({"img_id": "COCO_val2014_000000000001", "question_id": 1, "sent": "?", "label": ["no"]},
     "lx.json: [1] (question_id 1): field 'label' must be an object of answer: score"),
    ({"img_id": "COCO_val2014_000000000001", "question_id": 7, "sent": "?"}, "lx.json: [1] (question_id 7): duplicate id '7'"),
])
def test_vqa2_lxmert_bad_records(tmp_path, record, fragment):
    good = {"img_id": "COCO_val2014_000000000001", "question_id": 7, "sent": "?", "label": {"no": 1}}
    q = write_json(tmp_path / "lx.json", [good, record])
    convert_fails("vqa2", ConvertRequest(split="val", questions=q), tmp_path / "out.jsonl", fragment)


# --------------------------------------------------------------------------------- GQA

GQA = {
    "201307251": {"semantic": [], "entailed": ["201307252"], "equivalent": ["201307251"], "question": "Is the man on the left?",
                  "imageId": "n352985", "isBalanced": True, "groups": {"global": None, "local": "10c-man"},
                  "answer": "no", "semanticStr": "select: man ...", "annotations": {"answer": {}, "question": {}},
                  "types": {"detailed": "positionVerify", "semantic": "rel", "structural": "verify"},
                  "fullAnswer": "No, the man is on the right."},
    "05515938": {"question": "What color is the car?", "imageId": "2354786", "answer": "white",
                 "fullAnswer": "The car is white.",
                 "types": {"detailed": "colorObj", "semantic": "attr", "structural": "query"}},
}


def test_gqa_balanced_questions(tmp_path):
    f = write_json(tmp_path / "testdev_balanced_questions.json", GQA)
    out = tmp_path / "gqa.jsonl"
    m = convert_dataset("gqa", ConvertRequest(split="testdev", questions=f), out)
    assert lines(out) == [
        {"id": "201307251", "task": "gqa", "split": "testdev", "media": ["n352985"], "question": "Is the man on the left?",
         "answers": ["no"], "full_answer": "No, the man is on the right.", "image_id": "n352985",
         "types": {"detailed": "positionVerify", "semantic": "rel", "structural": "verify"}},
        {"id": "05515938", "task": "gqa", "split": "testdev", "media": ["2354786"], "question": "What color is the car?",
         "answers": ["white"], "full_answer": "The car is white.", "image_id": "2354786",
         "types": {"detailed": "colorObj", "semantic": "attr", "structural": "query"}},
    ]
    assert m.meta.has_answers


def test_gqa_submission_file_without_answers(tmp_path):
    f = write_json(tmp_path / "submission_all_questions.json",
                   {"q1": {"imageId": "n1", "question": "Is it red?"}, "q2": {"imageId": "n2", "question": "What?"}})
    out = tmp_path / "gqa_test.jsonl"
    m = convert_dataset("gqa", ConvertRequest(split="test", annotations=f), out)
    assert lines(out) == [
        {"id": "q1", "task": "gqa", "split": "test", "media": ["n1"], "question": "Is it red?", "image_id": "n1"},
        {"id": "q2", "task": "gqa", "split": "test", "media": ["n2"], "question": "What?", "image_id": "n2"},
    ]
    assert m.meta.has_answers is False


@pytest.mark.parametrize("extra,fragment", [
    ({"q9": {"question": "Where?", "answer": "left", "fullAnswer": "Left."}},
     "g.json: question 'q9': missing required field 'imageId'"),
    ({"q9": {"imageId": 12, "question": "Where?", "answer": "left", "fullAnswer": "Left."}},
     "g.json: question 'q9': field 'imageId' must be str"),
    ({"q9": {"imageId": "n9", "question": "Where?", "answer": "left"}},
     "g.json: question 'q9': missing required field 'fullAnswer'"),
    ({"q9": {"imageId": "n9", "question": "Where?", "answer": "left", "fullAnswer": "Left.", "types": "query"}},
     "g.json: question 'q9': field 'types' must be an object"),
    ({"q9": {"imageId": "n9", "question": "Where?"}},
     "g.json: 1 of 3 questions have no field 'answer' (e.g. question 'q9')"),
    ({"q9": ["n9", "Where?"]}, "g.json: question 'q9': must be a JSON object"),
])
def test_gqa_bad_records(tmp_path, extra, fragment):
    f = write_json(tmp_path / "g.json", {**GQA, **extra})
    convert_fails("gqa", ConvertRequest(split="val", questions=f), tmp_path / "out.jsonl", fragment)


def test_gqa_not_a_questions_file(tmp_path):
    f = write_json(tmp_path / "g.json", [GQA["05515938"]])
    convert_fails("gqa", ConvertRequest(split="val", questions=f), tmp_path / "out.jsonl",
                  "g.json: must be a JSON object keyed by question id")


# ------------------------------------------------------------------------------- NLVR2

NLVR2_DEV = [
    {"validation": {"A": "True"}, "sentence": "One image shows exactly two brown acorns.", "left_url": "http://l",
     "writer": "103", "label": "False", "identifier": "dev-850-0-0", "extra_validations": {}, "synset": "n12267677",
     "query": "acorns", "right_url": "http://r"},
    {"sentence": "There are two dogs.", "label": "True", "identifier": "dev-850-0-1", "writer": "103"},
    {"sentence": "A dog is asleep.", "label": True, "identifier": "dev-12-3-2"},
]


def test_nlvr2_dev(tmp_path):
    f = write_lines(tmp_path / "dev.json", NLVR2_DEV)
    out = tmp_path / "nlvr2_dev.jsonl"
    convert_dataset("nlvr2", ConvertRequest(split="dev", annotations=f), out)
    assert lines(out) == [
        {"id": "dev-850-0-0", "task": "nlvr2", "split": "dev", "media": ["dev-850-0-img0", "dev-850-0-img1"],
         "sentence": "One image shows exactly two brown acorns.", "answers": ["false"]},
        {"id": "dev-850-0-1", "task": "nlvr2", "split": "dev", "media": ["dev-850-0-img0", "dev-850-0-img1"],
         "sentence": "There are two dogs.", "answers": ["true"]},
        {"id": "dev-12-3-2", "task": "nlvr2", "split": "dev", "media": ["dev-12-3-img0", "dev-12-3-img1"],
         "sentence": "A dog is asleep.", "answers": ["true"]},
    ]


def test_nlvr2_train_keeps_directory_and_unlabelled_test(tmp_path):
    f = write_lines(tmp_path / "train.json", [
        {"sentence": "Two dogs.", "label": "True", "identifier": "train-10171-0-0", "directory": 73}])
    out = tmp_path / "nlvr2_train.jsonl"
    convert_dataset("nlvr2", ConvertRequest(split="train", annotations=f), out)
    assert lines(out) == [{"id": "train-10171-0-0", "task": "nlvr2", "split": "train", "directory": 73,
                           "media": ["train-10171-0-img0", "train-10171-0-img1"], "sentence": "Two dogs.",
                           "answers": ["true"]}]
    f = write_lines(tmp_path / "test2.json", [{"sentence": "Two dogs.", "identifier": "test2-1-0-0"}])
    m = convert_dataset("nlvr2", ConvertRequest(split="test2", annotations=f), tmp_path / "t2.jsonl")
    assert "answers" not in m.examples[0] and m.meta.has_answers is False


@pytest.mark.parametrize("record,fragment", [
    ({"sentence": "x", "label": "Maybe", "identifier": "dev-1-0-1"},
     "n.json:4 (identifier 'dev-1-0-1'): field 'label' must be \"True\" or \"False\" (got 'Maybe')"),
    ({"sentence": "x", "label": "true", "identifier": "dev-1-0-1"}, "n.json:4 (identifier 'dev-1-0-1'): field 'label'"),
    ({"sentence": "x", "label": 1, "identifier": "dev-1-0-1"}, "n.json:4 (identifier 'dev-1-0-1'): field 'label'"),
    ({"label": "True", "identifier": "dev-1-0-1"}, "n.json:4 (identifier 'dev-1-0-1'): missing required field 'sentence'"),
    ({"sentence": "x", "label": "True"}, "n.json:4: missing required field 'identifier'"),
    ({"sentence": "x", "label": "True", "identifier": "dev"}, "n.json:4 (identifier 'dev'): field 'identifier' must end in -N"),
    ({"sentence": "x", "label": "True", "identifier": "dev-1-0-1", "directory": "7"},
     "n.json:4 (identifier 'dev-1-0-1'): field 'directory' must be int"),
    ({"sentence": "x", "label": "True", "identifier": "dev-850-0-1"},
     "n.json:4 (identifier 'dev-850-0-1'): duplicate id 'dev-850-0-1' (first at"),
    ({"sentence": "x", "identifier": "dev-1-0-1"}, "n.json:4 (identifier 'dev-1-0-1'): missing field 'label'"),
    ("{\"sentence\": ", "n.json:4: not valid JSON"),
])
def test_nlvr2_bad_records(tmp_path, record, fragment):
    f = write_lines(tmp_path / "n.json", [*NLVR2_DEV, record])
    convert_fails("nlvr2", ConvertRequest(split="dev", annotations=f), tmp_path / "out.jsonl", fragment)


# ------------------------------------------------------------------------ COCO captions

def coco_image(cocoid, split, sentences, subset="val2014", first_sentid=0):
    return {"filepath": subset, "filename": f"COCO_{subset}_{cocoid:012d}.jpg", "imgid": cocoid % 1000, "split": split,
            "sentids": list(range(first_sentid, first_sentid + len(sentences))), "cocoid": cocoid,
            "sentences": [{"tokens": s.lower().split(), "raw": s, "imgid": cocoid % 1000, "sentid": first_sentid + i}
                          for i, s in enumerate(sentences)]}


KARPATHY = {"dataset": "coco", "images": [
    coco_image(391895, "test", ["A man with a red helmet on a small moped. ", "Man riding a motor bike."], first_sentid=770337),
    coco_image(522418, "train", ["A woman wearing a net on her head cutting a cake."], first_sentid=681330),
    coco_image(184613, "restval", ["A child holding a flowered umbrella."], subset="train2014", first_sentid=1),
    coco_image(318219, "val", ["A young boy standing in front of a computer keyboard."], first_sentid=5),
]}


def test_coco_caption_test_split(tmp_path):
    k = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    out = tmp_path / "coco_test.jsonl"
    m = convert_dataset("coco-caption", ConvertRequest(split="test", karpathy=k), out)
    assert lines(out) == [{"id": "391895", "task": "caption", "split": "test", "media": ["COCO_val2014_000000391895"],
                           "targets": ["A man with a red helmet on a small moped.", "Man riding a motor bike."],
                           "image_id": 391895, "sent_ids": [770337, 770338]}]
    assert m.meta.has_answers  # the references are the gold


def test_coco_caption_restval_into_train(tmp_path):
    k = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    train = convert_dataset("coco-caption", ConvertRequest(split="train", karpathy=k), tmp_path / "a.jsonl")
    assert [ex["id"] for ex in train.examples] == ["522418"]
    out = tmp_path / "coco_train.jsonl"
    both = convert_dataset("coco-caption", ConvertRequest(split="train", karpathy=k, restval_into_train=True), out)
    assert lines(out) == [
        {"id": "522418", "task": "caption", "split": "train", "media": ["COCO_val2014_000000522418"],
         "targets": ["A woman wearing a net on her head cutting a cake."], "image_id": 522418, "sent_ids": [681330]},
        {"id": "184613", "task": "caption", "split": "train", "media": ["COCO_train2014_000000184613"],
         "targets": ["A child holding a flowered umbrella."], "image_id": 184613, "sent_ids": [1]},
    ]
    assert both.meta.extra["restval_into_train"] is True
    restval = convert_dataset("coco-caption", ConvertRequest(split="restval", karpathy=k), tmp_path / "r.jsonl")
    assert [ex["id"] for ex in restval.examples] == ["184613"]


def test_coco_caption_bad_requests(tmp_path):
    k = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    out = tmp_path / "out.jsonl"
    convert_fails("coco-caption", ConvertRequest(split="testing", karpathy=k), out,
                  "dataset_coco.json: no images of split 'testing'; the splits present are: restval, test, train, val")
    convert_fails("coco-caption", ConvertRequest(split="val", karpathy=k, restval_into_train=True), out,
                  "--restval-into-train adds the restval images to --split train, not to 'val'")
    convert_fails("coco-caption", ConvertRequest(split="val", questions=k), out, "coco-caption needs --karpathy")


@pytest.mark.parametrize("change,fragment", [
    (lambda img: img.pop("cocoid"), "k.json: images[1]: missing required field 'cocoid'"),
    (lambda img: img.update(sentences=[]), "k.json: images[1] (cocoid 522418): field 'sentences' is empty"),
    (lambda img: img["sentences"][0].pop("raw"), "k.json: images[1] (cocoid 522418) sentences[0]: missing required field 'raw'"),
    (lambda img: img["sentences"][0].update(raw="  "), "k.json: images[1] (cocoid 522418) sentences[0]: field 'raw' is empty"),
    (lambda img: img.update(cocoid=391895), "k.json: images[1] (cocoid 391895): duplicate id '391895'"),
    (lambda img: img.update(split=None), "k.json: images[1] (cocoid 522418): field 'split' must be str"),
])
def test_coco_caption_bad_records(tmp_path, change, fragment):
    doc = json.loads(json.dumps(KARPATHY))
    change(doc["images"][1])
    k = write_json(tmp_path / "k.json", doc)
    convert_fails("coco-caption", ConvertRequest(split="val", karpathy=k), tmp_path / "out.jsonl", fragment)
