"""NLVR2: the official JSON Lines file (train.json, dev.json, test1.json) into
`nlvr2` examples.

    {"identifier": "dev-850-0-0", "sentence": ..., "label": "True", "directory": 73 (train only),
     "left_url", "right_url", "writer", "synset", "query", "validation", "extra_validations"}

The two images of a pair are `{stem}-img0.png` and `{stem}-img1.png`, where the stem
is the identifier without its last `-N` (the sentence number): "dev-850-0-0" ->
"dev-850-0-img0". Train images sit in `train/{directory}/`; the media id is the file
name, which the media lookup finds in any sub-folder. A file without labels (the
hidden test set) gives examples without `answers`.
"""
from __future__ import annotations

import re

from vl.data_manifests.registry import ConvertRequest, register
from vl.data_manifests.source_files import duplicates, read_jsonl
from vl.shared.errors import collect_or_raise
from vl.shared.manifest import missing_fields

RECORD_FIELDS = {"identifier": str, "sentence": str}
# The release writes labels as the strings "True"/"False"; some mirrors as JSON booleans.
LABELS = {"True": "true", "False": "false", True: "true", False: "false"}
# "dev-850-0-0" -> stem "dev-850-0" and sentence number "0"
_IDENTIFIER = re.compile(r"^(.+)-(\d+)$")


@register("nlvr2", task="nlvr2", media="image", needs=("main",),
          reads="NLVR2 JSON Lines ({identifier, sentence, label, directory, ...} per line)")
def convert(req: ConvertRequest) -> list[dict]:
    path = req.main_file()
    problems: list[str] = []
    examples, wheres = [], []
    for lineno, r in read_jsonl(path, what="NLVR2 JSON Lines file (train.json, dev.json, test1.json)"):
        where = f"{path}:{lineno}"
        if isinstance(r.get("identifier"), str):
            where += f" (identifier {r['identifier']!r})"
        found = missing_fields(r, RECORD_FIELDS, where)
        if "directory" in r:
            found += missing_fields(r, {"directory": int}, where)
        match = _IDENTIFIER.match(r["identifier"]) if isinstance(r.get("identifier"), str) else None
        if isinstance(r.get("identifier"), str) and match is None:
            found.append(f"{where}: field 'identifier' must end in -N, the sentence number "
                         f"(like dev-850-0-0; got {r['identifier']!r})")
        label = r.get("label")
        if "label" in r and (not isinstance(label, (str, bool)) or label not in LABELS):
            found.append(f"{where}: field 'label' must be \"True\" or \"False\" (got {label!r:.60})")
        problems.extend(found)
        if found:
            continue
        stem = match.group(1)
        ex = {"id": r["identifier"], "task": "nlvr2", "split": req.split,
              "media": [f"{stem}-img0", f"{stem}-img1"], "sentence": r["sentence"]}
        if "label" in r:
            ex["answers"] = [LABELS[label]]
        if "directory" in r:
            ex["directory"] = r["directory"]
        examples.append(ex)
        wheres.append(where)
    problems.extend(duplicates((ex["id"], where) for ex, where in zip(examples, wheres)))
    unlabeled = [where for ex, where in zip(examples, wheres) if "answers" not in ex]
    if 0 < len(unlabeled) < len(examples):
        problems.append(f"{unlabeled[0]}: missing field 'label', while other lines have one "
                        f"({len(unlabeled)} of {len(examples)} lines lack it); a file is either all "
                        "labelled or a test file without labels")
    collect_or_raise(problems, hint=f"{path} should be an official NLVR2 file (one JSON object per line).")
    return examples
