"""The paper's data recipe in `vl data convert` (issue #13 item 7): VQA v2 on Karpathy's
splits from the train2014 + val2014 files, training labels limited to the answer
vocabulary (computed with the min-count rule, or read from a file), GQA train + val in one
manifest; each on small hand-written files with hand-computed results, every bad
combination one message, and the Karpathy path end to end on the demo world."""
from __future__ import annotations

import hashlib
import json

import pytest

from test_convert_images import convert_fails, human, lines, vqa_annotations, vqa_questions, write_json
from vl.data_manifests.registry import ConvertRequest, convert_dataset
from vl.shared import DatasetManifest
from vl.shared.answers import vqa_answer_vocabulary

# ------------------------------------------------------------------ hand-made VQA v2 world
# Karpathy: images 1, 2, 6 train; 3 restval (a val2014 image, as in the real split); 4 val; 5 test.
# Image 6 has no questions. multiple_choice_answers, normalised: red x3 (1000 "Red", 2000, 4000 "Red."),
# 2 x2 (1001 "two", 3000 "2"), pink x1 (5000).
TRAIN_QUESTIONS = [{"image_id": 1, "question": "What color?", "question_id": 1000},
                   {"image_id": 1, "question": "How many?", "question_id": 1001},
                   {"image_id": 2, "question": "What color is it?", "question_id": 2000}]
TRAIN_ANNOTATIONS = [
    {"question_id": 1000, "image_id": 1, "question_type": "what color", "answer_type": "other",
     "multiple_choice_answer": "Red", "answers": human(["red"] * 6 + ["blue"] * 4)},
    {"question_id": 1001, "image_id": 1, "question_type": "how many", "answer_type": "number",
     "multiple_choice_answer": "two", "answers": human(["2"] * 3 + ["3"] * 7)},
    {"question_id": 2000, "image_id": 2, "question_type": "what color", "answer_type": "other",
     "multiple_choice_answer": "red", "answers": human(["red"] * 10)},
]
VAL_QUESTIONS = [{"image_id": 3, "question": "How many dogs?", "question_id": 3000},
                 {"image_id": 4, "question": "What color is the car?", "question_id": 4000},
                 {"image_id": 5, "question": "What color is the cake?", "question_id": 5000}]
VAL_ANNOTATIONS = [
    {"question_id": 3000, "image_id": 3, "question_type": "how many", "answer_type": "number",
     "multiple_choice_answer": "2", "answers": human(["two"] * 10)},
    {"question_id": 4000, "image_id": 4, "question_type": "what color", "answer_type": "other",
     "multiple_choice_answer": "Red.", "answers": human(["red"] * 5 + ["pink"] * 5)},
    {"question_id": 5000, "image_id": 5, "question_type": "what color", "answer_type": "other",
     "multiple_choice_answer": "pink", "answers": human(["pink"] * 10)},
]
KARPATHY_SPLITS = {1: ("train2014", "train"), 2: ("train2014", "train"), 6: ("train2014", "train"),
                   3: ("val2014", "restval"), 4: ("val2014", "val"), 5: ("val2014", "test")}


@pytest.fixture
def vqa_files(tmp_path):
    karpathy = {"dataset": "coco", "images": [
        {"filepath": sub, "filename": f"COCO_{sub}_{cocoid:012d}.jpg", "cocoid": cocoid, "split": split,
         "imgid": i, "sentids": [i], "sentences": [{"raw": "A picture.", "tokens": ["a", "picture"], "sentid": i}]}
        for i, (cocoid, (sub, split)) in enumerate(KARPATHY_SPLITS.items())]}
    return {
        "train_q": write_json(tmp_path / "train_q.json", vqa_questions("train2014", TRAIN_QUESTIONS)),
        "train_a": write_json(tmp_path / "train_a.json", vqa_annotations("train2014", TRAIN_ANNOTATIONS)),
        "val_q": write_json(tmp_path / "val_q.json", vqa_questions("val2014", VAL_QUESTIONS)),
        "val_a": write_json(tmp_path / "val_a.json", vqa_annotations("val2014", VAL_ANNOTATIONS)),
        "karpathy": write_json(tmp_path / "dataset_coco.json", karpathy),
    }


