"""VALUE video captioning (TVC, YC2C): one clip per JSON line, with its descriptions.

    {"clip_id": 86602, "vid_name": "grey_s03e12_seg02_clip_17", "duration": 94.03, "ts": [35.73, 40.9],
     "descs": [{"desc": "...", "desc_id": 109, "type": "v", "from_retrieval": false}, ...]}

Test files may have no (or empty) `descs`: those clips get no `targets`. Subtitles and
the shared checks come from `value_common.convert_value`.
"""
from __future__ import annotations

from vl.data_manifests.registry import ConvertRequest, register
from vl.data_manifests.value_common import convert_value, parse_ts
from vl.shared.manifest import missing_fields


def caption_fields(record: dict, label: str) -> tuple[dict, list[str]]:
    """clip_id, ts, duration; targets and desc_ids where the release has descriptions."""
    problems = missing_fields(record, {"ts": (str, list)}, label)
    ts = None
    if not problems:
        try:
            ts = parse_ts(record["ts"])
        except ValueError as e:
            problems.append(f"{label}: field 'ts' {e} (got {record['ts']!r:.60})")
        else:
            if ts is None:  # a clip is its span: unlike a question, it cannot go without one
                problems.append(f"{label}: field 'ts' must be known [start, end] seconds (got {record['ts']!r:.60})")
    duration = record.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))):
        problems.append(f"{label}: field 'duration' must be a number of seconds or null (got {duration!r:.60})")
    descs = record.get("descs") or []  # absent, null or [] in the test release
    if not isinstance(descs, list):
        problems.append(f"{label}: field 'descs' must be a list of {{desc, desc_id}} objects (got {descs!r:.60})")
        descs = []
    for i, desc in enumerate(descs):
        where = f"{label} descs[{i}]"
        if not isinstance(desc, dict):
            problems.append(f"{where}: must be an object {{desc, desc_id, ...}} (got {desc!r:.60})")
            continue
        problems += missing_fields(desc, {"desc": str, "desc_id": (int, str)}, where)
        if isinstance(desc.get("desc_id"), bool):
            problems.append(f"{where}: field 'desc_id' must be int or str (got {desc['desc_id']!r})")
    if problems:
        return {}, problems
    out = {"clip_id": record.get("clip_id"), "ts": ts, "duration": None if duration is None else float(duration)}
    if descs:
        out.update(targets=[d["desc"].strip() for d in descs], desc_ids=[d["desc_id"] for d in descs])
    return out, []


_TVC = "TVC clips (VALUE tvc_*.jsonl: clip_id, vid_name, ts, duration, descs [{desc, desc_id}])"
_YC2C = "YC2C clips (VALUE yc2c_*.jsonl: clip_id, vid_name, ts, duration, descs [{desc, desc_id}])"


@register("tvc", task="tvc", media="video", needs=("main", "subtitles"), reads=f"{_TVC} + --subtitles")
def convert_tvc(req: ConvertRequest) -> list[dict]:
    return convert_value(req, task="tvc", id_field="clip_id", what=_TVC, record_fields=caption_fields)


@register("yc2c", task="yc2c", media="video", needs=("main", "subtitles"), reads=f"{_YC2C} + --subtitles")
def convert_yc2c(req: ConvertRequest) -> list[dict]:
    return convert_value(req, task="yc2c", id_field="clip_id", what=_YC2C, record_fields=caption_fields)
