"""The converter registry: one module per official release format, each registering
a function that turns the release files into manifest examples.

    @register("gqa", task="gqa", media="image", needs=("annotations",),
              reads="GQA balanced questions JSON ({qid: {imageId, question, answer, types, ...}})")
    def convert(req: ConvertRequest) -> list[dict]: ...

`convert_dataset` checks the request, runs the converter, and writes the manifest and
its meta (source files with sha256, counts, media root) atomically.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vl.shared.digests import sha256_file
from vl.shared.errors import VLError
from vl.shared.manifest import DatasetManifest, ManifestMeta, SourceFile, write_manifest

# Modules that register converters; imported on first lookup so `vl data --help` stays instant.
CONVERTER_MODULES = ("vqa2", "gqa", "nlvr2", "coco_caption", "value_qa", "value_caption")
FILE_FLAGS = ("questions", "annotations", "subtitles", "karpathy")


@dataclass
class ConvertRequest:
    """What `vl data convert` was given; converters read only what they need."""

    split: str
    questions: Path | None = None
    annotations: Path | None = None
    subtitles: Path | None = None
    karpathy: Path | None = None
    images: Path | None = None
    videos: Path | None = None
    restval_into_train: bool = False
    image_ids: Path | None = None  # optional list of image ids to keep (e.g. a Karpathy split)

    def files(self) -> list[Path]:
        return [p for p in (getattr(self, f) for f in FILE_FLAGS) if p is not None] + (
            [self.image_ids] if self.image_ids else [])

    def main_file(self) -> Path:
        """The main annotation file: --annotations, or --questions for one-file datasets."""
        path = self.annotations or self.questions
        assert path is not None, "checked by convert_dataset"
        return path


@dataclass
class Converter:
    name: str
    task: str
    media: str  # "image" or "video"
    needs: tuple[str, ...]  # request fields that must be given; "main" = --annotations or --questions
    reads: str
    convert: Callable[[ConvertRequest], list[dict]] = field(repr=False)
    module: str = ""


CONVERTERS: dict[str, Converter] = {}


def register(name: str, *, task: str, media: str, needs: tuple[str, ...], reads: str):
    def wrap(fn: Callable[[ConvertRequest], list[dict]]):
        assert name not in CONVERTERS, f"converter {name} registered twice"
        CONVERTERS[name] = Converter(name, task, media, needs, reads, fn, fn.__module__)
        return fn

    return wrap


def load_converters() -> dict[str, Converter]:
    for module in CONVERTER_MODULES:
        importlib.import_module(f"vl.data_manifests.{module}")
    return CONVERTERS


def get_converter(name: str) -> Converter:
    converters = load_converters()
    if name not in converters:
        raise VLError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(converters))}")
    return converters[name]


def convert_dataset(name: str, req: ConvertRequest, out: Path) -> DatasetManifest:
    """Convert and write `out` (+ meta); nothing is written if anything is wrong."""
    conv = get_converter(name)
    problems = []
    for need in conv.needs:
        if need == "main":
            if req.annotations is None and req.questions is None:
                problems.append(f"{name} needs its annotation file: --annotations FILE ({conv.reads})")
        elif getattr(req, need) is None:
            problems.append(f"{name} needs --{need.replace('_', '-')}")
    for path in req.files():
        if not path.is_file():
            problems.append(f"{path}: no such file")
    media_root = req.videos if conv.media == "video" else req.images
    other = req.images if conv.media == "video" else req.videos
    if other is not None:
        problems.append(f"{name} is a{'n image' if conv.media == 'image' else ' video'} dataset: "
                        f"use --{'images' if conv.media == 'image' else 'videos'} for its media root")
    if media_root is not None and not media_root.is_dir():
        problems.append(f"media root {media_root}: no such folder")
    if problems:
        raise VLError(problems, hint=f"Run `vl data convert --help` for the files each dataset reads. Nothing was written to {out}.")
    examples = conv.convert(req)
    if not examples:
        raise VLError(f"{name}: no examples for split {req.split!r} in {', '.join(map(str, req.files()))}; "
                      "check --split and the files")
    meta = ManifestMeta(
        dataset=name,
        converter=conv.module,
        sources=[SourceFile(str(p.resolve()), sha256_file(p)) for p in req.files()],
        media_root=str(media_root.resolve()) if media_root else None,
        has_answers=any("answers" in ex or "targets" in ex or "labels" in ex for ex in examples),
        extra={"split": req.split, "task": conv.task, "media": conv.media,
               "restval_into_train": req.restval_into_train},
    )
    return write_manifest(out, examples, meta)
