"""GQA: the official balanced questions JSON into `gqa` examples.

    {"201307251": {"imageId": "n352985", "question": ..., "answer": "no", "fullAnswer": ...,
                   "types": {"structural": ..., "semantic": ..., "detailed": ...}, ...}, ...}

The submission / challenge test files carry no `answer` (nor `fullAnswer`): their
examples have no `answers`. The other fields (semantic program, annotations,
entailed, groups ...) are left out.
"""
from __future__ import annotations

from vl.data_manifests.registry import ConvertRequest, register
from vl.data_manifests.source_files import missing_fields, read_json
from vl.shared.errors import VLError, collect_or_raise

QUESTION_FIELDS = {"imageId": str, "question": str}
GOLD_FIELDS = {"answer": str, "fullAnswer": str}


@register("gqa", task="gqa", media="image", needs=("main",),
          reads="GQA balanced questions JSON ({question id: {imageId, question, answer, fullAnswer, types, ...}})")
def convert(req: ConvertRequest) -> list[dict]:
    path = req.main_file()
    doc = read_json(path, what="GQA questions JSON ({split}_balanced_questions.json)")
    if not isinstance(doc, dict):
        raise VLError(f"{path}: must be a JSON object keyed by question id; is this a GQA "
                      "*_balanced_questions.json file?")
    problems: list[str] = []
    examples = []
    for qid, q in doc.items():
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
        ex = {"id": qid, "task": "gqa", "split": req.split, "media": [q["imageId"]],
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
