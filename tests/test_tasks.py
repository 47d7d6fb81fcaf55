"""The task definitions on hand-written manifest lines (docs/manifests.md shapes): the
exact encoder text, targets, training items, subtitle spans, truncation that never
touches the prefix or the question, VQA's weighted sampling, and reading predictions."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from vl.shared.errors import VLError
from vl.train.tasks import (TASKS, Generation, InputLayout, SourcePart, TrainItem, compose, count_words, get_task,
                            subtitles_in_span)

SUBS = [  # a whole video's subtitles, as value_common attaches them
    {"start": 0.5, "end": 2.0, "text": "(Sheldon:) Hello."},
    {"start": 2.5, "end": 4.0, "text": "Penny, come in."},
    {"start": 9.0, "end": 11.0, "text": "Where is Leonard?"},
    {"start": 12.0, "end": 14.0, "text": "He left."},
]

EXAMPLES = {
    "vqa": {"id": "42001", "task": "vqa", "split": "train", "media": ["COCO_train2014_000000000042"],
            "question": "What color is the bus?",
            "answers": ["red"] * 8 + ["dark red", "maroon"],
            "labels": {"red": 1.0, "dark red": 0.3, "maroon": 0.3},
            "answer_type": "other", "question_type": "what color is the", "multiple_choice_answer": "red",
            "image_id": 42},
    "gqa": {"id": "201307251", "task": "gqa", "split": "train", "media": ["2354786"],
            "question": "Is the sky dark?", "answers": ["yes"], "full_answer": "Yes, the sky is dark.",
            "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
            "image_id": "2354786"},
    "nlvr2": {"id": "train-10171-0-0", "task": "nlvr2", "split": "train",
              "media": ["train-10171-0-img0", "train-10171-0-img1"],
              "sentence": "An image shows exactly two dogs.", "answers": ["true"], "directory": 3},
    "caption": {"id": "391895", "task": "caption", "split": "train", "media": ["COCO_val2014_000000391895"],
                "targets": ["A man rides a bike.", "A cyclist on a dirt road."], "image_id": 391895,
                "sent_ids": [770337, 771687]},
    "tvqa": {"id": "7", "task": "tvqa", "split": "train", "media": ["s03e02_seg02_clip_10"],
             "question": "Who does Sheldon greet?",
             "choices": ["Penny", "Leonard", "Howard", "Raj", "Amy"], "ts": [1.0, 3.0], "subtitles": SUBS,
             "answer_idx": 0, "answers": ["Penny"], "show_name": "The Big Bang Theory"},
    "how2qa": {"id": "11", "task": "how2qa", "split": "train", "media": ["how2_abc_12_30"],
               "question": "What is added first?", "choices": ["Salt", "Flour", "Eggs", "Milk"],
               "ts": None, "subtitles": SUBS[:2], "answer_idx": 3, "answers": ["Milk"]},
    "tvc": {"id": "86602", "task": "tvc", "split": "train", "media": ["grey_s03e12_seg02_clip_17"],
            "ts": [10.0, 12.0], "duration": 94.03, "subtitles": SUBS,
            "targets": ["Sheldon asks where Leonard is.", "Penny answers him."], "desc_ids": [109, 110],
            "clip_id": 86602},
    "yc2c": {"id": "5", "task": "yc2c", "split": "train", "media": ["yc2_vid_5"],
             "ts": [20.0, 30.0], "duration": None, "subtitles": SUBS,
             "targets": ["Cut the onions."], "desc_ids": [1], "clip_id": 5},
}

EXPECTED_INPUT = {
    "vqa": "vqa: What color is the bus?",
    "gqa": "gqa: Is the sky dark?",
    "nlvr2": "nlvr: An image shows exactly two dogs.",
    "caption": "caption:",
    # the span [1, 3] overlaps the first two lines only
    "tvqa": "tvqa: Who does Sheldon greet? a0: Penny a1: Leonard a2: Howard a3: Raj a4: Amy "
            "subtitles: (Sheldon:) Hello. Penny, come in.",
    # ts null: every line
    "how2qa": "how2qa: What is added first? a0: Salt a1: Flour a2: Eggs a3: Milk "
              "subtitles: (Sheldon:) Hello. Penny, come in.",
    # [10, 12] overlaps "Where is Leonard?" and touches "He left." at 12
    "tvc": "tvc: subtitles: Where is Leonard? He left.",
    # no line in [20, 30]: no subtitles part at all
    "yc2c": "yc2c:",
}

EXPECTED_TARGETS = {
    "vqa": [("red", 1.0), ("dark red", 0.3), ("maroon", 0.3)],
    "gqa": [("yes", 1.0)],
    "nlvr2": [("true", 1.0)],
    "caption": [("A man rides a bike.", 1.0), ("A cyclist on a dirt road.", 1.0)],
    "tvqa": [("a0", 1.0)],
    "how2qa": [("a3", 1.0)],
    "tvc": [("Sheldon asks where Leonard is.", 1.0), ("Penny answers him.", 1.0)],
    "yc2c": [("Cut the onions.", 1.0)],
}

PREFIX = {"vqa": "vqa:", "gqa": "gqa:", "nlvr2": "nlvr:", "caption": "caption:",
          "tvqa": "tvqa:", "how2qa": "how2qa:", "tvc": "tvc:", "yc2c": "yc2c:"}


PRETRAINING = {"vl_lm": "span prediction:", "itm": "image text match:"}  # tests/test_pretrain_tasks.py


def test_registry_holds_exactly_the_eight_manifest_tasks_and_the_two_pretraining_tasks():
    assert sorted(TASKS) == sorted({**PREFIX, **PRETRAINING})
    assert {name: get_task(name).prefix for name in PRETRAINING} == PRETRAINING
    assert all(get_task(name).name == name for name in TASKS)


def test_unknown_task_names_the_choices():
    with pytest.raises(VLError, match=r"unknown task 'vqa3'; choose one of: caption, gqa, how2qa, itm, nlvr2, "
                                      r"tvc, tvqa, vl_lm, vqa, yc2c$"):
        get_task("vqa3")


@pytest.mark.parametrize("name", sorted(PREFIX))
def test_prefix_input_and_targets(name):
    task, ex = get_task(name), EXAMPLES[name]
    assert task.prefix == PREFIX[name]
    text = task.build_input(ex)
    assert text == EXPECTED_INPUT[name]
    assert text.split()[0] == PREFIX[name]  # first, always, for every method
    assert task.source_text(ex) == EXPECTED_INPUT[name][len(PREFIX[name]):].strip()
    assert task.targets(ex) == EXPECTED_TARGETS[name]


def test_no_gpa_typo():
    assert get_task("gqa").prefix == "gqa:"
    assert all("gpa" not in t.prefix for t in TASKS.values())


@pytest.mark.parametrize("name", sorted(PREFIX))
def test_expand_items(name):
    task, ex = get_task(name), EXAMPLES[name]
    items = task.expand([ex])
    if name in ("caption", "tvc", "yc2c"):  # one item per reference
        expected_groups = [[t] for t in EXPECTED_TARGETS[name]]
    else:
        expected_groups = [EXPECTED_TARGETS[name]]
    assert items == [TrainItem(ex["id"], name, ex["media"], task.input_parts(ex), g) for g in expected_groups]
    assert all(item.text() == EXPECTED_INPUT[name] for item in items)
    assert items[0].parts[0] == SourcePart(PREFIX[name])


def test_task_attributes():
    kinds = {n: t.media_kind for n, t in TASKS.items()}
    assert kinds == {"vqa": "image", "gqa": "image", "nlvr2": "image", "caption": "image",
                     "tvqa": "video", "how2qa": "video", "tvc": "video", "yc2c": "video",
                     "vl_lm": "image", "itm": "image"}
    metrics = {n: t.metric for n, t in TASKS.items()}
    assert metrics == {"vqa": "vqa_accuracy", "gqa": "gqa_accuracy", "nlvr2": "nlvr2_accuracy",
                       "caption": "caption", "tvc": "caption", "yc2c": "caption",
                       "tvqa": "mc_accuracy", "how2qa": "mc_accuracy",
                       "vl_lm": "token_accuracy", "itm": "itm_accuracy"}
    assert get_task("vqa").generation == Generation(max_new_tokens=10, num_beams=1)
    assert get_task("tvc").generation == Generation(max_new_tokens=40, num_beams=5)
    assert get_task("tvqa").generation == Generation(max_new_tokens=4, num_beams=1)


def test_vqa_targets_from_answers_when_no_labels():
    ex = {k: v for k, v in EXAMPLES["vqa"].items() if k != "labels"}
    assert get_task("vqa").targets(ex) == [("red", 1.0), ("dark red", 0.3), ("maroon", 0.3)]


def test_vqa_example_with_empty_labels_is_skipped():
    ex = {k: v for k, v in EXAMPLES["vqa"].items() if k != "answers"} | {"labels": {}}
    assert get_task("vqa").expand([ex, EXAMPLES["vqa"]])[0].targets == EXPECTED_TARGETS["vqa"]
    assert len(get_task("vqa").expand([ex])) == 0


def test_vqa_sampling_follows_the_soft_scores_and_is_deterministic():
    task = get_task("vqa")
    ex = dict(EXAMPLES["vqa"], labels={"red": 1.0, "dark red": 0.3})
    rng = random.Random(0)
    draws = [task.sample_target(ex, rng) for _ in range(20000)]
    counts = Counter(answer for answer, _ in draws)
    assert set(counts) == {"red", "dark red"}
    assert counts["red"] / len(draws) == pytest.approx(1.0 / 1.3, abs=0.015)  # 76.9 %
    assert set(draws) == {("red", 1.0), ("dark red", 0.3)}  # the score comes along, to weight the loss
    again = random.Random(0)
    assert [task.sample_target(ex, again) for _ in range(20000)] == draws
    item = task.expand([ex])[0]
    assert [item.sample_target(random.Random(0)) for _ in range(5)] == [draws[0]] * 5


def test_subtitles_in_span():
    assert subtitles_in_span(SUBS, None) == [s["text"] for s in SUBS]
    assert subtitles_in_span(SUBS, [3.0, 9.5]) == ["Penny, come in.", "Where is Leonard?"]
    assert subtitles_in_span(SUBS, [4.5, 8.5]) == []
    assert subtitles_in_span(list(reversed(SUBS)), [0.0, 3.0]) == ["(Sheldon:) Hello.", "Penny, come in."]


def _long_tvqa() -> dict:
    subs = [{"start": float(i), "end": i + 0.9, "text": f"line {i} says many words here"} for i in range(5000)]
    return dict(EXAMPLES["tvqa"], ts=None, subtitles=subs)


def test_truncation_cuts_only_subtitles():
    task, ex = get_task("tvqa"), _long_tvqa()
    kept = "tvqa: Who does Sheldon greet? a0: Penny a1: Leonard a2: Howard a3: Raj a4: Amy"
    text = task.build_input(ex, budget=40)
    assert count_words(text) == 40
    assert text.startswith(kept + " subtitles: line 0 says many words here line 1")
    # a budget smaller than the prefix, question and choices: those stay whole, subtitles go
    assert task.build_input(ex, budget=5) == kept
    # a tokenizer's counter (here: characters) is honoured the same way
    by_chars = task.build_input(ex, budget=200, count=len)
    assert by_chars.startswith(kept + " subtitles: line 0") and 190 < len(by_chars) <= 200


def test_video_caption_truncation_keeps_the_prefix():
    ex = dict(EXAMPLES["tvc"], ts=None, subtitles=_long_tvqa()["subtitles"])
    assert get_task("tvc").build_input(ex, budget=4) == "tvc: subtitles: line 0"
    assert get_task("tvc").build_input(ex, budget=1) == "tvc:"


def test_compose_cuts_later_cuttable_parts_first():
    parts = [SourcePart("p:"), SourcePart("a b c", may_cut=True, label="x:"),
             SourcePart("keep me"), SourcePart("d e", may_cut=True, label="y:")]
    assert compose(parts) == "p: x: a b c keep me y: d e"
    assert compose(parts, budget=9) == "p: x: a b c keep me y: d"
    assert compose(parts, budget=7) == "p: x: a b c keep me"
    assert compose(parts, budget=6) == "p: x: a b keep me"
    assert compose(parts, budget=3) == "p: keep me"


@pytest.mark.parametrize("name, generated, expected", [
    ("vqa", "  Red \n", "red"),
    ("gqa", "Yes", "yes"),
    ("nlvr2", "True.", "true"),
    ("nlvr2", " false", "false"),
    ("caption", "  A man  rides a bike. ", "A man rides a bike."),
    ("tvqa", "a2", "a2"),
    ("tvqa", " A4: Amy", "a4"),
    ("tvqa", "leonard.", "a1"),  # a choice's text, read back to its label
    ("tvqa", "nobody", "nobody"),  # no label, no choice: scores as wrong
    ("how2qa", "Milk", "a3"),
])
def test_read_prediction(name, generated, expected):
    ex = EXAMPLES[name]
    assert get_task(name).read_prediction(generated, ex) == expected


def test_expand_names_every_problem():
    test_split = {k: v for k, v in EXAMPLES["gqa"].items() if k != "answers"}
    no_question = {k: v for k, v in EXAMPLES["gqa"].items() if k != "question"}
    with pytest.raises(VLError) as err:
        get_task("gqa").expand([test_split, no_question, EXAMPLES["vqa"]])
    text = str(err.value)
    assert "gqa example '201307251': no gold ('answers')" in text
    assert "gqa example '201307251': missing field 'question'" in text
    assert "gqa example '42001': field 'task' is 'vqa', not 'gqa'" in text


REFERENCE = InputLayout(video="reference")


@pytest.mark.parametrize("name, expected", [
    # every line of the video (not the span's), "[TS] (st-ed)", each choice stripped of dots and
    # spaces then ended by one dot, the prefix last (video/tvqa_data.py L179-208)
    ("tvqa", "[Subs] (Sheldon:) Hello. Penny, come in. Where is Leonard? He left. [Q] Who does Sheldon greet? "
             "[TS] (1.0-3.0) [Choices] a0: Penny. a1: Leonard. a2: Howard. a3: Raj. a4: Amy. tvqa:"),
    ("how2qa", "[Subs] (Sheldon:) Hello. Penny, come in. [Q] What is added first? [TS] (NaN-NaN) "
               "[Choices] a0: Salt. a1: Flour. a2: Eggs. a3: Milk. how2qa:"),
    ("tvc", "[Subs] (Sheldon:) Hello. Penny, come in. Where is Leonard? He left. [TS] ([10.0, 12.0]) tvc:"),
    ("yc2c", "[Subs] (Sheldon:) Hello. Penny, come in. Where is Leonard? He left. yc2c:"),
])
def test_reference_video_layout(name, expected):
    ex = dict(EXAMPLES[name])
    if name == "tvqa":
        ex["choices"] = ["Penny.", " Leonard ", "Howard..", "Raj", "Amy"]
    task = get_task(name)
    assert task.build_input(ex, layout=REFERENCE) == expected
    assert task.build_input(ex, layout=InputLayout(prefix="", video="reference")) == expected.rsplit(" ", 1)[0]
    assert task.build_input(EXAMPLES[name]) == EXPECTED_INPUT[name]  # the default layout is untouched


def test_image_tasks_ignore_the_video_layout_and_take_the_runs_prefix():
    ex = EXAMPLES["gqa"]
    assert get_task("gqa").build_input(ex, layout=REFERENCE) == "gqa: Is the sky dark?"
    assert get_task("gqa").build_input(ex, layout=InputLayout(prefix="gpa:")) == "gpa: Is the sky dark?"
    assert get_task("caption").build_input(EXAMPLES["caption"], layout=InputLayout(prefix="")) == ""


def test_candidates_of_the_rankable_tasks():
    assert [n for n, t in TASKS.items() if t.rankable] == ["nlvr2", "itm", "tvqa", "how2qa"]
    assert get_task("nlvr2").candidates(EXAMPLES["nlvr2"]) == ["true", "false"]
    assert get_task("tvqa").candidates(EXAMPLES["tvqa"]) == ["a0", "a1", "a2", "a3", "a4"]
    assert get_task("how2qa").candidates(EXAMPLES["how2qa"]) == ["a0", "a1", "a2", "a3"]
    with pytest.raises(NotImplementedError):
        get_task("vqa").candidates(EXAMPLES["vqa"])


def test_multiple_choice_answered_by_the_choice_text():
    """answer=text: the decoder learns the right choice's own text, ranks the choice texts, and the
    chosen text reads back as its label, which the metric compares with answer_idx."""
    task, ex = get_task("tvqa"), EXAMPLES["tvqa"]
    text = InputLayout(answer="text")
    right = " ".join(ex["choices"][ex["answer_idx"]].split())
    assert [t for t, _ in task.layout_targets(ex, text)] == [right]
    assert [t for t, _ in task.layout_targets(ex, InputLayout())] == [f"a{ex['answer_idx']}"]
    assert task.candidates(ex, text) == [" ".join(c.split()) for c in ex["choices"]]
    assert task.metric_value(task.read_prediction(right, ex)) == ex["answer_idx"]
    assert [item.targets for item in task.expand([ex], text)] == [[(right, 1.0)]]
