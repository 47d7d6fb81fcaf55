"""Which images to extract, and the id each one is stored under.

Three sources, one result (a list of `MediaInput(id, path)`):
- a folder, searched recursively; id = file name without extension (how COCO, GQA
  and NLVR2 name their images) or, with `id_from="relpath"`, the path relative to
  the folder without extension;
- a list file, one path per line (relative paths are relative to the list file), or
  `id<TAB>path` to choose the id;
- a dataset manifest's media ids, each found under a media root by the same rules.
Duplicate ids are an error before any work starts.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import DatasetManifest
from vl.shared.media import IMAGE_EXTENSIONS, index_media_files

ID_FROM = ("stem", "relpath")


@dataclass(frozen=True)
class MediaInput:
    id: str
    path: str  # may not exist: a missing file is recorded as a failure, not an error


def media_id(path: Path, root: Path, id_from: str) -> str:
    if id_from == "stem":
        return path.stem
    rel = path.relative_to(root).with_suffix("")
    return rel.as_posix()


def find_media(root: str | os.PathLike, id_from: str = "stem", extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
               flag: str = "--images") -> list[MediaInput]:
    """Every media file under `root` (recursively, symlinks followed), in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise VLError(f"{flag} {root}: no such folder")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        paths += [Path(dirpath) / n for n in sorted(filenames) if n.lower().endswith(extensions) and not n.startswith(".")]
    if not paths:
        raise VLError(f"{flag} {root}: no media files found (looked for {', '.join(extensions)})")
    return check_unique([MediaInput(media_id(p, root, id_from), str(p)) for p in paths], id_from=id_from)


def find_images(root: str | os.PathLike, id_from: str = "stem") -> list[MediaInput]:
    return find_media(root, id_from, IMAGE_EXTENSIONS, "--images")


def read_list(list_file: str | os.PathLike, id_from: str = "stem") -> list[MediaInput]:
    """Inputs from a text file: `path` or `id<TAB>path` per line; `#` starts a comment."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise VLError(f"--list {list_file}: no such file")
    base = list_file.parent
    inputs = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" in line:
                ident, _, raw = line.partition("\t")
                if not ident or not raw:
                    raise VLError(f"{list_file}:{lineno}: expected `id<TAB>path`, got {line!r}")
            else:
                ident, raw = None, line.strip()
            path = Path(raw) if os.path.isabs(raw) else base / raw
            if ident is None:
                ident = media_id(path, base, id_from) if id_from == "relpath" and not os.path.isabs(raw) else path.stem
            inputs.append(MediaInput(ident, str(path)))
    if not inputs:
        raise VLError(f"--list {list_file}: holds no paths")
    return check_unique(inputs, id_from=id_from)


def from_manifest(manifest_path: str | os.PathLike, media_root: str | os.PathLike | None,
                  extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[MediaInput]:
    """The media ids a manifest uses, each matched to a file under the media root (by
    file name without extension, or by relative path without extension)."""
    manifest = DatasetManifest.read(manifest_path)
    root = media_root or (manifest.meta.media_root if manifest.meta else None)
    if not root:
        raise VLError(f"{manifest_path} records no media root: pass --media-root DIR")
    root = Path(root)
    if not root.is_dir():
        raise VLError(f"media root {root} (for {manifest_path}) is not a folder; pass --media-root DIR")
    by_key = index_media_files(root, extensions)
    inputs, ambiguous = [], []
    for ident in manifest.media_ids():
        found = by_key.get(ident, [])
        if len(found) > 1:
            ambiguous.append(f"media id {ident!r} matches {len(found)} files: {', '.join(map(str, found[:3]))}")
        # A media id with no file is kept: it becomes a recorded failure ("file not found").
        inputs.append(MediaInput(ident, str(found[0]) if found else str(root / ident)))
    collect_or_raise(ambiguous, hint="give the media ids as relative paths in the manifest, or point --media-root at one folder")
    return inputs


def check_unique(inputs: list[MediaInput], *, id_from: str) -> list[MediaInput]:
    paths_by_id: dict[str, list[str]] = defaultdict(list)
    for item in inputs:
        paths_by_id[item.id].append(item.path)
    dups = [f"id {i!r} is used by {len(p)} inputs: {', '.join(p[:3])}" for i, p in paths_by_id.items() if len(p) > 1]
    hint = ("ids come from file names; use --id-from relpath to key by relative path"
            if id_from == "stem" else "make the ids unique")
    collect_or_raise(dups, limit=10, hint=f"duplicate ids: {hint}. Nothing was extracted.")
    return inputs
