"""Each benchmark's official submission file: written from predictions keyed by manifest
example id, and read back into (example id, prediction) pairs for the metrics.

| task | file | shape |
|---|---|---|
| vqa | .json | `[{"question_id": int, "answer": str}, ...]` |
| gqa | .json | `[{"questionId": str, "prediction": str}, ...]` |
| nlvr2 | .csv | lines `identifier,True` or `identifier,False`, no header |
| caption | .json | `[{"image_id": int, "caption": str}, ...]`, one per image |
| tvqa, how2qa | .json | one object `{"qid": answer index (int), ...}` |
| tvc | .jsonl | a line `{"vid_name", "clip_id": int, "ts", "descs": [{"desc": str}]}` |
| yc2c | .jsonl | a line `{"video_id", "clip_id": int, "descs": [{"desc": str}]}` |

Sources: VQA's results format (GT-Vision-Lab/VQA README and its sample
`Results/OpenEnded_mscoco_train2014_fake_results.json`; `vqa.py` `loadRes`); GQA's
`eval.py` (`{p["questionId"]: p["prediction"] for p in predictions}`); lil-lab/nlvr
`nlvr2/README.md` ("CSV format, with the first value as the example's unique
identifier and the second as the prediction (in the same format as labels in the JSON
files)") and `nlvr2/eval/metrics.py`; COCO's caption results format
(cocodataset.org/#format-results; cocodataset/cocoapi's sample
`results/captions_val2014_fakecap_results.json`); VALUE-Leaderboard/EvaluationTools:
its README ("QA Submission", "Caption Submission"), `evaluate_tvqa.py`,
`evaluate_how2qa.py`, `evaluate_tvc.py`, and the sample files
`tvqa_val_predictions.json`, `tvc_val_predictions.jsonl`, `yc2c_val_predictions.jsonl`.
VALUE's QA file is one JSON object, not JSON lines: its scorers `json.load` it.

Choices where the official sources leave room:

- NLVR2: the README asks for the prediction "in the same format as labels in the JSON
  files", which are "True" / "False"; the scorer compares ignoring case. A prediction
  that is neither (a model that answered "maybe") is written as it is, with commas and
  line breaks turned into spaces so the CSV stays two fields a line, and scores as
  wrong, here as in the official script.
- VALUE QA: the official scorer takes `int(answer)`, so a multiple-choice prediction of
  None (the output named no choice) is written as -1, which matches no answer; it is
  read back as -1 and scores as wrong either way.
- VALUE captions: the scorer reads only `clip_id` and the first `descs` entry; the
  other fields copy the two official sample files (TVC's has `vid_name` and `ts`,
  YC2C's `video_id`), filled from the manifest (`media[0]`, `ts`).
- VALUE names the files `{task}_{split}_predictions.json[l]` inside the zip it takes;
  `official_file_name` gives that name, the caller picks the folder.

Reading maps each official id back to its example (VQA question_id -> id, COCO image_id
-> the caption example with that `image_id`, VALUE clip_id -> the example with that
`clip_id`). Every problem of a file is collected into one VLError naming the file and
the record (list index or line number). A repeated id is kept as two pairs, so the
metric's duplicate check sees it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vl.shared.atomic import write_text_atomic
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import json_line_objects, json_type_name, missing_fields

SHOWN = 3  # records an aggregated message names


@dataclass(frozen=True)
class SubmissionFormat:
    """How one task's official file looks."""

    suffix: str
    shape: str  # what the file holds, for messages
    source: str  # where the format is defined
    id_key: str  # what names the example in the file
    official_id: Callable[[Mapping[str, Any]], Any]  # manifest example -> the id the file uses


def _int_id(ex: Mapping[str, Any]) -> int:
    if not ex["id"].isdigit():
        raise ValueError(f"example id {ex['id']!r} is not an integer, which this format needs")
    return int(ex["id"])


def _caption_image_id(ex: Mapping[str, Any]) -> int:
    return ex["image_id"] if isinstance(ex.get("image_id"), int) else _int_id(ex)


def _clip_id(ex: Mapping[str, Any]) -> int | str:
    clip = ex.get("clip_id")
    if isinstance(clip, (int, str)) and not isinstance(clip, bool) and clip != "":
        return clip
    return int(ex["id"]) if ex["id"].isdigit() else ex["id"]


