"""Caption metrics through pycocoevalcap: scores one can check by hand, the single
tokenizer run, the Java and SPICE checks. The tests that run Java take a few seconds
(METEOR loads its paraphrase table once)."""
from __future__ import annotations

import importlib.util
import shutil

import pytest

from vl.evaluate.metrics import captions
from vl.evaluate.metrics.captions import caption_scores
from vl.shared.errors import VLError

needs_java = pytest.mark.skipif(shutil.which("java") is None or importlib.util.find_spec("pycocoevalcap") is None,
                                reason="needs Java and pycocoevalcap")

# Two images with no word in common, so every n-gram has a non-zero CIDEr weight.
REFS = {"1": ["a man rides a brown horse"], "2": ["two dogs play in green grass"]}


@needs_java
def test_identical_captions_score_full_marks():
    result = caption_scores({"1": "a man rides a brown horse", "2": "two dogs play in green grass"}, REFS,
                            metrics=["bleu"])
    assert [result[k] for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4")] == [100.0] * 4
    assert result["cider"] == result["overall"] == 1000.0  # CIDEr-D: cosine 1 for n = 1..4, times 10
    assert "meteor" not in result and result["count"] == 2 and result["missing"] == 0


@needs_java
def test_bleu_1_by_hand_and_a_wrong_caption_scores_zero():
    refs = {"1": ["the cat sat down"], "2": ["two dogs play in green grass"]}
    result = caption_scores({"1": "the cat ran away", "2": "nothing alike here at all today"}, refs,
                            metrics=["bleu"])
    # corpus BLEU: 2 of the 10 predicted words match (the, cat); 10 reference words, so no brevity penalty
    assert result["bleu_1"] == 20.0
    assert result["bleu_4"] == 0.0
    assert caption_scores({"1": "nothing alike", "2": "at all here"}, refs, metrics=[])["cider"] == 0.0


@needs_java
def test_case_punctuation_and_line_breaks_are_tokenized_away():
    preds = {"1": "A man, rides a BROWN horse.", "2": "two dogs\rplay in\u2028green grass!"}
    result = caption_scores(preds, REFS, metrics=["bleu"])
    assert result["bleu_4"] == 100.0  # a line break inside a caption shifts no other caption


@needs_java
def test_tokenizer_matches_pycocoevalcaps_own():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    sentences = ["A man's hat, on a table.", "Two   dogs -- playing!", "Don't stop (now)", "café au lait"]
    theirs = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    assert captions.ptb_tokenize(sentences) == [theirs[i][0] for i in range(len(sentences))]
    assert captions.ptb_tokenize(["", "  ", "...", "ok"]) == ["", "", "", "ok"]


@needs_java
def test_every_metric_with_empty_and_missing_predictions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(captions, "spice_missing_files", lambda: ["spice/lib/stanford-corenlp-3.6.0.jar"])
    refs = {**REFS, "3": ["a red car on the street", "the car is red"]}
    result = caption_scores({"1": "a man rides a brown horse", "2": ""}, refs, allow_missing=True)
    assert result["count"] == 3 and result["missing"] == 1
    assert set(result) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "overall",
                           "count", "missing", "notes"}
    assert result["rouge_l"] == pytest.approx(100 / 3, abs=0.01)  # 1, 0, 0 per image
    assert 0 < result["meteor"] < 100 and 0 < result["cider"] < 1000
    assert "spice" not in result and result["notes"][0].startswith("SPICE skipped")
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_java_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(VLError, match="apt-get install default-jre-headless"):
        caption_scores({"1": "a dog"}, {"1": ["a dog"]})


@needs_java
def test_asking_for_spice_without_its_models_is_an_error(monkeypatch):
    monkeypatch.setattr(captions, "spice_missing_files", lambda: ["spice/lib/stanford-corenlp-3.6.0.jar"])
    with pytest.raises(VLError, match="get_stanford_models"):
        caption_scores({"1": "a dog"}, {"1": ["a dog"]}, metrics=["spice"])


def test_unknown_metric_and_bad_inputs_are_errors():
    with pytest.raises(VLError, match="unknown caption metric 'bleu4'; choose from: bleu, meteor"):
        caption_scores({"1": "a dog"}, {"1": ["a dog"]}, metrics=["bleu4"])


@needs_java
def test_references_and_predictions_are_checked_before_java_runs():
    with pytest.raises(VLError, match="non-empty lists of non-blank captions"):
        caption_scores({"1": "a dog"}, {"1": []})
    with pytest.raises(VLError, match=r"1 of 2 references have no prediction \('2'\)"):
        caption_scores({"1": "a dog"}, {"1": ["a dog"], "2": ["a cat"]})


