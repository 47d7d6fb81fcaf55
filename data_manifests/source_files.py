"""Reading official release files with errors that name the file, the line and the
record: one clear message (all problems collected), never a traceback from deep inside."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import json_line_objects, utf8_lines


def read_json(path: str | os.PathLike, *, what: str) -> Any:
    """A whole-file JSON document (VQA, GQA, Karpathy files)."""
    path = _existing(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise VLError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); is this the {what}?") from None
    except UnicodeDecodeError as e:
        raise VLError(f"{path}: not UTF-8 text ({e.reason}); is this the {what}?") from None


def read_jsonl(path: str | os.PathLike, *, what: str) -> list[tuple[int, dict]]:
    """JSON Lines (NLVR2, VALUE): [(line number, record)], blank lines skipped. A file
    that is one JSON array or object instead is accepted too, numbered by item."""
    path = _existing(path, what)
    lines = list(utf8_lines(path, f"the {what}"))
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("["):  # some mirrors ship the same records as one array
        records = read_json(path, what=what)
        return [(i + 1, r) for i, r in enumerate(records)] if _all_objects(records, path) else []
    problems: list[str] = []
    out = list(json_line_objects(lines, path, problems))
    collect_or_raise(problems, hint=f"{path} should be the {what} (JSON Lines, one object per line).")
    return out


def _all_objects(records: Any, path: Path) -> bool:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise VLError(f"{path}: expected JSON Lines or a JSON array of objects")
    return True


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VLError(f"{path}: no such file (expected the {what})")
    return path


def duplicates(ids: Iterable[tuple[str, str]]) -> list[str]:
    """Problems for repeated ids; `ids` yields (id, where)."""
    first: dict[str, str] = {}
    problems: list[str] = []
    for ident, where in ids:
        repeated_id(ident, where, first, problems)
    return problems


def repeated_id(ident: str, where: str, first: dict[str, str], problems: list[str]) -> bool:
    """Whether `ident` came before (`first`: each id seen, where it first came): then a
    problem is added to `problems`, else `ident` is recorded. `duplicates` one id at a time,
    for a file checked as it streams by, keeping only the ids and their places."""
    if ident in first:
        problems.append(f"{where}: duplicate id {ident!r} (first at {first[ident]})")
        return True
    first[ident] = where
    return False
