"""Dataset manifests: one example per JSONL line, with a `*.meta.json` beside it.

A line holds at least `id`, `task`, `split` and `media` (the media ids the example
looks at: one image, two for NLVR2, one video). Gold answers/targets and task extras
(choices, subtitles, timestamps, question types) sit beside them. The meta file
records where the examples came from (source files with sha256, the converter), the
counts, and the media root. Stages read manifests only through this module.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from vl.shared.atomic import atomic_path, dumps_json
from vl.shared.errors import ProblemList, VLError, collect_or_raise
from vl.shared.media import media_id_problem

MANIFEST_KIND = "dataset_manifest"
MANIFEST_SCHEMA_VERSION = 1

# Fields every example must have, with what they must hold.
REQUIRED_FIELDS = ("id", "task", "split", "media")
# Optional fields whose shape is checked when present.
STRING_LIST_FIELDS = ("answers", "targets")


@dataclass
class SourceFile:
    path: str
    sha256: str


@dataclass
class ManifestMeta:
    """What `*.meta.json` records about a manifest."""

    dataset: str
    converter: str
    sources: list[SourceFile] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    media_root: str | None = None
    has_answers: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = MANIFEST_KIND
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, where: str) -> "ManifestMeta":
        problems = []
        if d.get("kind") != MANIFEST_KIND:
            problems.append(f"{where}: field 'kind' must be '{MANIFEST_KIND}' (got {d.get('kind')!r})")
        version = d.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            problems.append(
                f"{where}: schema_version {version!r} is not supported (this vl reads "
                f"{MANIFEST_SCHEMA_VERSION}); convert the dataset again with `vl data convert`"
            )
        for name in ("dataset", "converter"):
            if not isinstance(d.get(name), str) or not d.get(name):
                problems.append(f"{where}: field '{name}' must be a non-empty string")
        sources = d.get("sources", [])
        if not isinstance(sources, list) or not all(
            isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("sha256"), str)
            for s in sources
        ):
            problems.append(f"{where}: field 'sources' must be a list of {{path, sha256}} objects")
            sources = []
        collect_or_raise(problems)
        known = {"kind", "schema_version", "dataset", "converter", "sources", "counts", "media_root", "has_answers", "extra"}
        extra = dict(d.get("extra", {}))
        extra.update({k: v for k, v in d.items() if k not in known})
        return cls(
            dataset=d["dataset"],
            converter=d["converter"],
            sources=[SourceFile(s["path"], s["sha256"]) for s in sources],
            counts=dict(d.get("counts", {})),
            media_root=d.get("media_root"),
            has_answers=bool(d.get("has_answers", True)),
            extra=extra,
        )


def meta_path_for(manifest_path: str | os.PathLike) -> Path:
    """`data/vqa_val.jsonl` -> `data/vqa_val.meta.json`."""
    p = Path(manifest_path)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(f"{stem}.meta.json")


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages: object, list, string, ..."""
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def missing_fields(record: dict, fields: dict[str, type | tuple[type, ...]], where: str) -> list[str]:
    """Problems for fields that are absent or of the wrong JSON type, naming `where`
    (file:line and the record's id): the one check of a JSON record's fields, for the
    converters' release files and `vl evaluate score`'s submission files alike. An int
    field takes no bool (JSON true is not 1)."""
    problems = []
    for name, kind in fields.items():
        if name not in record:
            problems.append(f"{where}: missing required field '{name}'")
        elif not isinstance(record[name], kind) or (kind is int and isinstance(record[name], bool)):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            shown = json.dumps(record[name], ensure_ascii=False, default=str)  # as the file spells it: null, true, "1"
            problems.append(f"{where}: field '{name}' must be {expected} (got {shown:.60})")
    return problems


