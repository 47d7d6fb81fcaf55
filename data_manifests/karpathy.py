"""Karpathy's COCO split file, `dataset_coco.json`: which COCO images are train, restval,
val and test. COCO captions (`coco-caption`) take their references from it; VQA v2
(`vqa2 --karpathy`) keeps the questions on the images of one of its splits.

    {"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
      "imgid", "split": "train"|"val"|"test"|"restval", "sentids": [...], "cocoid": 391895,
      "sentences": [{"raw", "tokens", "imgid", "sentid"}]}]}

VL-T5 and VL-Adapter train on train + restval (113,287 images), validate on val and
test on test (5,000 images each); the val, test and restval images all come from COCO's
val2014.

The file (123k images, 616k sentences with their tokens) is read one image at a time
(`json_stream.iter_json_array_member`); what stays of each image is its IMAGE_FIELDS,
`filepath` and what the caller's `keep` takes (coco-caption: the references).
"""
from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any, Callable

from vl.data_manifests.json_stream import iter_json_array_member
from vl.data_manifests.source_files import duplicates
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import missing_fields

IMAGE_FIELDS = {"filename": str, "cocoid": int, "split": str}
# --karpathy-split -> the `split` values of dataset_coco.json it takes (VL-T5 renames restval to train)
SPLIT_IMAGES = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
# "COCO_val2014_000000391895" -> "val2014"
_SUBTYPE = re.compile(r"^COCO_(\w+?)_\d+$")

RecordCheck = Callable[[dict, str], list[str]]
RecordKeep = Callable[[dict], dict[str, Any]]


def read_karpathy_images(path: Path, *, check: RecordCheck | None = None,
                         keep: RecordKeep | None = None) -> list[tuple[str, dict]]:
    """[(where, image)] of every image in the file: the record's IMAGE_FIELDS and `filepath`,
    plus `keep(record)` (fields of the caller's own), once the record has passed
    `check(record, where)`; all problems raised as one VLError."""
    problems: list[str] = []
    images = []
    records = iter_json_array_member(path, "images", what="Karpathy split file dataset_coco.json",
                                     must_be="a JSON list of images")
    for i, img in enumerate(records):
        where = f"{path}: images[{i}]"
        if isinstance(img, dict) and isinstance(img.get("cocoid"), int):
            where += f" (cocoid {img['cocoid']})"
        found = missing_fields(img, IMAGE_FIELDS, where) if isinstance(img, dict) else [f"{where}: must be a JSON object"]
        if not found and check is not None:
            found = check(img, where)
        problems.extend(found)
        if not found:
            kept = {field: img[field] for field in (*IMAGE_FIELDS, "filepath") if field in img}
            images.append((where, {**kept, **keep(img)} if keep is not None else kept))
    problems.extend(duplicates((str(img["cocoid"]), where) for where, img in images))
    collect_or_raise(problems, hint=f"{path} should be Karpathy's dataset_coco.json.")
    return images


def present_splits(images: list[tuple[str, dict]]) -> list[str]:
    return sorted({img["split"] for _, img in images})


def media_id(img: dict) -> str:
    """The image's media id, its file name without extension: COCO_val2014_000000391895."""
    return PurePath(img["filename"]).stem


def coco_subtype(img: dict) -> str:
    """train2014 or val2014: the record's `filepath`, else read from its file name."""
    if isinstance(img.get("filepath"), str) and img["filepath"]:
        return img["filepath"]
    match = _SUBTYPE.match(media_id(img))
    return match.group(1) if match else "?"


def split_image_ids(path: Path, karpathy_split: str) -> dict[int, str]:
    """{cocoid: COCO subtype} of the images of one Karpathy split (`train` = train + restval)."""
    if karpathy_split not in SPLIT_IMAGES:
        raise VLError(f"--karpathy-split must be one of: {', '.join(SPLIT_IMAGES)} (got {karpathy_split!r})")
    images = read_karpathy_images(path)
    wanted = SPLIT_IMAGES[karpathy_split]
    kept = {img["cocoid"]: coco_subtype(img) for _, img in images if img["split"] in wanted}
    if not kept:
        raise VLError(f"{path}: no images of Karpathy split {karpathy_split!r} ({' or '.join(wanted)}); the splits "
                      f"present are: {', '.join(present_splits(images))}; is this Karpathy's dataset_coco.json?")
    return kept