_VALUE_QA = ('one JSON object {"qid": answer index (int), ...}', "VALUE EvaluationTools README, QA Submission")
FORMATS: dict[str, SubmissionFormat] = {
    "vqa": SubmissionFormat(".json", 'a JSON list of {"question_id": int, "answer": str}',
                            "the VQA results format (GT-Vision-Lab/VQA README)", "question_id", _int_id),
    "gqa": SubmissionFormat(".json", 'a JSON list of {"questionId": str, "prediction": str}',
                            "GQA eval.py", "questionId", lambda ex: ex["id"]),
    "nlvr2": SubmissionFormat(".csv", "CSV lines 'identifier,True' or 'identifier,False', no header",
                              "lil-lab/nlvr nlvr2/README.md", "identifier", lambda ex: ex["id"]),
    "caption": SubmissionFormat(".json", 'a JSON list of {"image_id": int, "caption": str}, one per image',
                                "the COCO caption results format (cocodataset.org/#format-results)", "image_id",
                                _caption_image_id),
    "tvqa": SubmissionFormat(".json", *_VALUE_QA, "qid", lambda ex: ex["id"]),
    "how2qa": SubmissionFormat(".json", *_VALUE_QA, "qid", lambda ex: ex["id"]),
    "tvc": SubmissionFormat(".jsonl", 'JSON lines {"vid_name": str, "clip_id": int, "ts": [st, ed], '
                            '"descs": [{"desc": str}]}', "VALUE EvaluationTools README, Caption Submission",
                            "clip_id", _clip_id),
    "yc2c": SubmissionFormat(".jsonl", 'JSON lines {"video_id": str, "clip_id": int, "descs": [{"desc": str}]}',
                             "VALUE EvaluationTools README, Caption Submission", "clip_id", _clip_id),
    # the pre-training tasks have no official server: a list as GQA's, under vl's own keys
    **{task: SubmissionFormat(".json", 'a JSON list of {"id": str, "prediction": str}',
                              "vl's own (pre-training tasks have no official format)", "id", lambda ex: ex["id"])
       for task in ("vl_lm", "itm")},
}


def get_format(task: str) -> SubmissionFormat:
    if task not in FORMATS:
        raise VLError(f"unknown task {task!r}; choose one of: {', '.join(FORMATS)}")
    return FORMATS[task]


def official_file_name(task: str, split: str) -> str:
    """VALUE's name for a submission file ("tvqa_val_predictions.json", which its server
    requires); the same pattern for the other tasks, whose servers take any name."""
    return f"{task}_{split}_predictions{get_format(task).suffix}"


# ---------------------------------------------------------------- writing

def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expected_value(task: str) -> tuple[Callable[[Any], bool], str]:
    if task in ("tvqa", "how2qa"):
        return (lambda v: v is None or _is_index(v)), "choice indices (int) or None"
    return (lambda v: isinstance(v, str)), "strings"


def _nlvr2_field(prediction: str) -> str:
    if prediction.strip().lower() in ("true", "false"):
        return prediction.strip().capitalize()
    return " ".join(prediction.replace(",", " ").split())  # no comma or line break may split the line


def _record(task: str, ex: Mapping[str, Any], official_id: Any, prediction: Any) -> Any:
    if task == "vqa":
        return {"question_id": official_id, "answer": prediction}
    if task == "gqa":
        return {"questionId": official_id, "prediction": prediction}
    if task in ("vl_lm", "itm"):
        return {"id": official_id, "prediction": prediction}
    if task == "caption":
        return {"image_id": official_id, "caption": prediction}
    if task == "tvc":
        record = {"vid_name": ex["media"][0], "clip_id": official_id}
        if ex.get("ts") is not None:
            record["ts"] = ex["ts"]
        return {**record, "descs": [{"desc": prediction}]}
    if task == "yc2c":
        return {"video_id": ex["media"][0], "clip_id": official_id, "descs": [{"desc": prediction}]}
    if task in ("tvqa", "how2qa"):
        return -1 if prediction is None else prediction
    assert task == "nlvr2", task
    return _nlvr2_field(prediction)


def _render(task: str, records: list[tuple[Any, Any]]) -> str:
    """The file text: JSON lists and objects one record a line (valid JSON, readable diffs)."""
    if task == "nlvr2":
        return "".join(f"{oid},{value}\n" for oid, value in records)
    if task in ("tvqa", "how2qa"):
        lines = [f"{json.dumps(str(oid), ensure_ascii=False)}: {value}" for oid, value in records]
        return "{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n"
    dumped = [json.dumps(value, ensure_ascii=False) for _, value in records]
    if task in ("tvc", "yc2c"):
        return "".join(line + "\n" for line in dumped)
    return "[\n" + ",\n".join(dumped) + "\n]\n" if dumped else "[]\n"


