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
        doc = read_json(path, what="VQA v2 questions JSON (or LXMERT/VL-T5 VQA JSON list)")
        annotations = req.annotations[i] if req.annotations else None
        if isinstance(doc, list):
            if annotations is not None:
                raise VLError(f"{path}: is a JSON list, the LXMERT/VL-T5 format, which carries its own labels; "
                              "drop --annotations, or pass the official questions JSON as --questions")
            found, found_wheres = _from_lxmert(doc, path, req.split)
        else:
            found, found_wheres = _from_official(doc, path, annotations, req.split)
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


def _from_official(doc: object, path: Path, annotations: Path | None, split: str) -> tuple[list[dict], list[str]]:
    """(examples, where each question is) of an official questions file, with its annotations."""
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
            "id": str(q["question_id"]), "task": "vqa", "split": split,
            "media": [f"COCO_{image_subtype}_{q['image_id']:012d}"],
            "question": q["question"], "image_id": q["image_id"],
        })
    if annotations is not None:
        _add_annotations(examples, rows, subtype, annotations, path)
    return examples, [where for where, _ in rows]


def _add_annotations(examples: list[dict], rows: list[tuple[str, dict]], subtype: str,
                     path: Path, questions_path: Path) -> None:
    doc = read_json(path, what="VQA v2 annotations JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise VLError(f"{path}: field 'annotations' must be a list; is this the VQA v2 annotations JSON "
                      "(v2_mscoco_*_annotations.json)?")
    if doc.get("data_subtype", subtype) != subtype:
        raise VLError(f"{path}: annotations of {doc['data_subtype']!r} do not belong to the questions of "
                      f"{subtype!r} in {questions_path}; pass the annotations of the same split, each "
                      "--annotations after its --questions")
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


def _from_lxmert(records: list, path: Path, split: str) -> tuple[list[dict], list[str]]:
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
