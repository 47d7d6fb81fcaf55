"""VALUE video converters (TVQA, How2QA, TVC, YC2C): hand-written release records ->
exact manifest lines; test splits without answers; every bad input is one VLError that
names the file, the line, the record id and the field, and nothing is written."""
from __future__ import annotations

import json
import math

import pytest

from vl.data_manifests.registry import ConvertRequest, convert_dataset
from vl.data_manifests.value_common import parse_ts
from vl.shared import DatasetManifest, VLError, sha256_file
from vl.shared.manifest import meta_path_for

SUBTITLES = [
    {"vid_name": "s03e02_seg02_clip_10", "sub": [
        {"text": " Sheldon : Hello.  ", "start": 0.862, "end": 1.862},
        {"text": "Penny : Hi.", "start": 2, "end": 3.5}]},
    {"vid_name": "house_s02e05_seg02_clip_11", "sub": []},  # no lines: fine
    {"vid_name": "unused_clip", "sub": [{"text": "never read", "start": 0, "end": 1}]},
]
SUBS_CLIP10 = [{"start": 0.862, "end": 1.862, "text": "Sheldon : Hello."}, {"start": 2.0, "end": 3.5, "text": "Penny : Hi."}]


def write_jsonl(path, records):
    """Records as JSON lines; a str is written as the raw line (for malformed input)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def convert(tmp_path, name, split, records, subtitles=SUBTITLES):
    ann = write_jsonl(tmp_path / f"{name}_{split}.jsonl", records)
    subs = write_jsonl(tmp_path / "subtitles.jsonl", subtitles)
    out = tmp_path / "out" / f"{name}_{split}.jsonl"
    out.parent.mkdir(exist_ok=True)
    convert_dataset(name, ConvertRequest(split=split, annotations=ann, subtitles=subs, videos=tmp_path), out)
    return DatasetManifest.read(out), ann, subs


def tvqa_record(qid=7, vid="s03e02_seg02_clip_10", **kw):
    record = {"qid": qid, "q": "Who says hello?", "a0": "Sheldon", "a1": "Penny", "a2": "Leonard", "a3": "Raj",
              "a4": "Howard", "answer_idx": 0, "ts": "0.5-3.25", "vid_name": vid, "show_name": "The Big Bang Theory"}
    return {**record, **kw}


def how2qa_record(qid=11, vid="house_s02e05_seg02_clip_11", **kw):
    record = {"qid": qid, "q": "What is cut?", "a0": "bread", "a1": "onion", "a2": "tomato", "a3": "paper",
              "answer_idx": 2, "ts": "10-20", "vid_name": vid}
    return {**record, **kw}


def tvc_record(clip_id=86602, vid="s03e02_seg02_clip_10", **kw):
    record = {"vid_name": vid, "duration": 94.03, "ts": [35.73, 40.9], "clip_id": clip_id,
              "descs": [{"desc": " Sheldon waves at Penny. ", "desc_id": 109, "type": "v", "from_retrieval": False},
                        {"desc": "Penny says hi.", "desc_id": 110, "type": "t", "from_retrieval": True}]}
    return {**record, **kw}


# --- the four converters on good input -------------------------------------------------


def test_tvqa_exact_lines_and_meta(tmp_path):
    records = [
        tvqa_record(),
        tvqa_record(qid=8, vid="house_s02e05_seg02_clip_11", answer_idx=4, ts=[1, 2.5]),
        tvqa_record(qid=9, ts="NaN-NaN", show_name=None),  # unknown span -> null; no show name
    ]
    m, ann, subs = convert(tmp_path, "tvqa", "val", records)
    choices = ["Sheldon", "Penny", "Leonard", "Raj", "Howard"]
    base = {"task": "tvqa", "split": "val", "question": "Who says hello?", "choices": choices}
    assert m.examples == [
        {**base, "id": "7", "media": ["s03e02_seg02_clip_10"], "ts": [0.5, 3.25], "subtitles": SUBS_CLIP10,
         "answer_idx": 0, "answers": ["Sheldon"], "show_name": "The Big Bang Theory"},
        {**base, "id": "8", "media": ["house_s02e05_seg02_clip_11"], "ts": [1.0, 2.5], "subtitles": [],
         "answer_idx": 4, "answers": ["Howard"], "show_name": "The Big Bang Theory"},
        {**base, "id": "9", "media": ["s03e02_seg02_clip_10"], "ts": None, "subtitles": SUBS_CLIP10,
         "answer_idx": 0, "answers": ["Sheldon"]},
    ]
    assert m.meta.dataset == "tvqa" and m.meta.converter == "vl.data_manifests.value_qa"
    assert m.meta.has_answers and m.meta.counts == {"tvqa/val": 3}
    assert [(s.path, s.sha256) for s in m.meta.sources] == [
        (str(ann.resolve()), sha256_file(ann)), (str(subs.resolve()), sha256_file(subs))]
    assert m.meta.media_root == str(tmp_path.resolve())
    assert m.meta.extra["task"] == "tvqa" and m.meta.extra["media"] == "video"


def test_tvqa_test_split_has_no_answers(tmp_path):
    record = tvqa_record()
    del record["answer_idx"]
    m, _, _ = convert(tmp_path, "tvqa", "test", [record])
    assert m.examples == [{
        "id": "7", "task": "tvqa", "split": "test", "media": ["s03e02_seg02_clip_10"], "question": "Who says hello?",
        "choices": ["Sheldon", "Penny", "Leonard", "Raj", "Howard"], "ts": [0.5, 3.25], "subtitles": SUBS_CLIP10,
        "show_name": "The Big Bang Theory"}]
    assert m.meta.has_answers is False


def test_how2qa_exact_lines(tmp_path):
    no_ts = how2qa_record(qid="q-12", vid="s03e02_seg02_clip_10", answer_idx=3)
    del no_ts["ts"]
    m, _, _ = convert(tmp_path, "how2qa", "train", [how2qa_record(), no_ts])
    base = {"task": "how2qa", "split": "train", "question": "What is cut?", "choices": ["bread", "onion", "tomato", "paper"]}
    assert m.examples == [
        {**base, "id": "11", "media": ["house_s02e05_seg02_clip_11"], "ts": [10.0, 20.0], "subtitles": [],
         "answer_idx": 2, "answers": ["tomato"]},
        {**base, "id": "q-12", "media": ["s03e02_seg02_clip_10"], "ts": None, "subtitles": SUBS_CLIP10,
         "answer_idx": 3, "answers": ["paper"]},
    ]
    assert m.meta.converter == "vl.data_manifests.value_qa" and m.meta.counts == {"how2qa/train": 2}


def test_how2qa_test_split_has_no_answers(tmp_path):
    record = how2qa_record()
    del record["answer_idx"]
    m, _, _ = convert(tmp_path, "how2qa", "test", [record])
    assert "answers" not in m.examples[0] and "answer_idx" not in m.examples[0]
    assert m.meta.has_answers is False


def test_tvc_exact_lines(tmp_path):
    records = [tvc_record(), tvc_record(clip_id=86603, vid="house_s02e05_seg02_clip_11", ts="3-7.5", duration=None)]
    m, _, _ = convert(tmp_path, "tvc", "val", records)
    assert m.examples == [
        {"id": "86602", "task": "tvc", "split": "val", "media": ["s03e02_seg02_clip_10"], "clip_id": 86602,
         "ts": [35.73, 40.9], "duration": 94.03, "subtitles": SUBS_CLIP10,
         "targets": ["Sheldon waves at Penny.", "Penny says hi."], "desc_ids": [109, 110]},
        {"id": "86603", "task": "tvc", "split": "val", "media": ["house_s02e05_seg02_clip_11"], "clip_id": 86603,
         "ts": [3.0, 7.5], "duration": None, "subtitles": [],
         "targets": ["Sheldon waves at Penny.", "Penny says hi."], "desc_ids": [109, 110]},
    ]
    assert m.meta.converter == "vl.data_manifests.value_caption" and m.meta.has_answers


def test_tvc_test_split_without_descs(tmp_path):
    absent = tvc_record()
    del absent["descs"]
    records = [absent, tvc_record(clip_id=2, descs=[]), tvc_record(clip_id=3, descs=None)]
    m, _, _ = convert(tmp_path, "tvc", "test", records)
    assert m.examples[0] == {"id": "86602", "task": "tvc", "split": "test", "media": ["s03e02_seg02_clip_10"],
                             "clip_id": 86602, "ts": [35.73, 40.9], "duration": 94.03, "subtitles": SUBS_CLIP10}
    assert all("targets" not in ex and "desc_ids" not in ex for ex in m.examples)
    assert m.meta.has_answers is False


def test_yc2c_exact_lines(tmp_path):
    no_duration = {"vid_name": "unused_clip", "ts": [0, 12], "clip_id": 5,
                   "descs": [{"desc": "add the salt", "desc_id": 1}]}
    m, _, _ = convert(tmp_path, "yc2c", "train", [no_duration])
    assert m.examples == [{"id": "5", "task": "yc2c", "split": "train", "media": ["unused_clip"], "clip_id": 5,
                           "ts": [0.0, 12.0], "duration": None,
                           "subtitles": [{"start": 0.0, "end": 1.0, "text": "never read"}],
                           "targets": ["add the salt"], "desc_ids": [1]}]
    assert m.meta.dataset == "yc2c" and m.meta.counts == {"yc2c/train": 1}


def test_parse_ts():
    assert parse_ts("20.16-25.12") == [20.16, 25.12]
    assert parse_ts(" 0 - 5 ") == [0.0, 5.0]
    assert parse_ts([3, 4.5]) == [3.0, 4.5]
    assert parse_ts(None) is None and parse_ts("NaN-NaN") is None and parse_ts([math.nan, math.nan]) is None
    for bad in ("20.16", "a-b", "1-2-3", "inf-3", [1], [1, "2"], [True, 2], 3, [1, math.inf]):
        with pytest.raises(ValueError):
            parse_ts(bad)


# --- bad input: one VLError naming file, line, record id and field; nothing written -----

def _without(record, *names):
    return {k: v for k, v in record.items() if k not in names}


BAD = {
    # QA: the annotation file
    "malformed json": ("tvqa", [tvqa_record(), '{"qid": 8, "q": '], None, ["{ann}:2: not valid JSON"]),
    "missing q": ("tvqa", [tvqa_record(), _without(tvqa_record(8), "q")], None,
                  ["{ann}:2 (qid 8): missing required field 'q'"]),
    "missing a4": ("tvqa", [_without(tvqa_record(), "a4")], None, ["{ann}:1 (qid 7): missing required field 'a4'"]),
    "missing a3 how2qa": ("how2qa", [_without(how2qa_record(), "a3")], None,
                          ["{ann}:1 (qid 11): missing required field 'a3'"]),
    "missing qid": ("tvqa", [_without(tvqa_record(), "qid")], None, ["{ann}:1: missing required field 'qid'"]),
    "missing vid_name": ("tvqa", [_without(tvqa_record(), "vid_name")], None,
                         ["{ann}:1 (qid 7): missing required field 'vid_name'"]),
    "choice not str": ("tvqa", [tvqa_record(a1=3)], None, ["{ann}:1 (qid 7): field 'a1' must be str (got 3)"]),
    "qid float": ("tvqa", [tvqa_record(qid=7.5)], None, ["{ann}:1: field 'qid' must be int or a non-empty string (got 7.5)"]),
    "answer_idx str": ("tvqa", [tvqa_record(answer_idx="1")], None, ["{ann}:1 (qid 7): field 'answer_idx' must be int"]),
    "answer_idx bool": ("tvqa", [tvqa_record(answer_idx=True)], None, ["{ann}:1 (qid 7): field 'answer_idx' must be int"]),
    "answer_idx range": ("tvqa", [tvqa_record(answer_idx=5)], None,
                         ["{ann}:1 (qid 7): field 'answer_idx' is 5, out of range for 5 choices (0..4)"]),
    "answer_idx range how2qa": ("how2qa", [how2qa_record(answer_idx=4)], None,
                                ["{ann}:1 (qid 11): field 'answer_idx' is 4, out of range for 4 choices (0..3)"]),
    "answer_idx negative": ("tvqa", [tvqa_record(answer_idx=-1)], None, ["{ann}:1 (qid 7): field 'answer_idx' is -1"]),
    "ts unparsable": ("tvqa", [tvqa_record(ts="20.16~25.12")], None,
                      ["{ann}:1 (qid 7): field 'ts' must be \"start-end\" seconds", "(got '20.16~25.12')"]),
    "ts short list": ("how2qa", [how2qa_record(ts=[3])], None, ["{ann}:1 (qid 11): field 'ts' must be [start, end]"]),
    "show_name type": ("tvqa", [tvqa_record(show_name=["x"])], None, ["{ann}:1 (qid 7): field 'show_name' must be str"]),
    "duplicate qid": ("tvqa", [tvqa_record(), tvqa_record(qid=8), tvqa_record()], None,
                      ["{ann}:3: duplicate id '7' (first at {ann}:1); each 'qid' must be unique"]),
    "video without subtitles": ("tvqa", [tvqa_record(), tvqa_record(qid=8, vid="nosubs")], None,
                                ["{subs}: 1 video listed without subtitles (field 'vid_name' in {ann}): 'nosubs' (line 2)."]),
    # the subtitles file
    "subtitles malformed": ("tvqa", [tvqa_record()], SUBTITLES + ["{oops"], ["{subs}:4: not valid JSON"]),
    "subtitles duplicate vid_name": ("tvqa", [tvqa_record()], SUBTITLES + [{"vid_name": "unused_clip", "sub": []}],
                                     ["{subs}:4: duplicate id 'unused_clip' (first at {subs}:3); each 'vid_name' must have one line"]),
    "subtitles start type": ("tvqa", [tvqa_record()],
                             [{"vid_name": "s03e02_seg02_clip_10", "sub": [{"text": "a", "start": "0", "end": 1}]}],
                             ["{subs}:1 (vid_name 's03e02_seg02_clip_10') sub[0]: field 'start' must be int or float"]),
    "subtitles missing text": ("tvqa", [tvqa_record()],
                               [{"vid_name": "s03e02_seg02_clip_10", "sub": [{"start": 0, "end": 1}]}],
                               ["{subs}:1 (vid_name 's03e02_seg02_clip_10') sub[0]: missing required field 'text'"]),
    "subtitles sub not list": ("tvqa", [tvqa_record()], [{"vid_name": "s03e02_seg02_clip_10", "sub": "hi"}],
                               ["{subs}:1 (vid_name 's03e02_seg02_clip_10'): field 'sub' must be list"]),
    "subtitles missing vid_name": ("tvqa", [tvqa_record()], SUBTITLES + [{"sub": []}],
                                   ["{subs}:4: missing required field 'vid_name'"]),
    # captions
    "caption missing ts": ("tvc", [_without(tvc_record(), "ts")], None,
                           ["{ann}:1 (clip_id 86602): missing required field 'ts'"]),
    "caption missing clip_id": ("tvc", [_without(tvc_record(), "clip_id")], None,
                                ["{ann}:1: missing required field 'clip_id'"]),
    "caption missing vid_name": ("yc2c", [_without(tvc_record(), "vid_name")], None,
                                 ["{ann}:1 (clip_id 86602): missing required field 'vid_name'"]),
    "caption ts NaN": ("tvc", [tvc_record(ts="NaN-NaN")], None,
                       ["{ann}:1 (clip_id 86602): field 'ts' must be known [start, end] seconds"]),
    "caption ts bad": ("yc2c", [tvc_record(ts=[1, 2, 3])], None, ["{ann}:1 (clip_id 86602): field 'ts' must be [start, end]"]),
    "caption ts type": ("tvc", [tvc_record(ts=35.7)], None, ["{ann}:1 (clip_id 86602): field 'ts' must be str or list"]),
    "caption duration type": ("tvc", [tvc_record(duration="94")], None,
                              ["{ann}:1 (clip_id 86602): field 'duration' must be a number of seconds or null"]),
    "caption descs type": ("tvc", [tvc_record(descs="a man")], None, ["{ann}:1 (clip_id 86602): field 'descs' must be a list"]),
    "caption desc missing": ("tvc", [tvc_record(descs=[{"desc_id": 1}])], None,
                             ["{ann}:1 (clip_id 86602) descs[0]: missing required field 'desc'"]),
    "caption desc_id bool": ("yc2c", [tvc_record(descs=[{"desc": "x", "desc_id": False}])], None,
                             ["{ann}:1 (clip_id 86602) descs[0]: field 'desc_id' must be int or str"]),
    "caption duplicate clip_id": ("yc2c", [tvc_record(), tvc_record(clip_id="86602")], None,
                                  ["{ann}:2: duplicate id '86602' (first at {ann}:1); each 'clip_id' must be unique"]),
    "caption video without subtitles": ("tvc", [tvc_record(vid="gone")], None,
                                        ["{subs}: 1 video listed without subtitles (field 'vid_name' in {ann}): 'gone' (line 1)."]),
}


def _expect_refusal(tmp_path, name, records, subtitles, split="val") -> tuple[str, dict]:
    """The VLError's text, and the two input paths to format the expected fragments with."""
    with pytest.raises(VLError) as err:
        convert(tmp_path, name, split, records, SUBTITLES if subtitles is None else subtitles)
    out = tmp_path / "out" / f"{name}_{split}.jsonl"
    assert not out.exists() and not meta_path_for(out).exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary leftovers either
    paths = {"ann": str(tmp_path / f"{name}_{split}.jsonl"), "subs": str(tmp_path / "subtitles.jsonl")}
    return str(err.value), paths


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_error(tmp_path, case):
    name, records, subtitles, fragments = BAD[case]
    message, paths = _expect_refusal(tmp_path, name, records, subtitles)
    for fragment in fragments:
        assert fragment.format(**paths) in message, message
    assert "Traceback" not in message


