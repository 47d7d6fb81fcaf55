"""VALUE multiple-choice video QA (TVQA, How2QA): one question per JSON line.

    {"qid": 7, "q": "Why ...?", "a0": "...", ..., "a4": "...", "answer_idx": 2,
     "ts": "20.16-25.12", "vid_name": "s03e02_seg02_clip_10", "show_name": "..."}

Test files have no `answer_idx`; How2QA has four choices (a0..a3) and no show name.
Subtitles and the shared checks come from `value_common.convert_value`.
"""
from __future__ import annotations

from vl.data_manifests.registry import ConvertRequest, register
from vl.data_manifests.value_common import RecordFields, convert_value, parse_ts
from vl.shared.manifest import missing_fields

def qa_fields(n_choices: int, *, show_name: bool) -> RecordFields:
    """question, choices (a0..a{n-1} in order), ts; answer_idx and answers where the
    release has the answer; show_name (TVQA) where present."""
    choice_keys = [f"a{i}" for i in range(n_choices)]

    def fields(record: dict, label: str) -> tuple[dict, list[str]]:
        problems = missing_fields(record, {"q": str, **{k: str for k in choice_keys}}, label)
        ts = None
        try:
            ts = parse_ts(record.get("ts"))
        except ValueError as e:
            problems.append(f"{label}: field 'ts' {e} (got {record['ts']!r:.60})")
        answer_idx = record.get("answer_idx")  # absent (or null) in the test release
        if answer_idx is not None:
            if isinstance(answer_idx, bool) or not isinstance(answer_idx, int):
                problems.append(f"{label}: field 'answer_idx' must be int (got {answer_idx!r:.60})")
            elif not 0 <= answer_idx < n_choices:
                problems.append(f"{label}: field 'answer_idx' is {answer_idx}, out of range for "
                                f"{n_choices} choices (0..{n_choices - 1})")
        show = record.get("show_name") if show_name else None
        if show is not None and not isinstance(show, str):
            problems.append(f"{label}: field 'show_name' must be str (got {show!r:.60})")
        if problems:
            return {}, problems
        choices = [record[k] for k in choice_keys]
        out = {"question": record["q"], "choices": choices, "ts": ts}
        if answer_idx is not None:
            out.update(answer_idx=answer_idx, answers=[choices[answer_idx]])
        if show is not None:
            out["show_name"] = show
        return out, []

    return fields


_TVQA = "TVQA questions (VALUE tvqa_*.jsonl: qid, q, a0..a4, answer_idx, ts, vid_name, show_name)"
_HOW2QA = "How2QA questions (VALUE how2qa_*.jsonl: qid, q, a0..a3, answer_idx, ts, vid_name)"


@register("tvqa", task="tvqa", media="video", needs=("main", "subtitles"), reads=f"{_TVQA} + --subtitles")
def convert_tvqa(req: ConvertRequest) -> list[dict]:
    return convert_value(req, task="tvqa", id_field="qid", what=_TVQA, record_fields=qa_fields(5, show_name=True))


@register("how2qa", task="how2qa", media="video", needs=("main", "subtitles"), reads=f"{_HOW2QA} + --subtitles")
def convert_how2qa(req: ConvertRequest) -> list[dict]:
    return convert_value(req, task="how2qa", id_field="qid", what=_HOW2QA, record_fields=qa_fields(4, show_name=False))
