"""The official metrics of VQA, GQA, NLVR2 and multiple choice: hand-computed cases for
every rule, the VQA accuracy against a slow line-by-line transcription of the official
script, and the input checks."""
from __future__ import annotations

import random

import pytest

from vl.evaluate.metrics import gqa, multiple_choice, nlvr2, vqa
from vl.evaluate.metrics.vqa import prepare_gold, question_accuracy, vqa_accuracy
from vl.evaluate.metrics.vqa_official import official_vqa
from vl.shared.answers import PUNCTUATION, normalize_vqa_answer
from vl.shared.errors import VLError

POOL = ["yes", "Yes", "yes.", " yes\n", "no", "no!", "2", "two", "Two", "the dog", "dog", "a dog", "hot-dog",
        "hot dog", "hot - dog", "1,000", "1000", "3.5", "35", "dont", "don't", "none", "0", "red,blue",
        "red blue", "", "a", "x-y -z", "xy z", "isnt", "Im", "im"]


def _random_questions(rng, n):
    questions, predictions = {}, {}
    for i in range(n):
        if rng.random() < 0.3:  # all ten the same: nothing is normalised
            answers = [rng.choice(POOL)] * 10
        else:
            answers = [rng.choice(POOL) for _ in range(10)]
        questions[str(i)] = {"answers": answers, "answer_type": rng.choice(["yes/no", "number", "other"]),
                             "question_type": rng.choice(["what is", "how many", "is the"])}
        predictions[str(i)] = rng.choice(POOL + answers)
    return questions, predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vqa_accuracy_equals_the_official_script_to_the_last_bit(seed):
    questions, predictions = _random_questions(random.Random(seed), 400)
    official = official_vqa(predictions, questions)
    ours = vqa_accuracy(predictions, {q: v["answers"] for q, v in questions.items()},
                        answer_types={q: v["answer_type"] for q, v in questions.items()},
                        question_types={q: v["question_type"] for q, v in questions.items()})
    assert ours["overall"] == official["overall"]
    assert ours["per_answer_type"] == official["per_answer_type"]
    assert ours["per_question_type"] == official["per_question_type"]
    for qid, q in questions.items():  # exact floats, not approximately
        assert question_accuracy(predictions[qid], prepare_gold(q["answers"])) == official["per_question"][qid]
    assert 0 < ours["overall"] < 100


def test_the_float_sum_depends_on_where_the_matches_sit_and_both_follow_the_script():
    # two matching answers first or last: 0.6 and 0.5999999999999999 in the official script
    first, last = ["b", "b"] + ["a"] * 8, ["a"] * 8 + ["b", "b"]
    assert question_accuracy("b", prepare_gold(first)) == 0.6
    assert {question_accuracy("b", prepare_gold(first)), question_accuracy("b", prepare_gold(last))} == {
        official_vqa({"q": "b"}, {"q": {"answers": a, "answer_type": "t", "question_type": "t"}})["per_question"]["q"]
        for a in (first, last)}


# ---------------------------------------------------------------- VQA by hand

def _score(prediction, answers, **kw):
    return vqa_accuracy({"q": prediction}, {"q": answers}, **kw)["overall"]


@pytest.mark.parametrize("matches,score", [(0, 0.0), (1, 30.0), (2, 60.0), (3, 90.0), (4, 100.0), (10, 100.0)])
def test_leave_one_out_mean_of_min_one_matches_over_three(matches, score):
    # m matches: (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert _score("cat", answers) == score


def test_official_example_eight_yes_two_no():  # GT-Vision-Lab/VQA#1
    answers = ["yes"] * 8 + ["no"] * 2
    assert _score("no", answers) == 60.0
    assert _score("yes", answers) == 100.0


def test_the_rounding_of_the_official_python2_script():
    assert vqa.official_round(62.125) == 62.13  # a tie goes away from zero
    assert round(62.125, 2) == 62.12  # where Python 3 goes to even
    assert vqa.official_round(2.675) == 2.67  # 2.675 is 2.67499999... as a float
    # one question right of 32: 100 * 1 / 32 = 3.125, a tie in binary too
    answers = {str(i): ["cat"] * 10 for i in range(32)}
    predictions = {str(i): "dog" for i in range(32)} | {"0": "cat"}
    assert vqa_accuracy(predictions, answers)["overall"] == 3.13
    questions = {q: {"answers": a, "answer_type": "t", "question_type": "t"} for q, a in answers.items()}
    assert official_vqa(predictions, questions)["overall"] == 3.13