def utf8_lines(path: str | os.PathLike, what: str = "a JSON Lines file") -> Iterator[str]:
    """The lines of a text file, each decoded as UTF-8; a line that is not is one VLError
    naming the file and line (a manifest or release file saved in another encoding, or not
    text at all)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise VLError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line); "
                              f"{what} is UTF-8 JSON", hint="Convert the file to UTF-8 (or write it again).") from None


def json_line_objects(lines: Iterable[str], path: str | os.PathLike,
                      problems: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON Lines file; a line that is not
    valid JSON, or not a JSON object, adds a problem naming `path:line` and is skipped."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{lineno}: a line must be a JSON object (got {json_type_name(record)})")
            continue
        yield lineno, record


def validate_example(ex: Any, *, where: str, has_answers: bool = True) -> list[str]:
    """Problems with one example (empty if none); each names `where` and the field."""
    if not isinstance(ex, dict):
        return [f"{where}: a line must be a JSON object (got {type(ex).__name__})"]
    problems = []
    ident = ex.get("id")
    label = f"{where} (id {ident!r})" if isinstance(ident, str) and ident else where
    for name in ("id", "task", "split"):
        if name not in ex:
            problems.append(f"{label}: missing required field '{name}'")
        elif not isinstance(ex[name], str) or not ex[name].strip():
            problems.append(f"{label}: field '{name}' must be a non-empty string (got {ex[name]!r})")
    if "media" not in ex:
        problems.append(f"{label}: missing required field 'media' (the list of media ids)")
    else:
        media = ex["media"]
        if not isinstance(media, list) or not media or not all(isinstance(m, str) and m for m in media):
            problems.append(f"{label}: field 'media' must be a non-empty list of media id strings (got {media!r})")
        else:
            problems += [f"{label}: media id {m!r} {why}; a media id names a file inside the media root "
                         "(its name, or its path relative to the root, without extension)"
                         for m in media if (why := media_id_problem(m))]
    for name in STRING_LIST_FIELDS:
        if name in ex:
            value = ex[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{label}: field '{name}' must be a list of strings (got {value!r})")
            elif has_answers and not value:
                problems.append(f"{label}: field '{name}' is empty; drop it or mark the manifest as having no answers")
    return problems


@dataclass
class DatasetManifest:
    """A validated manifest: its examples (dicts, one per line) and its meta."""

    path: Path
    examples: list[dict]
    meta: ManifestMeta | None

    @classmethod
    def read(cls, path: str | os.PathLike, *, max_problems: int = 20) -> "DatasetManifest":
        """Read and validate; all problems are collected and raised as one VLError that
        names the file, the line and the field."""
        path = Path(path)
        if not path.is_file():
            raise VLError(f"manifest {path} not found: write one with `vl data convert DATASET ... --out {path}`")
        meta = None
        mpath = meta_path_for(path)
        if mpath.is_file():
            try:
                raw_meta = json.loads(mpath.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise VLError(f"{mpath}:{e.lineno}: not valid JSON ({e.msg}); convert the dataset again") from None
            if not isinstance(raw_meta, dict):
                raise VLError(f"{mpath}: must hold a JSON object")
            meta = ManifestMeta.from_dict(raw_meta, where=str(mpath))
        has_answers = meta.has_answers if meta else True

        examples: list[dict] = []
        problems = ProblemList(keep=max_problems)
        first_line_of: dict[str, int] = {}
        for lineno, ex in json_line_objects(utf8_lines(path, "a manifest"), path, problems):
            where = f"{path}:{lineno}"
            found = validate_example(ex, where=where, has_answers=has_answers)
            if found:
                problems.extend(found)
                continue
            if ex["id"] in first_line_of:
                problems.append(
                    f"{where}: duplicate id {ex['id']!r} (first on line {first_line_of[ex['id']]}); ids must be unique"
                )
                continue
            first_line_of[ex["id"]] = lineno
            examples.append(ex)
        if not examples and not problems:
            problems.append(f"{path}: holds no examples")
        collect_or_raise(problems, limit=max_problems, hint="Fix the lines above, or convert the dataset again with `vl data convert`.")
        return cls(path=path, examples=examples, meta=meta)

    def media_ids(self) -> list[str]:
        """Every media id the examples use, once each, in order of first use."""
        return list(dict.fromkeys(m for ex in self.examples for m in ex["media"]))

    def counts(self) -> dict[str, int]:
        """Examples per `task/split`."""
        return dict(Counter(f"{ex['task']}/{ex['split']}" for ex in self.examples))


def write_manifest(path: str | os.PathLike, examples: Iterable[dict], meta: ManifestMeta) -> DatasetManifest:
    """Validate and write a manifest and its meta; each file is written to a temporary
    name and renamed into place, so a failure never leaves a partial manifest."""
    path = Path(path)
    examples = list(examples)
    problems: list[str] = []
    seen: set[str] = set()
    for i, ex in enumerate(examples):
        problems.extend(validate_example(ex, where=f"example {i}", has_answers=meta.has_answers))
        if isinstance(ex, dict) and ex.get("id") in seen:
            problems.append(f"example {i}: duplicate id {ex['id']!r}")
        if isinstance(ex, dict):
            seen.add(ex.get("id"))
    collect_or_raise(problems, hint=f"nothing was written to {path}")
    meta.counts = dict(Counter(f"{ex['task']}/{ex['split']}" for ex in examples))
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex, ensure_ascii=False, sort_keys=True) + "\n")
    with atomic_path(meta_path_for(path)) as tmp:
        tmp.write_text(dumps_json(meta.to_dict()), encoding="utf-8")
    return DatasetManifest(path=path, examples=examples, meta=meta)
