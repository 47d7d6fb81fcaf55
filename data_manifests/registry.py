"""The converter registry: one module per official release format, each registering
a function that turns the release files into manifest examples.

    @register("gqa", task="gqa", media="image", needs=("main",), several=("questions",),
              reads="GQA balanced questions JSON ({qid: {imageId, question, answer, types, ...}})")
    def convert(req: ConvertRequest) -> list[dict] | Converted: ...

`convert_dataset` checks the request (files exist, each option is one the converter
reads, --questions/--annotations given once unless the converter merges several), runs
the converter, and writes the manifest and its meta (source files with sha256, counts,
media root, and what the converter adds: vocabulary, split filter) atomically.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vl.data_manifests.exclusion import ExcludedImages
from vl.shared.atomic import refuse_overwriting_inputs
from vl.shared.digests import sha256_file
from vl.shared.errors import VLError
from vl.shared.manifest import DatasetManifest, ManifestMeta, SourceFile, meta_path_for, write_manifest
from vl.shared.registry import Registry

# Modules that register converters; imported on first lookup so `vl data --help` stays instant.
CONVERTER_MODULES = ("vqa2", "gqa", "nlvr2", "coco_caption", "visual_genome", "value_qa", "value_caption")
# Input files; --questions and --annotations may repeat where a converter merges several.
MULTI_FILE_FLAGS = ("questions", "annotations")
FILE_FLAGS = (*MULTI_FILE_FLAGS, "subtitles", "karpathy", "image_ids", "answer_vocab", "image_data", "exclude_images")
# Options beside the files, each read by only some converters (`accepts` of register).
OPTION_FLAGS = ("karpathy_split", "restval_into_train", "answer_min_count")


@dataclass
class ConvertRequest:
    """What `vl data convert` was given; converters read only what they need. `questions`
    and `annotations` are lists (the CLI options repeat); one bare path is accepted too."""

    split: str
    questions: list[Path] = field(default_factory=list)
    annotations: list[Path] = field(default_factory=list)
    subtitles: Path | None = None
    karpathy: Path | None = None
    images: Path | None = None
    videos: Path | None = None
    restval_into_train: bool = False
    image_ids: Path | None = None  # optional list of image ids to keep (vqa2)
    karpathy_split: str | None = None  # vqa2 with --karpathy: train (train + restval images), val or test
    answer_vocab: Path | None = None  # vqa2: labels only for the answers of this file
    answer_min_count: int | None = None  # vqa2: labels only for answers of >= this many questions
    image_data: Path | None = None  # Visual Genome's image_data.json (vg-caption, vg-qa): coco_id of each image
    exclude_images: list[Path] = field(default_factory=list)  # manifests whose images are left out (vl.data_manifests.exclusion)

    def __post_init__(self) -> None:
        for name in (*MULTI_FILE_FLAGS, "exclude_images"):
            value = getattr(self, name)
            if value is None:
                value = []
            elif isinstance(value, (str, os.PathLike)):
                value = [value]
            setattr(self, name, [Path(p) for p in value])

    def files(self) -> list[Path]:
        """Every input file, in the order of FILE_FLAGS (repeated flags in the order given)."""
        out: list[Path] = []
        for name in FILE_FLAGS:
            value = getattr(self, name)
            out += value if isinstance(value, list) else [value] if value is not None else []
        return out

    def named_files(self) -> list[tuple[str, Path]]:
        """(the option, path) of every input file, as files() orders them."""
        out: list[tuple[str, Path]] = []
        for name in FILE_FLAGS:
            value = getattr(self, name)
            out += [(f"--{name.replace('_', '-')}", p) for p in (value if isinstance(value, list) else [value])
                    if p is not None]
        return out

    def main_files(self) -> list[Path]:
        """The main annotation files: --annotations, or --questions for one-file datasets."""
        paths = self.annotations or self.questions
        assert paths, "checked by convert_dataset"
        return paths

    def main_file(self) -> Path:
        paths = self.main_files()
        assert len(paths) == 1, "convert_dataset lets several through only to converters that merge them"
        return paths[0]

    def given(self) -> list[str]:
        """The optional request fields that were set (file flags and options)."""
        return [name for name in (*FILE_FLAGS, *OPTION_FLAGS) if getattr(self, name) not in (None, [], False)]


@dataclass
class Converted:
    """A converter's examples, and what it adds to the meta's `extra` (answer
    vocabulary, split filter, examples per source file). A bare list means no extra."""

    examples: list[dict]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Converter:
    name: str
    task: str
    media: str  # "image" or "video"
    needs: tuple[str, ...]  # request fields that must be given; "main" = --annotations or --questions
    reads: str
    convert: Callable[[ConvertRequest], "list[dict] | Converted"] = field(repr=False)
    module: str = ""
    accepts: tuple[str, ...] = ()  # optional request fields it reads besides `needs`
    several: tuple[str, ...] = ()  # of MULTI_FILE_FLAGS: may be given more than once (merged)

    def reads_field(self, name: str) -> bool:
        main = "main" in self.needs and name in MULTI_FILE_FLAGS
        return main or name in self.needs or name in self.accepts


CONVERTERS: Registry[Converter] = Registry("dataset", sort=True)


def register(name: str, *, task: str, media: str, needs: tuple[str, ...], reads: str,
             accepts: tuple[str, ...] = (), several: tuple[str, ...] = ()):
    assert set(several) <= set(MULTI_FILE_FLAGS), several

    def wrap(fn: Callable[[ConvertRequest], "list[dict] | Converted"]):
        CONVERTERS.add(name, Converter(name, task, media, needs, reads, fn, fn.__module__, accepts, several))
        return fn

    return wrap


def load_converters() -> Registry[Converter]:
    for module in CONVERTER_MODULES:
        importlib.import_module(f"vl.data_manifests.{module}")
    return CONVERTERS


def get_converter(name: str) -> Converter:
    return load_converters().lookup(name)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def request_problems(conv: Converter, req: ConvertRequest) -> list[str]:
    """Everything wrong with `req` for `conv` that shows without reading a file's contents."""
    name, problems = conv.name, []
    for need in conv.needs:
        if need == "main":
            if not req.annotations and not req.questions:
                problems.append(f"{name} needs its annotation file: --annotations FILE ({conv.reads})")
        elif getattr(req, need) in (None, []):
            problems.append(f"{name} needs {_flag(need)}")
    for given in req.given():
        if not conv.reads_field(given):
            problems.append(f"{name} does not read {_flag(given)}: drop it ({name} reads: {conv.reads})")
    for flag in MULTI_FILE_FLAGS:
        count = len(getattr(req, flag))
        if count > 1 and flag not in conv.several:
            problems.append(f"{name} reads one {_flag(flag)} file (got {count}): convert each file into its own "
                            "manifest")
        resolved = [p.resolve() for p in getattr(req, flag)]
        problems += [f"{p}: given twice as {_flag(flag)}; give each file once"
                     for i, p in enumerate(getattr(req, flag)) if resolved[i] in resolved[:i]]
    resolved = [p.resolve() for p in req.exclude_images]
    problems += [f"{p}: given twice as --exclude-images; give each manifest once"
                 for i, p in enumerate(req.exclude_images) if resolved[i] in resolved[:i]]
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
    return problems