def write_submission(task: str, predictions: Mapping[str, Any], examples: Iterable[Mapping[str, Any]],
                     path: str | os.PathLike) -> Path:
    """Write `predictions` ({example id: prediction as the metric takes it}) as `task`'s
    official file at `path` (atomically), one record per prediction in the examples'
    order. `examples` are the manifest examples the ids refer to; examples without a
    prediction are left out (the scorer and the official servers report them)."""
    fmt = get_format(task)
    path = Path(path)
    by_id = {ex["id"]: ex for ex in examples}
    is_valid, expected = _expected_value(task)
    unknown = [pid for pid in predictions if pid not in by_id]
    invalid = [pid for pid, value in predictions.items() if pid in by_id and not is_valid(value)]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} prediction ids are not among the {len(by_id)} examples given "
                        f"({_some(unknown)}); predict the examples of the manifest being submitted")
    if invalid:
        problems.append(f"{len(invalid)} {task} predictions are not {expected} ("
                        + ", ".join(f"{pid!r}: {predictions[pid]!r:.40}" for pid in invalid[:SHOWN])
                        + (", ..." if len(invalid) > SHOWN else "") + ")")
    records, first_example, skip = [], {}, set(invalid)
    for eid, ex in by_id.items():
        if eid not in predictions or eid in skip:
            continue
        try:
            oid = fmt.official_id(ex)
        except ValueError as e:
            problems.append(f"{task} example {eid!r}: {e} ({fmt.id_key})")
            continue
        if oid in first_example:  # COCO: two caption examples of one image
            problems.append(f"{task} examples {first_example[oid]!r} and {eid!r} share {fmt.id_key} {oid!r}; "
                            "the official file holds one prediction per id")
            continue
        first_example[oid] = eid
        records.append((oid, _record(task, ex, oid, predictions[eid])))
    collect_or_raise(problems, hint=f"Nothing was written to {path}.")
    write_text_atomic(path, _render(task, records))  # (a full disk: one line naming the file and its size)
    return path


# ---------------------------------------------------------------- reading

def _some(items: list[Any]) -> str:
    return ", ".join(repr(i) for i in items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


class _Pairs(list):
    """A JSON object read as its (key, value) pairs, so a repeated key survives."""


_UNREADABLE = object()  # what _load_json gives for text that is not JSON (None is JSON's null)


def _load_json(path: Path, text: str, problems: list[str], *, keep_pairs: bool = False) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_Pairs if keep_pairs else None)
    except json.JSONDecodeError as e:
        problems.append(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})")
        return _UNREADABLE


# task -> (id key, id type, answer key) of the JSON list formats
_LIST_FIELDS = {"vqa": ("question_id", int, "answer"), "gqa": ("questionId", str, "prediction"),
                "caption": ("image_id", int, "caption"), "vl_lm": ("id", str, "prediction"),
                "itm": ("id", str, "prediction")}


def _read_list(task: str, path: Path, text: str, problems: list[str]) -> list[tuple[str, Any, Any]]:
    """(record label, official id, prediction) of a JSON list of objects."""
    id_key, id_type, value_key = _LIST_FIELDS[task]
    data = _load_json(path, text, problems)
    if data is _UNREADABLE:
        return []
    if not isinstance(data, list):
        problems.append(f"{path}: the top level is a JSON {json_type_name(data)}, not a list")
        return []
    out = []
    for i, record in enumerate(data):
        where = f"{path}: record [{i}]"
        if not isinstance(record, dict):
            problems.append(f"{where}: must be an object {{{id_key}, {value_key}}} (got {json_type_name(record)})")
            continue
        bad = missing_fields(record, {id_key: id_type, value_key: str}, where)
        if bad:
            problems.extend(bad)
            continue
        out.append((f"record [{i}]", record[id_key], record[value_key]))
    return out


def _read_value_qa(path: Path, text: str, problems: list[str]) -> list[tuple[str, Any, Any]]:
    data = _load_json(path, text, problems, keep_pairs=True)
    if data is _UNREADABLE:
        return []
    if not isinstance(data, _Pairs):
        problems.append(f"{path}: the top level is a JSON {json_type_name(data)}, not an object")
        return []
    out = []
    for i, (qid, answer) in enumerate(data):
        if not _is_index(answer):
            shown = dict(answer) if isinstance(answer, _Pairs) else answer
            kind = "object" if isinstance(answer, _Pairs) else json_type_name(answer)
            problems.append(f"{path}: entry [{i}] (qid {qid!r}): the answer must be an integer choice index "
                            f"(got {kind} {shown!r:.40})")
            continue
        out.append((f"entry [{i}]", qid, answer))
    return out