def karpathy_request(f, karpathy_split, **kw) -> ConvertRequest:
    return ConvertRequest(split=karpathy_split, questions=[f["train_q"], f["val_q"]],
                          annotations=[f["train_a"], f["val_a"]], karpathy=f["karpathy"],
                          karpathy_split=karpathy_split, **kw)


def sha256_of_list(answers: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(answers), separators=(",", ":")).encode()).hexdigest()


def test_answer_vocabulary_counts_normalised_answers_per_question():
    answers = ["Red", "red", "Red.", "two", "2", "Two", "pink", "the pink", "blue"]
    assert vqa_answer_vocabulary(answers, min_count=3) == ["2", "red"]  # "two", "Two" -> "2"; "Red." -> "red"
    assert vqa_answer_vocabulary(answers, min_count=2) == ["2", "pink", "red"]
    assert vqa_answer_vocabulary(answers, min_count=4) == []
    assert vqa_answer_vocabulary(["yes"] * 9 + ["no"] * 8) == ["yes"]  # the paper's rule: at least 9


def test_karpathy_splits_take_questions_from_both_files(vqa_files, tmp_path):
    f = vqa_files
    ids = {}
    for split in ("train", "val", "test"):
        out = tmp_path / f"vqa_karpathy_{split}.jsonl"
        m = convert_dataset("vqa2", karpathy_request(f, split), out)
        ids[split] = [ex["id"] for ex in lines(out)]
        assert {ex["split"] for ex in m.examples} == {split}
        assert [s.path for s in m.meta.sources] == [str(p.resolve()) for p in
                                                     (f["train_q"], f["val_q"], f["train_a"], f["val_a"], f["karpathy"])]
        assert m.meta.extra["questions_per_file"] == {str(f["train_q"].resolve()): 3, str(f["val_q"].resolve()): 3}
    # train = Karpathy's train + restval images: 1, 2 (train2014) and 3 (val2014)
    assert ids == {"train": ["1000", "1001", "2000", "3000"], "val": ["4000"], "test": ["5000"]}
    train = DatasetManifest.read(tmp_path / "vqa_karpathy_train.jsonl")
    assert [ex["media"] for ex in train.examples][-1] == ["COCO_val2014_000000000003"]
    assert train.meta.extra["karpathy"] == {"split": "train", "images": 4, "images_with_questions": 3,
                                            "images_per_subtype": {"train2014": 3, "val2014": 1}}
    # without a vocabulary the labels are every human answer's soft score, as before
    assert train.examples[0]["labels"] == {"red": 1.0, "blue": 1.0}


def test_answer_min_count_counts_every_question_read_before_the_karpathy_filter(vqa_files, tmp_path):
    out = tmp_path / "train.jsonl"
    m = convert_dataset("vqa2", karpathy_request(vqa_files, "train", answer_min_count=3), out)
    # "red" answers 3 questions only with 4000 (a Karpathy val question) counted; "2" answers 2
    got = {ex["id"]: (ex["labels"], ex["answers"]) for ex in lines(out)}
    assert {qid: labels for qid, (labels, _) in got.items()} == {
        "1000": {"red": 1.0}, "1001": {}, "2000": {"red": 1.0}, "3000": {}}
    assert got["1000"][1] == ["red"] * 6 + ["blue"] * 4  # the ten answers stay whole for the official accuracy
    vocab = m.meta.extra["answer_vocabulary"]
    assert vocab == {"rule": "min_count", "min_count": 3, "questions_counted": 6,
                     "counted_in": [str(vqa_files["train_a"].resolve()), str(vqa_files["val_a"].resolve())],
                     "size": 1, "sha256": sha256_of_list(["red"]), "questions_without_label": 2}
    two = convert_dataset("vqa2", karpathy_request(vqa_files, "train", answer_min_count=2), tmp_path / "two.jsonl")
    assert [ex["labels"] for ex in two.examples] == [{"red": 1.0}, {"2": 0.9}, {"red": 1.0}, {"2": 1.0}]
    assert two.meta.extra["answer_vocabulary"]["sha256"] == sha256_of_list(["2", "red"])


