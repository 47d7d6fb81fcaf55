"""Which images to extract, and the id each one is stored under.

Four sources, one result (a list of `MediaInput(id, path)`):
- a folder, searched recursively; id = file name without extension (how COCO, GQA
  and NLVR2 name their images) or, with `id_from="relpath"`, the path relative to
  the folder without extension;
- a list file, one path or http(s) URL per line (relative paths are relative to the
  list file), or `id<TAB>path` / `id<TAB>url` to choose the id (a bare URL's id:
  `url_id`);
- a dataset manifest's media ids, each found under a media root by the same rules;
- webdataset tar shards (`vl.extract.webdataset`): one input per `{key}.jpg` member.
An input's bytes come from a local file, a tar member (`member`: where it lies in the
shard at `path`) or an http(s) URL (`path` is the URL); `vl.extract.sources` reads them.
Duplicate ids are an error before any work starts.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from vl.shared.errors import VLError, collect_or_raise
from vl.shared.manifest import DatasetManifest
from vl.shared.media import IMAGE_EXTENSIONS, index_media_files, walk_media_files

ID_FROM = ("stem", "relpath")


URL_SCHEMES = ("http://", "https://")
_ANY_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class TarMember:
    """Where a member's bytes lie inside an uncompressed tar shard: read by one seek."""

    name: str
    offset: int  # of the data, not the header
    size: int


@dataclass(frozen=True)
class MediaInput:
    id: str
    path: str  # a file, an http(s) URL, or the tar shard holding `member`; may not exist (a recorded failure)
    member: TarMember | None = None
    error: str | None = None  # known to be bad before reading (found while listing): recorded as its failure

    @property
    def is_url(self) -> bool:
        return self.path.startswith(URL_SCHEMES)

    @property
    def location(self) -> str:
        """What failure records and messages name: the path or URL, `shard.tar#member` for a member."""
        return f"{self.path}#{self.member.name}" if self.member else self.path


def url_id(url: str) -> str:
    """The id of a bare URL in a list: its path's file name without extension, then `-`
    and the first 10 hex digits of the URL's sha256 (`https://x.org/a/cat.jpg?s=2` ->
    `cat-<hash>`): stable across runs and machines, readable, and unique when many URLs
    end in the same file name (`image.jpg`, `0.jpg`)."""
    from urllib.parse import unquote, urlsplit

    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.rsplit(".", 1)[0] if "." in name[1:] else name).strip("_.")
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:10]
    return f"{stem[:80] or 'url'}-{digest}"


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
    paths = list(walk_media_files(root, extensions))
    if not paths:
        raise VLError(f"{flag} {root}: no media files found (looked for {', '.join(extensions)})")
    return check_unique([MediaInput(media_id(p, root, id_from), str(p)) for p in paths], id_from=id_from)


def find_images(root: str | os.PathLike, id_from: str = "stem") -> list[MediaInput]:
    return find_media(root, id_from, IMAGE_EXTENSIONS, "--images")


def read_list(list_file: str | os.PathLike, id_from: str = "stem", allow_urls: bool = True) -> list[MediaInput]:
    """Inputs from a text file: `path`, `url`, `id<TAB>path` or `id<TAB>url` per line; `#`
    starts a comment. URLs are kept as they are (fetched later, by `vl.extract.sources`)."""
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
            if _ANY_SCHEME.match(raw):
                _check_url(raw, f"{list_file}:{lineno}", allow_urls)
                inputs.append(MediaInput(ident or url_id(raw), raw))
                continue
            path = Path(raw) if os.path.isabs(raw) else base / raw
            if ident is None:
                ident = media_id(path, base, id_from) if id_from == "relpath" and not os.path.isabs(raw) else path.stem
            inputs.append(MediaInput(ident, str(path)))
    if not inputs:
        raise VLError(f"--list {list_file}: holds no paths")
    return check_unique(inputs, id_from=id_from)


def _check_url(url: str, where: str, allow_urls: bool) -> None:
    if not url.startswith(URL_SCHEMES):
        raise VLError(f"{where}: {url.split('://')[0]}:// URLs are not fetched, only http:// and https://",
                      hint="download those inputs first and list their local paths")
    if not allow_urls:
        raise VLError(f"{where}: URLs are read by `vl extract images` only; download these inputs first and "
                      "list their local paths")


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
        paths_by_id[item.id].append(item.location)
    dups = [f"id {i!r} is used by {len(p)} inputs: {', '.join(p[:3])}" for i, p in paths_by_id.items() if len(p) > 1]
    if any(p[0].startswith(URL_SCHEMES) for p in paths_by_id.values() if len(p) > 1):
        hint = "a URL is listed twice, or two lines give the same id; choose ids with `id<TAB>url` lines"
    elif id_from == "stem":
        hint = "ids come from file names; use --id-from relpath to key by relative path"
    else:
        hint = "make the ids unique"
    collect_or_raise(dups, limit=10, hint=f"duplicate ids: {hint}. Nothing was extracted.")
    return inputs
