"""COCO captions: Karpathy's `dataset_coco.json` (see vl.data_manifests.karpathy) into
`caption` examples, one per image.

`--split train` with `restval_into_train` also takes the 30k "restval" images, as
VL-T5 and VL-Adapter train on (113k images). The references are the `raw` sentences,
stripped; `sent_ids` are their `sentid`s in the same order. `--exclude-images M.jsonl`
(pre-training on Karpathy train) leaves out the images of M by COCO id
(vl.data_manifests.exclusion).
"""
from __future__ import annotations

from vl.data_manifests.karpathy import media_id, present_splits, read_karpathy_images
from vl.data_manifests.registry import ConvertRequest, register
from vl.shared.errors import VLError
from vl.shared.manifest import missing_fields

SENTENCE_FIELDS = {"raw": str, "sentid": int}


@register("coco-caption", task="caption", media="image", needs=("karpathy",), accepts=("restval_into_train", "exclude_images"),
          reads="Karpathy's dataset_coco.json ({images: [{filename, cocoid, split, sentences: [{raw, sentid}]}]})")
def convert(req: ConvertRequest) -> list[dict]:
    if req.restval_into_train and req.split != "train":
        raise VLError(f"--restval-into-train adds the restval images to --split train, not to {req.split!r}; "
                      "drop the flag or use --split train")
    path = req.karpathy
    assert path is not None, "needs=('karpathy',) is checked by convert_dataset"
    images = read_karpathy_images(path, check=_sentence_problems, keep=_references)
    wanted = {"train", "restval"} if req.split == "train" and req.restval_into_train else {req.split}
    present = present_splits(images)
    if req.split not in present:
        raise VLError(f"{path}: no images of split {req.split!r}; the splits present are: {', '.join(present)}")
    return [{
        "id": str(img["cocoid"]), "task": "caption", "split": req.split,
        "media": [media_id(img)],
        "targets": img["targets"], "image_id": img["cocoid"], "sent_ids": img["sent_ids"],
    } for _, img in images if img["split"] in wanted]


def _references(img: dict) -> dict:
    """What an image keeps of its sentences (not their tokens): the stripped `raw` texts and their `sentid`s."""
    return {"targets": [s["raw"].strip() for s in img["sentences"]], "sent_ids": [s["sentid"] for s in img["sentences"]]}


def _sentence_problems(img: dict, where: str) -> list[str]:
    sentences = img.get("sentences")
    if not isinstance(sentences, list):
        return missing_fields(img, {"sentences": list}, where)
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
