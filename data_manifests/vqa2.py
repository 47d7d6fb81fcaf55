"""VQA v2: the official questions JSON (+ annotations JSON for train/val), or the
LXMERT / VL-T5 preprocessed JSON, into `vqa` examples.

Official files (visualqa.org):
    questions   {"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}], ...}
    annotations {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
                 "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}] x 10}]}
Test splits ship questions only: their examples carry no `answers` and no `labels`.
Both are streamed (`json_stream.iter_json_array_member`), their members in any order;
the join by question_id keeps each annotation compact (`_read_annotations`), so memory
holds the examples and those tuples, not the files' records (443k training questions
with ten answer records each are GBs as Python objects).

LXMERT / VL-T5 file (given as --questions, no --annotations; recognised by being a
JSON list): [{"img_id": "COCO_val2014_000000393267", "question_id", "sent",
"label": {answer: score}, "answer_type"?, "question_type"?}]. It keeps only the soft
labels, not the ten human answers, so its examples carry `labels` (copied as given)
and no `answers`; a file without `label` (their test split) gives neither.

The paper's recipe (VL-T5 / VL-Adapter) reads several files into one manifest:

- `--questions`/`--annotations` repeat, paired in order (train2014 and val2014);
- `--karpathy dataset_coco.json --karpathy-split train|val|test` keeps the questions on
  the images of one Karpathy split (train = Karpathy's train + restval images, which
  span train2014 and val2014; val and test are 5,000 val2014 images each);
- `--answer-min-count 9` limits the training `labels` to the answer vocabulary: the
  normalised `multiple_choice_answer`s of at least 9 of the questions read (all of them,
  before the Karpathy filter: over train2014 + val2014 that is the 3,129-answer list of
  LXMERT and VL-T5); `--answer-vocab FILE` reads the vocabulary instead (a JSON list of
  answers, or LXMERT's trainval_ans2label.json {answer: index}). `answers` stay whole:
  the official accuracy scores against all ten. A question with no answer in the
  vocabulary keeps empty `labels` and is not trained on.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from vl.data_manifests.json_stream import iter_json_array, iter_json_array_member, top_level_opener
from vl.data_manifests.karpathy import split_image_ids
from vl.data_manifests.registry import ConvertRequest, Converted, register
from vl.data_manifests.source_files import duplicates, read_json
from vl.shared.answers import normalize_vqa_answer, vqa_answer_vocabulary, vqa_soft_scores
from vl.shared.digests import digest_json
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import missing_fields

QUESTION_FIELDS = {"image_id": int, "question": str, "question_id": int}
ANNOTATION_FIELDS = {"question_id": int, "image_id": int, "question_type": str, "answer_type": str,
                     "multiple_choice_answer": str, "answers": list}
HUMAN_ANSWER_FIELDS = {"answer": str, "answer_id": int}
LXMERT_FIELDS = {"img_id": str, "question_id": int, "sent": str}
ANSWERS_PER_QUESTION = 10
QUESTIONS_FILE = "VQA v2 questions JSON (v2_OpenEnded_mscoco_*_questions.json, or the LXMERT/VL-T5 VQA JSON list)"
ANNOTATIONS_FILE = "VQA v2 annotations JSON (v2_mscoco_*_annotations.json)"
# "COCO_val2014_000000393267" -> subtype "val2014", image id 393267
_MEDIA_ID = re.compile(r"^COCO_(\w+?)_(\d+)$")


@register("vqa2", task="vqa", media="image", needs=("questions",),
          accepts=("annotations", "image_ids", "karpathy", "karpathy_split", "answer_vocab", "answer_min_count"),
          several=("questions", "annotations"),
          reads="VQA v2 questions JSON (+ --annotations JSON for train/val; both repeat, paired in order), or the "
                "LXMERT/VL-T5 JSON list as --questions; --karpathy F --karpathy-split S or --image-ids F keep "
                "only some images; --answer-min-count N or --answer-vocab F limit the labels to a vocabulary")
def convert(req: ConvertRequest) -> Converted:
    collect_or_raise(_request_problems(req), hint="Run `vl data convert --help` for how vqa2 reads its files.")
    # the small files first: a bad id list or vocabulary shows before the large files are read
    keep = _read_image_ids(req.image_ids) if req.image_ids is not None else None
    karpathy = split_image_ids(req.karpathy, req.karpathy_split) if req.karpathy is not None else None
    vocab_file = _read_vocabulary(req.answer_vocab) if req.answer_vocab is not None else None

    examples: list[dict] = []
    wheres: list[str] = []
    per_file: dict[str, int] = {}
    for i, path in enumerate(req.questions):
        annotations = req.annotations[i] if req.annotations else None
        if top_level_opener(path, what=QUESTIONS_FILE) == "[":
            if annotations is not None:
                raise VLError(f"{path}: is a JSON list, the LXMERT/VL-T5 format, which carries its own labels; "
                              "drop --annotations, or pass the official questions JSON as --questions")
            records = iter_json_array(path, what=QUESTIONS_FILE, must_be="a JSON list of questions")
            found, found_wheres = _from_lxmert(records, path, req.split)
        else:
            found, found_wheres = _from_official(path, annotations, req.split)
        examples += found
        wheres += found_wheres
        per_file[str(path.resolve())] = len(found)
    collect_or_raise(duplicates((ex["id"], where) for ex, where in zip(examples, wheres)),
                     hint="Each question may be read once: give each file once, and files of different splits.")

    extra: dict = {}
    if len(req.questions) > 1:
        extra["questions_per_file"] = per_file
    vocabulary = None
    if req.answer_min_count is not None:  # counted over every question read, before any filter
        vocabulary = vqa_answer_vocabulary((ex["multiple_choice_answer"] for ex in examples), req.answer_min_count)
        extra["answer_vocabulary"] = {
            "rule": "min_count", "min_count": req.answer_min_count, "questions_counted": len(examples),
            "counted_in": [str(p.resolve()) for p in req.annotations],
            "size": len(vocabulary), "sha256": digest_json(vocabulary)}
    elif vocab_file is not None:
        vocabulary, entries = vocab_file
        extra["answer_vocabulary"] = {
            "rule": "file", "file": str(req.answer_vocab.resolve()), "file_entries": entries,
            "size": len(vocabulary), "sha256": digest_json(vocabulary)}

    if keep is not None:
        keep_ints, keep_media = keep
        examples = [ex for ex in examples if ex["image_id"] in keep_ints or ex["media"][0] in keep_media]
    if karpathy is not None:
        extra["karpathy"] = _karpathy_filter_facts(req, karpathy, examples)
        examples = [ex for ex in examples if ex["image_id"] in karpathy]
        extra["karpathy"]["images_with_questions"] = len({ex["image_id"] for ex in examples})
    if vocabulary is not None:
        allowed = set(vocabulary)
        for ex in examples:
            if "labels" in ex:
                ex["labels"] = {a: s for a, s in ex["labels"].items() if a in allowed}
        extra["answer_vocabulary"]["questions_without_label"] = sum(
            1 for ex in examples if "labels" in ex and not ex["labels"])
    return Converted(examples, extra)


def _request_problems(req: ConvertRequest) -> list[str]:
    """What is wrong with the combination of options (no file read)."""
    problems = []
    if req.annotations and len(req.annotations) != len(req.questions):
        problems.append(f"give one --annotations per --questions, in the same order (got {len(req.questions)} "
                        f"--questions, {len(req.annotations)} --annotations); test splits have no annotations: "
                        "convert them on their own")
    if req.karpathy is not None and req.image_ids is not None:
        problems.append("give --karpathy (with --karpathy-split) or --image-ids, not both")
    if req.karpathy is not None and req.karpathy_split is None:
        problems.append("vqa2 --karpathy needs --karpathy-split train|val|test (train: Karpathy's train and restval "
                        "images, as VL-T5 and VL-Adapter train on)")
    if req.karpathy_split is not None and req.karpathy is None:
        problems.append("--karpathy-split needs --karpathy dataset_coco.json (Karpathy's split file)")
    if req.answer_min_count is not None and req.answer_vocab is not None:
        problems.append("give --answer-min-count N or --answer-vocab FILE, not both")
    if req.answer_min_count is not None:
        if req.answer_min_count < 1:
            problems.append(f"--answer-min-count must be >= 1 (got {req.answer_min_count}); the paper's is 9")
        if not req.annotations:
            problems.append("--answer-min-count counts the multiple_choice_answer of the official annotations: give "
                            "--annotations for every --questions file (train2014 and val2014 for the paper's "
                            "vocabulary), or read a vocabulary file with --answer-vocab")
    return problems


def _karpathy_filter_facts(req: ConvertRequest, karpathy: dict[int, str], examples: list[dict]) -> dict:
    """The Karpathy filter's record for the meta; raises when a COCO subtype of the split's
    images (train2014, val2014) has no questions file at all, the usual mistake being the
    train split from the train2014 files alone (its restval images are val2014 images)."""
    given = {m.group(1) for ex in examples if (m := _MEDIA_ID.match(ex["media"][0]))}
    needed: dict[str, int] = {}
    for subtype in karpathy.values():
        needed[subtype] = needed.get(subtype, 0) + 1
    missing = sorted(set(needed) - given)
    if missing:
        raise VLError([f"{req.karpathy}: Karpathy split {req.karpathy_split!r} holds {needed[s]} {s} images, but no "
                       f"--questions file has questions on {s} images: add --questions "
                       f"v2_OpenEnded_mscoco_{s}_questions.json --annotations v2_mscoco_{s}_annotations.json"
                       for s in missing],
                      hint="The paper's Karpathy splits read both the train2014 and the val2014 files.")
    return {"split": req.karpathy_split, "images": len(karpathy), "images_per_subtype": dict(sorted(needed.items()))}


def _read_vocabulary(path: Path) -> tuple[list[str], int]:
    """(answers, entries in the file) of a vocabulary file: a JSON list of answers
    (LXMERT's trainval_label2ans.json), or {answer: index} (trainval_ans2label.json).
    Entries are normalised as the labels are, so an entry written another way still
    matches; the result is sorted and unique."""
    doc = read_json(path, what="answer vocabulary (a JSON list of answers, or {answer: index})")
    problems: list[str] = []
    if isinstance(doc, dict):
        entries = list(doc)
        problems += [f"{path}: answer {a!r}: index must be int (got {i!r:.40})" for a, i in doc.items()
                     if not isinstance(i, int) or isinstance(i, bool)]
        indices = [i for i in doc.values() if isinstance(i, int)]
        if len(set(indices)) != len(indices):
            problems.append(f"{path}: two answers share an index; is this an {{answer: index}} file such as "
                            "trainval_ans2label.json?")
    elif isinstance(doc, list):
        entries = doc
        problems += [f"{path}: [{i}] must be an answer string (got {e!r:.40})" for i, e in enumerate(doc)
                     if not isinstance(e, str)]
        problems += duplicates((e, f"{path}: [{i}]") for i, e in enumerate(doc) if isinstance(e, str))
    else:
        raise VLError(f"{path}: must be a JSON list of answers or an object {{answer: index}} "
                      "(LXMERT's trainval_label2ans.json / trainval_ans2label.json)")
    if not entries:
        problems.append(f"{path}: holds no answers")
    collect_or_raise(problems, hint=f"{path} should be an answer vocabulary.")
    return sorted({normalize_vqa_answer(e) for e in entries}), len(entries)


def _from_official(path: Path, annotations: Path | None, split: str) -> tuple[list[dict], list[str]]:
    """(examples, where each question is) of an official questions file, with its annotations.
    Both files are streamed (`json_stream`): what stays is the examples and the compact
    annotations of `_read_annotations`, never the files' records."""
    head: dict = {}  # the members beside "questions": data_subtype, info, license, ...
    problems: list[str] = []
    examples, wheres = [], []
    for i, q in enumerate(iter_json_array_member(path, "questions", what=QUESTIONS_FILE,
                                                 must_be="a JSON list of questions", others=head)):
        where = _where(path, "questions", i, q)
        found = missing_fields(q, QUESTION_FIELDS, where) if isinstance(q, dict) else [f"{where}: must be a JSON object"]
        problems.extend(found)
        if not found:  # media is set once data_subtype is known: it may follow the questions
            examples.append({"id": str(q["question_id"]), "task": "vqa", "split": split, "media": None,
                             "question": q["question"], "image_id": q["image_id"]})
            wheres.append(where)
    problems[:0] = missing_fields(head, {"data_subtype": str}, str(path))
    problems.extend(duplicates((ex["id"], where) for ex, where in zip(examples, wheres)))
    collect_or_raise(problems, hint=f"{path} should be an official VQA v2 questions file.")
    subtype = head["data_subtype"]
    # test-dev questions name their subtype "test-dev2015", but the images are test2015 files.
    image_subtype = subtype.replace("test-dev", "test")
    for ex in examples:
        ex["media"] = [f"COCO_{image_subtype}_{ex['image_id']:012d}"]
    if annotations is not None:
        _add_annotations(examples, wheres, subtype, annotations, path)
    return examples, wheres


def _add_annotations(examples: list[dict], wheres: list[str], subtype: str, path: Path, questions_path: Path) -> None:
    by_qid = _read_annotations(path, subtype, questions_path)
    problems: list[str] = []
    for ex, q_where in zip(examples, wheres):
        # popped: what is left at the end is the annotations of no question, and memory shrinks as examples grow
        a = by_qid.pop(int(ex["id"]), None)
        if a is None:
            problems.append(f"{q_where}: no annotation in {path} for this question "
                            "(field 'question_id'); are the two files of the same split?")
            continue
        index, image_id, answers, answer_type, question_type, multiple_choice_answer = a
        if image_id != ex["image_id"]:
            problems.append(f"{_where(path, 'annotations', index, {'question_id': int(ex['id'])})}: field 'image_id' is {image_id} but the "
                            f"question in {questions_path} has image_id {ex['image_id']}")
            continue
        ex.update(answers=list(answers), labels=vqa_soft_scores(answers), answer_type=answer_type,
                  question_type=question_type, multiple_choice_answer=multiple_choice_answer)
    for qid, a in by_qid.items():
        problems.append(f"{_where(path, 'annotations', a[0], {'question_id': qid})}: field 'question_id' {qid} is "
                        f"not in the questions file {questions_path}")
    collect_or_raise(problems, hint=f"{path} should be the official VQA v2 annotations of the questions in {questions_path}.")


# question_id -> (index in the file, image_id, the ten answers by answer_id, answer_type, question_type,
# multiple_choice_answer): what the join needs of an annotation (its record holds three fields per answer)
CompactAnnotations = dict[int, tuple[int, int, tuple[str, ...], str, str, str]]


def _read_annotations(path: Path, subtype: str, questions_path: Path) -> CompactAnnotations:
    """The annotations file, streamed, checked, kept compact: a repeated string (answers, types)
    is one object, as 443k training questions repeat a few thousand answers 4.4M times."""
    head: dict = {}
    problems: list[str] = []
    by_qid: CompactAnnotations = {}
    strings: dict[str, str] = {}
    for i, a in enumerate(iter_json_array_member(path, "annotations", what=ANNOTATIONS_FILE,
                                                 must_be="a JSON list of annotations", others=head)):
        where = _where(path, "annotations", i, a)
        found = missing_fields(a, ANNOTATION_FIELDS, where) if isinstance(a, dict) else [f"{where}: must be a JSON object"]
        found = found or _check_human_answers(a["answers"], where)
        problems.extend(found)
        if found:
            continue
        qid = a["question_id"]
        if qid in by_qid:
            problems.append(f"{where}: duplicate question_id {qid} (first at {_where(path, 'annotations', by_qid[qid][0], a)})")
            continue
        answers = tuple(strings.setdefault(h["answer"], h["answer"])
                        for h in sorted(a["answers"], key=lambda h: h["answer_id"]))
        by_qid[qid] = (i, a["image_id"], answers, *(strings.setdefault(a[f], a[f]) for f in
                                                    ("answer_type", "question_type", "multiple_choice_answer")))
    if head.get("data_subtype", subtype) != subtype:
        raise VLError(f"{path}: annotations of {head['data_subtype']!r} do not belong to the questions of "
                      f"{subtype!r} in {questions_path}; pass the annotations of the same split, each "
                      "--annotations after its --questions")
    collect_or_raise(problems, hint=f"{path} should be the official VQA v2 annotations of the questions in {questions_path}.")
    return by_qid


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


def _from_lxmert(records: Iterable, path: Path, split: str) -> tuple[list[dict], list[str]]:
    """(examples, where each record is) of an LXMERT / VL-T5 JSON list."""
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
        ex = {"id": str(r["question_id"]), "task": "vqa", "split": split, "media": [r["img_id"]],
              "question": r["sent"], "image_id": int(match.group(2))}
        if "label" in r:
            ex["labels"] = dict(r["label"])
        ex.update({k: r[k] for k in ("answer_type", "question_type") if k in r})
        examples.append(ex)
        wheres.append(where)
    problems.extend(duplicates((ex["id"], where) for ex, where in zip(examples, wheres)))
    collect_or_raise(problems, hint=f"{path} should be an LXMERT/VL-T5 VQA file (a JSON list of "
                                    "{img_id, question_id, sent, label}).")
    return examples, wheres


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