def test_vqa_training_skips_questions_without_a_vocabulary_answer(vqa_files, tmp_path):
    from vl.train.tasks import get_task

    m = convert_dataset("vqa2", karpathy_request(vqa_files, "train", answer_min_count=3), tmp_path / "t.jsonl")
    items = get_task("vqa").expand(DatasetManifest.read(m.path).examples)
    assert [(item.example_id, item.targets) for item in items] == [("1000", [("red", 1.0)]), ("2000", [("red", 1.0)])]


@pytest.mark.parametrize("vocab,entries", [
    ({"Red": 0, "2": 1, "cat": 2}, 3),          # LXMERT's trainval_ans2label.json; "Red" is normalised
    (["red", "two", "cat"], 3),                 # trainval_label2ans.json; "two" -> "2"
])
def test_answer_vocabulary_from_a_file(vqa_files, tmp_path, vocab, entries):
    path = write_json(tmp_path / "vocab.json", vocab)
    m = convert_dataset("vqa2", karpathy_request(vqa_files, "train", answer_vocab=path), tmp_path / "t.jsonl")
    assert [ex["labels"] for ex in m.examples] == [{"red": 1.0}, {"2": 0.9}, {"red": 1.0}, {"2": 1.0}]
    assert m.meta.extra["answer_vocabulary"] == {
        "rule": "file", "file": str(path.resolve()), "file_entries": entries, "size": 3,
        "sha256": sha256_of_list(["2", "cat", "red"]), "questions_without_label": 0}
    assert str(path.resolve()) in [s.path for s in m.meta.sources]


def test_lxmert_files_merge_and_take_a_vocabulary_file(tmp_path):
    a = write_json(tmp_path / "a.json", [{"img_id": "COCO_train2014_000000000001", "question_id": 1, "sent": "?",
                                          "label": {"red": 1, "maroon": 0.3}}])
    b = write_json(tmp_path / "b.json", [{"img_id": "COCO_val2014_000000000003", "question_id": 3, "sent": "?",
                                          "label": {"cat": 0.6}}])
    vocab = write_json(tmp_path / "vocab.json", ["red", "cat"])
    m = convert_dataset("vqa2", ConvertRequest(split="train", questions=[a, b], answer_vocab=vocab), tmp_path / "o.jsonl")
    assert [(ex["id"], ex["image_id"], ex["labels"]) for ex in m.examples] == [("1", 1, {"red": 1}), ("3", 3, {"cat": 0.6})]


