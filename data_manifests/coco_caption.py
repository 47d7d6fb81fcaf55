"""COCO captions: Karpathy's `dataset_coco.json` into `caption` examples, one per image.

    {"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
      "imgid", "split": "train"|"val"|"test"|"restval", "sentids": [...], "cocoid": 391895,
      "sentences": [{"raw", "tokens", "imgid", "sentid"}]}]}

`--split train` with `restval_into_train` also takes the 30k "restval" images, as
VL-T5 and VL-Adapter train on (113k images). The references are the `raw` sentences,
stripped; `sent_ids` are their `sentid`s in the same order.
"""
from __future__ import annotations

from pathlib import PurePath

from vl.data_manifests.registry import ConvertRequest, register
from vl.data_manifests.source_files import duplicates, missing_fields, read_json
from vl.shared.errors import VLError, collect_or_raise

IMAGE_FIELDS = {"filename": str, "cocoid": int, "split": str, "sentences": list}
SENTENCE_FIELDS = {"raw": str, "sentid": int}


@register("coco-caption", task="caption", media="image", needs=("karpathy",),
          reads="Karpathy's dataset_coco.json ({images: [{filename, cocoid, split, sentences: [{raw, sentid}]}]})")
def convert(req: ConvertRequest) -> list[dict]:
    if req.restval_into_train and req.split != "train":
        raise VLError(f"--restval-into-train adds the restval images to --split train, not to {req.split!r}; "
                      "drop the flag or use --split train")
    path = req.karpathy
    doc = read_json(path, what="Karpathy split file dataset_coco.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise VLError(f"{path}: field 'images' must be a list; is this Karpathy's dataset_coco.json?")
    wanted = {"train", "restval"} if req.split == "train" and req.restval_into_train else {req.split}

    problems: list[str] = []
    images = []  # (where, image record)
    for i, img in enumerate(doc["images"]):
        where = f"{path}: images[{i}]"
        if isinstance(img, dict) and isinstance(img.get("cocoid"), int):
            where += f" (cocoid {img['cocoid']})"
        found = missing_fields(img, IMAGE_FIELDS, where) if isinstance(img, dict) else [f"{where}: must be a JSON object"]
        if not found:
            found = _sentence_problems(img["sentences"], where)
        problems.extend(found)
        if not found:
            images.append((where, img))
    problems.extend(duplicates((str(img["cocoid"]), where) for where, img in images))
    collect_or_raise(problems, hint=f"{path} should be Karpathy's dataset_coco.json.")

    present = sorted({img["split"] for _, img in images})
    if req.split not in present:
        raise VLError(f"{path}: no images of split {req.split!r}; the splits present are: {', '.join(present)}")
    return [{
        "id": str(img["cocoid"]), "task": "caption", "split": req.split,
        "media": [PurePath(img["filename"]).stem],
        "targets": [s["raw"].strip() for s in img["sentences"]],
        "image_id": img["cocoid"], "sent_ids": [s["sentid"] for s in img["sentences"]],
    } for _, img in images if img["split"] in wanted]


def _sentence_problems(sentences: list, where: str) -> list[str]:
    if not sentences:
        return [f"{where}: field 'sentences' is empty; every image has reference captions"]
    problems = []
    for j, s in enumerate(sentences):
        at = f"{where} sentences[{j}]"
        if not isinstance(s, dict):
            problems.append(f"{at}: must be a JSON object")
            continue
        found = missing_fields(s, SENTENCE_FIELDS, at)
        if not found and not s["raw"].strip():
            found.append(f"{at}: field 'raw' is empty")
        problems.extend(found)
    return problems