def test_all_problems_of_both_files_are_collected(tmp_path):
    records = [tvqa_record(answer_idx=9), _without(tvqa_record(8), "q"), tvqa_record(9, vid="nosubs")]
    bad_subtitle = {"vid_name": "x", "sub": [{"text": 1, "start": 0, "end": 1}]}
    message, p = _expect_refusal(tmp_path, "tvqa", records, SUBTITLES + [bad_subtitle])
    assert message.startswith("4 problems:")
    assert f"{p['ann']}:1 (qid 7): field 'answer_idx' is 9" in message
    assert f"{p['ann']}:2 (qid 8): missing required field 'q'" in message
    assert f"{p['subs']}:4 (vid_name 'x') sub[0]: field 'text' must be str" in message
    assert f"{p['subs']}: 1 video listed without subtitles (field 'vid_name' in {p['ann']}): 'nosubs' (line 3)" in message


def test_unreadable_subtitles_do_not_make_every_video_missing(tmp_path):
    message, p = _expect_refusal(tmp_path, "tvc", [tvc_record(), tvc_record(clip_id=1, descs="x")], ["{oops"])
    assert message.startswith("2 problems:")
    assert f"{p['subs']}:1: not valid JSON" in message
    assert f"{p['ann']}:2 (clip_id 1): field 'descs' must be a list" in message
    assert "without subtitles" not in message


def test_missing_videos_are_summarised(tmp_path):
    records = [tvqa_record(qid=i, vid=f"gone{min(i, 6)}") for i in range(10)]  # gone6 on lines 7..10
    message, p = _expect_refusal(tmp_path, "tvqa", records, None)
    assert f"{p['subs']}: 7 videos listed without subtitles (field 'vid_name' in {p['ann']}): " \
           "'gone0' (line 1), 'gone1' (line 2), 'gone2' (line 3), 'gone3' (line 4), 'gone4' (line 5), and 2 more." in message
    records = [tvqa_record(qid=i, vid="gone") for i in range(4)]
    message, _ = _expect_refusal(tmp_path, "tvqa", records, None)
    assert "'gone' (lines 1, 2, 3, ...)" in message
