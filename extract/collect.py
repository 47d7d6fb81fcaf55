"""Which media one `vl extract` run reads, and the source record its provenance keeps:
a folder, a list file (paths and, for images, http(s) URLs), a dataset manifest, or
webdataset tar shards. `vl extract images|videos` and `vl.extract_images|videos` (Python)
both come through here."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from vl.extract import inputs as inp
from vl.shared.errors import VLError
from vl.shared.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

InputFormat = Literal["files", "webdataset"]


def collect_inputs(kind: str, media_dir: str | os.PathLike | None = None, list_file: str | os.PathLike | None = None,
                   manifest: str | os.PathLike | None = None, media_root: str | os.PathLike | None = None,
                   id_from: str = "stem", input_format: InputFormat = "files", timeout: float = 10.0,
                   retries: int = 2) -> tuple[list[inp.MediaInput], dict]:
    """(inputs, source record) for `kind` ("images" or "videos") from exactly one of
    media_dir (a folder; with input_format=webdataset: shards), list_file or manifest."""
    flag = f"--{kind}"
    if sum(s is not None for s in (media_dir, list_file, manifest)) != 1:
        raise VLError(f"give exactly one of {flag} DIR, --list FILE or --manifest M.jsonl")
    if media_root is not None and manifest is None:
        raise VLError("--media-root goes with --manifest")
    media_dir = Path(media_dir) if media_dir is not None else None
    extensions = IMAGE_EXTENSIONS if kind == "images" else VIDEO_EXTENSIONS
    if input_format == "webdataset":
        return _webdataset_inputs(media_dir, id_from)
    if media_dir is not None:
        if kind == "images" and not media_dir.is_dir() and (media_dir.suffix == ".tar" or "{" in str(media_dir)):
            raise VLError(f"--images {media_dir}: not a folder of images but, by its name, webdataset shards; "
                          "add --input-format webdataset")
        items = inp.find_media(media_dir, id_from, extensions, flag)
        return items, {kind: str(media_dir.resolve()), "id_from": id_from, "input_format": "files"}
    if list_file is not None:
        items = inp.read_list(list_file, id_from, allow_urls=kind == "images")
        urls = sum(x.is_url for x in items)
        source = {"list": str(Path(list_file).resolve()), "id_from": id_from,
                  "input_format": "urls" if urls == len(items) else "files+urls" if urls else "files"}
        if urls:
            source.update(timeout_s=timeout, retries=retries)
        return items, source
    items = inp.from_manifest(manifest, media_root, extensions)
    return items, {"manifest": str(Path(manifest).resolve()), "media_root": str(media_root) if media_root else None,
                   "input_format": "files"}


def _webdataset_inputs(shards: Path | None, id_from: str) -> tuple[list[inp.MediaInput], dict]:
    """Inputs and the source record for --input-format webdataset --images SHARDS."""
    if shards is None:
        raise VLError("--input-format webdataset reads tar shards given with --images: a .tar file, a folder "
                      "of them, or a pattern such as 'shards/{00000..00009}.tar' (not --list or --manifest)")
    if id_from != "stem":
        raise VLError("--id-from does not apply to webdataset shards: each image is stored under its key "
                      "(the member name without extension, folder part included)")
    from vl.extract.webdataset import find_shards, index_shards

    shard_files = find_shards(shards)
    items = index_shards(shard_files)
    if not any(x.member for x in items) and not any(x.error for x in items):
        raise VLError(f"--images {shards}: the {len(shard_files)} shard(s) hold no image members "
                      "({key}.jpg, .jpeg, .png or .webp)")
    return items, {"webdataset": os.path.abspath(shards), "shards": len(shard_files), "input_format": "webdataset"}