def _read_value_captions(path: Path, text: str, problems: list[str]) -> list[tuple[str, Any, Any]]:
    out = []
    for lineno, record in json_line_objects(text.splitlines(), path, problems):
        where = f"{path}:{lineno}"
        missing = [k for k in ("clip_id", "descs") if k not in record]
        if missing:
            problems.append(f"{where}: missing key {', '.join(repr(k) for k in missing)}")
            continue
        clip, descs = record["clip_id"], record["descs"]
        bad = []
        if isinstance(clip, bool) or not isinstance(clip, (int, str)) or clip == "":
            bad.append(f"'clip_id' must be an integer, or the manifest's string id (got {json_type_name(clip)} "
                       f"{clip!r:.40})")
        if not (isinstance(descs, list) and descs and isinstance(descs[0], dict)
                and isinstance(descs[0].get("desc"), str)):
            bad.append(f"'descs' must be a non-empty list whose first item is {{\"desc\": str}} "
                       f"(got {descs!r:.60})")
        if bad:
            problems.append(f"{where}: " + "; ".join(bad))
            continue
        out.append((f"line {lineno}", clip, descs[0]["desc"]))  # the scorer uses the first desc only
    return out


def _read_nlvr2_csv(path: Path, text: str, problems: list[str]) -> list[tuple[str, Any, Any]]:
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()  # as the official script does
        if not line:
            continue
        fields = line.split(",")
        where = f"{path}:{lineno}"
        if len(fields) != 2 or not fields[0].strip():
            problems.append(f"{where}: expected 'identifier,prediction' (got {line!r:.60})")
            continue
        identifier, prediction = fields[0].strip(), fields[1].strip()
        if lineno == 1 and identifier.lower() == "identifier":
            problems.append(f"{where}: looks like a header ({line!r}); the official file has none: remove it")
            continue
        if prediction.lower() in ("true", "false"):
            prediction = prediction.lower()  # the metric's form; the official compare ignores case
        out.append((f"line {lineno}", identifier, prediction))
    return out


def read_submission(task: str, path: str | os.PathLike,
                    examples: Iterable[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """The (example id, prediction) pairs of `task`'s official file at `path`, in file
    order, with official ids mapped back to the ids of `examples` (the manifest examples
    the file answers). Predictions come as the metric takes them: str, int for
    tvqa/how2qa, "true"/"false" for nlvr2. A VLError lists every problem: a file that
    is not in the format, records without their keys or with wrong types, and ids that
    name none of `examples`."""
    fmt = get_format(task)
    path = Path(path)
    if not path.is_file():
        raise VLError(f"{path}: no such predictions file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VLError(f"{path}: not UTF-8 text (byte {e.start}); a {task} submission is {fmt.shape}") from None
    problems: list[str] = []
    if task in _LIST_FIELDS:
        records = _read_list(task, path, text, problems)
    elif task in ("tvqa", "how2qa"):
        records = _read_value_qa(path, text, problems)
    elif task in ("tvc", "yc2c"):
        records = _read_value_captions(path, text, problems)
    else:
        assert task == "nlvr2", task
        records = _read_nlvr2_csv(path, text, problems)

    example_of: dict[Any, str] = {}  # official id, typed as the file must type it -> example id
    for ex in examples:
        try:
            example_of[fmt.official_id(ex)] = ex["id"]
        except ValueError:
            pass  # no file record can name it
    pairs, unknown = [], []
    for label, oid, prediction in records:
        eid = example_of.get(oid)
        if eid is None:
            unknown.append(f"{label}: {fmt.id_key} {oid!r}")
        else:
            pairs.append((eid, prediction))
    if unknown:
        problems.append(f"{path}: {len(unknown)} records name no {task} example of the {len(example_of)} given "
                        f"({'; '.join(unknown[:SHOWN])}{'; ...' if len(unknown) > SHOWN else ''}); "
                        "were the predictions made on another split or manifest?")
    collect_or_raise(problems, hint=f"A {task} submission is {fmt.shape} ({fmt.source}).")
    return pairs
