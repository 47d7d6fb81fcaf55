"""VQA v2: the official questions JSON (+ annotations JSON for train/val), or the
LXMERT / VL-T5 preprocessed JSON, into `vqa` examples.

Official files (visualqa.org):
    questions   {"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}], ...}
    annotations {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
                 "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}] x 10}]}
Test splits ship questions only: their examples carry no `answers` and no `labels`.

LXMERT / VL-T5 file (given as --questions, no --annotations; recognised by being a
JSON list): [{"img_id": "COCO_val2014_000000393267", "question_id", "sent",
"label": {answer: score}, "answer_type"?, "question_type"?}]. It keeps only the soft
labels, not the ten human answers, so its examples carry `labels` (copied as given)
and no `answers`; a file without `label` (their test split) gives neither.
"""
from __future__ import annotations

import re
from pathlib import Path

from vl.data_manifests.registry import ConvertRequest, register
from vl.data_manifests.source_files import duplicates, missing_fields, read_json
from vl.shared.answers import vqa_soft_scores
from vl.shared.errors import VLError, collect_or_raise

QUESTION_FIELDS = {"image_id": int, "question": str, "question_id": int}
ANNOTATION_FIELDS = {"question_id": int, "image_id": int, "question_type": str, "answer_type": str,
                     "multiple_choice_answer": str, "answers": list}
HUMAN_ANSWER_FIELDS = {"answer": str, "answer_id": int}
LXMERT_FIELDS = {"img_id": str, "question_id": int, "sent": str}
ANSWERS_PER_QUESTION = 10
# "COCO_val2014_000000393267" -> 393267
_MEDIA_ID = re.compile(r"^COCO_\w+?_(\d+)$")


@register("vqa2", task="vqa", media="image", needs=("questions",),
          reads="VQA v2 questions JSON (+ --annotations JSON for train/val), or the LXMERT/VL-T5 JSON list "
                "as --questions; --image-ids FILE keeps only the listed images")
def convert(req: ConvertRequest) -> list[dict]:
    # the id list is small: check it before reading the large files
    keep = _read_image_ids(req.image_ids) if req.image_ids is not None else None
    questions = read_json(req.questions, what="VQA v2 questions JSON (or LXMERT/VL-T5 VQA JSON list)")
    if isinstance(questions, list):
        if req.annotations is not None:
            raise VLError(f"{req.questions}: is a JSON list, the LXMERT/VL-T5 format, which carries its own labels; "
                          "drop --annotations, or pass the official questions JSON as --questions")
        examples = _from_lxmert(questions, req)
    else:
        examples = _from_official(questions, req)
    if keep is not None:
        keep_ints, keep_media = keep
        examples = [ex for ex in examples if ex["image_id"] in keep_ints or ex["media"][0] in keep_media]
    return examples


def _from_official(doc: object, req: ConvertRequest) -> list[dict]:
    path = req.questions
    if not isinstance(doc, dict) or not isinstance(doc.get("questions"), list):
        raise VLError(f"{path}: field 'questions' must be a list; is this the VQA v2 questions JSON "
                      "(v2_OpenEnded_mscoco_*_questions.json)?")
    problems = missing_fields(doc, {"data_subtype": str}, str(path))
    collect_or_raise(problems)
    subtype = doc["data_subtype"]
    # test-dev questions name their subtype "test-dev2015", but the images are test2015 files.
    image_subtype = subtype.replace("test-dev", "test")

    rows: list[tuple[str, dict]] = []  # (where, question record)
    for i, q in enumerate(doc["questions"]):
        where = _where(path, "questions", i, q)
        found = missing_fields(q, QUESTION_FIELDS, where) if isinstance(q, dict) else [f"{where}: must be a JSON object"]
        problems.extend(found)
        if not found:
            rows.append((where, q))
    problems.extend(duplicates((str(q["question_id"]), where) for where, q in rows))
    collect_or_raise(problems, hint=f"{path} should be an official VQA v2 questions file.")

    examples = []
    for _, q in rows:
        examples.append({
            "id": str(q["question_id"]), "task": "vqa", "split": req.split,
            "media": [f"COCO_{image_subtype}_{q['image_id']:012d}"],
            "question": q["question"], "image_id": q["image_id"],
        })
    if req.annotations is not None:
        _add_annotations(examples, rows, subtype, req.annotations, path)
    return examples


