"""What the VALUE benchmark's video datasets share: the subtitles file, "st-ed" time
spans, and one loop that reads an annotation file, checks ids and videos, and attaches
each video's subtitles (`convert_value`). The task converters (`value_qa`,
`value_caption`) only say which fields a record gives.

    subtitles: {"vid_name": "s03e02_seg02_clip_10", "sub": [{"text": "...", "start": 0.86, "end": 1.86}, ...]}
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

from vl.data_manifests.registry import ConvertRequest
from vl.data_manifests.source_files import duplicates, read_jsonl
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import missing_fields

SUBTITLES_FORMAT = 'VALUE subtitles, JSON Lines of {"vid_name", "sub": [{"text", "start", "end"}]}'
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+|nan)"
_TS_STRING = re.compile(rf"\s*{_NUMBER}\s*-\s*{_NUMBER}\s*", re.IGNORECASE)
_SHOWN_MISSING = 5  # videos named in the "without subtitles" message

# A record's own fields -> (the manifest fields it gives, problems naming `label` and the field).
RecordFields = Callable[[dict, str], tuple[dict, list[str]]]


def parse_ts(value: Any) -> list[float] | None:
    """The release's "st-ed" string (or an [st, ed] list) -> [start, end] seconds; None
    where the release marks the span unknown (null, "NaN-NaN"). ValueError says why not."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _TS_STRING.fullmatch(value)
        if not match:
            raise ValueError('must be "start-end" seconds such as "20.16-25.12", or [start, end]')
        ts = [float(part) for part in match.groups()]
    elif isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
        ts = [float(v) for v in value]
    else:
        raise ValueError("must be [start, end] seconds, or a \"start-end\" string such as \"20.16-25.12\"")
    if any(math.isnan(t) for t in ts):  # TVQA marks a few questions "NaN-NaN": no known span
        return None
    if any(math.isinf(t) for t in ts):
        raise ValueError("must hold finite seconds")
    return ts


def read_subtitles(path: Path) -> tuple[dict[str, list[dict]] | None, list[str]]:
    """{vid_name: the whole video's [{start, end, text}] (text stripped)}, or None where
    the file is not JSON Lines; and the problems."""
    records, problems = _read_records(path, what=SUBTITLES_FORMAT)
    if problems:
        return None, problems
    subtitles: dict[str, list[dict]] = {}
    first_line: list[tuple[str, str]] = []
    for lineno, record in records:
        where = f"{path}:{lineno}"
        vid_name = record.get("vid_name")
        label = f"{where} (vid_name {vid_name!r})" if isinstance(vid_name, str) and vid_name else where
        found = missing_fields(record, {"vid_name": str, "sub": list}, label)
        if not found and not vid_name:
            found.append(f"{label}: field 'vid_name' must be a non-empty string")
        lines = []
        for i, line in enumerate(record.get("sub") if isinstance(record.get("sub"), list) else []):
            if not isinstance(line, dict):
                found.append(f"{label}: field 'sub[{i}]' must be an object {{text, start, end}} (got {line!r:.60})")
                continue
            bad = missing_fields(line, {"text": str, "start": (int, float), "end": (int, float)}, f"{label} sub[{i}]")
            bad += [f"{label} sub[{i}]: field '{k}' must be a number (got {line[k]!r})"
                    for k in ("start", "end") if isinstance(line.get(k), bool)]
            found += bad
            if not bad:
                lines.append({"start": float(line["start"]), "end": float(line["end"]), "text": line["text"].strip()})
        problems += found
        if isinstance(vid_name, str) and vid_name:
            first_line.append((vid_name, where))
            subtitles.setdefault(vid_name, lines)
    problems += [f"{p}; each 'vid_name' must have one line in the subtitles file" for p in duplicates(first_line)]
    return subtitles, problems


def convert_value(req: ConvertRequest, *, task: str, id_field: str, what: str,
                  record_fields: RecordFields) -> list[dict]:
    """One example per annotation record: id, task, split, media [vid_name], the record's
    own fields, and the video's subtitles. All problems of both files are raised as one
    VLError naming file:line, the record id and the field."""
    path, subtitles_path = req.main_file(), req.subtitles
    assert subtitles_path is not None, "needs=('main', 'subtitles') is checked by convert_dataset"
    records, problems = _read_records(path, what=what)
    subtitles, subtitle_problems = read_subtitles(subtitles_path)
    problems += subtitle_problems

    examples: list[dict] = []
    ids: list[tuple[str, str]] = []
    lines_of_video: dict[str, list[int]] = {}
    for lineno, record in records:
        where = f"{path}:{lineno}"
        ident, found = _record_id(record, id_field, where)
        label = f"{where} ({id_field} {record[id_field]!r})" if ident is not None else where
        found += missing_fields(record, {"vid_name": str}, label)
        if record.get("vid_name") == "":
            found.append(f"{label}: field 'vid_name' must be a non-empty string")
        fields, more = record_fields(record, label)
        found += more
        if ident is not None:
            ids.append((ident, where))
        if found:
            problems += found
            continue
        lines_of_video.setdefault(record["vid_name"], []).append(lineno)
        examples.append({"id": ident, "task": task, "split": req.split, "media": [record["vid_name"]], **fields})
    problems += [f"{p}; each '{id_field}' must be unique" for p in duplicates(ids)]
    if subtitles is not None:  # an unreadable subtitles file would make every video look missing
        problems += _videos_without_subtitles(lines_of_video, subtitles, path, subtitles_path)
    collect_or_raise(problems, hint=f"Expected {path.name}: {what}; {subtitles_path.name}: {SUBTITLES_FORMAT}. "
                     "Nothing was written.")
    assert subtitles is not None
    for ex in examples:  # the same list object for every question on a video: no copies in memory
        ex["subtitles"] = subtitles[ex["media"][0]]
    return examples


def _read_records(path: Path, *, what: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """read_jsonl, with its problems returned instead of raised, so that both files'
    problems reach the user at once."""
    try:
        return read_jsonl(path, what=what), []
    except VLError as err:
        return [], err.problems


def _record_id(record: dict, name: str, where: str) -> tuple[str | None, list[str]]:
    if name not in record:
        return None, [f"{where}: missing required field '{name}'"]
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        return None, [f"{where}: field '{name}' must be int or a non-empty string (got {value!r:.60})"]
    return str(value), []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _videos_without_subtitles(lines_of_video: dict[str, list[int]], subtitles: dict[str, list[dict]],
                              path: Path, subtitles_path: Path) -> list[str]:
    missing = [v for v in lines_of_video if v not in subtitles]
    if not missing:
        return []
    shown = []
    for vid_name in missing[:_SHOWN_MISSING]:
        lines = lines_of_video[vid_name]
        listed = ", ".join(map(str, lines[:3])) + (", ..." if len(lines) > 3 else "")
        shown.append(f"{vid_name!r} (line{'s' if len(lines) > 1 else ''} {listed})")
    more = f", and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
    return [f"{subtitles_path}: {len(missing)} video{'s' if len(missing) > 1 else ''} listed without subtitles "
            f"(field 'vid_name' in {path}): {', '.join(shown)}{more}. Each video needs a line in the subtitles "
            "file (an empty \"sub\" list is fine); is this the subtitles file of this dataset?"]
