"""Keeping downstream evaluation images out of pre-training data.

VL-T5 pre-trains on COCO Karpathy train and Visual Genome, never on the images of the
downstream val/test splits. `--exclude-images M.jsonl` (repeatable) on `coco-caption`,
`vg-caption` and `vg-qa` drops every image that a manifest M uses; `vl data check P.jsonl
--against M.jsonl` refuses a pre-training manifest P that shares images with M.

An image is the same image in two manifests when

- their media ids are equal (a VG image and a GQA image: both the VG id, "2354786"), or
- both are COCO images with the same COCO id: a COCO media id ("COCO_val2014_000000391895",
  VQA v2 and COCO captions) carries its id, and a Visual Genome image that is a COCO image
  carries it as `coco_id` (from VG's image_data.json).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vl.shared.errors import VLError
from vl.shared.manifest import DatasetManifest

# "COCO_val2014_000000391895" -> 391895
_COCO_MEDIA_ID = re.compile(r"^COCO_\w+?_(\d+)$")
SHOWN = 5  # overlapping images named in a message


def coco_id_of_media(media_id: str) -> int | None:
    match = _COCO_MEDIA_ID.match(media_id)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Image:
    """One image of a manifest as exclusion compares it."""

    media_id: str
    coco_id: int | None = None


def images_of(examples: Iterable[dict]) -> dict[str, Image]:
    """{media id: Image} of every image the examples look at."""
    out: dict[str, Image] = {}
    for ex in examples:
        for media_id in ex["media"]:
            coco = coco_id_of_media(media_id)
            if coco is None and isinstance(ex.get("coco_id"), int) and len(ex["media"]) == 1:
                coco = ex["coco_id"]  # a Visual Genome image that is a COCO image
            out.setdefault(media_id, Image(media_id, coco))
    return out


@dataclass
class ExcludedImages:
    """The images of the `--exclude-images` manifests."""

    media_ids: set[str] = field(default_factory=set)
    coco_ids: set[int] = field(default_factory=set)
    manifests: list[dict[str, Any]] = field(default_factory=list)  # {path, images, coco_images} each

    @classmethod
    def read(cls, paths: list[Path]) -> "ExcludedImages":
        """The manifests' images; a bad manifest is one VLError naming it (DatasetManifest.read)."""
        out = cls()
        for path in paths:
            images = images_of(DatasetManifest.read(path).examples)
            coco = {im.coco_id for im in images.values() if im.coco_id is not None}
            out.media_ids |= set(images)
            out.coco_ids |= coco
            out.manifests.append({"path": str(path.resolve()), "images": len(images), "coco_images": len(coco)})
        return out

    def matches(self, image: Image) -> str | None:
        """How `image` is excluded ("media_id" or "coco_id"), or None if it is kept."""
        if image.media_id in self.media_ids:
            return "media_id"
        if image.coco_id is not None and image.coco_id in self.coco_ids:
            return "coco_id"
        return None

    def drop(self, examples: list[dict]) -> tuple[list[dict], dict[str, Any]]:
        """The examples whose images are all kept, and the meta's `excluded_images` record:
        the manifests, images and examples dropped, how the images matched, the first few."""
        how: dict[str, str] = {}
        for media_id, image in images_of(examples).items():
            matched = self.matches(image)
            if matched:
                how[media_id] = matched
        kept = [ex for ex in examples if not any(m in how for m in ex["media"])]
        record = {
            "manifests": self.manifests,
            "dropped_images": len(how),
            "dropped_examples": len(examples) - len(kept),
            "matched_by": {key: sum(v == key for v in how.values()) for key in ("media_id", "coco_id")},
            "first_dropped": sorted(how)[:SHOWN],
        }
        return kept, record


def overlap_problems(path: Path, against: list[Path]) -> list[str]:
    """One problem per manifest of `against` that shares images with the manifest at `path`
    (media id, or COCO id through a VG image's coco_id): what `vl data check --against` raises."""
    images = images_of(DatasetManifest.read(path).examples)
    problems = []
    for other in against:
        excluded = ExcludedImages.read([other])
        shared = sorted(m for m, im in images.items() if excluded.matches(im))
        if shared:
            shown = ", ".join(shared[:SHOWN]) + (" ..." if len(shared) > SHOWN else "")
            problems.append(f"{path}: {len(shared)} of its {len(images)} images are images of {other} ({shown}); "
                            f"convert it again with --exclude-images {other} to leave them out")
    return problems


def require_no_overlap(path: Path, against: list[Path]) -> None:
    problems = overlap_problems(path, against)
    if problems:
        raise VLError(problems, hint="Pre-training must not see the images its downstream val/test splits are "
                                     "scored on (VL-T5 left them out).")