def test_nothing_is_normalised_when_the_ten_answers_agree():
    assert _score("yes", ["yes"] * 10) == 100.0
    assert _score(" yes\n", ["yes"] * 10) == 100.0  # whitespace is always cleaned
    assert _score("yes\tsir", ["yes sir"] * 10) == 100.0
    assert _score("Yes", ["yes"] * 10) == 0.0  # no lower-casing
    assert _score("yes.", ["yes"] * 10) == 0.0  # no punctuation
    assert _score("dog", ["the dog"] * 10) == 0.0  # no articles
    assert _score("the dog", ["the dog"] * 10) == 100.0
    assert _score("two", ["2"] * 10) == 0.0  # no number words
    assert _score("yes", [" Yes", "Yes\n"] + ["Yes"] * 8) == 0.0  # all equal once whitespace is cleaned


def test_everything_is_normalised_when_the_answers_disagree():
    answers = ["yes"] * 9 + ["Yes!"]
    assert _score("Yes", answers) == 100.0
    assert _score("yes.", answers) == 100.0
    assert _score("the two", ["2"] * 9 + ["two"]) == 100.0


# Each row: a prediction and a human answer that are equal once both are normalised
# (the answers disagree, so both sides are); scored against four such answers.
SAME_AFTER_NORMALISING = [
    *[(f"x{p}y", "x y") for p in PUNCTUATION],  # a mark between letters becomes a space
    *[(f"x{p}y {p}z", "xy z") for p in PUNCTUATION],  # a mark beside a space anywhere: all removed
    ("x -y", "x y"), ("x- y", "x y"),
    ("1,000", "1000"),  # a comma between digits ...
    ("1,000-2", "10002"),  # ... removes every mark in the text
    ("yes.", "yes"), ("5.", "5"), ("a.b", "ab"),  # a period not before a digit goes
    ("Two", "2"), ("none", "0"), ("zero", "0"), ("one dog", "1 dog"), ("ten", "10"),  # number words
    ("a dog", "dog"), ("An apple", "apple"), ("the cat", "cat"), ("THE CAT", "cat"),  # articles
    ("dont", "don't"), ("isnt", "isn't"), ("whats", "what's"), ("somebody'd", "somebodyd"),  # contractions
    ("\tyes\n", "yes"), ("hot  dog", "hot dog"),  # whitespace
]
DIFFERENT_AFTER_NORMALISING = [
    ("3.5", "35"), ("x .5", "x 5"),  # a period before a digit stays
    ("red:blue", "red blue"), ("it's", "its"), ("eleven", "11"), ("Im", "i'm"),
    ("1,000", "1 000"), ("cats", "cat"), ("x-y", "xy"),
]


@pytest.mark.parametrize("prediction,answer", SAME_AFTER_NORMALISING)
def test_normalisation_makes_equal(prediction, answer):
    assert _score(prediction, [answer] * 4 + ["zzz"] * 6) == 100.0


@pytest.mark.parametrize("prediction,answer", DIFFERENT_AFTER_NORMALISING)
def test_normalisation_keeps_apart(prediction, answer):
    assert _score(prediction, [answer] * 4 + ["zzz"] * 6) == 0.0


def test_normalisation_quirks_of_the_official_script():
    assert normalize_vqa_answer("." * 40) == "." * 8  # `re.UNICODE` passed as the count: 32 periods at most
    assert normalize_vqa_answer("a-b c- d") == "ab c d"  # decided on the text as given, for the whole text
    assert normalize_vqa_answer("Im") == "im"  # capitalised keys of the table never match


def test_empty_and_odd_predictions_are_scored_never_crash():
    assert _score("", ["yes"] * 10) == 0.0
    assert _score("", ["yes"] * 9 + ["no"]) == 0.0
    assert _score("   ", ["yes"] * 9 + ["no"]) == 0.0
    # as in the official script, an empty prediction matches answers that normalise to nothing
    assert _score("", ["the"] * 4 + ["dog"] * 6) == 100.0


def test_vqa_breakdowns_per_answer_and_question_type():
    answers = {"1": ["yes"] * 10, "2": ["2"] * 10, "3": ["red"] * 2 + ["blue"] * 8}
    result = vqa_accuracy({"1": "yes", "2": "3", "3": "red"}, answers,
                          answer_types={"1": "yes/no", "2": "number", "3": "other"},
                          question_types={"1": "is the", "2": "how many", "3": "what color"})
    assert result == {"overall": 53.33, "count": 3, "missing": 0,
                      "per_answer_type": {"number": 0.0, "other": 60.0, "yes/no": 100.0},
                      "per_question_type": {"how many": 0.0, "is the": 100.0, "what color": 60.0}}
    assert "per_answer_type" not in vqa_accuracy({"1": "yes"}, {"1": ["yes"] * 10})


def test_prepared_golds_score_like_raw_answers():
    questions, predictions = _random_questions(random.Random(5), 50)
    raw = {q: v["answers"] for q, v in questions.items()}
    prepared = {q: prepare_gold(a) for q, a in raw.items()}
    assert vqa_accuracy(predictions, prepared) == vqa_accuracy(predictions, raw)


