"""Visual Genome (v1.2 / v1.4 release JSON) into pre-training manifests, as VL-T5 pre-trains
on it (through LXMERT's preprocessed files):

    image_data.json           [{"image_id" (or "id"), "url": ".../VG_100K_2/1.jpg", "width", "height",
                                "coco_id": int | null, "flickr_id": int | null}, ...]
    region_descriptions.json  [{"id": image id, "regions": [{"region_id", "image_id", "phrase",
                                "x", "y", "width", "height"}, ...]}, ...]
    question_answers.json     [{"id": image id, "qas": [{"qa_id", "image_id", "question", "answer",
                                "q_objects", "a_objects"}, ...]}, ...]

- `vg-caption`: one `caption` example per image (id `vg-{image id}`), its targets the image's region phrases
  (whitespace collapsed), each once, those of at least three words: VL-T5 skips sentences
  of two words or fewer for T5/BART and repeated sentences of an image (VL-T5/src/
  pretrain_data.py:79-84). All phrases are kept (about 50 an image): the caption task
  trains one item per target, so every phrase is one training item, as each VG sentence
  is one example in VL-T5; a cap would drop most of VG's text.
- `vg-qa`: one `vqa` example per question (id `vgqa-{qa_id}`): `question`, `answers` [answer], `labels`
  {normalised answer: 1.0} (VL-T5's "qa" examples of the VG QA text source,
  pretrain_data.py:95-105, 364-386).

Media ids are the VG image ids as the files are named (`VG_100K/2354786.jpg`,
`VG_100K_2/1.jpg`: media id "2354786", "1"), which are GQA's `imageId`s too, so one store
of the VG images serves both. Each example carries `image_id` (the VG id, int) and, for a
VG image that is a COCO image, `coco_id` (from image_data.json), by which
`--exclude-images` leaves out COCO images of downstream val/test manifests. The ids are
prefixed so that they stay unique beside COCO and VQA ids in `vl data merge`.

A record with a missing or mistyped field, an image id repeated, or one absent from
image_data.json is an error naming the file and the record's index; an empty phrase,
question or answer is text the release sometimes has: it is skipped and counted in the
meta (`extra.skipped`).

The files are read one image record at a time (`json_stream.iter_json_array`): region_descriptions.json
holds 5.4M regions, several GB as Python objects when loaded whole; only the examples written stay in memory.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vl.data_manifests.registry import ConvertRequest, Converted, register
from vl.data_manifests.json_stream import iter_json_array
from vl.data_manifests.source_files import repeated_id
from vl.shared.answers import normalize_vqa_answer
from vl.shared.errors import ProblemList, collect_or_raise
from vl.shared.manifest import missing_fields

REGION_FIELDS = {"region_id": int, "phrase": str}
QA_FIELDS = {"qa_id": int, "question": str, "answer": str}
MIN_PHRASE_WORDS = 3  # VL-T5 pretrain_data.py:79 skips sentences of <= 2 words for T5 / BART
IMAGE_DATA = "Visual Genome image_data.json"
PROBLEMS_SHOWN = 20  # collect_or_raise's limit: a wrong file's millions of problems are counted, not kept


@register("vg-caption", task="caption", media="image", needs=("main", "image_data"), accepts=("exclude_images",),
          reads="Visual Genome region_descriptions.json ([{id, regions: [{region_id, phrase, ...}]}]) with "
                "--image-data image_data.json; --exclude-images M.jsonl leaves out M's images")
def convert_captions(req: ConvertRequest) -> Converted:
    path, coco_ids, records, problems = _read_release(req, "regions", "region_descriptions.json")
    skipped: Counter[str] = Counter()
    examples = []
    for where, image_id, record in records:
        phrases = []
        for _, region in _checked_items(record, "regions", REGION_FIELDS, where, problems):
            phrase = " ".join(region["phrase"].split())
            if not phrase:
                skipped["empty_phrases"] += 1
            elif len(phrase.split()) < MIN_PHRASE_WORDS:
                skipped["short_phrases"] += 1
            elif phrase in phrases:
                skipped["repeated_phrases"] += 1
            else:
                phrases.append(phrase)
        if not phrases:
            skipped["images_without_phrases"] += 1
            continue
        examples.append({"id": f"vg-{image_id}", "task": "caption", "split": req.split, "media": [str(image_id)],
                         "targets": phrases, **_image_fields(image_id, coco_ids)})
    collect_or_raise(problems, hint=f"{path} should be Visual Genome's region_descriptions.json.")
    return Converted(examples, {"skipped": dict(sorted(skipped.items())), "min_phrase_words": MIN_PHRASE_WORDS})


@register("vg-qa", task="vqa", media="image", needs=("main", "image_data"), accepts=("exclude_images",),
          reads="Visual Genome question_answers.json ([{id, qas: [{qa_id, question, answer, ...}]}]) with "
                "--image-data image_data.json; --exclude-images M.jsonl leaves out M's images")
def convert_questions(req: ConvertRequest) -> Converted:
    path, coco_ids, records, problems = _read_release(req, "qas", "question_answers.json")
    skipped: Counter[str] = Counter()
    examples, first = [], {}
    for where, image_id, record in records:
        for at, qa in _checked_items(record, "qas", QA_FIELDS, where, problems):
            question, answer = " ".join(qa["question"].split()), " ".join(qa["answer"].split())
            label = normalize_vqa_answer(answer)
            if not question or not label:
                skipped["empty_questions" if not question else "empty_answers"] += 1
                continue
            ident = f"vgqa-{qa['qa_id']}"
            if not repeated_id(ident, at, first, problems):
                examples.append({"id": ident, "task": "vqa", "split": req.split, "media": [str(image_id)],
                                 "question": question, "answers": [answer], "labels": {label: 1.0},
                                 **_image_fields(image_id, coco_ids)})
    collect_or_raise(problems, hint=f"{path} should be Visual Genome's question_answers.json (qa_id unique).")
    return Converted(examples, {"skipped": dict(sorted(skipped.items()))})


def read_image_data(path: Path | None) -> dict[int, int | None]:
    """{VG image id: COCO id or None} of every image in image_data.json."""
    assert path is not None, "needs=('image_data',) is checked by convert_dataset"
    problems: list[str] = ProblemList(keep=PROBLEMS_SHOWN)
    out: dict[int, int | None] = {}
    first: dict[str, str] = {}
    for i, record in enumerate(iter_json_array(path, what=IMAGE_DATA, must_be="a JSON list of images")):
        where = f"{path}: [{i}]"
        image_id = _image_id(record)
        if image_id is None:
            problems.append(f"{where}: needs an integer 'image_id' (or 'id'), the VG image id")
            continue
        coco = record.get("coco_id")
        if coco is not None and not isinstance(coco, int):
            problems.append(f"{where} (image {image_id}): field 'coco_id' must be an integer or null (got {coco!r:.40})")
            continue
        if repeated_id(str(image_id), f"{where} (image {image_id})", first, problems):
            continue
        out[image_id] = coco
    collect_or_raise(problems, hint=f"{path} should be Visual Genome's image_data.json.")
    return out


def _read_release(req: ConvertRequest, list_field: str, name: str):
    """The main file, {VG id: COCO id} of image_data.json (read first: the smaller file), the
    main file's checked image records (a generator: one record in memory at a time) and the
    list its problems are added to."""
    path = req.main_file()
    coco_ids = read_image_data(req.image_data)
    problems: list[str] = ProblemList(keep=PROBLEMS_SHOWN)
    return path, coco_ids, _image_records(path, list_field, coco_ids, name, problems), problems


def _image_id(record: Any) -> int | None:
    if not isinstance(record, dict):
        return None
    value = record.get("image_id", record.get("id"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _image_records(path: Path, list_field: str, known: dict[int, int | None], name: str, problems: list[str]):
    """(where, image id, record) of each image of a VG annotation list whose id is present,
    known to image_data.json and not repeated, and whose list field is a list; the file is
    read one image at a time, the other records' problems are added to `problems`."""
    first: dict[str, str] = {}
    for i, record in enumerate(iter_json_array(path, what=f"Visual Genome {name}", must_be="a JSON list of images")):
        where = f"{path}: [{i}]"
        image_id = _image_id(record)
        if image_id is None:
            problems.append(f"{where}: needs an integer 'id' (the VG image id)")
        elif image_id not in known:
            problems.append(f"{where}: image {image_id} is not in the --image-data file; give the image_data.json "
                            "of the same Visual Genome release")
        elif repeated_id(str(image_id), f"{where} (image {image_id})", first, problems):
            continue
        elif not isinstance(record.get(list_field), list):
            problems.extend(missing_fields(record, {list_field: list}, f"{where} (image {image_id})"))
        else:
            yield f"{where} (image {image_id})", image_id, record


def _checked_items(record: dict, list_field: str, fields: dict[str, type], where: str, problems: list[str]):
    """(where, item) of each item of `record[list_field]` that has `fields`; the others' problems
    are appended to `problems`."""
    for j, item in enumerate(record[list_field]):
        at = f"{where} {list_field}[{j}]"
        found = missing_fields(item, fields, at) if isinstance(item, dict) else [f"{at}: must be a JSON object"]
        problems.extend(found)  # not +=: a ProblemList counts what it does not keep
        if not found:
            yield at, item


def _image_fields(image_id: int, coco_ids: dict[int, int | None]) -> dict:
    coco = coco_ids[image_id]
    return {"image_id": image_id, **({"coco_id": coco} if coco is not None else {})}