def convert_dataset(name: str, req: ConvertRequest, out: Path) -> DatasetManifest:
    """Convert and write `out` (+ meta); nothing is written if anything is wrong."""
    conv = get_converter(name)
    refuse_overwriting_inputs(out, req.named_files())
    refuse_overwriting_inputs(meta_path_for(out), req.named_files(), flag="--out's meta file")
    problems = request_problems(conv, req)
    if problems:
        raise VLError(problems, hint=f"Run `vl data convert --help` for the files each dataset reads. Nothing was written to {out}.")
    # the excluded manifests first: a bad one shows before the large release files are read
    excluded = ExcludedImages.read(req.exclude_images) if req.exclude_images else None
    result = conv.convert(req)
    converted = result if isinstance(result, Converted) else Converted(result)
    examples = converted.examples
    if excluded is not None and examples:
        examples, converted.extra["excluded_images"] = excluded.drop(examples)
        if not examples:
            raise VLError(f"{name}: every example of split {req.split!r} looks at an image of the --exclude-images "
                          f"manifests ({', '.join(map(str, req.exclude_images))}); nothing is left to write")
    if not examples:
        raise VLError(f"{name}: no examples for split {req.split!r} in {', '.join(map(str, req.files()))}; "
                      "check --split and the files")
    media_root = req.videos if conv.media == "video" else req.images
    meta = ManifestMeta(
        dataset=name,
        converter=conv.module,
        sources=[SourceFile(str(p.resolve()), sha256_file(p)) for p in req.files()],
        media_root=str(media_root.resolve()) if media_root else None,
        has_answers=any("answers" in ex or "targets" in ex or "labels" in ex for ex in examples),
        extra={"split": req.split, "task": conv.task, "media": conv.media,
               "restval_into_train": req.restval_into_train, **converted.extra},
    )
    return write_manifest(out, examples, meta)