def test_vqa_score_examples_reads_the_manifest_fields():
    examples = [{"id": "1", "task": "vqa", "answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is"},
                {"id": "2", "task": "vqa", "answers": ["2"] * 10, "answer_type": "number", "question_type": "how"}]
    result = vqa.score_examples({"1": "yes", "2": "two"}, examples)
    assert result["overall"] == 50.0 and result["per_answer_type"] == {"number": 0.0, "yes/no": 100.0}
    lxmert = [{"id": "1", "task": "vqa", "labels": {"yes": 1.0}}]
    with pytest.raises(VLError, match="--annotations"):
        vqa.score_examples({"1": "yes"}, lxmert)


# ---------------------------------------------------------------- input checks (shared by every metric)

def test_missing_predictions_are_an_error_unless_allowed():
    answers = {str(i): ["yes"] * 10 for i in range(10)}
    with pytest.raises(VLError, match=r"7 of 10 references have no prediction \('3', '4', '5', \.\.\.\); .*allow_m"):
        vqa_accuracy({"0": "yes", "1": "yes", "2": "no"}, answers)
    result = vqa_accuracy({"0": "yes", "1": "yes", "2": "no"}, answers, allow_missing=True)
    assert result == {"overall": 20.0, "count": 10, "missing": 7}


def test_unknown_repeated_and_ill_typed_predictions_are_named_together():
    answers = {"1": ["yes"] * 10, "2": ["no"] * 10}
    with pytest.raises(VLError) as e:
        vqa_accuracy([("1", "yes"), ("1", "no"), ("9", "yes"), ("2", 3)], answers)
    text = str(e.value)
    assert "3 problems" in text and "repeated ('1')" in text and "not among the 2 references ('9')" in text
    assert "not strings ('2': 3)" in text
    with pytest.raises(VLError, match="ids are strings"):
        vqa_accuracy({1: "yes", 2: "no"}, answers)
    with pytest.raises(VLError, match=r"\(id, prediction\) pairs \(got an item like \{'question_id'"):
        vqa_accuracy([{"question_id": "1", "answer": "yes"}], answers)


def test_bad_references_are_errors():
    with pytest.raises(VLError, match="no VQA questions' answers"):
        vqa_accuracy({}, {})
    with pytest.raises(VLError, match="non-empty lists"):
        vqa_accuracy({"1": "yes"}, {"1": "yes"})
    with pytest.raises(VLError, match=r"answer_types has no entry for 1 references \('2'\)"):
        vqa_accuracy({"1": "yes", "2": "no"}, {"1": ["yes"], "2": ["no"]}, answer_types={"1": "yes/no"})


# ---------------------------------------------------------------- GQA

GQA_TYPES = {"1": {"structural": "query", "semantic": "attr", "detailed": "color"},
             "2": {"structural": "verify", "semantic": "obj", "detailed": "exist"},
             "3": {"structural": "query", "semantic": "rel", "detailed": "relS"},
             "4": {"structural": "logical", "semantic": "obj", "detailed": "logicOr"}}


def test_gqa_is_exact_match_without_normalisation():
    answers = {"1": "red", "2": "yes", "3": "table", "4": "no"}
    result = gqa.gqa_accuracy({"1": "red", "2": "Yes", "3": "the table", "4": "no"}, answers)
    assert result == {"overall": 50.0, "count": 4, "missing": 0}  # "Yes" and "the table" are wrong
    assert gqa.gqa_accuracy({"1": "", "2": "yes", "3": "table", "4": "no"}, answers)["overall"] == 75.0


def test_gqa_breakdowns_follow_the_official_types():
    answers = {"1": "red", "2": "yes", "3": "table", "4": "no"}
    result = gqa.gqa_accuracy({"1": "red", "2": "no", "3": "table", "4": "no"}, answers, types=GQA_TYPES)
    assert result["overall"] == 75.0
    assert result["per_answer_type"] == {"binary": 50.0, "open": 100.0}  # open = structural "query"
    assert result["per_structural_type"] == {"logical": 100.0, "query": 100.0, "verify": 0.0}
    assert result["per_semantic_type"] == {"attr": 100.0, "obj": 50.0, "rel": 100.0}


def test_gqa_score_examples_uses_types_only_when_every_example_has_them():
    examples = [{"id": q, "task": "gqa", "answers": [a], "types": GQA_TYPES[q]}
                for q, a in {"1": "red", "2": "yes", "3": "table", "4": "no"}.items()]
    preds = {"1": "red", "2": "yes", "3": "chair", "4": "no"}
    assert gqa.score_examples(preds, examples)["per_semantic_type"] == {"attr": 100.0, "obj": 100.0, "rel": 0.0}
    del examples[0]["types"]
    assert "per_semantic_type" not in gqa.score_examples(preds, examples)
    with pytest.raises(VLError, match="no field 'answers'.*official server"):
        gqa.score_examples({"1": "red"}, [{"id": "1", "task": "gqa"}])