@needs_java
def test_score_examples_reads_every_target():
    examples = [{"id": "v1", "task": "tvc", "targets": ["a man rides a brown horse", "someone on a horse"]},
                {"id": "v2", "task": "tvc", "targets": ["two dogs play in green grass"]}]
    result = captions.score_examples({"v1": "a man rides a brown horse", "v2": "two dogs play in green grass"},
                                     examples, metrics=["bleu"])
    assert result["bleu_4"] == 100.0 and result["count"] == 2


@needs_java
def test_scores_equal_pycocoevalcaps_own_pipeline_on_a_small_set(tmp_path, monkeypatch):
    """Five images, several references each, imperfect predictions: every metric equals what
    pycocoevalcap computes itself (its PTBTokenizer, Bleu, Meteor, Rouge, Cider), times 100."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {"1": ["A man rides a brown horse.", "a person riding a horse on a field", "man on horseback"],
            "2": ["Two dogs play in the green grass", "two dogs running on a lawn"],
            "3": ["a red bus parked on the street", "A bus on a city street.", "the red bus is parked"],
            "4": ["a plate of food with broccoli", "broccoli and rice on a white plate"],
            "5": ["a cat sleeping on a sofa", "A cat is asleep on the couch."]}
    preds = {"1": "a man riding a horse", "2": "two dogs on the grass", "3": "a bus parked on a street",
             "4": "a plate with food", "5": "a dog on a couch"}
    monkeypatch.chdir(tmp_path)  # pycocoevalcap's tokenizer writes temp files; keep them out of the repo
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in preds.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    meteor = Meteor()
    try:
        meteor_score, _ = meteor.compute_score(gts, res)
    finally:
        getattr(meteor, "close", lambda: None)()  # its Java process
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)

    ours = caption_scores(preds, refs)  # on the 0-100 scale, to two decimals
    for k in range(4):
        assert ours[f"bleu_{k + 1}"] == round(100 * bleu[k], 2)
    assert ours["meteor"] == round(100 * meteor_score, 2)
    assert ours["rouge_l"] == round(100 * rouge, 2)
    assert ours["cider"] == round(100 * cider, 2) and 0 < ours["cider"] < 1000


@needs_java
def test_one_meteor_process_serves_every_scoring_and_is_replaced_when_it_dies():
    refs = {"1": ["a man rides a brown horse", "man on horseback"], "2": ["two dogs play in the green grass"]}
    first = {"1": "a man riding a horse", "2": "two dogs on the grass"}
    second = {"1": "a horse", "2": "dogs play in green grass"}
    a = captions.caption_scores(first, refs, metrics=["meteor"])["meteor"]
    process = captions._METEOR.meteor_p
    b = captions.caption_scores(second, refs, metrics=["meteor"])["meteor"]
    assert captions._METEOR.meteor_p is process and process.poll() is None  # the same process, still running
    process.kill()
    process.wait()
    assert captions.caption_scores(first, refs, metrics=["meteor"])["meteor"] == a  # a new one, the same score
    assert captions._METEOR.meteor_p is not process
    assert captions.caption_scores(second, refs, metrics=["meteor"])["meteor"] == b != a
    captions._close_meteor()
    assert captions._METEOR is None


@needs_java
def test_a_meteor_process_that_dies_mid_scoring_is_one_clear_error_and_the_next_call_starts_afresh(monkeypatch):
    import subprocess
    import threading

    import pycocoevalcap.meteor.meteor as meteor_module

    class Dying:  # reads one line, says something on stderr and exits: compute_score reads an empty answer
        def __init__(self):
            self.meteor_p = subprocess.Popen(["sh", "-c", "read x; echo 'java.lang.OutOfMemoryError' >&2"],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.lock = threading.Lock()

        compute_score, _stat = meteor_module.Meteor.compute_score, meteor_module.Meteor._stat

    refs, preds = {"1": ["a man rides a brown horse"]}, {"1": "a man riding a horse"}
    captions._close_meteor()
    with monkeypatch.context() as m:
        m.setattr(meteor_module, "Meteor", Dying)
        with pytest.raises(VLError, match="METEOR's Java process failed .*OutOfMemoryError"):
            captions.caption_scores(preds, refs, metrics=["meteor"])
        assert captions._METEOR is None  # dropped, its lock released
    assert 0 < captions.caption_scores(preds, refs, metrics=["meteor"])["meteor"] <= 100