def _add_annotations(examples: list[dict], rows: list[tuple[str, dict]], subtype: str,
                     path: Path, questions_path: Path) -> None:
    doc = read_json(path, what="VQA v2 annotations JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise VLError(f"{path}: field 'annotations' must be a list; is this the VQA v2 annotations JSON "
                      "(v2_mscoco_*_annotations.json)?")
    if doc.get("data_subtype", subtype) != subtype:
        raise VLError(f"{path}: annotations of {doc['data_subtype']!r} do not belong to the questions of "
                      f"{subtype!r} in {questions_path}; pass the annotations of the same split")
    problems: list[str] = []
    by_qid: dict[int, tuple[str, dict]] = {}
    for i, a in enumerate(doc["annotations"]):
        where = _where(path, "annotations", i, a)
        found = missing_fields(a, ANNOTATION_FIELDS, where) if isinstance(a, dict) else [f"{where}: must be a JSON object"]
        found = found or _check_human_answers(a["answers"], where)
        problems.extend(found)
        if not found:
            if a["question_id"] in by_qid:
                problems.append(f"{where}: duplicate question_id {a['question_id']} (first at {by_qid[a['question_id']][0]})")
            else:
                by_qid[a["question_id"]] = (where, a)

    question_ids = set()
    for ex, (q_where, q) in zip(examples, rows):
        question_ids.add(q["question_id"])
        if q["question_id"] not in by_qid:
            problems.append(f"{q_where}: no annotation in {path} for this question "
                            "(field 'question_id'); are the two files of the same split?")
            continue
        a_where, a = by_qid[q["question_id"]]
        if a["image_id"] != q["image_id"]:
            problems.append(f"{a_where}: field 'image_id' is {a['image_id']} but the question in "
                            f"{questions_path} has image_id {q['image_id']}")
            continue
        answers = [h["answer"] for h in sorted(a["answers"], key=lambda h: h["answer_id"])]
        ex.update(answers=answers, labels=vqa_soft_scores(answers), answer_type=a["answer_type"],
                  question_type=a["question_type"], multiple_choice_answer=a["multiple_choice_answer"])
    for qid, (a_where, _) in by_qid.items():
        if qid not in question_ids:
            problems.append(f"{a_where}: field 'question_id' {qid} is not in the questions file {questions_path}")
    collect_or_raise(problems, hint=f"{path} should be the official VQA v2 annotations of the questions in {questions_path}.")


def _check_human_answers(answers: list, where: str) -> list[str]:
    if len(answers) != ANSWERS_PER_QUESTION:
        return [f"{where}: field 'answers' must hold exactly {ANSWERS_PER_QUESTION} human answers (got {len(answers)})"]
    problems = []
    for j, h in enumerate(answers):
        if not isinstance(h, dict):
            problems.append(f"{where}: answers[{j}] must be a JSON object")
        else:
            problems.extend(missing_fields(h, HUMAN_ANSWER_FIELDS, f"{where} answers[{j}]"))
    if not problems and sorted(h["answer_id"] for h in answers) != list(range(1, ANSWERS_PER_QUESTION + 1)):
        problems.append(f"{where}: field 'answer_id' of the answers must be 1..{ANSWERS_PER_QUESTION}, "
                        f"once each (got {[h['answer_id'] for h in answers]})")
    return problems


def _from_lxmert(records: list, req: ConvertRequest) -> list[dict]:
    path = req.questions
    problems: list[str] = []
    examples, wheres = [], []
    for i, r in enumerate(records):
        where = _where(path, "", i, r)
        if not isinstance(r, dict):
            problems.append(f"{where}: must be a JSON object with img_id, question_id, sent")
            continue
        found = missing_fields(r, LXMERT_FIELDS, where)
        match = _MEDIA_ID.match(r["img_id"]) if not found else None
        if not found and match is None:
            found.append(f"{where}: field 'img_id' must look like COCO_val2014_000000393267 (got {r['img_id']!r})")
        if "label" in r and not (isinstance(r["label"], dict) and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) for s in r["label"].values())):
            found.append(f"{where}: field 'label' must be an object of answer: score (got {r['label']!r:.60})")
        problems.extend(found)
        if found:
            continue
        ex = {"id": str(r["question_id"]), "task": "vqa", "split": req.split, "media": [r["img_id"]],
              "question": r["sent"], "image_id": int(match.group(1))}
        if "label" in r:
            ex["labels"] = dict(r["label"])
        ex.update({k: r[k] for k in ("answer_type", "question_type") if k in r})
        examples.append(ex)
        wheres.append(where)
    problems.extend(duplicates((ex["id"], where) for ex, where in zip(examples, wheres)))
    collect_or_raise(problems, hint=f"{path} should be an LXMERT/VL-T5 VQA file (a JSON list of "
                                    "{img_id, question_id, sent, label}).")
    return examples


def _read_image_ids(path: Path) -> tuple[set[int], set[str]]:
    """The images to keep: a JSON list, or one id per line; each an int COCO id
    (393267, "393267") or a media id ("COCO_val2014_000000393267")."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        entries = [(f"{path}: [{i}]", e) for i, e in enumerate(read_json(path, what="image id list"))]
    else:
        entries = [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    ints, media, problems = set(), set(), []
    for where, entry in entries:
        if isinstance(entry, int) and not isinstance(entry, bool):
            ints.add(entry)
        elif isinstance(entry, str) and entry.strip().isdigit():
            ints.add(int(entry))
        elif isinstance(entry, str) and _MEDIA_ID.match(entry.strip()):
            media.add(entry.strip())
        else:
            problems.append(f"{where}: {entry!r:.60} is not an image id (393267 or COCO_val2014_000000393267)")
    collect_or_raise(problems, hint=f"{path} should list image ids, as a JSON list or one per line.")
    return ints, media


def _where(path: Path, key: str, index: int, record: object) -> str:
    """`file: questions[3] (question_id 42)`, or `file: [3] ...` for a top-level list."""
    where = f"{path}: {key}[{index}]"
    if isinstance(record, dict) and isinstance(record.get("question_id"), int):
        where += f" (question_id {record['question_id']})"
    return where