# ---------------------------------------------------------------- NLVR2

def test_nlvr2_sentence_key_blanks_the_pair_id_as_the_official_script():
    assert nlvr2.sentence_key("dev-850-0-0") == "dev-850--0"
    assert nlvr2.sentence_key("dev-850-3-0") == nlvr2.sentence_key("dev-850-0-0")
    assert nlvr2.sentence_key("dev-850-0-1") != nlvr2.sentence_key("dev-850-0-0")


def test_nlvr2_accuracy_and_consistency():
    labels = {"dev-1-0-0": "True", "dev-1-1-0": "False", "dev-1-2-0": "True",  # sentence 0 of set 1: 3 pairs
              "dev-1-0-1": "False", "dev-1-1-1": "False",  # sentence 1 of set 1
              "dev-2-0-0": "True"}
    preds = {"dev-1-0-0": "true", "dev-1-1-0": "FALSE", "dev-1-2-0": "false",  # one wrong: inconsistent
             "dev-1-0-1": "false", "dev-1-1-1": "False", "dev-2-0-0": "True"}
    result = nlvr2.nlvr2_accuracy(preds, labels)
    assert result == {"overall": 83.33, "consistency": 66.67, "count": 6, "missing": 0, "sentences": 3}
    preds["dev-1-2-0"] = "true"
    assert nlvr2.nlvr2_accuracy(preds, labels)["consistency"] == 100.0
    preds["dev-2-0-0"] = ""
    assert nlvr2.nlvr2_accuracy(preds, labels)["consistency"] == 66.67


def test_nlvr2_missing_prediction_breaks_its_sentence_when_allowed():
    labels = {"dev-1-0-0": "true", "dev-1-1-0": "true"}
    result = nlvr2.nlvr2_accuracy({"dev-1-0-0": "true"}, labels, allow_missing=True)
    assert result == {"overall": 50.0, "consistency": 0.0, "count": 2, "missing": 1, "sentences": 1}


def test_nlvr2_rejects_identifiers_it_cannot_group():
    with pytest.raises(VLError, match="split-set-pair-sentence"):
        nlvr2.nlvr2_accuracy({"850-0": "true"}, {"850-0": "true"})


def test_nlvr2_score_examples_reads_the_manifest_answers():
    examples = [{"id": "dev-1-0-0", "task": "nlvr2", "answers": ["true"]},
                {"id": "dev-1-1-0", "task": "nlvr2", "answers": ["false"]}]
    assert nlvr2.score_examples({"dev-1-0-0": "true", "dev-1-1-0": "true"}, examples)["overall"] == 50.0


# ---------------------------------------------------------------- multiple choice

def test_multiple_choice_accuracy_per_group():
    answers = {"1": 0, "2": 3, "3": 4, "4": 1}
    groups = {"1": "friends", "2": "friends", "3": "bbt", "4": "bbt"}
    result = multiple_choice.multiple_choice_accuracy({"1": 0, "2": 3, "3": None, "4": 2}, answers, groups=groups)
    assert result == {"overall": 50.0, "count": 4, "missing": 0, "per_group": {"bbt": 0.0, "friends": 100.0}}
    assert "per_group" not in multiple_choice.multiple_choice_accuracy({"1": 0}, {"1": 0})


def test_multiple_choice_rejects_labels_and_booleans():
    with pytest.raises(VLError, match=r"not choice indices \(int\) or None \('1': 'a0'\)"):
        multiple_choice.multiple_choice_accuracy({"1": "a0"}, {"1": 0})
    with pytest.raises(VLError, match="not choice indices"):
        multiple_choice.multiple_choice_accuracy({"1": True}, {"1": 1})


def test_multiple_choice_score_examples_groups_by_show_when_every_example_has_one():
    examples = [{"id": "1", "task": "tvqa", "answer_idx": 2, "show_name": "Castle"},
                {"id": "2", "task": "tvqa", "answer_idx": 0, "show_name": "House"}]
    result = multiple_choice.score_examples({"1": 2, "2": 1}, examples)
    assert result["per_group"] == {"Castle": 100.0, "House": 0.0}
    how2qa = [{"id": "1", "task": "how2qa", "answer_idx": 3}]
    assert multiple_choice.score_examples({"1": 3}, how2qa) == {"overall": 100.0, "count": 1, "missing": 0}
    with pytest.raises(VLError, match="example ids are repeated"):
        multiple_choice.score_examples({"1": 3}, how2qa * 2)