def test_bad_combinations_are_named(vqa_files, tmp_path):
    f, out = vqa_files, tmp_path / "out.jsonl"
    two_q = dict(split="train", questions=[f["train_q"], f["val_q"]])
    cases = [
        (ConvertRequest(**two_q, annotations=[f["train_a"]]),
         ["give one --annotations per --questions, in the same order (got 2 --questions, 1 --annotations)"]),
        (ConvertRequest(**two_q, annotations=[f["val_a"], f["train_a"]]),
         ["val_a.json: annotations of 'val2014' do not belong to the questions of 'train2014'",
          "each --annotations after its --questions"]),
        (ConvertRequest(**two_q, karpathy=f["karpathy"]), ["vqa2 --karpathy needs --karpathy-split train|val|test"]),
        (ConvertRequest(**two_q, karpathy_split="train"), ["--karpathy-split needs --karpathy dataset_coco.json"]),
        (ConvertRequest(**two_q, karpathy=f["karpathy"], karpathy_split="val", image_ids=f["train_q"]),
         ["give --karpathy (with --karpathy-split) or --image-ids, not both"]),
        (ConvertRequest(**two_q, answer_min_count=9), ["--answer-min-count counts the multiple_choice_answer of the "
                                                       "official annotations: give --annotations"]),
        (ConvertRequest(**two_q, answer_min_count=0, annotations=[f["train_a"], f["val_a"]]),
         ["--answer-min-count must be >= 1 (got 0)"]),
        (ConvertRequest(**two_q, answer_min_count=9, answer_vocab=f["karpathy"], annotations=[f["train_a"], f["val_a"]]),
         ["give --answer-min-count N or --answer-vocab FILE, not both"]),
        (ConvertRequest(split="train", questions=[f["train_q"], f["train_q"]]),
         ["train_q.json: given twice as --questions; give each file once"]),
        (ConvertRequest(split="train", questions=[f["train_q"], write_json(tmp_path / "copy.json", json.loads(
            f["train_q"].read_text()))]),
         ["copy.json: questions[0] (question_id 1000): duplicate id '1000' (first at", "train_q.json: questions[0]",
          "give each file once"]),
        # the Karpathy train split's restval images are val2014 images: the train2014 files alone miss them
        (ConvertRequest(split="train", questions=[f["train_q"]], annotations=[f["train_a"]], karpathy=f["karpathy"],
                        karpathy_split="train"),
         ["dataset_coco.json: Karpathy split 'train' holds 1 val2014 images, but no --questions file has questions on "
          "val2014 images: add --questions v2_OpenEnded_mscoco_val2014_questions.json --annotations "
          "v2_mscoco_val2014_annotations.json"]),
    ]
    for req, fragments in cases:
        convert_fails("vqa2", req, out, *fragments)


@pytest.mark.parametrize("vocab,fragment", [
    ({"red": 0, "blue": 0}, "vocab.json: two answers share an index"),
    ({"red": "0"}, "vocab.json: answer 'red': index must be int"),
    (["red", 3], "vocab.json: [1] must be an answer string"),
    (["red", "red"], "vocab.json: [1]: duplicate id 'red'"),
    ([], "vocab.json: holds no answers"),
    ("red", "vocab.json: must be a JSON list of answers or an object {answer: index}"),
])
def test_bad_vocabulary_files(vqa_files, tmp_path, vocab, fragment):
    path = write_json(tmp_path / "vocab.json", vocab)
    req = ConvertRequest(split="val", questions=[vqa_files["val_q"]], annotations=[vqa_files["val_a"]], answer_vocab=path)
    convert_fails("vqa2", req, tmp_path / "out.jsonl", fragment)


def test_options_a_dataset_does_not_read_and_repeated_single_files(vqa_files, tmp_path):
    out = tmp_path / "out.jsonl"
    convert_fails("gqa", ConvertRequest(split="train", questions=[vqa_files["val_q"]], karpathy_split="train",
                                        answer_min_count=9), out,
                  "gqa does not read --karpathy-split: drop it", "gqa does not read --answer-min-count: drop it")
    nlvr = write_json(tmp_path / "dev.json", [])
    convert_fails("nlvr2", ConvertRequest(split="dev", annotations=[nlvr, nlvr]), out,
                  "nlvr2 reads one --annotations file (got 2)")
    convert_fails("coco-caption", ConvertRequest(split="train", karpathy=vqa_files["karpathy"],
                                                 image_ids=vqa_files["val_q"]), out,
                  "coco-caption does not read --image-ids")


# --------------------------------------------------------------------------------- GQA

def gqa_question(image, answer=None):
    q = {"imageId": image, "question": f"What is in {image}?"}
    return q | ({"answer": answer, "fullAnswer": f"It is {answer}."} if answer else {})


