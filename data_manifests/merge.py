"""`vl data merge`: several manifests of one task into one, for a run whose task reads
several datasets (a task of a run has one train manifest): VL-T5's pre-training reads
COCO and Visual Genome captions as one caption corpus, and VQA v2 with VG's questions as
one QA set.

The examples are copied as they are (their own `split` and media ids); ids must be unique
across the inputs (the VG converters prefix theirs: `vg-2354786`, `vgqa-986768`). The meta
records every input with its sha256 and counts, and the media root they share (none when
they differ: extract each input's images into the one store with `vl extract images
--manifest INPUT --out STORE`, which adds to a store).
"""
from __future__ import annotations

from pathlib import Path

from vl.data_manifests.source_files import duplicates
from vl.shared.digests import sha256_file
from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import DatasetManifest, ManifestMeta, SourceFile, write_manifest


def merge_manifests(paths: list[Path], out: Path) -> DatasetManifest:
    """Write the examples of `paths`, in order, to `out` (+ meta); nothing is written if
    the inputs are of different tasks or share an id."""
    if len(paths) < 2:
        raise VLError(f"vl data merge needs two manifests or more (got {len(paths)})")
    resolved = [p.resolve() for p in paths]
    twice = [f"{p}: given twice; give each manifest once" for i, p in enumerate(paths) if resolved[i] in resolved[:i]]
    collect_or_raise(twice)
    if out.resolve() in resolved:
        raise VLError(f"--out {out} is one of the inputs; write the merged manifest to a new file")
    manifests = [DatasetManifest.read(p) for p in paths]
    tasks = {m.path: sorted({ex["task"] for ex in m.examples}) for m in manifests}
    if len({t for ts in tasks.values() for t in ts}) > 1:
        listing = "; ".join(f"{p}: {', '.join(ts)}" for p, ts in tasks.items())
        raise VLError(f"vl data merge joins manifests of one task; these hold several ({listing})",
                      hint="A run trains each task from one manifest: merge the manifests of each task on its own.")
    collect_or_raise(duplicates((ex["id"], f"{m.path}:{i + 1}") for m in manifests for i, ex in enumerate(m.examples)),
                     hint="Ids must be unique across the merged manifests; convert them again so that they differ.")
    roots = {m.meta.media_root if m.meta else None for m in manifests}
    kinds = {m.meta.extra.get("media") for m in manifests if m.meta} - {None}
    meta = ManifestMeta(
        dataset="merge",
        converter=__name__,
        sources=[SourceFile(str(p.resolve()), sha256_file(p)) for p in paths],
        media_root=roots.pop() if len(roots) == 1 else None,
        has_answers=any(m.meta.has_answers if m.meta else True for m in manifests),
        extra={"task": next(iter(next(iter(tasks.values())))), **({"media": kinds.pop()} if len(kinds) == 1 else {}),
               "merged": [{"path": str(m.path.resolve()), "examples": len(m.examples),
                           "dataset": m.meta.dataset if m.meta else None,
                           "media_root": m.meta.media_root if m.meta else None} for m in manifests]},
    )
    return write_manifest(out, [ex for m in manifests for ex in m.examples], meta)
