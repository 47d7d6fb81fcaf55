"""GQA: the official balanced questions JSON into `gqa` examples.

    {"201307251": {"imageId": "n352985", "question": ..., "answer": "no", "fullAnswer": ...,
                   "types": {"structural": ..., "semantic": ..., "detailed": ...}, ...}, ...}

The file is read one question at a time (`json_stream.iter_json_object`), not loaded whole;
a question id repeated inside a file is an error, as one repeated across files is.

The submission / challenge test files carry no `answer` (nor `fullAnswer`): their
examples have no `answers`. The other fields (semantic program, annotations,
entailed, groups ...) are left out.

Several files make one manifest: VL-T5 and VL-Adapter train GQA on train + val
(LXMERT's "train,valid"), so `--questions train_balanced_questions.json --questions
val_balanced_questions.json --split train` writes that training set; question ids are
unique across GQA's splits, a repeated one is an error. The meta counts the examples
of each file.
"""
from __future__ import annotations

from pathlib import Path

from vl.data_manifests.registry import ConvertRequest, Converted, register
from vl.data_manifests.json_stream import iter_json_object
from vl.data_manifests.source_files import duplicates
from vl.shared.errors import collect_or_raise
from vl.shared.manifest import missing_fields

QUESTION_FIELDS = {"imageId": str, "question": str}
GOLD_FIELDS = {"answer": str, "fullAnswer": str}


@register("gqa", task="gqa", media="image", needs=("main",), several=("questions", "annotations"),
          reads="GQA balanced questions JSON ({question id: {imageId, question, answer, fullAnswer, types, ...}}); "
                "repeat --questions to merge splits (train + val, as the paper trains)")
def convert(req: ConvertRequest) -> Converted:
    examples: list[dict] = []
    wheres: list[str] = []
    per_file: dict[str, int] = {}
    answered: dict[Path, bool] = {}
    for path in req.main_files():
        found = _convert_file(path, req.split)
        examples += found
        wheres += [f"{path}: question {ex['id']!r}" for ex in found]
        per_file[str(path.resolve())] = len(found)
        answered[path] = "answers" in found[0] if found else True
    problems = duplicates((ex["id"], where) for ex, where in zip(examples, wheres))
    if len(set(answered.values())) > 1:
        unanswered = [str(p) for p, has in answered.items() if not has]
        problems.append(f"{', '.join(unanswered)}: no answers (a test file), while the other files have them; "
                        "merge only answered files (train, val) and convert test files on their own")
    collect_or_raise(problems, hint="Give each GQA questions file once; question ids are unique across GQA's splits.")
    return Converted(examples, {"questions_per_file": per_file} if len(per_file) > 1 else {})


def _convert_file(path: Path, split: str) -> list[dict]:
    # one question at a time: a question's program, annotations and entailed ids are most of
    # the file (train_balanced: 943k questions), and only a few of its fields are kept
    problems: list[str] = []
    examples = []
    for qid, q in iter_json_object(path, what="GQA questions JSON ({split}_balanced_questions.json)",
                                   must_be="a JSON object keyed by question id"):
        where = f"{path}: question {qid!r}"
        if not isinstance(q, dict):
            problems.append(f"{where}: must be a JSON object")
            continue
        found = missing_fields(q, QUESTION_FIELDS, where)
        if "answer" in q:  # a file with answers has the full answer too
            found += missing_fields(q, GOLD_FIELDS, where)
        if "types" in q and not isinstance(q["types"], dict):
            found.append(f"{where}: field 'types' must be an object {{structural, semantic, detailed}} "
                         f"(got {q['types']!r:.60})")
        problems.extend(found)
        if found:
            continue
        ex = {"id": qid, "task": "gqa", "split": split, "media": [q["imageId"]],
              "question": q["question"], "image_id": q["imageId"]}
        if "answer" in q:
            ex.update(answers=[q["answer"]], full_answer=q["fullAnswer"])
        if "types" in q:
            ex["types"] = q["types"]
        examples.append(ex)
    with_answers = sum("answers" in ex for ex in examples)
    if 0 < with_answers < len(examples):
        unanswered = [ex["id"] for ex in examples if "answers" not in ex]
        problems.append(f"{path}: {len(unanswered)} of {len(examples)} questions have no field 'answer' "
                        f"(e.g. question {unanswered[0]!r}) while the others have one; a file is either "
                        "all answered or a test file without answers")
    collect_or_raise(problems, hint=f"{path} should be an official GQA questions file.")
    return examples