def test_gqa_train_and_val_merge_into_one_manifest(tmp_path):
    train = write_json(tmp_path / "train_balanced_questions.json", {"1": gqa_question("n1", "cat"),
                                                                    "2": gqa_question("n2", "dog")})
    val = write_json(tmp_path / "val_balanced_questions.json", {"9": gqa_question("n9", "yes")})
    out = tmp_path / "gqa_train.jsonl"
    m = convert_dataset("gqa", ConvertRequest(split="train", questions=[train, val]), out)
    assert [(ex["id"], ex["split"], ex["answers"]) for ex in lines(out)] == [
        ("1", "train", ["cat"]), ("2", "train", ["dog"]), ("9", "train", ["yes"])]
    assert m.meta.extra["questions_per_file"] == {str(train.resolve()): 2, str(val.resolve()): 1}
    assert [s.path for s in m.meta.sources] == [str(train.resolve()), str(val.resolve())]
    one = convert_dataset("gqa", ConvertRequest(split="train", questions=train), tmp_path / "one.jsonl")
    assert "questions_per_file" not in one.meta.extra


def test_gqa_merge_refuses_repeated_ids_and_test_files(tmp_path):
    train = write_json(tmp_path / "train.json", {"1": gqa_question("n1", "cat")})
    again = write_json(tmp_path / "again.json", {"1": gqa_question("n1", "cat")})
    test = write_json(tmp_path / "submission.json", {"7": gqa_question("n7")})
    out = tmp_path / "out.jsonl"
    convert_fails("gqa", ConvertRequest(split="train", questions=[train, again]), out,
                  "again.json: question '1': duplicate id '1' (first at", "train.json: question '1'")
    convert_fails("gqa", ConvertRequest(split="train", questions=[train, test]), out,
                  "submission.json: no answers (a test file), while the other files have them")


# ------------------------------------------------------------------- the demo world, end to end

def test_demo_world_karpathy_splits_through_the_cli(world, tmp_path):
    """The demo world's dataset_coco.json splits its VQA questions: the three Karpathy
    manifests are disjoint, cover every question, and each holds exactly the questions on
    its split's images."""
    from click.testing import CliRunner

    from vl.shared.cli import cli

    a = world / "annotations"
    karpathy = json.loads((a / "coco/dataset_coco.json").read_text())
    split_of = {img["cocoid"]: {"restval": "train"}.get(img["split"], img["split"]) for img in karpathy["images"]}
    questions = [q for sub in ("train2014", "val2014")
                 for q in json.loads((a / f"vqa2/v2_OpenEnded_mscoco_{sub}_questions.json").read_text())["questions"]]
    files = []
    for sub in ("train2014", "val2014"):
        files += ["--questions", a / f"vqa2/v2_OpenEnded_mscoco_{sub}_questions.json",
                  "--annotations", a / f"vqa2/v2_mscoco_{sub}_annotations.json"]
    got = {}
    for split in ("train", "val", "test"):
        out = tmp_path / f"vqa2_karpathy_{split}.jsonl"
        result = CliRunner().invoke(cli, [str(x) for x in [
            "data", "convert", "vqa2", "--split", split, *files, "--karpathy", a / "coco/dataset_coco.json",
            "--karpathy-split", split, "--answer-min-count", "9", "--images", world / "images", "--out", out]],
            prog_name="vl")
        assert result.exit_code == 0, result.output
        assert f"Karpathy {split} split: questions on" in result.output and "answer vocabulary:" in result.output
        got[split] = sorted(ex["id"] for ex in DatasetManifest.read(out).examples)
    expected = {split: sorted(str(q["question_id"]) for q in questions if split_of[q["image_id"]] == split)
                for split in ("train", "val", "test")}
    assert got == expected and all(got.values())
    assert sorted(sum(got.values(), [])) == sorted(str(q["question_id"]) for q in questions)
