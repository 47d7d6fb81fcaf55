"""`vl data check`: validate a manifest and say what is in it and what is missing."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vl.shared.manifest import DatasetManifest
from vl.shared.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, index_media_files


@dataclass
class ManifestReport:
    path: Path
    examples: int
    counts: dict[str, int]
    with_gold: int
    gold_per_example: float
    distinct_answers: int
    top_answers: list[tuple[str, int]]
    media: int
    media_root: str | None
    missing_media: list[str] = field(default_factory=list)
    media_checked: bool = False

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def check_manifest(path: str | Path, media_root: str | Path | None = None) -> ManifestReport:
    """Read (and so validate) a manifest; count it; look for its media files when a
    media root is known (given, or recorded in the meta file)."""
    manifest = DatasetManifest.read(path)
    gold = [ex.get("answers") or ex.get("targets") for ex in manifest.examples]
    gold = [g for g in gold if g]
    # The answer a model is asked for: the first of `answers` (VQA: the most common human answer
    # is in multiple_choice_answer, which we prefer when present).
    firsts = Counter(ex.get("multiple_choice_answer") or ex["answers"][0]
                     for ex in manifest.examples if ex.get("answers"))
    media_ids = manifest.media_ids()
    root = media_root or (manifest.meta.media_root if manifest.meta else None)
    report = ManifestReport(
        path=manifest.path,
        examples=len(manifest.examples),
        counts=manifest.counts(),
        with_gold=len(gold),
        gold_per_example=round(sum(map(len, gold)) / len(gold), 2) if gold else 0.0,
        distinct_answers=len(firsts),
        top_answers=firsts.most_common(5),
        media=len(media_ids),
        media_root=str(root) if root else None,
    )
    if root and Path(root).is_dir():
        kind = manifest.meta.extra.get("media") if manifest.meta else None
        extensions = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}.get(kind, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        found = index_media_files(root, extensions)
        report.missing_media = [m for m in media_ids if m not in found]
        report.media_checked = True
    return report


def format_report(r: ManifestReport) -> str:
    lines = [f"{r.path}: valid, {r.examples} examples"]
    for key, n in sorted(r.counts.items()):
        lines.append(f"  {key}: {n}")
    if r.with_gold:
        lines.append(f"  gold: {r.with_gold} examples with answers/targets, {r.gold_per_example} per example")
    else:
        lines.append("  gold: none (a test split)")
    if r.top_answers:
        top = ", ".join(f"{a!r} {n}" for a, n in r.top_answers)
        lines.append(f"  answers: {r.distinct_answers} distinct; most common: {top}")
    lines.append(f"  media: {r.media} distinct ids")
    if not r.media_checked:
        lines.append("  media files: not checked (no media root: pass --media-root DIR)"
                     if not r.media_root else f"  media files: not checked ({r.media_root} is not a folder)")
    elif r.missing_media:
        shown = ", ".join(r.missing_media[:10]) + (" ..." if len(r.missing_media) > 10 else "")
        lines.append(f"  media files: {len(r.missing_media)} of {r.media} MISSING under {r.media_root}: {shown}")
    else:
        lines.append(f"  media files: all {r.media} found under {r.media_root}")
    return "\n".join(lines)
